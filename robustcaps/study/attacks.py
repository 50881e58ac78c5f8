"""The attack part of `robustcaps reproduce`: which sweeps run on which trained model.

Per victim (the full-split capsnet and CNN, val-selected checkpoints), two sweeps on the same seeded,
class-stratified test examples:

- `<model>/`: untargeted FGSM, BIM, PGD, APGD-CE, APGD-DLR over the preset's ε (standardised units), with the
  integrity checks; the capsule network also gets the vote attack (BIM and PGD through `vote_logits`,
  Gu et al. 2021) and transfer attacks crafted on the CNN (source), so that masked gradients show up.
- `<model>-targeted/`: targeted FGSM and BIM (HSF18 Fig. 3, success averaged over the 4 wrong classes),
  with the checks that concern it (targeted BIM at ε_pixel = 0.5 must reach its targets; its curves must
  be monotone). Kept apart so the expensive targeted mode is not also run for PGD/APGD.

The full outputs (per-example CSVs, resumable cells) live under the runs directory; summary.csv and
checks.csv are copied into results/attacks/<name>/.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from robustcaps.attacks.run import attack_model, identity_string
from robustcaps.attacks.sweep import EvalSet, Victim, balanced_examples
from robustcaps.data import transforms
from robustcaps.data.norb import content_identity
from robustcaps.io import atomic_write_bytes
from robustcaps.models import has_vote_head
from robustcaps.report.tables import MODELS_DIR
from robustcaps.study.presets import Preset
from robustcaps.training.checkpoints import load_run
from robustcaps.training.config import load_split

TARGETED = ("fgsm", "bim")


def attack_configs(preset: Preset, vote_head: bool, device: str) -> dict[str, object]:
    """{suffix: AttackConfig} for one victim: "" (untargeted + checks, the vote attacks where the model has
    a routing-bypass head) and "-targeted"."""
    common = dataclasses.replace(
        preset.attack, units="std", device=device, part="test", checks=True, fit_batch=True
    )
    attacks = preset.untargeted_attacks + (preset.vote_attacks if vote_head else ())
    return {
        "": dataclasses.replace(common, attacks=attacks, targeted=(False,)),
        "-targeted": dataclasses.replace(common, attacks=TARGETED, targeted=(True,)),
    }


def eval_set_for(loaded, config) -> object:
    """The attacked examples: a seeded, class-stratified subset of the test part, centre-cropped to [0, 1]."""
    data = load_split(loaded.config)
    part = getattr(data, config.part)
    index = balanced_examples(part.labels, config.n, config.seed)
    images = transforms.test_batch(part.images[index]).float()
    return EvalSet(images, part.labels[index], index, identity_string(content_identity(data.identity)))


ATTACK_FILES = ("summary.csv", "checks.csv", "per_example.csv")


def attack_victim(
    run_dir: Path,
    name: str,
    source_dir: Path | None,
    preset: Preset,
    device: str,
    runs_out: Path,
    results_out: Path,
    progress: bool = True,
) -> list[Path]:
    """Run both sweeps on one trained model; returns the CSVs copied into results (per-example results too:
    the report pairs the two models' outcomes on the same examples)."""
    loaded = load_run(run_dir, which="best", device=device)
    source = load_run(source_dir, which="best", device=device) if source_dir is not None else None
    # the results name the run by the exported copy of its best weights, relative to the results folder
    exported = MODELS_DIR / f"{name}-full"
    recorded = str(exported) if (results_out.parent / exported).is_dir() else Path(run_dir).name
    copied = []
    for suffix, config in attack_configs(preset, has_vote_head(loaded.model), device).items():
        crafted_on = source if suffix == "" else None  # transfer cells in the untargeted sweep only
        victim = Victim.of_runs(loaded, name, crafted_on, source.config.model if crafted_on else "")
        victim.run_dir = recorded
        out = runs_out / f"{name}{suffix}"
        attack_model(victim, eval_set_for(loaded, config), config, out, progress=progress)
        for file in ATTACK_FILES:
            copied.append(
                atomic_write_bytes(results_out / f"{name}{suffix}" / file, (out / file).read_bytes())
            )
    return copied
