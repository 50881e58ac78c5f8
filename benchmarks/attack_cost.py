"""Seconds per attack cell per model: what one (attack, ε) of a sweep costs, to plan the presets' budgets.

    python benchmarks/attack_cost.py           # the four CPU models, every attack, 100 examples
    python benchmarks/attack_cost.py --models cnn-small --attacks fgsm,autoattack --n 40
    python benchmarks/attack_cost.py --attacks autoattack-members --n 20 --square-queries 500

`autoattack-members` times AutoAttack's four members one by one (where its time goes; Square capped).

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

from robustcaps.attacks.adapters import NUM_CLASSES, AttackConfig, AttackTarget, is_vote_attack, predict
from robustcaps.attacks.autoattack import STANDARD_STEPS, build_ensemble
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
MEMBERS = ("apgd-ce", "apgd-t", "fab-t", "square")


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


def time_members(
    victim: Victim, eval_set, config: AttackConfig, eps_pixel: float, queries: int
) -> list[dict]:
    """AutoAttack's members one after another on what the previous left classified right (MultiAttack's
    logic), timed one by one; Square capped at `queries` (its cost is at most linear in them)."""
    target = AttackTarget(victim.model)
    members = build_ensemble(target, eps_pixel, STANDARD_STEPS, 1, NUM_CLASSES, config.seed).attacks
    members[-1].n_queries = queries
    images, labels = eval_set.images, eval_set.labels
    left = predict(victim.model, images) == labels
    rows = []
    for name, member in zip(MEMBERS, members, strict=True):
        attacked, before = int(left.sum()), load_average()
        start = time.perf_counter()
        if attacked:
            index = left.nonzero().flatten()
            still = predict(victim.model, member(images[index], labels[index])) == labels[index]
            left[index[~still]] = False
        seconds = time.perf_counter() - start
        steps = queries if name == "square" else STANDARD_STEPS
        rows.append({
            "attack": f"autoattack:{name}", "steps": steps, "restarts": 1, "eps_std": None,
            "eps_pixel": round(eps_pixel, 5), "accuracy": float(left.float().mean()), "attacked": attacked,
            "seconds": round(seconds, 2), "seconds_per_example": round(seconds / len(labels), 4),
            "loadavg_before": before, "loadavg_after": load_average(),
        })  # fmt: skip
    return rows


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
    row = {"model": name, "n": args.n, "batch_size": config.batch_size, "clean_accuracy": clean}
    for attack in attacks:
        if is_vote_attack(attack) and not has_vote_head(loaded.model):
            continue
        if attack == "autoattack-members":
            eps_pixel = args.eps_std * eval_set.sigma_mean
            for member in time_members(victim, eval_set, config, eps_pixel, args.square_queries):
                yield {**row, **member, "eps_std": args.eps_std}
            continue
        yield {**row, **time_cell(attack, victim, eval_set, config)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--n", type=int, default=100, help="examples per cell")
    parser.add_argument("--steps", type=int, default=10, help="BIM/PGD/APGD iterations (AutoAttack: 100)")
    parser.add_argument("--eps-std", type=float, default=0.1)
    parser.add_argument("--square-queries", type=int, default=5000, help="Square's cap in autoattack-members")
    parser.add_argument("--slug", default="cpu-x86-64-x2-vm", help="machine name in the results file")
    args = parser.parse_args(argv)
    path = RESULTS / f"attack-cost-{args.slug}.csv"
    cpu = f"{os.cpu_count()}-core {platform.machine()} VM"
    machine = {"machine": cpu, "threads": torch.get_num_threads(),
               "torch_version": torch.__version__, "git_commit": git_commit()}  # fmt: skip
    # earlier rows of other (model, attack, n) stay: the benchmark is run in parts on a shared machine
    rows = pd.read_csv(path).to_dict("records") if path.exists() else []
    for name in args.models.split(","):
        for row in model_rows(name, tuple(args.attacks.split(",")), args):
            key = (row["model"], row["attack"], row["n"], row["steps"])
            rows = [r for r in rows if (r["model"], r["attack"], r["n"], r["steps"]) != key]
            rows.append({**row, **machine})
            print(
                " ".join(f"{k}={row[k]}" for k in ("model", "attack", "steps", "seconds", "accuracy")),
                flush=True,
            )
            atomic_write_text(path, pd.DataFrame(rows).to_csv(index=False))
    table = pd.DataFrame(rows).pivot_table(
        index=["attack", "n"], columns="model", values="seconds", sort=False
    )
    print(table.to_string())
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
