"""`robustcaps reproduce`: data → training (full, azimuth, elevation) → clean error → attacks → report.

Every stage is a resumable `Step` (robustcaps.study.steps): rerunning skips what is finished with the same
config, so an interrupted `make demo` continues where it stopped. Checkpoints and per-example attack
results go to the runs directory (default `runs/reproduce-<preset>/`, git-ignored); the small CSVs the
report reads go to the results directory (default `results/`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path

import pandas as pd

from robustcaps.data.norb import dataset_identity
from robustcaps.data.norb_verify import verify
from robustcaps.data.standin.render import default_data_path
from robustcaps.errors import RobustcapsError
from robustcaps.io import atomic_write_json, atomic_write_text, read_json
from robustcaps.provenance import environment_metadata, shown_path
from robustcaps.report.readme import write_report
from robustcaps.report.tables import (
    CLEAN_CSV,
    MODELS_DIR,
    PROVENANCE_JSON,
    TRAINING_CSV,
    VIEWPOINT_DIR,
    family_of,
    with_protocol,
)
from robustcaps.study.attacks import ATTACK_FILES, attack_victim
from robustcaps.study.presets import Preset
from robustcaps.study.steps import Pipeline, Step
from robustcaps.study.viewpoint import (
    TABLE_VERSION,
    VIEWPOINT_SPLITS,
    evaluate_run,
    resolve_data_root,
    run_dir,
    run_viewpoint,
    train_config,
    train_or_resume,
)
from robustcaps.training import resolve_device as trainer_device
from robustcaps.training.checkpoints import CONFIG_FILE, METADATA_FILE, METRICS_FILE, export_run
from robustcaps.training.config import TrainConfig, load_split, run_digest
from robustcaps.training.config import identity as train_identity
from robustcaps.training.distributed import World

CHECKPOINT_FILES = ("checkpoints/best.pt", "checkpoints/last.pt", "metrics.csv")
# refit presets: what each held-out run chose, and its test error beside the refit model's
HELD_OUT_CSV = Path("clean") / "held_out.csv"


def refit_dir(runs_dir: Path, preset: Preset, model: str) -> Path:
    """Where a refit preset retrains `model` on every instance: named by its held-out run's digest."""
    return Path(runs_dir) / f"{model}-refit-{run_digest(train_config(preset, model, 'full', None))}"


def final_dir(runs_dir: Path, preset: Preset, model: str) -> Path:
    """The run whose model the preset reports on the full split (clean error, attacks, exported weights)."""
    return refit_dir(runs_dir, preset, model) if preset.refit else run_dir(runs_dir, preset, model, "full")


def chosen_epoch(held_out: Path) -> tuple[int, float]:
    """The epoch of a run's lowest val error (the first, as best.pt keeps it) and that error."""
    metrics = pd.read_csv(held_out / METRICS_FILE).dropna(subset=["val_error"])
    if metrics.empty:
        raise RobustcapsError(f"{held_out / METRICS_FILE}: no validated epoch to choose an epoch count from")
    best = metrics.loc[metrics["val_error"].idxmin()]
    return int(best["epoch"]), float(best["val_error"])


def _steps_per_epoch(config: TrainConfig) -> int:
    return len(load_split(config).train) // config.batch_size


def refit_config(held_out: Path) -> TrainConfig:
    """The held-out run's config on every training instance (no validation) for its val-chosen epoch
    count; the schedules counted in steps are stretched so that each epoch decays them as much as there."""
    config = TrainConfig.from_json(held_out / CONFIG_FILE)
    epochs, _ = chosen_epoch(held_out)
    refit = dataclasses.replace(config, val="none", epochs=epochs, steps=None, patience=0)
    stretch = _steps_per_epoch(refit) / _steps_per_epoch(config)
    return dataclasses.replace(
        refit,
        lr_decay_steps=config.lr_decay_steps * stretch,
        margin_step_scale=config.margin_step_scale * stretch,
    )


def refit_run(held_out: Path, out: Path) -> Path:
    return train_or_resume(refit_config(held_out), out)


