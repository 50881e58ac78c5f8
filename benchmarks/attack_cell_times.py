"""Seconds per attack cell of a finished sweep, read back from when each cell's CSV was written.

    python benchmarks/attack_cell_times.py runs/reproduce-converged/attacks/cnn runs/.../capsnet-small ...

A sweep (robustcaps.attacks.sweep) runs its cells one after another and writes each cell's per-example CSV
atomically when it finishes, so the gap between consecutive files is that cell's wall time (the first
cell of a sweep has no predecessor and is left out). Cells that were resumed after an interruption would
show the pause as well: run this on sweeps that ran through. Prints the seconds per attack, source and
role, summed over ε (and over targets for targeted cells, which share a file), and writes
benchmarks/results/attack-cell-times-<name>.csv with --name.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robustcaps.io import atomic_write_text  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def cell_times(sweep: Path) -> pd.DataFrame:
    """One row per cell file after the first: attack, targeting, role, ε_std, steps, restarts, seconds."""
    files = sorted((sweep / "cells").glob("*.csv"), key=lambda p: p.stat().st_mtime)
    rows = []
    for before, cell in zip(files, files[1:], strict=False):
        frame = pd.read_csv(cell)
        first = frame.iloc[0]
        rows.append(
            {
                "victim": sweep.name,
                "attack": first["attack"],
                "targeted": bool(first["targeted"]),
                "source": first["source"],  # "self", or the model a transfer attack was crafted on
                "role": first["role"],
                "eps_std": round(float(first["eps_std"]), 4),
                "steps": int(first["steps"]),
                "restarts": int(first["restarts"]),
                "n": frame["example"].nunique(),
                "seconds": round(cell.stat().st_mtime - before.stat().st_mtime, 1),
            }
        )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", type=Path, help="attack output folders (holding cells/)")
    parser.add_argument("--name", help="write benchmarks/results/attack-cell-times-<name>.csv")
    args = parser.parse_args()
    frame = pd.concat([cell_times(sweep) for sweep in args.sweeps], ignore_index=True)
    table = frame.pivot_table(
        index=["attack", "targeted", "source", "role", "steps", "restarts"],
        columns="victim",
        values="seconds",
        aggfunc="sum",
    )
    print(table.round(0).to_string())
    if args.name:
        atomic_write_text(RESULTS / f"attack-cell-times-{args.name}.csv", frame.to_csv(index=False))


if __name__ == "__main__":
    main()
