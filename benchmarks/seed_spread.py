"""How much of the converged headline is the seed? The converged preset's EM capsule network and CNN trained
again with other seeds, under the preset's own protocol: clean test error (full split, val-chosen
checkpoint, centre crop) and novel-viewpoint error at matched familiar error (HSF18 Table 2, both splits).

    python benchmarks/seed_spread.py --seeds 0,1,2          # seed 0 reuses the preset's own runs

Runs go to runs/reproduce-converged (named by their config, so seed 0 is the run `reproduce` trained and
a killed study resumes); writes benchmarks/results/seed-spread-<data>-standin.csv (one row per seed, model
and measurement) and .md (mean and spread per model), atomically.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robustcaps.io import atomic_write_text  # noqa: E402
from robustcaps.provenance import device_description, git_commit  # noqa: E402
from robustcaps.report.tables import markdown_table  # noqa: E402
from robustcaps.study.presets import get_preset  # noqa: E402
from robustcaps.study.viewpoint import (  # noqa: E402
    VIEWPOINT_SPLITS,
    evaluate_run,
    matched_runs,
    resolve_data_root,
    run_dir,
    split_rows,
    train_config,
    train_or_resume,
)


def seed_rows(seed: int, root: Path, runs: Path, device: str) -> list[dict]:
    """One seed of the preset's EM pair: clean test error of both, then each viewpoint split's matched rows
    (the capsules' own row, and the CNN row it was compared with: the reverse match where that is closer)."""
    preset = get_preset("converged").replace_runs(seed=seed).replace(more_capsules=())
    rows = []
    for model in preset.models:
        directory = run_dir(runs, preset, model, "full")
        train_or_resume(train_config(preset, model, "full", root, device), directory)
        trained = evaluate_run(directory, "best", ("test",), device)
        rows.append(dict(seed=seed, model=model, measure="clean test error", value=trained.errors["test"]))
    for split in VIEWPOINT_SPLITS:
        table = split_rows(split, *matched_runs(preset, split, root, runs, device))
        for row in table.itertuples():
            reverse = " (CNN stopped at the capsules')" if row.protocol == "reverse" else ""
            measure = f"{split}: novel error{reverse}"
            rows.append(dict(seed=seed, model=row.model, measure=measure, value=row.novel_error))
            familiar = f"{split}: familiar error{reverse}"
            rows.append(dict(seed=seed, model=row.model, measure=familiar, value=row.familiar_error))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma list of seeds")
    parser.add_argument("--runs", default="runs/reproduce-converged", type=Path)
    parser.add_argument("--out", default=None, type=Path, help="file stem (default: by the preset's data)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    preset = get_preset("converged")
    root = resolve_data_root(None, preset.data_size)
    out = args.out or Path(f"benchmarks/results/seed-spread-{preset.data_size}-standin")
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        rows += seed_rows(seed, root, args.runs, args.device)
        print(pd.DataFrame(rows).tail(12).to_string(index=False), flush=True)
    frame = pd.DataFrame(rows).assign(commit=git_commit(), device=device_description(args.device))
    atomic_write_text(out.with_suffix(".csv"), frame.to_csv(index=False))
    stats = frame.groupby(["measure", "model"], sort=False)["value"].agg(
        ["mean", "std", "min", "max", "count"]
    )
    shown = (100 * stats[["mean", "std", "min", "max"]]).round(1).assign(seeds=stats["count"]).reset_index()
    text = (
        f"## Seed spread of the converged EM pair, {preset.data_size} stand-in (errors in %)\n\n"
        f"{markdown_table(shown)}\n_Regenerate: python benchmarks/seed_spread.py --seeds {args.seeds}_\n"
    )
    atomic_write_text(out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