def prepare_data(data: str | None, preset: Preset, results: Path, echo: Callable[[str], None]) -> Path:
    """The dataset root: --data as given, else the preset's rendered stand-in (rendered once, cached)."""
    root = resolve_data_root(data, preset.data_size)
    report = verify(root)
    lines = [line.replace(str(root), shown_path(root)) for line in report.lines()]
    if getattr(report, "mismatch", ()):
        raise RobustcapsError(
            f"--data {root}: files differ from its manifest.json ({', '.join(report.mismatch)})"
        )
    atomic_write_text(
        results / "data_verify.txt",
        f"$ robustcaps data verify {shown_path(root)}\n" + "\n".join(lines) + "\n",
    )
    echo("\n".join(lines))
    return root


def contact_sheet(root: Path, out: Path) -> Path:
    from robustcaps.data.contact_sheet import write_contact_sheet

    return Path(write_contact_sheet(root, out))


def clean_error_rows(preset: Preset, runs_dir: Path, results: Path, device: str) -> pd.DataFrame:
    """Clean error of every trained run on its own split's parts; the 13-crop test (if set) on the full
    split's test part only, where HSF18 report it (it costs 13 forward passes per image). The azimuth and
    elevation runs were already evaluated on familiar and novel data by their viewpoint step: those
    errors are read from its CSV rather than computed a second time."""
    rows = []
    for model in preset.models:
        directory = final_dir(runs_dir, preset, model)
        for multi_crop in (False, True) if preset.multi_crop else (False,):
            trained = evaluate_run(directory, "best", ("test",), device, multi_crop=multi_crop)
            rows.append(
                {
                    "model": model,
                    "family": family_of(model),
                    "split": "full",
                    "part": "test",
                    "crops": 13 if multi_crop else 1,
                    "error": trained.errors["test"],
                    "n": trained.sizes["test"],
                    "checkpoint": "best",
                }
            )
    for split in VIEWPOINT_SPLITS:
        table = with_protocol(pd.read_csv(results / VIEWPOINT_DIR / f"{split}.csv"))
        for row in table[table["protocol"] == "paper"].itertuples():  # a model's own stopping rule only
            rows += [
                {
                    "model": row.model,
                    "family": row.family,
                    "split": split,
                    "part": part,
                    "crops": 1,
                    "error": getattr(row, f"{part}_error"),
                    "n": getattr(row, f"n_{part}"),
                    "checkpoint": row.checkpoint,
                }
                for part in ("familiar", "novel")
            ]
    return pd.DataFrame(rows)


def held_out_rows(preset: Preset, runs_dir: Path, device: str) -> pd.DataFrame:
    """Refit presets: each held-out run's chosen epoch, its val error there and its best.pt's test error
    (centre crop), beside the refit model's, so that the cost of holding an instance out is on record."""
    rows = []
    for model in preset.models:
        held_out, refit = run_dir(runs_dir, preset, model, "full"), final_dir(runs_dir, preset, model)
        epoch, val_error = chosen_epoch(held_out)
        row = {"model": model, "family": family_of(model), "epochs": epoch, "val_error": val_error}
        for name, directory in (("held_out", held_out), ("refit", refit)):
            tested = evaluate_run(directory, "best", ("test",), device)
            row[f"{name}_test_error"] = tested.errors["test"]
            sizes = read_json(directory / METADATA_FILE, "run metadata")["dataset"]["sizes"]
            row[f"{name}_train_images"] = sizes["train"]
        rows.append(row | {"n": tested.sizes["test"]})
    return pd.DataFrame(rows)


def viewpoint_targets(results: Path, split: str) -> dict[str, float]:
    """model → the familiar error its viewpoint run was stopped at (none for the CNN, which sets it)."""
    table = with_protocol(pd.read_csv(results / VIEWPOINT_DIR / f"{split}.csv"))
    rows = table[(table["protocol"] == "paper") & (table["matched_to"].fillna("") != "")]
    return dict(zip(rows["model"], rows["target_familiar_error"].astype(float), strict=True))


def training_rows(runs_dir: Path, preset: Preset, results: Path) -> pd.DataFrame:
    """Every run's metrics.csv, stacked, with the run's model and split (for the training-curve figure)."""
    frames = []
    for split in ("full", *VIEWPOINT_SPLITS):
        targets = viewpoint_targets(results, split) if split in VIEWPOINT_SPLITS else {}
        for model in preset.models:
            extra = {"target_familiar_error": targets[model]} if model in targets else {}
            metrics = pd.read_csv(run_dir(runs_dir, preset, model, split, **extra) / "metrics.csv")
            frames.append(
                metrics.assign(run=f"{model}-{split}", model=model, family=family_of(model), split=split)
            )
    return pd.concat(frames, ignore_index=True)


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    return atomic_write_text(path, frame.to_csv(index=False))


