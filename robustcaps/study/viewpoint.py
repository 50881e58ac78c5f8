"""Novel viewpoints at matched familiar error: the protocol of HSF18 Table 2.

1. Train the CNN on the training viewpoints of the split (azimuth: 300°–40°; elevation: 30°–40°); its
   val-selected (`best`) checkpoint gives the familiar error E_cnn on test images at those viewpoints.
2. Train the capsule network with `target_familiar_error = E_cnn`: the trainer stops when its error on
   familiar viewpoints reaches E_cnn (checked on familiar data only, at the end of each epoch). We evaluate
   its `last` checkpoint: the one whose familiar error was checked against the target.
3. Compare errors on novel viewpoints. Nothing is ever chosen on novel data; the achieved familiar gap
   (capsules − CNN) is reported because epoch granularity and the step budget make the match inexact.

    familiar_gap = E_familiar(capsnet) − E_familiar(cnn)

4. When the capsules' budget ran out above E_cnn, or their last epoch stepped more than a point below it,
   the pair above compares models of unequal familiar error, which says little about viewpoint
   generalisation. So the match is also made the other way (rows with
   protocol "reverse"): the CNN, stopped at its first epoch whose familiar error was at or below the
   capsules' (a weights-only snapshot kept in training, `TrainConfig.familiar_snapshots`), against the same
   capsule network. This is the paper's stopping rule with the roles swapped, still chosen on familiar data.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from robustcaps.data.standin.render import default_data_root
from robustcaps.errors import RobustcapsError
from robustcaps.io import atomic_write_text
from robustcaps.paper_results import TABLE2
from robustcaps.report.headline import MATCH_TOLERANCE
from robustcaps.report.tables import COUNT_COLUMNS, family_of, markdown_table, percent, table2
from robustcaps.study.presets import Preset
from robustcaps.training import fit, resolve_device
from robustcaps.training.checkpoints import (
    CONFIG_FILE,
    METADATA_FILE,
    METRICS_FILE,
    checkpoint_path,
    load_run,
    snapshot_name,
)
from robustcaps.training.config import TrainConfig, load_split, run_digest
from robustcaps.training.distributed import World
from robustcaps.training.evaluation import evaluate

if TYPE_CHECKING:
    import torch

VIEWPOINT_SPLITS = ("azimuth", "elevation")
# the viewpoint CNN's familiar snapshots per epoch: fine enough for a reverse match within a point (an epoch
# of the azimuth split moved the converged preset's CNN by up to 21 points early on); a CNN evaluates fast
FAMILIAR_CHECKS_PER_EPOCH = 10
# What the viewpoint CSV holds; raised when it gains rows or columns (2: the reverse match and the novel
# images only one model got wrong; 3: the reverse match also after an overshoot), so that a resumed
# `reproduce` rewrites it instead of skipping the finished step
TABLE_VERSION = 3


@dataclass(frozen=True)
class Trained:
    """A trained run and its errors; `which` is the checkpoint the errors come from."""

    run_dir: Path
    model: str
    which: str
    errors: dict[str, float]  # part -> error
    sizes: dict[str, int]  # part -> n
    wrong: dict[str, torch.Tensor] = field(default_factory=dict)  # part -> (n,) bool, the part's order


def resolve_data_root(data: str | None, size: str) -> Path:
    """--data as given (it must exist), else the rendered stand-in of `size` (rendered once, cached)."""
    if data is None:
        return Path(default_data_root(size))
    if not Path(data).is_dir():
        raise RobustcapsError(f"--data {data}: no such directory; render one with `robustcaps data render`")
    return Path(data)


def keeps_snapshots(preset: Preset, model: str, split: str) -> bool:
    """The viewpoint CNN keeps familiar snapshots, for the reverse match (step 4 above)."""
    return model == preset.cnn.model and split in VIEWPOINT_SPLITS


def train_config(
    preset: Preset, model: str, split: str, data_root: Path | None, device: str = "auto", **extra
) -> TrainConfig:
    """The TrainConfig of one run of a preset: its role's config on `split`, with the data and device."""
    snapshots = {"familiar_snapshots": True, "familiar_checks_per_epoch": FAMILIAR_CHECKS_PER_EPOCH}
    changes = snapshots if keeps_snapshots(preset, model, split) else {}
    data = None if data_root is None else str(data_root)
    return dataclasses.replace(
        preset.config_for(model), split=split, data=data, device=device, **changes, **extra
    )


