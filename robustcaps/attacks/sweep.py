"""ε sweeps: every (attack, ε, targeted, source) cell on one fixed example set, resumable, into CSVs.

A *cell* is one attack at one ε in one mode, crafted on the model itself (white-box), on a `source` model
(transfer), or through the capsule votes (`*-vote`). Each finished cell is written atomically to
`cells/<key>.csv`, where the key hashes every setting that changes its result, so an interrupted sweep
resumes by skipping finished cells and a changed setting never reuses a stale one.

Targeted mode follows HSF18: for every example and every wrong class t ≠ y the attack is run with target
t, and the success rate is the mean over the four targets of each example, then over examples.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustcaps.attacks.adapters import (
    NUM_CLASSES,
    AttackConfig,
    attack_loss,
    base_attack,
    craft,
    crafting_model,
    eps_pixel_and_std,
    is_vote_attack,
    per_image_sigma,
    predict,
    supports_targeted,
)
from robustcaps.attacks.autoattack import ENSEMBLES, ensemble_budget
from robustcaps.data.norb import content_identity
from robustcaps.errors import RobustcapsError
from robustcaps.io import atomic_write_text
from robustcaps.models import has_vote_head
from robustcaps.models.common import in_halves_on_oom

CELLS_DIR = "cells"
SELF = "self"  # the `source` of a white-box cell
EXAMPLE_COLUMNS = (
    "example",
    "label",
    "attack",
    "targeted",
    "target",
    "eps_pixel",
    "eps_std",
    "source",
    "role",
    "steps",
    "restarts",
    "prediction",
)


@dataclass(frozen=True)
class EvalSet:
    """The evaluated examples: images in [0, 1] (N, C, 32, 32), labels (N,), their index in the part."""

    images: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor
    identity: str  # the dataset identity (JSON), written into every summary row

    @property
    def sigma_mean(self) -> float:
        return float(per_image_sigma(self.images).mean())

    def batches(self, batch_size: int, device: str | torch.device) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """(index, images, labels) in order, `batch_size` at a time; images and labels on `device`."""
        for start in range(0, len(self.labels), batch_size):
            end = start + batch_size
            yield self.index[start:end], self.images[start:end].to(device), self.labels[start:end].to(device)


@dataclass(frozen=True)
class Cell:
    attack: str
    eps: float  # in the sweep's units, as the user wrote it
    eps_pixel: float
    eps_std: float
    targeted: bool
    source: str = SELF
    # "sweep"; "check" for cells the integrity checks add; "converge" for the strongest attack rerun at twice
    # its steps and restarts (checks.converge_cell)
    role: str = "sweep"
    steps: int = 20
    restarts: int = 1


@dataclass
class Victim:
    """The attacked model and where it came from; `source` crafts transfer attacks when given."""

    model: nn.Module
    name: str
    run_dir: str = ""
    source: nn.Module | None = None
    source_name: str = ""
    # which of run_dir's checkpoints (and the source's) was loaded, recorded with every summary row;
    # empty for a model built in memory
    checkpoint: str = ""
    checkpoint_step: int = -1
    source_checkpoint: str = ""
    source_checkpoint_step: int = -1
    # what the attacks differentiate in place of `model` / `source` (attack.crafting_model); None: themselves
    crafter: nn.Module | None = None
    source_crafter: nn.Module | None = None

    def crafting(self, crafting: str) -> Victim:
        """This victim with its crafting models built (compiled ones once per sweep, not per cell)."""
        source = crafting_model(self.source, crafting) if self.source is not None else None
        return replace(self, crafter=crafting_model(self.model, crafting), source_crafter=source)

    @classmethod
    def of_runs(cls, loaded, name: str, source=None, source_name: str = "") -> Victim:
        """From `load_run` results: the attacked run and, for transfer cells, the run crafted on."""
        victim = cls(
            loaded.model, name, str(loaded.run_dir), checkpoint=loaded.which, checkpoint_step=loaded.step
        )
        if source is None:
            return victim
        return replace(
            victim,
            source=source.model,
            source_name=source_name or str(source.run_dir),
            source_checkpoint=source.which,
            source_checkpoint_step=source.step,
        )


def balanced_examples(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """A seeded subset of `n` indices with the classes as balanced as the data allow, in sorted order."""
    if n >= len(labels):
        return torch.arange(len(labels))
    generator = torch.Generator().manual_seed(seed)
    per_class = [torch.nonzero(labels == c).flatten() for c in range(NUM_CLASSES)]
    per_class = [idx[torch.randperm(len(idx), generator=generator)] for idx in per_class]
    # Round-robin over classes so that a rare class gives what it has and the rest fill the quota.
    rounds = torch.stack([torch.nn.functional.pad(i, (0, len(labels) - len(i)), value=-1) for i in per_class])
    order = rounds.T.flatten()
    return order[order >= 0][:n].sort().values


def fingerprint(model: nn.Module | None) -> str:
    """SHA-256 of the weights: a retrained or re-selected checkpoint must not reuse old cells."""
    if model is None:
        return ""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cell_key(cell: Cell, config: AttackConfig, models: tuple[str, str], eval_set: EvalSet) -> str:
    """Hash of everything that changes a cell's predictions (not batch size, device, progress bar or the
    crafting path, which change them by rounding only: the same random starts whichever computes them).

    `models` are the fingerprints of the victim and the transfer source. The data enter by content, not
    by where they lie: the key also seeds the cell's random starts (run_cells), so the same sweep on the
    same files elsewhere must draw the same starts.
    """
    settings = {
        "cell": asdict(cell),
        "loss": attack_loss(cell.attack, config),
        "queries": config.queries,
        "seed": config.seed,
        "models": models,
        "data": content_identity(json.loads(eval_set.identity)),
        "examples": hashlib.sha256(eval_set.index.numpy().tobytes()).hexdigest(),
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    mode = "targeted" if cell.targeted else "untargeted"
    return f"{cell.attack}-{mode}-{cell.role}-eps{cell.eps_pixel:.5f}-{digest}"


def sweep_cells(config: AttackConfig, victim: Victim, sigma_mean: float) -> list[Cell]:
    """The cells the user asked for: attacks × ε × modes, white-box and (with a source) transfer."""
    family = getattr(victim.model, "family", "")
    for attack in config.attacks:
        if is_vote_attack(attack) and not has_vote_head(victim.model):
            raise RobustcapsError(
                f"--attack {attack}: the vote attack needs a capsule network with a routing-bypass head "
                f"(EM or dynamic routing), and {victim.name} is a {family}"
            )
    sources = [SELF] + ([victim.source_name] if victim.source is not None else [])
    cells = []
    for source in sources:
        for attack in config.attacks:
            if source != SELF and is_vote_attack(attack):
                continue  # the vote attack is an adaptive white-box attack, not a transfer one
            for targeted in config.targeted:
                if targeted and not supports_targeted(attack):
                    continue
                for eps in config.eps:
                    if not runs_at(attack, eps, config):
                        continue
                    pixel, std = eps_pixel_and_std(eps, config.units, sigma_mean)
                    cells.append(
                        Cell(attack, eps, pixel, std, targeted, source, "sweep", *cell_budget(attack, config))
                    )
    return cells


def runs_at(attack: str, eps: float, config: AttackConfig) -> bool:
    """Whether `attack` has a cell at `eps`: every attack does, except AutoAttack outside `ensemble_eps`."""
    if base_attack(attack) not in ENSEMBLES or config.ensemble_eps is None:
        return True
    return any(math.isclose(eps, kept) for kept in config.ensemble_eps)


def cell_budget(attack: str, config: AttackConfig) -> tuple[int, int]:
    """(steps, restarts) as recorded: FGSM is one step; FGSM, BIM and CW have no random start; AutoAttack
    has its own budget (attacks.autoattack)."""
    kind = base_attack(attack)
    if kind in ENSEMBLES:
        return ensemble_budget(kind, config.steps)
    steps = {"fgsm": 1, "square": config.queries}.get(kind, config.steps)
    restarts = config.restarts if kind in ("pgd", "apgd-ce", "apgd-dlr", "square") else 1
    return steps, restarts


def run_cell(cell: Cell, config: AttackConfig, victim: Victim, eval_set: EvalSet, bar: tqdm) -> pd.DataFrame:
    """Per-example predictions of the victim on adversarial images of one cell (one row per target)."""
    device = torch.device(config.device)
    if cell.source == SELF:
        crafting_on = victim.crafter if victim.crafter is not None else victim.model
    else:
        crafting_on = victim.source_crafter if victim.source_crafter is not None else victim.source
    # A cell's own budget (the strong-PGD check raises it); Square's `steps` column records its queries.
    steps = config.steps if base_attack(cell.attack) == "square" else cell.steps
    settings = replace(config, steps=steps, restarts=cell.restarts)
    offsets = range(1, NUM_CLASSES) if cell.targeted else [0]
    frames = []
    for index, images, labels in eval_set.batches(config.batch_size, device):
        for offset in offsets:
            targets = (labels + offset) % NUM_CLASSES if cell.targeted else None

            # a batch that runs out of device memory is crafted in halves
            adversarial = in_halves_on_oom(
                lambda x, y, aimed: craft(cell.attack, crafting_on, x, y, cell.eps_pixel, settings, aimed),
                images,
                labels,
                targets,
            )
            frame = pd.DataFrame(
                {
                    "example": index.numpy(),
                    "label": labels.cpu().numpy(),
                    "target": targets.cpu().numpy() if targets is not None else -1,
                    "prediction": predict(victim.model, adversarial).cpu().numpy(),
                }
            )
            frames.append(frame)
        bar.update(1)
    table = pd.concat(frames, ignore_index=True)
    for column in ("attack", "targeted", "eps_pixel", "eps_std", "source", "role", "steps", "restarts"):
        table[column] = getattr(cell, column)
    return table[list(EXAMPLE_COLUMNS)].sort_values(["example", "target"], ignore_index=True)


def run_cells(
    cells: list[Cell], config: AttackConfig, victim: Victim, eval_set: EvalSet, out_dir, progress: bool = True
) -> pd.DataFrame:
    """Run the cells not already on disk, write each atomically when done, return all their rows."""
    cells_dir = Path(out_dir) / CELLS_DIR
    models = (fingerprint(victim.model), fingerprint(victim.source))
    # a cell crafted another way is stored apart, so that every summary row's `crafting` is true
    suffix = "" if config.crafting == "plain" else f"-{config.crafting}"
    keyed = [(cell, cell_key(cell, config, models, eval_set)) for cell in cells]
    keyed = [(cell, key, cells_dir / f"{key}{suffix}.csv") for cell, key in keyed]
    todo = [(cell, key, path) for cell, key, path in keyed if not path.exists()]
    batches = -(-len(eval_set.labels) // config.batch_size)
    with tqdm(total=len(todo) * batches, desc="attack cells", unit="batch", disable=not progress) as bar:
        for cell, key, path in todo:
            bar.set_postfix_str(f"{cell.attack} ε={cell.eps:g} {'targeted' if cell.targeted else ''}".strip())
            # Seed per cell from its key, so a resumed sweep draws the same random starts as a fresh one.
            torch.manual_seed(config.seed + int(key[-8:], 16) % 2**31)
            atomic_write_text(path, run_cell(cell, config, victim, eval_set, bar).to_csv(index=False))
    frames = [pd.read_csv(path, keep_default_na=False) for _, _, path in keyed]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(EXAMPLE_COLUMNS))
