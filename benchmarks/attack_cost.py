"""Seconds per attack cell per model: what one (attack, ε) of a sweep costs, to plan the presets' budgets.

    python benchmarks/attack_cost.py           # the four CPU models, every attack, 100 examples
    python benchmarks/attack_cost.py --models cnn-small --attacks fgsm,autoattack --n 40

Each model is the committed run in results/families/models (trained by the `families` preset; the data
are its rendered stand-in, remade into the cache if missing), attacked on `--n` test examples at one ε
(`--eps-std`, standardised units; 0.1 is the headline ε) with the batch `robustcaps attack` picks (the
largest that fits, at most 100). Trained models matter: AutoAttack's later members and Square only
attack what is still classified right, and stop on what they break. The load average is read before
and after each cell: on a shared machine the seconds are upper bounds. Prints a table and rewrites
benchmarks/results/attack-cost-<device-slug>.csv after each cell (a machine-named file: `--slug`).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from robustcaps.attacks.adapters import AttackConfig, is_vote_attack
from robustcaps.attacks.memory import fitting_batch
from robustcaps.attacks.run import load_eval_set
from robustcaps.attacks.sweep import Victim, run_cell, sweep_cells
from robustcaps.io import atomic_write_text
from robustcaps.models import has_vote_head
from robustcaps.provenance import git_commit
from robustcaps.training.checkpoints import load_run

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODELS_DIR = ROOT / "results" / "families" / "models"
MODELS = ("cnn-small", "capsnet-small", "dynamic-capsnet-small", "sr-capsnet-small")
ATTACKS = ("fgsm", "bim", "pgd", "apgd-ce", "apgd-dlr", "autoattack", "bim-vote", "pgd-vote")


def load_average() -> str:
    """The 1-minute load average (other jobs on the same cores make every timing an upper bound)."""
    return Path("/proc/loadavg").read_text().split()[0]


def time_cell(attack: str, victim: Victim, eval_set, config: AttackConfig) -> dict:
    """Run one white-box cell at the config's single ε and time it."""
    cell = sweep_cells(replace(config, attacks=(attack,)), victim, eval_set.sigma_mean)[0]
    torch.manual_seed(config.seed)
    before = load_average()
    start = time.perf_counter()
    with tqdm(disable=True) as bar:
        table = run_cell(cell, config, victim, eval_set, bar)
    seconds = time.perf_counter() - start
    return {
        "attack": attack, "steps": cell.steps, "restarts": cell.restarts, "eps_std": cell.eps_std,
        "eps_pixel": round(cell.eps_pixel, 5),
        "accuracy": float((table["prediction"] == table["label"]).mean()),
        "seconds": round(seconds, 2), "seconds_per_example": round(seconds / len(table), 4),
        "loadavg_before": before, "loadavg_after": load_average(),
    }  # fmt: skip


def model_rows(name: str, attacks: tuple[str, ...], args: argparse.Namespace) -> Iterator[dict]:
    """One timed row per attack on the committed `name` run, as each finishes."""
    loaded = load_run(MODELS_DIR / f"{name}-full", which="best")
    config = AttackConfig(attacks=("fgsm",), eps=(args.eps_std,), n=args.n, steps=args.steps, checks=False)
    eval_set = load_eval_set(loaded, config)
    config = replace(
        config, batch_size=fitting_batch(loaded.model, eval_set.images, config.batch_size, "cpu")
    )
    victim = Victim.of_runs(loaded, name)
    with torch.no_grad():
        clean = float((loaded.model(eval_set.images).argmax(1) == eval_set.labels).float().mean())
    for attack in attacks:
        if is_vote_attack(attack) and not has_vote_head(loaded.model):
            continue
        row = {"model": name, "n": args.n, "batch_size": config.batch_size, "clean_accuracy": clean}
        yield {**row, **time_cell(attack, victim, eval_set, config)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--n", type=int, default=100, help="examples per cell")
    parser.add_argument("--steps", type=int, default=10, help="BIM/PGD/APGD iterations (AutoAttack: 100)")
    parser.add_argument("--eps-std", type=float, default=0.1)
    parser.add_argument("--slug", default="cpu-x86-64-x2-vm", help="machine name in the results file")
    args = parser.parse_args(argv)
    path = RESULTS / f"attack-cost-{args.slug}.csv"
    cpu = f"{os.cpu_count()}-core {platform.machine()} VM"
    machine = {"machine": cpu, "threads": torch.get_num_threads(),
               "torch_version": torch.__version__, "git_commit": git_commit()}  # fmt: skip
    rows = []
    for name in args.models.split(","):
        for row in model_rows(name, tuple(args.attacks.split(",")), args):
            rows.append({**row, **machine})
            print(
                " ".join(f"{k}={row[k]}" for k in ("model", "attack", "steps", "seconds", "accuracy")),
                flush=True,
            )
            atomic_write_text(path, pd.DataFrame(rows).to_csv(index=False))
    table = pd.DataFrame(rows).pivot_table(index="attack", columns="model", values="seconds", sort=False)
    print(table.to_string())
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