def run_dir(runs_dir: Path, preset: Preset, model: str, split: str, **extra) -> Path:
    """`<model>-<split>-<digest of the TrainConfig it trains>` (training.config.run_digest): a changed
    setting trains into a new directory instead of colliding with (or silently resuming) another run."""
    config = train_config(preset, model, split, None, **extra)
    return Path(runs_dir) / f"{model}-{split}-{run_digest(config)}"


def train_or_resume(config, run_dir: Path) -> Path:
    """fit(), resuming a run that was interrupted with the same config instead of starting it over."""
    started = (run_dir / CONFIG_FILE).exists()
    if started and run_digest(TrainConfig.from_json(run_dir / CONFIG_FILE)) != run_digest(config):
        raise RobustcapsError(f"{run_dir}: holds a run with another config; delete it or use another --runs")
    resume = started and checkpoint_path(run_dir, "last").exists()
    if started and not resume:  # killed before its first checkpoint: nothing to keep, start it again
        for name in (CONFIG_FILE, METRICS_FILE, METADATA_FILE):
            (run_dir / name).unlink(missing_ok=True)
    return fit(config, run_dir, resume=resume)


def evaluate_run(run_dir: Path, which: str, parts: tuple[str, ...], device: str, multi_crop: bool = False):
    """Errors of a trained run on parts of its own split ("test", "familiar", "novel", "val")."""
    dev = resolve_device(device, World())
    loaded = load_run(run_dir, which=which, device=dev)
    data = load_split(loaded.config)
    results = {
        part: evaluate(loaded.model, getattr(data, part), dev, multi_crop=multi_crop) for part in parts
    }
    errors = {part: r["error"] for part, r in results.items()}
    sizes = {part: r["n"] for part, r in results.items()}
    wrong = {part: r["wrong"] for part, r in results.items()}
    return Trained(Path(run_dir), loaded.config.model, which, errors, sizes, wrong)


def reverse_match(cnn_dir: Path, target: float, device: str) -> Trained | None:
    """The CNN run's first familiar snapshot at or below `target` (the capsules' familiar error), evaluated;
    None when no epoch of the CNN got that low."""
    metrics = pd.read_csv(cnn_dir / METRICS_FILE)
    reached = metrics[metrics["familiar_error"] <= target]
    if reached.empty:
        return None
    path = checkpoint_path(cnn_dir, snapshot_name(int(reached["step"].iloc[0])))
    if not path.is_file():
        raise RobustcapsError(f"{path}: missing; the CNN run was trained without familiar snapshots")
    return evaluate_run(cnn_dir, path.stem, ("familiar", "novel"), device)


def matched_runs(
    preset: Preset,
    split: str,
    data_root: Path,
    runs_dir: Path,
    device: str,
    echo: Callable[[str], None] = print,
) -> tuple[Trained, list[tuple[Trained, Trained | None]]]:
    """Train the CNN, then each capsule network stopped at the CNN's familiar error; evaluate them all. Per
    capsule network also the CNN stopped at its familiar error, when it stayed above the CNN's (else None)."""
    if split not in VIEWPOINT_SPLITS:
        raise RobustcapsError(f"--split {split}: choose one of {', '.join(VIEWPOINT_SPLITS)}")
    parts = ("familiar", "novel")
    cnn_dir = run_dir(runs_dir, preset, preset.cnn.model, split)
    train_or_resume(train_config(preset, preset.cnn.model, split, data_root, device), cnn_dir)
    cnn = evaluate_run(cnn_dir, "best", parts, device)
    target = cnn.errors["familiar"]
    matches = []
    for model in preset.capsule_models:
        echo(f"{split}: CNN familiar error {percent(target)}; training {model} to match it")
        caps_dir = run_dir(runs_dir, preset, model, split, target_familiar_error=target)
        config = train_config(preset, model, split, data_root, device, target_familiar_error=target)
        train_or_resume(config, caps_dir)
        caps = evaluate_run(caps_dir, "last", parts, device)
        # a match further apart than a point (one epoch may step past the target) also gets the reverse one
        stopped = None
        if abs(caps.errors["familiar"] - target) > MATCH_TOLERANCE:
            echo(
                f"{split}: {model} stopped at {percent(caps.errors['familiar'])}; stopping the CNN there too"
            )
            stopped = reverse_match(cnn_dir, caps.errors["familiar"], device)
        matches.append((caps, stopped))
    return cnn, matches