def training_steps(
    preset: Preset, root: Path, results: Path, runs_dir: Path, device: str, echo
) -> list[Step]:
    """Both models on the full split, then the matched-familiar-error protocol on each viewpoint split."""
    identity, steps = dataset_identity(root), []
    for model in preset.models:
        config, directory = (
            train_config(preset, model, "full", root, device),
            run_dir(runs_dir, preset, model, "full"),
        )
        outputs = tuple(directory / f for f in CHECKPOINT_FILES)
        steps.append(
            Step(
                f"train-{model}-full",
                {"train": train_identity(config), "data": identity},
                outputs,
                partial(train_or_resume, config, directory),
            )
        )
        if preset.refit:
            out = refit_dir(runs_dir, preset, model)
            steps.append(
                Step(
                    f"refit-{model}-full",
                    {"refit": train_identity(config), "data": identity},
                    tuple(out / f for f in CHECKPOINT_FILES),
                    partial(refit_run, directory, out),
                    (f"train-{model}-full",),
                )
            )
    # the preset's own stand-in needs no --data (its cache path differs between machines)
    data = "" if Path(root) == default_data_path(preset.data_size) else f" --data {root}"
    for split in VIEWPOINT_SPLITS:
        outputs = (results / VIEWPOINT_DIR / f"{split}.csv", results / VIEWPOINT_DIR / f"{split}.md")
        note = f"Regenerate: robustcaps viewpoint --split {split} --preset {preset.name}{data}"
        run = partial(
            run_viewpoint, split, preset, root, runs_dir, results / VIEWPOINT_DIR, device, note, echo
        )
        # The capsules' target comes from the CNN run, so the two configs (without it) define the step.
        configs = {m: train_identity(train_config(preset, m, split, root, device)) for m in preset.models}
        config = {"train": configs, "data": identity, "table": TABLE_VERSION}
        steps.append(Step(f"viewpoint-{split}", config, outputs, run))
    return steps


def build_steps(preset: Preset, root: Path, results: Path, runs_dir: Path, device: str, echo) -> list[Step]:
    """The pipeline after data preparation, in order; each step's config is what makes its outputs."""
    steps = training_steps(preset, root, results, runs_dir, device, echo)
    trained = tuple(step.name for step in steps)
    models = preset.models
    final = "refit" if preset.refit else "train"
    full_runs = tuple(f"{final}-{m}-full" for m in models)

    def clean_error() -> None:
        _write_csv(clean_error_rows(preset, runs_dir, results, device), results / CLEAN_CSV)
        if preset.refit:
            _write_csv(held_out_rows(preset, runs_dir, device), results / HELD_OUT_CSV)

    steps.append(
        Step(
            "clean-error",
            {"multi_crop": preset.multi_crop, **({"refit": True} if preset.refit else {})},
            (results / CLEAN_CSV, *((results / HELD_OUT_CSV,) if preset.refit else ())),
            clean_error,
            trained,
        )
    )
    steps.append(
        Step(
            "training-curves",
            {},
            (results / TRAINING_CSV,),
            lambda: _write_csv(training_rows(runs_dir, preset, results), results / TRAINING_CSV),
            trained,
        )
    )
    for model, run in zip(models, full_runs, strict=True):  # each model's reported weights, committable
        out = results / MODELS_DIR / f"{model}-full"
        export = partial(export_run, final_dir(runs_dir, preset, model), out)
        steps.append(Step(f"export-{model}", {}, (out / "checkpoints" / "best.pt",), export, (run,)))
    config = {
        "attack": asdict(preset.attack),
        "untargeted": preset.untargeted_attacks,
        "vote": preset.vote_attacks,
    }
    cnn_run = final_dir(runs_dir, preset, preset.cnn.model)
    for model, source in [(preset.cnn.model, None)] + [(m, cnn_run) for m in preset.capsule_models]:
        outputs = tuple(
            results / "attacks" / f"{model}{suffix}" / f for suffix in ("", "-targeted") for f in ATTACK_FILES
        )
        victim = final_dir(runs_dir, preset, model)
        run = partial(
            attack_victim, victim, model, source, preset, device, runs_dir / "attacks", results / "attacks"
        )
        # retraining another capsule family does not redo these attacks: only the victim (its exported
        # weights, which the results name) and the CNN (the transfer source) count
        depends = (f"{final}-{preset.cnn.model}-full", f"export-{model}")
        steps.append(Step(f"attack-{model}", config, outputs, run, depends))
    return steps


