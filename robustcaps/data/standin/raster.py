"""A z-buffered triangle rasteriser and a Lambertian shader, vectorised in numpy, for one camera at a time.

Pinhole camera looking at `target` from `eye`: a point p in the world has camera coordinates
X = (p - eye)·right, Y = (p - eye)·up, Z = (p - eye)·forward and lands on pixel
x = cx + f X / Z, y = cy - f Y / Z. Inside a triangle, with screen-space barycentrics w_i, depth is
interpolated perspective-correctly, 1/Z = Σ w_i / Z_i, and so are the vertex normals, n ∝ Σ (w_i / Z_i) n_i.

Shading (Lambert plus ambient), per lighting l: I = albedo · (ambient_l + diffuse_l · max(0, n·L_l)), the
light terms in grey levels.
Geometry does not depend on the lighting, so one rasterisation feeds every lighting of a viewpoint.

Why by hand: no pip-installable library rasterises on the CPU byte-deterministically without OpenGL or a
GPU driver (pyrender, moderngl and PyTorch3D need one or are not bit-stable across machines); see
`robustcaps.data.standin.render`. The z-buffer is one `np.minimum.at` over int64 keys (quantised depth, then
triangle id), so ties break the same way everywhere and no float reduction order matters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robustcaps.data.standin.mesh import Mesh, cos_deg, cross, normalize, sin_deg

_TRI_BITS = 22  # triangle id in the low bits of the z-buffer key: up to 4M triangles


@dataclass(frozen=True)
class Camera:
    eye: np.ndarray  # (3,) world position
    right: np.ndarray  # (3,) unit
    up: np.ndarray  # (3,) unit
    forward: np.ndarray  # (3,) unit, towards the target
    focal: float  # pixels
    cx: float
    cy: float


def look_at(eye: np.ndarray, target: np.ndarray, focal: float, cx: float, cy: float) -> Camera:
    forward = normalize(target - eye)
    right = normalize(cross(forward, np.array([0.0, 0.0, 1.0])))
    return Camera(eye, right, cross(right, forward), forward, focal, cx, cy)


def orbit_camera(elevation: float, distance: float, target: np.ndarray, offset: float) -> np.ndarray:
    """Eye position at `elevation` degrees above the horizon on the +x side, moved `offset` along the
    camera's right vector (the stereo baseline)."""
    eye = target + distance * np.array([cos_deg(elevation), 0.0, sin_deg(elevation)])
    right = normalize(cross(target - eye, np.array([0.0, 0.0, 1.0])))
    return eye + offset * right


def _to_camera(points: np.ndarray, camera: Camera) -> np.ndarray:
    d = points - camera.eye
    return np.stack([_along(d, camera.right), _along(d, camera.up), _along(d, camera.forward)], -1)


def _along(d: np.ndarray, axis: np.ndarray) -> np.ndarray:
    return d[:, 0] * axis[0] + d[:, 1] * axis[1] + d[:, 2] * axis[2]


