"""One attack evaluation end to end: clean accuracy, the sweep, check cells, worst case, CSVs.

Outputs (in `out_dir`): `per_example.csv` (one row per example × attack × ε × target), `summary.csv`
(accuracy for untargeted rows, success rate for targeted ones, with every setting, library version,
commit, device and dataset identity), `checks.csv` (see `robustcaps.attacks.checks`), `attack_config.json`,
and `cells/` (the resumable per-cell results).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd
import torch

from robustcaps.attacks.adapters import NUM_CLASSES, AttackConfig, attack_loss, base_attack
from robustcaps.attacks.autoattack import ENSEMBLES, ensemble_budget, member_settings
from robustcaps.attacks.checks import CHECK_COLUMNS, check_cells, run_checks
from robustcaps.attacks.memory import fitting_batch
from robustcaps.attacks.sweep import (
    EXAMPLE_COLUMNS,
    SELF,
    EvalSet,
    Victim,
    balanced_examples,
    run_cells,
    sweep_cells,
)
from robustcaps.attacks.worst import worst_case, worst_of
from robustcaps.data import transforms
from robustcaps.data.norb import content_identity
from robustcaps.errors import RobustcapsError
from robustcaps.io import atomic_write_json, atomic_write_text
from robustcaps.models.common import full_float32_convolutions
from robustcaps.provenance import environment_metadata
from robustcaps.training.checkpoints import load_run
from robustcaps.training.config import load_split

CELL_COLUMNS = ["attack", "targeted", "eps_pixel", "eps_std", "source", "role", "steps", "restarts"]


@dataclass(frozen=True)
class AttackResults:
    per_example: pd.DataFrame
    summary: pd.DataFrame
    checks: pd.DataFrame
    out_dir: Path

    @property
    def failed_checks(self) -> list[str]:
        return [f"{r.check}: {r.detail}" for r in self.checks.itertuples() if not r.passed]


def clean_accuracy_rows(victim: Victim, eval_set: EvalSet, config: AttackConfig) -> pd.DataFrame:
    """Predictions on the unperturbed images, as rows of the pseudo-attack `clean` at ε = 0."""
    device = torch.device(config.device)
    with torch.no_grad():
        batches = eval_set.batches(config.batch_size, device)
        predictions = torch.cat([victim.model(images).argmax(1).cpu() for _, images, _ in batches])
    table = pd.DataFrame(
        {
            "example": eval_set.index.numpy(),
            "label": eval_set.labels.numpy(),
            "attack": "clean",
            "targeted": False,
            "target": -1,
            "eps_pixel": 0.0,
            "eps_std": 0.0,
            "source": SELF,
            "role": "sweep",
            "steps": 0,
            "restarts": 0,
            "prediction": predictions.numpy(),
        }
    )
    return table[list(EXAMPLE_COLUMNS)]


def summarise(
    per_example: pd.DataFrame, config: AttackConfig, victim: Victim, eval_set: EvalSet
) -> pd.DataFrame:
    """One row per cell: accuracy (untargeted) or success rate averaged over targets (targeted); a `worst`
    row's `worst_of` names the attacks that entered it."""
    rows, entered = [], worst_of(per_example)
    for key, group in per_example.groupby(CELL_COLUMNS, sort=False):
        row = dict(zip(CELL_COLUMNS, key, strict=True))
        hit = group["prediction"] == (group["target"] if row["targeted"] else group["label"])
        row["metric"] = "success_rate" if row["targeted"] else "accuracy"
        row["value"] = float(hit.mean())
        row["n"] = int(group["example"].nunique())
        row["loss"] = attack_loss(row["attack"], config) if row["attack"] not in ("clean", "worst") else ""
        row["worst_of"] = entered.get(float(row["eps_pixel"]), "") if row["attack"] == "worst" else ""
        rows.append(row)
    summary = pd.DataFrame(rows)
    environment = environment_metadata(config.device)
    summary.insert(0, "model", victim.name)
    summary.insert(1, "run_dir", victim.run_dir)
    summary.insert(2, "checkpoint", victim.checkpoint)
    summary.insert(3, "checkpoint_step", victim.checkpoint_step)
    summary["units"] = config.units
    summary["crafting"] = config.crafting
    summary["seed"] = config.seed
    summary["sigma_mean"] = eval_set.sigma_mean
    summary["torchattacks_version"] = environment["versions"]["torchattacks"]
    summary["torch_version"] = environment["versions"]["torch"]
    summary["git_commit"] = environment["git_commit"]
    summary["device"] = environment["device_name"]
    summary["dataset"] = eval_set.identity
    return summary


def attack_model(
    victim: Victim, eval_set: EvalSet, config: AttackConfig, out_dir: str | Path, progress: bool = True
) -> AttackResults:
    """Run (or resume) the sweep and the check cells, then write the three CSVs atomically."""
    capsules = any(
        getattr(m, "family", "cnn") != "cnn" for m in (victim.model, victim.source) if m is not None
    )
    with full_float32_convolutions(capsules):  # input gradients through routing, as in training
        return _attack_model(victim, eval_set, config, Path(out_dir), progress)


