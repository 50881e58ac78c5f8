"""How long until a capsule network is this good? Images and wall-clock seconds until validation error first
reaches each target, for each capsule family and the CNN trained on the same data, and a plot of the curves.

    python benchmarks/time_to_accuracy.py                        # trains every family on this device
    python benchmarks/time_to_accuracy.py --run capsnet=RUN_DIR --run cnn=RUN_DIR   # reads finished runs
    python benchmarks/time_to_accuracy.py --families capsnet,cnn  # the EM capsules and the CNN only

On a CPU it trains capsnet-small (compiled, fused routing, no recompute), dynamic-capsnet-small and
sr-capsnet-small (compiled) and cnn-small on the small rendered stand-in; on a GPU the full sizes (capsnet
with Triton routing under CUDA graphs) on the full one. All validate on held-out training instances after
every epoch; seconds are the run's own (training, compilation and validation; not data loading). Writes
benchmarks/results/time_to_accuracy-<device>.csv and .png; every row names the device, commit, torch
version and the run's config.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.convergence_curves import test_error  # noqa: E402
from robustcaps.io import atomic_write_text, read_json  # noqa: E402
from robustcaps.provenance import device_description, git_commit  # noqa: E402
from robustcaps.training import TrainConfig, checkpoints, fit  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TARGETS = (0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05)
# The recipe of docs/LEARNING.md's convergence study, per device kind: what a user would run.
# Every family anneals the same way and stops at a validation plateau; 5 validations, since the val error of
# 1,080 images moves by a few points from one epoch to the next.
SCHEDULE = dict(lr_schedule="cosine", lr_min_factor=0.05, patience=5)
CAPSULE_OPTIONS = {"calibrate": "beta_a", "iterations": 2, "estep_temperature": 0.25}
SMALL = dict(data_size="small", batch_size=32, epochs=16, **SCHEDULE)
FULL = dict(data_size="full", batch_size=64, epochs=30, **SCHEDULE)
RECIPES = {
    "cpu": {
        "capsnet": dict(model="capsnet-small", model_overrides=CAPSULE_OPTIONS, compile=True, routing="fused",
                        recompute="none", **SMALL),
        "cnn": dict(model="cnn-small", **SMALL),
        # the other families have one routing path: compiled as they are (what --speed auto picks here)
        "dynamic": dict(model="dynamic-capsnet-small", compile=True, **SMALL),
        "self-routing": dict(model="sr-capsnet-small", compile=True, **SMALL),
    },
    "cuda": {
        "capsnet": dict(model="capsnet", model_overrides=CAPSULE_OPTIONS, compile=True,
                        compile_mode="reduce-overhead", routing="triton", recompute="none", **FULL),
        "cnn": dict(model="cnn", **FULL),
        "dynamic": dict(model="dynamic-capsnet", compile=True, **FULL),
        "self-routing": dict(model="sr-capsnet", compile=True, **FULL),
    },
}  # fmt: skip


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-").replace("--", "-")


def time_to_targets(metrics: pd.DataFrame, batch_size: int, targets=TARGETS) -> list[dict]:
    """For each target: the first validated epoch whose val error is at or below it (or none)."""
    validated = metrics.dropna(subset=["val_error"])
    rows = []
    for target in targets:
        hit = validated[validated["val_error"] <= target]
        first = hit.iloc[0] if len(hit) else None
        rows.append(
            {
                "target_val_error": target,
                "reached": first is not None,
                "epoch": int(first["epoch"]) if first is not None else math.nan,
                "step": int(first["step"]) if first is not None else math.nan,
                "images": int(first["step"]) * batch_size if first is not None else math.nan,
                "seconds": float(first["seconds"]) if first is not None else math.nan,
                "val_error_then": float(first["val_error"]) if first is not None else math.nan,
            }
        )
    return rows


def dataset_name(identity: dict) -> str:
    if identity.get("kind") == "rendered":
        return (
            f"rendered stand-in, size {identity.get('options', {}).get('size')}, seed {identity.get('seed')}"
        )
    return f"{identity.get('kind')} (MD5 verified: {identity.get('md5_verified', 'unknown')})"


def family_rows(family: str, run_dir: Path, test: bool) -> tuple[list[dict], pd.DataFrame]:
    config = TrainConfig.from_json(run_dir / checkpoints.CONFIG_FILE)
    metadata = read_json(run_dir / checkpoints.METADATA_FILE, "run metadata")
    metrics = pd.read_csv(run_dir / checkpoints.METRICS_FILE)
    validated = metrics.dropna(subset=["val_error"])
    common = {
        "family": family,
        "model": config.model,
        "best_val_error": float(validated["val_error"].min()),
        "epochs_run": int(metrics["epoch"].max()),
        "run_seconds": float(metrics["seconds"].iloc[-1]),
        # the checkpoint validation chose, on the test part (test data chooses nothing)
        "test_error_best": test_error(run_dir) if test else math.nan,
        "device_name": metadata.get("device_name", ""),
        "torch_threads": metadata.get("torch_threads", ""),
        "torch": metadata.get("versions", {}).get("torch", ""),
        "commit": metadata.get("git_commit", ""),
        "dataset": dataset_name(metadata["dataset"]),
        "config": json.dumps(config.to_dict(), sort_keys=True),
    }
    curve = validated.assign(family=family, images=validated["step"] * config.batch_size)
    return [common | row for row in time_to_targets(metrics, config.batch_size)], curve


def plot(curves: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for axis, x, label in (
        (axes[0], "seconds", "wall-clock seconds"),
        (axes[1], "images", "training images"),
    ):
        sns.lineplot(curves, x=x, y="val_error", hue="family", marker="o", ax=axis)
        axis.set_xlabel(label)
        axis.set_ylabel("validation error (held-out instances)")
        axis.set_ylim(0, None)
    axes[0].set_xscale("log")  # the CNN's seconds and the capsules' minutes on one axis
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary, dpi=120)
    plt.close(figure)
    temporary.replace(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--runs", type=Path, default=Path("runs/time-to-accuracy"), help="where to train")
    parser.add_argument("--run", action="append", default=[], metavar="FAMILY=DIR",
                        help="use this finished run for a family instead of training one")  # fmt: skip
    parser.add_argument(
        "--families", help="comma-separated families to run [all: capsnet, cnn, dynamic, self-routing]"
    )
    parser.add_argument("--test", action="store_true", help="also the test error of each run's best.pt")
    parser.add_argument(
        "--out", type=Path, help="CSV path [benchmarks/results/time_to_accuracy-<device>.csv]"
    )
    args = parser.parse_args(argv)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    given = dict(item.split("=", 1) for item in args.run if "=" in item)
    if len(given) != len(args.run) or not set(given) <= set(RECIPES[device]):
        families = ", ".join(RECIPES[device])
        parser.error(f"--run {' '.join(args.run)}: give FAMILY=DIR with FAMILY one of {families}")
    families = args.families.split(",") if args.families else list(RECIPES[device])
    if not set(families) <= set(RECIPES[device]) or not set(given) <= set(families):
        parser.error(
            f"--families {args.families}: choose from {', '.join(RECIPES[device])} (and every --run's)"
        )
    rows, curves = [], []
    for family in families:
        recipe = RECIPES[device][family]
        run_dir = Path(given[family]) if family in given else args.runs / f"{family}-{device}"
        if family not in given:
            fit(TrainConfig(**recipe, device=device), run_dir, resume=True)
        family_row, curve = family_rows(family, run_dir, args.test)
        rows += family_row
        curves.append(curve)
    name = rows[0]["device_name"] or device_description(device)
    out = args.out or RESULTS / f"time_to_accuracy-{slug(name)}.csv"
    table = pd.DataFrame(rows)
    atomic_write_text(out, table.to_csv(index=False))
    plot(
        pd.concat(curves), out.with_suffix(".png"), f"time to accuracy on {name} (commit {git_commit()[:8]})"
    )
    shown = table.pivot_table(index="target_val_error", columns="family", values=["seconds", "images"])
    print(shown.sort_index(ascending=False).to_string(float_format=lambda v: f"{v:,.0f}"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
