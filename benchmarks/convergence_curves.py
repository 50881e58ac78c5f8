"""Learning curves of a set of training runs: validation error against epochs and against wall seconds.

    python benchmarks/convergence_curves.py RUNS_DIR/* --name study-cpu [--test]

Writes benchmarks/results/convergence-<name>.csv (every validated epoch of every run, with the run's
settings that differ between the runs, its device and commit) and convergence-<name>.png, and prints a
Markdown summary: best val error and its epoch, final val error, and with --test the test error of the
val-selected checkpoint (best.pt; test data chooses nothing).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robustcaps.io import atomic_write_text, read_json  # noqa: E402
from robustcaps.report.tables import markdown_table  # noqa: E402
from robustcaps.training import checkpoints  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def settings(run_dir: Path) -> dict:
    config = read_json(run_dir / checkpoints.CONFIG_FILE, "run config")
    flat = {k: v for k, v in config.items() if k != "model_overrides"}
    return flat | {f"model.{k}": v for k, v in config["model_overrides"].items()}


def differing(all_settings: dict[str, dict]) -> dict[str, str]:
    """Each run's settings that are not the same in every run, as one short string."""
    keys = sorted({k for s in all_settings.values() for k in s})
    varying = [k for k in keys if len({json.dumps(s.get(k)) for s in all_settings.values()}) > 1]
    return {
        name: " ".join(f"{k}={json.dumps(s.get(k))}" for k in varying if k in s)
        for name, s in all_settings.items()
    }


def test_error(run_dir: Path) -> float:
    from robustcaps.training import load_split
    from robustcaps.training.evaluation import evaluate

    loaded = checkpoints.load_run(run_dir, "best", "cpu")
    return evaluate(loaded.model, load_split(loaded.config).test, "cpu")["error"]


def plot(curves: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for axis, x in zip(axes, ("epoch", "seconds"), strict=True):
        sns.lineplot(curves, x=x, y="val_error", hue="run", marker="o", ax=axis, legend=axis is axes[1])
        axis.set_xlabel("epoch" if x == "epoch" else "wall-clock seconds (training, compilation, validation)")
        axis.set_ylabel("validation error (held-out instances)")
    axes[1].legend(fontsize=7)
    figure.tight_layout()
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary, dpi=110)
    plt.close(figure)
    temporary.replace(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (robustcaps train --out)")
    parser.add_argument("--name", required=True, help="names the output files")
    parser.add_argument("--test", action="store_true", help="also the test error of each run's best.pt")
    args = parser.parse_args(argv)
    for run_dir in args.runs:
        if not (run_dir / checkpoints.METRICS_FILE).is_file():
            parser.error(f"{run_dir}: not a training run (no {checkpoints.METRICS_FILE})")
    run_dirs = args.runs
    changes = differing({r.name: settings(r) for r in run_dirs})
    curves, summary = [], []
    for run_dir in run_dirs:
        metadata = read_json(run_dir / checkpoints.METADATA_FILE, "run metadata")
        metrics = pd.read_csv(run_dir / checkpoints.METRICS_FILE).dropna(subset=["val_error"])
        curves.append(
            metrics.assign(
                run=run_dir.name, settings=changes[run_dir.name], device_name=metadata.get("device_name"),
                torch_threads=metadata.get("torch_threads"), commit=metadata.get("git_commit"),
            )
        )  # fmt: skip
        best = metrics.loc[metrics["val_error"].idxmin()]
        row = {
            "run": run_dir.name,
            "best val error (epoch)": f"{best['val_error']:.3f} ({int(best['epoch'])})",
            "final val error": f"{metrics['val_error'].iloc[-1]:.3f}",
            "final train error": f"{metrics['train_error'].iloc[-1]:.3f}",
            "epochs": int(metrics["epoch"].iloc[-1]),
            "minutes": f"{metrics['seconds'].iloc[-1] / 60:.1f}",
        }
        if args.test:
            row["test error (best.pt)"] = f"{test_error(run_dir):.3f}"
        summary.append(row)
    out = RESULTS / f"convergence-{args.name}.csv"
    atomic_write_text(out, pd.concat(curves).to_csv(index=False))
    plot(pd.concat(curves), out.with_suffix(".png"))
    print(markdown_table(pd.DataFrame(summary)))
    print(f"\nwrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