def _fragments(tri: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each (triangle, pixel) pair in each (F, 3, 2) triangle's bounding box: (triangle, x, y)."""
    lo = np.clip(np.ceil(tri.min(axis=1) - 0.5), 0, size).astype(np.int64)
    hi = np.clip(np.floor(tri.max(axis=1) - 0.5), -1, size - 1).astype(np.int64)
    extent = np.maximum(hi - lo + 1, 0)
    counts = extent[:, 0] * extent[:, 1]
    ids = np.repeat(np.arange(len(tri)), counts)
    local = np.arange(len(ids)) - np.repeat(np.cumsum(counts) - counts, counts)
    width = extent[ids, 0]
    return ids, lo[ids, 0] + local % width, lo[ids, 1] + local // width


def _edge_coefficients(xy: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Per triangle, w_k(x, y) = c[3k] x + c[3k+1] y + c[3k+2] (the barycentrics), then 1/Z_0, 1/Z_1, 1/Z_2:
    (F, 12), so each fragment gathers one row. An edge shared by two triangles gets exactly negated
    coefficients in each, so a pixel on it is tested consistently and the mesh has no cracks."""
    (ax, ay), (bx, by), (cx, cy) = (xy[:, k].T for k in range(3))
    area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    rows = [
        by - cy,
        cx - bx,
        bx * cy - by * cx,
        cy - ay,
        ax - cx,
        cx * ay - cy * ax,
        ay - by,
        bx - ax,
        ax * by - ay * bx,
    ]
    return np.stack([r / area for r in rows] + [1.0 / z[:, 0], 1.0 / z[:, 1], 1.0 / z[:, 2]], -1)


def rasterise(mesh: Mesh, camera: Camera, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-buffer `mesh` (world frame) into a size x size image.

    Returns (covered (size*size,) bool, normals (P, 3) world frame, albedo (P,)) for the P covered pixels,
    pixel index = y * size + x, in increasing pixel order.
    """
    cam = _to_camera(mesh.vertices, camera)  # (V, 3)
    xy = np.stack(
        [camera.cx + camera.focal * cam[:, 0] / cam[:, 2], camera.cy - camera.focal * cam[:, 1] / cam[:, 2]],
        -1,
    )
    v = mesh.vertices[mesh.faces]
    geometric, to_eye = cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), camera.eye - v[:, 0]
    facing = (
        geometric[:, 0] * to_eye[:, 0] + geometric[:, 1] * to_eye[:, 1] + geometric[:, 2] * to_eye[:, 2] > 0
    )
    face_ids = np.flatnonzero(facing)  # back faces of closed solids are never visible
    tri_xy = xy[mesh.faces[face_ids]]  # (F', 3, 2)
    coef = _edge_coefficients(tri_xy, cam[mesh.faces[face_ids], 2])
    ids, px, py = _fragments(tri_xy, size)
    c, sx, sy = coef[ids], px + 0.5, py + 0.5
    w = np.stack([c[:, 3 * k] * sx + c[:, 3 * k + 1] * sy + c[:, 3 * k + 2] for k in range(3)], -1)
    inside = (w[:, 0] >= 0) & (w[:, 1] >= 0) & (w[:, 2] >= 0)
    ids, pixel, w, c = ids[inside], (py * size + px)[inside], w[inside], c[inside]
    persp = w * c[:, 9:12]  # w_i / Z_i
    inv_z = persp[:, 0] + persp[:, 1] + persp[:, 2]
    key = (np.floor((1.0 / inv_z) * 2.0**28).astype(np.int64) << _TRI_BITS) | ids
    zbuffer = np.full(size * size, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(zbuffer, pixel, key)
    win = np.flatnonzero(
        key == zbuffer[pixel]
    )  # exactly one winning fragment per covered pixel (unique keys)
    win = win[np.argsort(pixel[win], kind="stable")]
    ids, weights = ids[win], persp[win] / inv_z[win, None]
    n = mesh.normals[mesh.faces[face_ids[ids]]]  # (P, 3 vertices, 3)
    normals = normalize(n[:, 0] * weights[:, 0:1] + n[:, 1] * weights[:, 1:2] + n[:, 2] * weights[:, 2:3])
    covered = np.zeros(size * size, dtype=bool)
    covered[pixel[win]] = True
    return covered, normals, mesh.albedo[face_ids[ids]]


def shade(
    covered: np.ndarray,
    normals: np.ndarray,
    albedo: np.ndarray,
    lights: np.ndarray,
    diffuse: np.ndarray,
    ambient: np.ndarray,
    background: np.ndarray,
) -> np.ndarray:
    """Grey levels (L, size*size) for L lightings: Lambert + ambient on the object, a flat background.

    lights: (L, 3) unit directions towards the light; diffuse, ambient, background: (L,), already scaled
    to grey levels by the per-image gain.
    """
    cos = normals[:, 0:1] * lights[:, 0] + normals[:, 1:2] * lights[:, 1] + normals[:, 2:3] * lights[:, 2]
    lit = albedo[:, None] * (ambient + diffuse * np.maximum(cos, 0.0))  # (P, L)
    images = np.repeat(background[:, None], covered.size, axis=1)
    images[:, covered] = lit.T
    return images


def downsample(images: np.ndarray, factor: int) -> np.ndarray:
    """Box-filter (L, H*f, W*f) to (L, H, W): the supersampled edges become anti-aliased, as in a photo.
    Summed in a fixed order (not np.mean) so every machine rounds alike."""
    total = np.zeros_like(images[:, ::factor, ::factor])
    for dy in range(factor):
        for dx in range(factor):
            total = total + images[:, dy::factor, dx::factor]
    return total / (factor * factor)
