"""Vehicles: the smallNORB categories 2 (airplane), 3 (truck) and 4 (car).

Front/back asymmetric by construction (a cockpit at the nose and a fin at the tail; a cab and a cargo body;
a hood, a sloped windscreen and a boot of different lengths), so that the azimuth changes what is seen.
"""

from __future__ import annotations

import numpy as np

from robustcaps.data.standin.mesh import (
    Mesh,
    box,
    ellipsoid,
    hexahedron,
    instance_rng,
    merge,
    tan_deg,
    tapered_box,
    tube,
)

# One body style per instance, each style once among the train instances {4,6,7,8,9} and once among the
# test instances {0,1,2,3,5}: a class's variety is split evenly, as with the smallNORB toys.
STYLE = (0, 1, 2, 3, 4, 4, 0, 1, 2, 3)


def _wing(
    x_root: float,
    root_chord: float,
    tip_chord: float,
    span: float,
    sweep: float,
    z: float,
    dihedral: float,
    thickness: float,
    side: int,
    tone: float,
) -> Mesh:
    """One swept, tapered, thin wing (or tailplane, or fin when side=0 and the span goes up)."""
    shift = span * tan_deg(sweep)
    lift = span * tan_deg(dihedral)
    corners = []
    for i in range(8):
        tip, front, top = bool(i & 2), bool(i & 1), bool(i & 4)
        chord = tip_chord if tip else root_chord
        x = x_root - (shift if tip else 0.0) - (0.0 if front else chord)
        half = (0.35 if tip else 1.0) * thickness / 2
        if side == 0:  # a vertical fin: the span goes along +z, the thickness along y
            corners.append([x, half if top else -half, z + (span if tip else 0.0)])
        else:
            corners.append(
                [x, side * (span if tip else 0.0), z + (lift if tip else 0.0) + (half if top else -half)]
            )
    return hexahedron(np.array(corners), tone)


def airplane(instance: int) -> Mesh:
    """Fuselage with a cockpit at the nose, swept wings, a tailplane and a fin at the back, maybe engines."""
    r = instance_rng(2, instance)
    length, radius, tone = r.uniform(2.4, 3.4), r.uniform(0.15, 0.28), r.uniform(0.5, 0.9)
    z = radius + 0.05
    parts = [ellipsoid((0, 0, z), (length / 2, radius, radius * r.uniform(0.9, 1.2)), tone, n_u=18)]
    parts.append(
        ellipsoid((0.32 * length, 0, z + 0.7 * radius), (0.14 * length, 0.6 * radius, 0.5 * radius), 0.2)
    )
    span, chord = r.uniform(0.9, 1.8), r.uniform(0.45, 0.9)
    taper, sweep, x_wing = r.uniform(0.25, 0.8), r.uniform(-5, 45), r.uniform(0.0, 0.22) * length
    z_wing = z + r.choice([-0.6, 0.0, 0.6]) * radius
    dihedral = r.uniform(-6, 10)
    for side in (1, -1):
        parts.append(
            _wing(x_wing + chord / 2, chord, taper * chord, span, sweep, z_wing, dihedral, 0.08, side, tone)
        )
        parts.append(
            _wing(-0.36 * length, 0.35 * chord, 0.2 * chord, 0.35 * span, sweep, z, 0, 0.05, side, tone)
        )
    parts.append(
        _wing(
            -0.33 * length,
            0.5 * chord,
            0.25 * chord,
            r.uniform(0.35, 0.75),
            r.uniform(20, 50),
            z + 0.5 * radius,
            0,
            0.06,
            0,
            tone,
        )
    )
    engines = STYLE[instance] % 3  # none, one pair, two pairs of pods under the wings
    for k in range(engines):
        y = span * (0.35 + 0.3 * k)
        x = x_wing - y * tan_deg(sweep) + 0.15
        for side in (1, -1):
            parts.append(ellipsoid((x, side * y, z_wing - 0.12), (0.25, 0.08, 0.08), 0.3))
    return merge(parts)


def _wheels(xs: list[float], half_width: float, radius: float) -> list[Mesh]:
    return [
        tube(
            (x, side * half_width, radius),
            (x, side * (half_width + 0.14), radius),
            radius,
            radius,
            0.15,
            n=12,
        )
        for x in xs
        for side in (1, -1)
    ]


def _cargo(kind: int, back: float, end: float, floor: float, half_w: float, height: float, tone: float):
    """The load-carrying body from x = back to x = end: box van, tanker, flatbed with a load, or tipper."""
    cargo_len = end - back
    if kind == 0:  # box van: taller than the cab or not
        centre = (back + cargo_len / 2, 0, floor + height / 2)
        return [box(centre, (cargo_len, 2 * half_w * 1.05, height), 0.85 - tone / 3)]
    if kind == 1:
        tank_r = min(half_w, height / 2)
        return [tube((back + 0.05, 0, floor + tank_r), (end, 0, floor + tank_r), tank_r, tank_r, tone, n=14)]
    if kind == 2:
        bed = box((back + cargo_len / 2, 0, floor + 0.05), (cargo_len, 2 * half_w, 0.1), tone)
        load = box((back + cargo_len * 0.4, 0, floor + 0.3), (cargo_len * 0.5, 1.5 * half_w, 0.4), 0.35)
        return [bed, load]
    return [tapered_box(back, end, floor, floor + 0.55 * height, half_w, tone, (-0.25, 0.0), 1.0)]


