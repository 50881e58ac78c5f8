"""Triangle meshes built from a few closed primitives: ellipsoids, tubes and hexahedra.

A `Mesh` is vertices with outward normals, triangles, and a grey albedo per triangle. Objects are unions of
primitives (no boolean operations): the z-buffer in `robustcaps.data.standin.raster` resolves the overlaps.

Byte-determinism: trigonometry goes through `cos_deg` / `sin_deg`, which round the platform libm's result to
a 2^-32 grid (libms may differ in the last bit; after rounding they agree but for a ~2^-21 chance per
value), and vectors are combined with explicit elementwise products and sums in a fixed order, never BLAS
(`@`, `einsum`), whose blocking and FMA use differ between machines and would change the rounded pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Mesh:
    vertices: np.ndarray  # (V, 3) float64, object frame: x forward, y left, z up, ground at z = 0
    normals: np.ndarray  # (V, 3) float64, unit, outward
    faces: np.ndarray  # (F, 3) int64, counter-clockwise seen from outside
    albedo: np.ndarray  # (F,) float64 in [0, 1]


SHAPE_SEED = 2005  # fixed: the objects are part of the dataset's definition, not of its nuisance seed


def instance_rng(category: int, instance: int) -> np.random.Generator:
    """The generator an object draws its shape from (PCG64: the same numbers on every platform)."""
    return np.random.default_rng([SHAPE_SEED, category, instance])


_GRID = 2.0**32


def cos_deg(degrees: float) -> float:
    return round(math.cos(math.radians(degrees)) * _GRID) / _GRID


def sin_deg(degrees: float) -> float:
    return round(math.sin(math.radians(degrees)) * _GRID) / _GRID


def tan_deg(degrees: float) -> float:
    return sin_deg(degrees) / cos_deg(degrees)


def polar(size: float, pitch: float, yaw: float = 0.0) -> np.ndarray:
    """A vector of length `size` pitched `pitch` degrees up from +x and turned `yaw` degrees towards +y."""
    cp, sp, cy, sy = cos_deg(pitch), sin_deg(pitch), cos_deg(yaw), sin_deg(yaw)
    return size * np.array([cp * cy, cp * sy, sp])


def length(v: np.ndarray) -> float:
    x, y, z = float(v[0]), float(v[1]), float(v[2])
    return math.sqrt(x * x + y * y + z * z)


def merge(meshes: list[Mesh]) -> Mesh:
    offsets = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
    return Mesh(
        np.concatenate([m.vertices for m in meshes]),
        np.concatenate([m.normals for m in meshes]),
        np.concatenate([m.faces + o for m, o in zip(meshes, offsets, strict=True)]),
        np.concatenate([m.albedo for m in meshes]),
    )


def rotate(R: np.ndarray, v: np.ndarray) -> np.ndarray:
    """R @ v for each row of v (N, 3), as explicit sums in a fixed order (see the module docstring)."""
    return v[:, 0:1] * R[:, 0] + v[:, 1:2] * R[:, 1] + v[:, 2:3] * R[:, 2]


def rotation_z(degrees: float) -> np.ndarray:
    c, s = cos_deg(degrees), sin_deg(degrees)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotation_y(degrees: float) -> np.ndarray:
    """Positive angles pitch the +x axis up (towards +z)."""
    c, s = cos_deg(degrees), sin_deg(degrees)
    return np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])


def normalize(v: np.ndarray) -> np.ndarray:
    length = np.sqrt(v[..., 0] * v[..., 0] + v[..., 1] * v[..., 1] + v[..., 2] * v[..., 2])
    return v / np.maximum(length, 1e-12)[..., None]


def cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.stack(
        [
            a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1],
            a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2],
            a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0],
        ],
        axis=-1,
    )


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def _outward(vertices: np.ndarray, faces: np.ndarray, outward: np.ndarray) -> np.ndarray:
    """Flip the triangles whose geometric normal disagrees with `outward` (F, 3): culling trusts winding."""
    v0, v1, v2 = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    flip = _dot(cross(v1 - v0, v2 - v0), outward) < 0
    faces = faces.copy()
    faces[flip] = faces[flip][:, ::-1]
    return faces


def _unit_circle(n: int) -> tuple[np.ndarray, np.ndarray]:
    angles = [360.0 * k / n for k in range(n)]
    return np.array([cos_deg(a) for a in angles]), np.array([sin_deg(a) for a in angles])


def ellipsoid(center, radii, albedo: float, R: np.ndarray | None = None, n_u: int = 16, n_v: int = 9) -> Mesh:
    """UV sphere scaled by `radii` along its axes, rotated by R, then moved to `center`."""
    cu, su = _unit_circle(n_u)
    lat = [180.0 * (k / n_v - 0.5) for k in range(n_v + 1)]
    cv, sv = np.array([cos_deg(a) for a in lat]), np.array([sin_deg(a) for a in lat])
    unit = np.stack(np.broadcast_arrays(cv[:, None] * cu, cv[:, None] * su, sv[:, None]), -1).reshape(-1, 3)
    radii = np.asarray(radii, dtype=np.float64)
    R = np.eye(3) if R is None else R
    vertices = rotate(R, unit * radii) + np.asarray(center, dtype=np.float64)
    normals = rotate(R, normalize(unit / radii))
    i, j = np.meshgrid(np.arange(n_v), np.arange(n_u), indexing="ij")
    a, b = i * n_u + j, i * n_u + (j + 1) % n_u
    c, d = a + n_u, b + n_u
    faces = np.concatenate([np.stack([a, b, d], -1), np.stack([a, d, c], -1)]).reshape(-1, 3)
    v0, v1, v2 = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    area2 = _dot(cross(v1 - v0, v2 - v0), cross(v1 - v0, v2 - v0))
    faces = faces[area2 > 1e-18]  # the poles collapse one triangle of each quad
    outward = normals[faces[:, 0]] + normals[faces[:, 1]] + normals[faces[:, 2]]
    return Mesh(vertices, normals, _outward(vertices, faces, outward), np.full(len(faces), float(albedo)))


def tube(p0, p1, r0: float, r1: float, albedo: float, n: int = 10) -> Mesh:
    """A capped truncated cone from p0 (radius r0) to p1 (radius r1): limbs, necks, tails, wheels."""
    p0, p1 = np.asarray(p0, dtype=np.float64), np.asarray(p1, dtype=np.float64)
    axis = normalize(p1 - p0)
    helper = np.array([0.0, 0.0, 1.0]) if abs(axis[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    u = normalize(cross(axis, helper))
    w = cross(axis, u)
    cu, su = _unit_circle(n)
    radial = cu[:, None] * u + su[:, None] * w  # (n, 3)
    side = np.concatenate([p0 + r0 * radial, p1 + r1 * radial])
    caps = np.concatenate([np.repeat(p0[None], n, 0) + r0 * radial, np.repeat(p1[None], n, 0) + r1 * radial])
    vertices = np.concatenate([side, caps, p0[None], p1[None]])
    normals = np.concatenate([radial, radial, np.repeat(-axis[None], n, 0), np.repeat(axis[None], n, 0)])
    normals = np.concatenate([normals, -axis[None], axis[None]])
    k, k1 = np.arange(n), (np.arange(n) + 1) % n
    sides = np.concatenate([np.stack([k, k1, n + k1], -1), np.stack([k, n + k1, n + k], -1)])
    cap0 = np.stack([np.full(n, 4 * n), 2 * n + k1, 2 * n + k], -1)
    cap1 = np.stack([np.full(n, 4 * n + 1), 3 * n + k, 3 * n + k1], -1)
    faces = np.concatenate([sides, cap0, cap1])
    outward = normals[faces[:, 0]] + normals[faces[:, 1]] + normals[faces[:, 2]]
    return Mesh(vertices, normals, _outward(vertices, faces, outward), np.full(len(faces), float(albedo)))


# The six quads of a hexahedron whose corners are indexed by bits (x: 1, y: 2, z: 4).
_HEX_QUADS = ((0, 2, 6, 4), (1, 5, 7, 3), (0, 4, 5, 1), (2, 3, 7, 6), (0, 1, 3, 2), (4, 6, 7, 5))


def hexahedron(corners: np.ndarray, albedo: float) -> Mesh:
    """A convex six-faced solid from 8 corners (index bit 1: +x, 2: +y, 4: +z), flat shaded: boxes, wings,
    cabs with a slanted windscreen."""
    corners = np.asarray(corners, dtype=np.float64)
    centre = corners.mean(axis=0)
    vertices, normals, faces = [], [], []
    for q, quad in enumerate(_HEX_QUADS):
        p = corners[list(quad)]
        normal = normalize(cross(p[2] - p[0], p[3] - p[1]))
        if _dot(normal, p.mean(axis=0) - centre) < 0:
            normal = -normal
        vertices.append(p)
        normals.append(np.repeat(normal[None], 4, 0))
        faces += [[4 * q, 4 * q + 1, 4 * q + 2], [4 * q, 4 * q + 2, 4 * q + 3]]
    vertices, normals, faces = np.concatenate(vertices), np.concatenate(normals), np.array(faces)
    outward = normals[faces[:, 0]]
    return Mesh(vertices, normals, _outward(vertices, faces, outward), np.full(len(faces), float(albedo)))


def box(center, size, albedo: float, R: np.ndarray | None = None) -> Mesh:
    bits = np.array([[(i >> 0) & 1, (i >> 1) & 1, (i >> 2) & 1] for i in range(8)], dtype=np.float64)
    corners = (bits - 0.5) * np.asarray(size, dtype=np.float64)
    if R is not None:
        corners = rotate(R, corners)
    return hexahedron(corners + np.asarray(center, dtype=np.float64), albedo)


def tapered_box(
    x0: float,
    x1: float,
    z0: float,
    z1: float,
    half_width: float,
    albedo: float,
    inset: tuple[float, float] = (0.0, 0.0),
    top_width: float = 1.0,
) -> Mesh:
    """A solid from x0 (back) to x1 (front), z0 to z1, whose top face is moved in by inset = (back, front)
    and narrowed by top_width: sloped hoods, windscreens, cabins."""
    corners = []
    for i in range(8):
        top = bool(i & 4)
        if i & 1:
            x = x1 - (inset[1] if top else 0.0)
        else:
            x = x0 + (inset[0] if top else 0.0)
        w = half_width * (top_width if top else 1.0)
        corners.append([x, w if i & 2 else -w, z1 if top else z0])
    return hexahedron(np.array(corners), albedo)
