"""The photo studio: a turntable (azimuth), two cameras on an arc (elevation), six fixed lights.

The object turns on the turntable by the azimuth (info a: 10a degrees); the cameras look at its centre
from elevation 30 + 5e degrees (info e), a stereo baseline apart; the lights stay put in the room, so each
azimuth shows other sides of the object, other self-occlusions and other shading. Per stereo pair the
nuisance adds a scale and an image offset; per image a light gain and a background grey (`nuisance`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from robustcaps.data.standin.mesh import Mesh, polar, rotate, rotation_z
from robustcaps.data.standin.raster import downsample, look_at, orbit_camera, rasterise, shade
from robustcaps.data.standin.shapes import build_object

INSTANCES = {"train": (4, 6, 7, 8, 9), "test": (0, 1, 2, 3, 5)}
ELEVATIONS = tuple(range(9))  # info value e: 30 + 5e degrees
AZIMUTHS = tuple(range(0, 36, 2))  # info value a: 10a degrees
LIGHTINGS = tuple(range(6))
# (azimuth from the cameras' side in degrees, elevation in degrees, diffuse, ambient, background grey)
LIGHTS = (
    (-50, 45, 0.80, 0.30, 175),
    (40, 60, 0.75, 0.35, 185),
    (0, 80, 0.70, 0.40, 195),
    (-110, 30, 0.80, 0.25, 160),
    (110, 35, 0.80, 0.25, 165),
    (20, 15, 0.55, 0.50, 180),
)


@dataclass(frozen=True)
class RenderConfig:
    seed: int = 0
    elevations: tuple[int, ...] = ELEVATIONS
    azimuths: tuple[int, ...] = AZIMUTHS
    lightings: tuple[int, ...] = LIGHTINGS
    image_size: int = 96
    supersample: int = 2
    distance: float = 6.0  # camera to object centre, in units of the object's half-diagonal
    baseline: float = 0.4  # between the two cameras, same units
    focal: float = 280.0  # pixels at 96x96: a sphere around the object spans about 95% of the frame


def nuisance(seed: int) -> dict[str, np.ndarray]:
    """Per-pair scale and offset, per-image gain and background factor: the whole grid, in a fixed order."""
    rng = np.random.default_rng(seed)
    pose = (5, 10, len(ELEVATIONS), len(AZIMUTHS))
    return {
        "scale": rng.uniform(0.92, 1.08, pose),
        "offset": rng.uniform(-3.0, 3.0, pose + (2,)),
        "gain": rng.uniform(0.9, 1.1, pose + (len(LIGHTINGS),)),
        "background": rng.uniform(0.88, 1.12, pose + (len(LIGHTINGS),)),
    }


def _light_directions() -> np.ndarray:
    rows = []
    for azimuth, elevation, *_ in LIGHTS:
        rows.append(polar(1.0, elevation, azimuth))
    return np.array(rows)


def _turn(mesh: Mesh, azimuth_info: int) -> Mesh:
    R = rotation_z(10.0 * azimuth_info)
    return Mesh(rotate(R, mesh.vertices), rotate(R, mesh.normals), mesh.faces, mesh.albedo)


def _views(config: RenderConfig, category: int, instance: int, elevation: int) -> Iterator[tuple]:
    """Rasterise each (azimuth, camera) once: yields (a, camera, pose, covered, normals, albedo) at
    `supersample` x the image size (see raster.rasterise)."""
    mesh, noise = build_object(category, instance), nuisance(config.seed)
    size, factor = config.image_size, config.supersample
    target = np.array([0.0, 0.0, float(mesh.vertices[:, 2].max()) / 2])
    for a, azimuth in enumerate(config.azimuths):
        turned = _turn(mesh, azimuth)
        pose = (category, instance, elevation, azimuth // 2)
        focal = config.focal * noise["scale"][pose] * factor
        centre = (size / 2 + noise["offset"][pose]) * factor
        for camera in (0, 1):
            offset = (camera - 0.5) * config.baseline  # camera 0 on the left
            eye = orbit_camera(30.0 + 5.0 * elevation, config.distance, target, offset)
            cam = look_at(eye, target, focal, float(centre[0]), float(centre[1]))
            yield (a, camera, pose, noise, *rasterise(turned, cam, size * factor))


def render_elevation(config: RenderConfig, category: int, instance: int, elevation: int) -> np.ndarray:
    """All azimuths x lightings x cameras of one object at one elevation: uint8 (A, L, 2, 96, 96)."""
    size, factor, lit = config.image_size, config.supersample, np.array(config.lightings)
    lights = _light_directions()[lit]
    diffuse, ambient, background = np.array([row[2:] for row in LIGHTS], dtype=np.float64)[lit].T
    out = np.empty((len(config.azimuths), len(lit), 2, size, size), dtype=np.uint8)
    for a, camera, pose, noise, covered, normals, albedo in _views(config, category, instance, elevation):
        gain = 255.0 * noise["gain"][pose][lit]
        grey = shade(
            covered,
            normals,
            albedo,
            lights,
            gain * diffuse,
            gain * ambient,
            noise["background"][pose][lit] * background,
        )
        images = downsample(grey.reshape(len(lit), size * factor, size * factor), factor)
        out[a, :, camera] = np.clip(np.floor(images + 0.5), 0, 255).astype(np.uint8)
    return out


def coverage(config: RenderConfig, category: int, instance: int, elevation: int) -> np.ndarray:
    """Where the object is, bool (A, 2, 96, 96): the silhouette, which shading may hide in the grey image."""
    size, factor = config.image_size, config.supersample
    out = np.empty((len(config.azimuths), 2, size, size), dtype=bool)
    for a, camera, _, _, covered, _, _ in _views(config, category, instance, elevation):
        out[a, camera] = (
            downsample(covered.reshape(1, size * factor, size * factor).astype(float), factor)[0] >= 0.5
        )
    return out
