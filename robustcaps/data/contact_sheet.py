"""A contact sheet of a smallNORB-format directory (rendered or real): instance x category x a few azimuths.

Regenerate the committed one with `robustcaps data render --size tiny --out DIR` then
`robustcaps data contact-sheet DIR --out results/dataset/contact_sheet.png`.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI or the GPU machine
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from robustcaps.data.norb import CLASSES, PARTS, dataset_identity, load_arrays  # noqa: E402
from robustcaps.data.standin.render import INSTANCES  # noqa: E402
from robustcaps.io import atomic_write_bytes  # noqa: E402

WANTED_AZIMUTHS = (0, 8, 18, 26)  # info values: 0°, 80°, 180° and 260°, front, side, back, other side


def _nearest(available: list[int], wanted: tuple[int, ...]) -> list[int]:
    return [min(available, key=lambda a, w=w: (abs(a - w), a)) for w in wanted]


def _strips(root: str | os.PathLike) -> tuple[dict[tuple[int, int], np.ndarray], list[int], int, int]:
    """(category, instance) -> the camera-0 images at a few azimuths side by side, (96, k*96) uint8."""
    strips, chosen = {}, None
    for part in PARTS:
        dat, cat, info = load_arrays(root, part)
        if chosen is None:
            elevations = sorted(set(info[:, 1].tolist()))
            elevation, lighting = elevations[len(elevations) // 2], int(info[:, 3].min())
            chosen = _nearest(sorted(set(info[:, 2].tolist())), WANTED_AZIMUTHS)
        row = {(int(c), *map(int, i)): n for n, (c, i) in enumerate(zip(cat, info, strict=True))}
        for c in range(len(CLASSES)):
            for instance in sorted(set(info[cat == c, 0].tolist())):
                keys = [(c, instance, elevation, a, lighting) for a in chosen]
                if all(k in row for k in keys):
                    strips[c, instance] = np.concatenate([dat[row[k], 0] for k in keys], axis=1)
    return strips, chosen, elevation, lighting


def write_contact_sheet(root: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Draw every (category, instance) found under `root` at a few azimuths; write a PNG atomically."""
    strips, azimuths, elevation, lighting = _strips(root)
    instances = sorted({i for _, i in strips})
    fig, axes = plt.subplots(len(instances), len(CLASSES), figsize=(4.2 * len(CLASSES), 1.1 * len(instances)))
    axes = np.atleast_2d(axes)
    for r, instance in enumerate(instances):
        for c, name in enumerate(CLASSES):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if (c, instance) in strips:
                ax.imshow(strips[c, instance], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            if r == 0:
                ax.set_title(f"{c} {name}", fontsize=10)
            if c == 0:
                split = "train" if instance in INSTANCES["train"] else "test"
                ax.set_ylabel(f"inst {instance}\n({split})", fontsize=8)
    degrees = ", ".join(f"{10 * a}°" for a in azimuths)
    identity = dataset_identity(root)
    if identity["kind"] == "rendered":
        name = f"rendered stand-in (generator {identity['generator_version']}, seed {identity['seed']})"
    else:
        name = "smallNORB" + (" (official MD5s)" if identity["md5_verified"] else "")
    fig.suptitle(
        f"{name}: camera 0, elevation {30 + 5 * elevation}°, lighting {lighting}; "
        f"azimuths {degrees} left to right",
        fontsize=10,
    )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(out_path, buffer.getvalue())