def truck(instance: int) -> Mesh:
    """Cab at the front (cab-over or with a hood), a cargo body at the back: box, tank, flatbed or tipper."""
    r = instance_rng(3, instance)
    length, half_w, wheel = r.uniform(2.6, 3.6), r.uniform(0.42, 0.55), r.uniform(0.2, 0.3)
    tone, floor = r.uniform(0.45, 0.85), wheel * 1.6
    front, back, gap = length / 2, -length / 2, 0.08
    hood = r.uniform(0.3, 0.7) if r.uniform() < 0.6 else 0.0
    cab_len, cab_top = r.uniform(0.55, 0.85), floor + r.uniform(0.7, 1.1)
    cab_back = front - hood - cab_len
    screen = (0.0, r.uniform(0.1, 0.3))
    parts = [
        box((0, 0, floor - 0.12), (length, 2 * half_w * 0.8, 0.16), 0.25),
        tapered_box(cab_back, front - hood, floor - 0.1, cab_top, half_w, tone, screen, 0.95),
    ]
    if hood:
        bonnet = floor + 0.45 * (cab_top - floor)
        parts.append(
            tapered_box(front - hood - 0.05, front, floor - 0.1, bonnet, 0.8 * half_w, tone, (0.0, 0.08), 0.9)
        )
    parts += _cargo(STYLE[instance] % 4, back, cab_back - gap, floor, half_w, r.uniform(0.7, 1.3), tone)
    axles = [front - hood - 0.35 * cab_len] + [back + 0.35 + 0.55 * k for k in range(int(r.integers(1, 3)))]
    return merge(parts + _wheels(axles, half_w * 0.85, wheel))


# car style: (hood, boot, cabin height, windscreen slope, rear slope) as fractions of the length / metres
CAR_STYLES = (
    ((0.28, 0.34), (0.2, 0.26), (0.3, 0.38), (0.2, 0.3), (0.2, 0.3)),  # saloon: a boot behind the cabin
    ((0.26, 0.32), (0.0, 0.02), (0.34, 0.42), (0.2, 0.3), (0.02, 0.08)),  # hatchback: a steep rear
    ((0.22, 0.28), (0.0, 0.0), (0.34, 0.42), (0.12, 0.2), (0.0, 0.03)),  # pickup: short cabin, open bed
    ((0.08, 0.14), (0.0, 0.02), (0.5, 0.62), (0.3, 0.45), (0.0, 0.05)),  # van: one tall box
    ((0.38, 0.44), (0.04, 0.08), (0.22, 0.28), (0.35, 0.45), (0.35, 0.5)),  # coupé: long hood, fastback
)


def car(instance: int) -> Mesh:
    """Body with a sloped nose, a glass cabin between hood and boot, four wheels: saloon, hatchback, pickup,
    van or coupé, with proportions drawn around each style."""
    r, style = instance_rng(4, instance), STYLE[instance]
    hood, boot, cabin_h, windscreen, rear = (r.uniform(lo, hi) for lo, hi in CAR_STYLES[style])
    length, half_w, wheel = r.uniform(2.2, 2.8), r.uniform(0.42, 0.5), r.uniform(0.17, 0.22)
    tone, bottom = r.uniform(0.5, 0.9), wheel * r.uniform(0.6, 0.9)
    top = bottom + (0.26 if style == 4 else r.uniform(0.32, 0.42))
    front, back = length / 2, -length / 2
    cabin_back = back + (0.45 * length if style == 2 else boot * length)
    nose = r.uniform(0.15, 0.3) if style != 3 else 0.05
    parts = [tapered_box(back, front, bottom, top, half_w, tone, (0.03, nose), 1.0)]
    parts.append(
        tapered_box(
            cabin_back,
            front - hood * length,
            top - 0.01,
            top + cabin_h,
            0.95 * half_w,
            0.22,
            (rear, windscreen),
            0.85,
        )
    )
    roof = (cabin_back + rear, front - hood * length - windscreen)
    parts.append(
        box(((roof[0] + roof[1]) / 2, 0, top + cabin_h), (roof[1] - roof[0], 1.6 * half_w, 0.04), tone)
    )
    if style == 2:  # the pickup's open bed: two sides and a tailgate
        for y in (half_w - 0.03, -half_w + 0.03):
            parts.append(box(((back + cabin_back) / 2, y, top + 0.1), (cabin_back - back, 0.06, 0.2), tone))
        parts.append(box((back + 0.03, 0, top + 0.1), (0.06, 2 * half_w, 0.2), tone))
    if style in (1, 4) or r.uniform() < 0.3:  # a rear spoiler or roof box: one more back-only cue
        parts.append(box((back + 0.12, 0, top + 0.08), (0.14, 1.8 * half_w, 0.05), 0.2))
    return merge(parts + _wheels([front - 0.2 * length, back + 0.2 * length], half_w * 0.82, wheel))
