"""Figures with limbs: the smallNORB categories 0 (four-legged animal) and 1 (human).

Front/back asymmetric by construction (a head and snout in front, a tail behind; a nose, feet pointing
forward, a backpack), so that the azimuth changes what the camera sees.
"""

from __future__ import annotations

import math

import numpy as np

from robustcaps.data.standin.mesh import (
    Mesh,
    box,
    ellipsoid,
    instance_rng,
    length,
    merge,
    polar,
    rotation_y,
    tube,
)


def animal(instance: int) -> Mesh:
    """A quadruped: body, four legs, a neck and head at the front, a tail at the back."""
    r = instance_rng(0, instance)
    body_len, height, leg = r.uniform(1.2, 2.2), r.uniform(0.45, 0.8), r.uniform(0.35, 1.3)
    width, tone = height * r.uniform(0.7, 1.0), r.uniform(0.45, 0.85)
    z = leg + 0.4 * height
    parts = [ellipsoid((0, 0, z), (body_len / 2, width / 2, height / 2), tone, rotation_y(r.uniform(-8, 8)))]
    leg_r = r.uniform(0.06, 0.13)
    for x in (0.33 * body_len, -0.33 * body_len):
        for y in (0.3 * width, -0.3 * width):
            foot = (x + r.uniform(-0.15, 0.15), y * 1.1, 0.0)
            parts.append(tube((x, y, z - 0.2 * height), foot, leg_r, 0.7 * leg_r, tone * 0.9))
    neck_base = np.array([0.38 * body_len, 0.0, z + 0.15 * height])
    neck_top = neck_base + polar(r.uniform(0.2, 1.3), r.uniform(20, 75))
    parts.append(tube(neck_base, neck_top, r.uniform(0.1, 0.2), r.uniform(0.07, 0.12), tone))
    head = r.uniform(0.18, 0.3)
    snout = r.uniform(1.2, 2.2)
    parts.append(
        ellipsoid(
            neck_top + polar(0.5 * head, -20),
            (snout * head, 0.7 * head, 0.75 * head),
            tone,
            rotation_y(-r.uniform(0, 35)),
        )
    )
    for side in (1, -1):  # ears or horns: a dark, distinctive top
        ear = neck_top + np.array([-0.1 * head, side * 0.4 * head, 0.5 * head])
        parts.append(
            tube(ear, ear + polar(r.uniform(0.1, 0.4), r.uniform(50, 110), side * 30), 0.05, 0.015, 0.3)
        )
    tail_base = np.array([-0.48 * body_len, 0.0, z + 0.1 * height])
    tail_end = tail_base + polar(r.uniform(0.2, 1.0), 180 - r.uniform(-60, 40))
    parts.append(tube(tail_base, tail_end, r.uniform(0.04, 0.09), 0.02, tone * 0.8))
    return merge(parts)


def _limb(root: np.ndarray, upper: float, lower: float, pitch: float, bend: float, yaw: float) -> list[tuple]:
    """Two segments hanging from `root`: pitch 0 points straight down, positive swings forward."""
    elbow = root + polar(upper, pitch - 90, yaw)
    return [(root, elbow), (elbow, elbow + polar(lower, pitch + bend - 90, yaw))]


def _leg(hip: np.ndarray, ankle: np.ndarray, half: float) -> list[tuple]:
    """Thigh and shin of length `half` each from hip to ankle, the knee bent forward (two-link IK)."""
    reach = min(length(ankle - hip), 2 * half * 0.999)
    direction = (ankle - hip) / length(ankle - hip)
    ankle = hip + reach * direction
    forward = np.array([1.0, 0.0, 0.0]) - direction[0] * direction
    knee = (hip + ankle) / 2 + math.sqrt(half * half - reach * reach / 4) * forward / length(forward)
    return [(hip, knee), (knee, ankle)]


def human(instance: int) -> Mesh:
    """A standing figure: legs in a stride, two differently posed arms, a head with a nose, feet forward."""
    r = instance_rng(1, instance)
    leg, torso, shoulder = r.uniform(0.8, 1.05), r.uniform(0.55, 0.75), r.uniform(0.17, 0.27)
    tone, skin, limb_r = r.uniform(0.4, 0.8), r.uniform(0.6, 0.9), r.uniform(0.045, 0.075)
    hip_z, stride = leg * r.uniform(0.85, 0.97), r.uniform(-0.35, 0.35) * leg
    parts = [ellipsoid((0, 0, hip_z + torso / 2), (r.uniform(0.1, 0.16), shoulder, torso / 2 + 0.05), tone)]
    for side in (1, -1):
        ankle = np.array([side * stride / 2, side * 0.12, 0.07])
        for a, b in _leg(np.array([0.0, side * 0.1, hip_z]), ankle, leg / 2):
            parts.append(tube(a, b, limb_r * 1.3, limb_r, tone * 0.8))
        parts.append(box(ankle + np.array([0.08, 0, -0.035]), (0.26, 0.1, 0.07), 0.25))
    for side in (1, -1):
        pitch, bend = r.uniform(-40, 170), r.uniform(0, 110)
        root = np.array([0.0, side * (shoulder + limb_r), hip_z + torso * 0.92])
        for a, b in _limb(root, 0.36 * leg, 0.34 * leg, pitch, bend, side * r.uniform(0, 35)):
            parts.append(tube(a, b, limb_r, 0.85 * limb_r, tone))
    head_r = r.uniform(0.1, 0.14)
    head = np.array([0.0, 0.0, hip_z + torso + 0.05 + head_r])
    parts.append(ellipsoid(head, (head_r, 0.9 * head_r, 1.15 * head_r), skin))
    parts.append(ellipsoid(head + np.array([0.95 * head_r, 0, -0.1 * head_r]), (0.35 * head_r,) * 3, skin))
    if r.uniform() < 0.5:  # a backpack or a hat: a part only some instances have
        parts.append(box((-0.2, 0, hip_z + 0.6 * torso), (0.18, 1.4 * shoulder, 0.5 * torso), 0.3))
    else:
        parts.append(
            tube(head + (0, 0, 0.8 * head_r), head + (0, 0, 1.3 * head_r), 1.6 * head_r, head_r, 0.25)
        )
    return merge(parts)