def table2_rows(split: str, cnn: Trained, caps: Trained, cnn_stopped: Trained | None = None) -> pd.DataFrame:
    """One row per model: familiar and novel error, the paper's, the achieved familiar gap; protocol
    "paper" for the capsules stopped at the CNN's familiar error, "reverse" for the CNN stopped at theirs
    (no paper numbers: the paper has no such row); `matched_to` names the model each row was matched
    against. The CNN rows count the novel images only one of the two got wrong."""
    rows = []
    cnn_target = cnn.errors["familiar"]
    pairs = [("paper", cnn, cnn_target, ""), ("paper", caps, cnn_target, cnn.model)]
    if cnn_stopped is not None:
        pairs.append(("reverse", cnn_stopped, caps.errors["familiar"], caps.model))
    for protocol, trained, target, matched_to in pairs:
        family = family_of(trained.model)
        paper = TABLE2.get((split, family), {}) if protocol == "paper" else {}
        reference = cnn if protocol == "paper" else cnn_stopped
        rows.append(
            {
                **_discordant(caps, trained if trained is not caps else None),
                "split": split,
                "protocol": protocol,
                "model": trained.model,
                "family": family,
                "matched_to": matched_to,
                "checkpoint": trained.which,
                "familiar_error": trained.errors["familiar"],
                "novel_error": trained.errors["novel"],
                "paper_familiar_error": paper.get("familiar_error", math.nan),
                "paper_novel_error": paper.get("novel_error", math.nan),
                "familiar_gap": caps.errors["familiar"] - reference.errors["familiar"],
                "target_familiar_error": target,
                "n_familiar": trained.sizes["familiar"],
                "n_novel": trained.sizes["novel"],
                "run_dir": trained.run_dir.name,  # the folder under --runs: no machine path in results
            }
        )
    return pd.DataFrame(rows)


def split_rows(split: str, cnn: Trained, matches: list[tuple[Trained, Trained | None]]) -> pd.DataFrame:
    """The rows of every capsule network matched to one CNN: the first (the EM network) as table2_rows
    writes them; for the others no second copy of the CNN's row: the novel images only one of the pair got
    wrong move onto the capsule network's own row."""
    frames = [table2_rows(split, cnn, *matches[0])]
    for caps, stopped in matches[1:]:
        rows = table2_rows(split, cnn, caps, stopped)
        cnn_row = (rows["protocol"] == "paper") & (rows["model"] == cnn.model)
        rows.loc[rows["model"] == caps.model, list(COUNT_COLUMNS)] = rows.loc[
            cnn_row, list(COUNT_COLUMNS)
        ].to_numpy()
        frames.append(rows[~cnn_row])
    return pd.concat(frames, ignore_index=True)


def _discordant(caps: Trained, cnn: Trained | None) -> dict[str, float]:
    """On the novel images (the same ones, in the same order, for both models: one split, one subsample):
    how many only the capsules got wrong and how many only this CNN did, for a paired comparison. NaN on
    the capsules' own row, or when either evaluation kept no per-example results."""
    counts = dict.fromkeys(COUNT_COLUMNS, math.nan)
    a, b = caps.wrong.get("novel"), cnn.wrong.get("novel") if cnn is not None else None
    if a is None or b is None or len(a) != len(b):
        return counts
    return {"novel_only_capsules_wrong": int((a & ~b).sum()), "novel_only_cnn_wrong": int((~a & b).sum())}


def write_table2(rows: pd.DataFrame, out_dir: Path, note: str) -> tuple[Path, Path]:
    """`<split>.csv` and `<split>.md` under out_dir (the Markdown with the paper's numbers beside ours)."""
    split = rows["split"].iloc[0]
    csv = atomic_write_text(out_dir / f"{split}.csv", rows.to_csv(index=False))
    shown = table2(rows).drop(columns="split")
    title = f"## Novel viewpoints, {split} split (HSF18 Table 2 analogue)"
    text = f"{title}\n\n{markdown_table(shown)}\n_{note}_\n"
    return csv, atomic_write_text(out_dir / f"{split}.md", text)


def run_viewpoint(
    split: str,
    preset: Preset,
    data_root: Path,
    runs_dir: Path,
    out_dir: Path,
    device: str = "auto",
    note: str = "",
    echo: Callable[[str], None] = print,
) -> pd.DataFrame:
    """The whole protocol for one split; writes `<out_dir>/<split>.{csv,md}` and returns the rows."""
    rows = split_rows(split, *matched_runs(preset, split, Path(data_root), Path(runs_dir), device, echo))
    write_table2(rows, Path(out_dir), note)
    return rows