def device_type(device: str) -> str:
    """The device for `auto`, `cuda` or `cpu` (an error for cuda without a GPU), spelt as TrainConfig
    accepts it: the device type, not "cuda:0" (each process picks its GPU from its local rank)."""
    return trainer_device(device, World()).type


def _job(preset: Preset, root: Path, results: Path, runs: Path, device: str, jobs: int, log: Path) -> None:
    """One extra process of `reproduce --jobs`: works through the same steps, logging to `log`."""
    import torch

    torch.set_num_threads(threads_per_job(jobs))
    with open(log, "a") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):

        def echo(line: str) -> None:
            print(time.strftime("%H:%M:%S"), line, flush=True)

        steps = build_steps(preset, root, results, runs, device, echo)
        Pipeline(runs / "steps", echo).run_shared(steps, jobs)


def threads_per_job(jobs: int) -> int:
    return max(1, len(os.sched_getaffinity(0)) // jobs)


def run_steps(
    pipeline: Pipeline,
    steps: list[Step],
    jobs: int,
    preset: Preset,
    root: Path,
    results: Path,
    runs: Path,
    device: str,
) -> None:
    """The steps in this process, or shared with `jobs` − 1 more (spawned, each with its share of the
    cores: small capsule batches use two threads poorly, so two one-thread processes finish sooner)."""
    if jobs == 1:
        pipeline.run_all(steps)
        return
    import torch

    context, threads = multiprocessing.get_context("spawn"), torch.get_num_threads()
    logs = [runs / f"job{index}.log" for index in range(2, jobs + 1)]
    helpers = [
        context.Process(target=_job, args=(preset, root, results, runs, device, jobs, log)) for log in logs
    ]
    for helper in helpers:
        helper.start()
    pipeline.echo(f"{jobs} jobs share the steps; the others log to {', '.join(map(str, logs))}")
    torch.set_num_threads(threads_per_job(jobs))
    try:
        pipeline.run_shared(steps, jobs)
    except BaseException:
        for helper in helpers:  # their claims die with them; a rerun resumes their steps
            helper.terminate()
        raise
    finally:
        for helper in helpers:
            helper.join()
        torch.set_num_threads(threads)


def reproduce(
    preset: Preset,
    data: str | None = None,
    results_dir: str | Path = "results",
    runs_dir: str | Path | None = None,
    device: str = "auto",
    echo: Callable[[str], None] = print,
    jobs: int = 1,
) -> Path:
    """Run (or resume) the whole pipeline for a preset, in `jobs` processes; returns the README it writes."""
    if jobs < 1:
        raise RobustcapsError(f"--jobs {jobs}: expected at least 1")
    start = time.perf_counter()
    results = Path(results_dir)
    runs = Path(runs_dir) if runs_dir else Path("runs") / f"reproduce-{preset.name}"
    device = device_type(device)
    pipeline = Pipeline(runs / "steps", echo)
    root = prepare_data(data, preset, results, echo)
    sheet = results / "dataset" / "contact_sheet.png"
    pipeline.run(
        Step("contact-sheet", {"data": dataset_identity(root)}, (sheet,), partial(contact_sheet, root, sheet))
    )
    steps = build_steps(preset, root, results, runs, device, echo)
    run_steps(pipeline, steps, jobs, preset, root, results, runs, device)
    provenance = {
        "preset": preset.name,
        "demo": preset.demo,
        "preset_settings": asdict(preset),
        "command": "robustcaps " + shlex.join(sys.argv[1:])
        if "reproduce" in sys.argv
        else f"robustcaps reproduce --preset {preset.name}",
        **environment_metadata(device),
        "dataset_identity": {**dataset_identity(root), "root": shown_path(root)},
        "steps": pipeline.log.records,
        "jobs": jobs,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    atomic_write_json(results / PROVENANCE_JSON, provenance)
    readme = write_report(results)
    echo(f"wrote {readme} ({provenance['wall_seconds']:.0f} s)")
    return readme
