"""The 50 objects: 5 smallNORB categories x 10 instances that differ in 3D shape, not only in shading.

Each category is a parametric model (`figures.py`, `vehicles.py`); an instance draws its proportions,
parts and poses from a generator seeded by (category, instance) alone, so the objects are the same for
every dataset seed. Objects face +x (object frame: x forward, y left, z up, standing on z = 0).
"""

from __future__ import annotations

import numpy as np

from robustcaps.data.standin.figures import animal, human
from robustcaps.data.standin.mesh import Mesh, length
from robustcaps.data.standin.vehicles import airplane, car, truck

BUILDERS = (animal, human, airplane, truck, car)  # by smallNORB category: 0 animal … 4 car


def build_object(category: int, instance: int) -> Mesh:
    """The instance's mesh, centred over the origin and scaled so that its bounding box's half-diagonal is 1:
    every instance fills the frame alike, as the smallNORB toys do."""
    mesh = BUILDERS[category](instance)
    lo, hi = mesh.vertices.min(axis=0), mesh.vertices.max(axis=0)
    centre = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]])
    scale = 1.0 / length((hi - lo) / 2)
    return Mesh((mesh.vertices - centre) * scale, mesh.normals, mesh.faces, mesh.albedo)