def _attack_model(
    victim: Victim, eval_set: EvalSet, config: AttackConfig, out_dir: Path, progress: bool
) -> AttackResults:
    victim.model.eval()
    if victim.source is not None:
        victim.source.eval()
    victim = victim.crafting(config.crafting)
    if config.fit_batch:
        fits = fitting_batch(victim.model, eval_set.images, config.batch_size, config.device, victim.crafter)
        config = replace(config, batch_size=fits, fit_batch=False)
    atomic_write_json(
        out_dir / "attack_config.json",
        {
            **asdict(config),
            "victim": victim.name,
            "run_dir": victim.run_dir,
            "checkpoint": victim.checkpoint,
            "checkpoint_step": victim.checkpoint_step,
            "source": victim.source_name,
            "source_checkpoint": victim.source_checkpoint,
            "source_checkpoint_step": victim.source_checkpoint_step,
            "ensembles": ensemble_settings(config),
        },
    )
    sigma_mean = eval_set.sigma_mean
    rows = [clean_accuracy_rows(victim, eval_set, config)]
    rows.append(
        run_cells(sweep_cells(config, victim, sigma_mean), config, victim, eval_set, out_dir, progress)
    )
    checks = pd.DataFrame(columns=list(CHECK_COLUMNS))
    if config.checks:
        partial = summarise(pd.concat(rows, ignore_index=True), config, victim, eval_set)
        extra = list(dict.fromkeys(check_cells(config, victim, partial, sigma_mean)))
        rows.append(run_cells(extra, config, victim, eval_set, out_dir, progress))
    per_example = pd.concat(rows, ignore_index=True)
    per_example = pd.concat([per_example, worst_case(per_example)], ignore_index=True)
    summary = summarise(per_example, config, victim, eval_set)
    if config.checks:
        checks = run_checks(summary, victim, eval_set, config, per_example)
    atomic_write_text(out_dir / "per_example.csv", per_example.to_csv(index=False))
    atomic_write_text(out_dir / "summary.csv", summary.to_csv(index=False))
    atomic_write_text(out_dir / "checks.csv", checks.to_csv(index=False))
    return AttackResults(per_example, summary, checks, out_dir)


def ensemble_settings(config: AttackConfig) -> dict[str, dict]:
    """Each AutoAttack variant of the sweep: its (steps, restarts) and every member's settings."""
    settings = {}
    for name in dict.fromkeys(base_attack(a) for a in config.attacks):
        if name in ENSEMBLES:
            steps, restarts = ensemble_budget(name, config.steps)
            settings[name] = {
                "steps": steps,
                "restarts": restarts,
                "members": member_settings(steps, restarts, NUM_CLASSES),
            }
    return settings


def identity_string(identity: dict) -> str:
    return json.dumps(identity, sort_keys=True, default=str)


def load_eval_set(loaded, config: AttackConfig) -> EvalSet:
    """A seeded, class-stratified subset of `config.part` of the run's own split, centre-cropped to [0, 1]."""
    data = load_split(loaded.config)
    part = getattr(data, config.part)
    if len(part) == 0:
        raise RobustcapsError(
            f"--part {config.part}: empty for a run trained on split {loaded.config.split!r}; "
            "novel/familiar need an azimuth or elevation run"
        )
    index = balanced_examples(part.labels, config.n, config.seed)
    images = transforms.test_batch(part.images[index]).float()
    return EvalSet(images, part.labels[index], index, identity_string(content_identity(data.identity)))


def attack_run_dir(
    run_dir: str | Path,
    config: AttackConfig,
    out_dir: str | Path | None = None,
    source: str | Path | None = None,
    which: str = "best",
    progress: bool = True,
    data: str | None = None,
    source_which: str = "best",
) -> AttackResults:
    """`robustcaps attack`: load the run (and the transfer source), pick the examples, sweep, check.
    `which` / `source_which`: the checkpoint of each run (best, last or a familiar-stepN snapshot).
    `data`: where the run's dataset is here, when not where it was trained (training.checkpoints.load_run)."""
    loaded = load_run(run_dir, which=which, device=config.device, data=data)
    crafted_on = None
    if source is not None:
        crafted_on = load_run(source, which=source_which, device=config.device, option="--source-which")
    victim = Victim.of_runs(loaded, loaded.config.model, crafted_on, str(source) if source else "")
    eval_set = load_eval_set(loaded, config)
    if victim.source is not None:
        _check_source_fits(victim, eval_set, config, source)
    out_dir = Path(out_dir) if out_dir is not None else Path(run_dir) / "attacks"
    return attack_model(victim, eval_set, config, out_dir, progress=progress)


def _check_source_fits(victim: Victim, eval_set: EvalSet, config: AttackConfig, source) -> None:
    try:
        with torch.no_grad():
            victim.source(eval_set.images[:1].to(config.device))
    except RuntimeError as error:
        raise RobustcapsError(
            f"--source {source}: its model cannot read the attacked run's images "
            f"{tuple(eval_set.images.shape[1:])} ({str(error).splitlines()[0]}); "
            "train it with the same --stereo"
        ) from None
