"""`robustcaps train` and `robustcaps eval`: options in, a TrainConfig out; logic in robustcaps.training."""

from __future__ import annotations

import json
from pathlib import Path

import click

from robustcaps.cli.options import run_data_option
from robustcaps.errors import RobustcapsError
from robustcaps.io import atomic_write_text
from robustcaps.models.capsnet import RECOMPUTE, ROUTINGS
from robustcaps.models.common import COMPILE_MODES
from robustcaps.training import checkpoints, evaluation, losses
from robustcaps.training import train as training
from robustcaps.training.config import (
    AMP,
    DEVICES,
    LR_SCHEDULES,
    SPLITS,
    STEREO,
    VALIDATIONS,
    WARMUP_STEPS,
    TrainConfig,
    load_split,
)

# CLI option → TrainConfig field, for the options `--resume` may not change (config.RESUMABLE_CHANGES).
_FIELDS = {
    "model": "model", "model_option": "model_overrides", "data": "data", "data_size": "data_size",
    "split": "split", "stereo": "stereo", "val": "val", "val_fraction": "val_fraction",
    "max_per_part": "max_per_part", "epochs": "epochs", "steps": "steps", "batch_size": "batch_size",
    "lr": "lr",
    "lr_decay_steps": "lr_decay_steps", "lr_schedule": "lr_schedule", "lr_min_factor": "lr_min_factor",
    "warmup_steps": "warmup_steps", "margin_step_scale": "margin_step_scale", "loss": "loss",
    "calibrate_images": "calibrate_images",
    "seed": "seed", "device": "device", "compile": "compile",
    "compile_mode": "compile_mode", "routing": "routing", "recompute": "recompute", "amp": "amp",
    "target_familiar_error": "target_familiar_error", "familiar_snapshots": "familiar_snapshots",
    "checkpoint_every": "checkpoint_every", "eval_every": "eval_every", "patience": "patience",
}  # fmt: skip


def _model_overrides(values: tuple[str, ...]) -> dict:
    overrides = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RobustcapsError(
                f"--model-option {item!r}: write KEY=VALUE, e.g. --model-option iterations=2"
            )
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value  # a bare word is a string
    return overrides


def _config(ctx: click.Context, options: dict) -> TrainConfig:
    """From the options given; with --resume, from the run's config.json with only the options given."""
    values = {_FIELDS[k]: v for k, v in options.items() if k in _FIELDS}
    values["model_overrides"] = _model_overrides(options["model_option"])
    if not options["resume"] or not (Path(options["out"]) / checkpoints.CONFIG_FILE).exists():
        return TrainConfig(**values)  # nothing stored yet: fit starts the run afresh
    stored = TrainConfig.from_json(Path(options["out"]) / checkpoints.CONFIG_FILE).to_dict()
    for option, name in _FIELDS.items():
        if ctx.get_parameter_source(option) == click.core.ParameterSource.COMMANDLINE:
            stored[name] = values[name]
    if (
        ctx.get_parameter_source("epochs") == click.core.ParameterSource.COMMANDLINE
        and options["steps"] is None
    ):
        stored["steps"] = None  # --epochs given alone replaces a stored --steps
    return TrainConfig(**stored)


@click.command()
@click.option(
    "--model", default="capsnet-small", show_default=True, help="Registered model (robustcaps models)."
)
@click.option(
    "--model-option", multiple=True, metavar="KEY=VALUE", help="Model config override (JSON value)."
)
@click.option(
    "--data", type=click.Path(file_okay=False), help="smallNORB-format directory [rendered stand-in]."
)
@click.option(
    "--data-size", default="small", show_default=True, help="Stand-in size when --data is not given."
)
@click.option("--split", type=click.Choice(SPLITS), default="full", show_default=True)
@click.option("--stereo", type=click.Choice(STEREO), default="channels", show_default=True,
              help="Stereo pair as 2 channels (official code) or each camera as its own sample.")  # fmt: skip
@click.option("--val", type=click.Choice(VALIDATIONS), default="instances", show_default=True,
              help="Validation data, held out from training: one whole instance per category (measures "
              "generalisation to unseen objects, like the test set) or random pairs (--val-fraction; their "
              "instances and viewpoints stay in training, so it reads lower than test error).")  # fmt: skip
@click.option("--val-fraction", type=float, default=0.1, show_default=True,
              help="Pairs held out with --val pairs.")  # fmt: skip
@click.option("--max-per-part", type=int, help="Keep at most this many images per part (quick runs).")
@click.option("--epochs", type=int, default=20, show_default=True)
@click.option("--steps", type=int, help="Train this many steps (replaces --epochs).")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Global batch (all processes).")
@click.option("--lr", type=float, default=3e-3, show_default=True)
@click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES), default="exponential",
              show_default=True, help="exponential: lr ×0.96 per --lr-decay-steps (HSF18); cosine: down to "
              "lr × --lr-min-factor over the run.")  # fmt: skip
@click.option("--lr-decay-steps", type=float, default=20_000.0, show_default=True, help="lr ×0.96 per this.")
@click.option("--lr-min-factor", type=float, default=0.05, show_default=True,
              help="With --lr-schedule cosine: the final lr as a fraction of --lr.")  # fmt: skip
@click.option("--warmup-steps", type=int, default=WARMUP_STEPS, show_default=True,
              help="Linear lr warm-up, not in the paper (0: none); see training/config.py.")  # fmt: skip
@click.option("--margin-step-scale", type=float, default=losses.MARGIN_STEP_SCALE, show_default=True,
              help="Spread-loss margin schedule: m = 0.2 + 0.79·σ(min(10, step/scale − 4)).")  # fmt: skip
@click.option("--loss", type=click.Choice(losses.LOSSES), default="auto", show_default=True,
              help="auto: spread loss for capsules, cross-entropy for CNNs.")  # fmt: skip
@click.option("--calibrate-images", type=int, default=0, show_default=True,
              help="Capsules: start half the capsules active as measured on this many training images "
              "(0: on the noise the model is built with).")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--compile", is_flag=True, help="torch.compile the model.")
@click.option("--compile-mode", type=click.Choice(COMPILE_MODES), default="default",
              show_default=True, help="With --compile: reduce-overhead replays each training step as "
              "CUDA graphs (GPU only; elsewhere the default mode).")  # fmt: skip
@click.option("--routing", type=click.Choice(ROUTINGS), default="plain", show_default=True,
              help="How capsule EM routing is computed in training: fused is the fast path under "
              "--compile, triton the GPU kernels (same function; evaluation uses plain, or triton "
              "when training does).")  # fmt: skip
@click.option("--recompute", type=click.Choice(RECOMPUTE), default="all", show_default=True,
              help="With --routing fused or triton: which routed layers recompute their routing "
              "in backward instead of keeping what it saves (all: least memory; same results).")  # fmt: skip
@click.option("--amp", type=click.Choice(AMP), default="none", show_default=True)
@click.option(
    "--target-familiar-error", type=float, help="Stop when familiar-viewpoint error ≤ this (HSF18 T2)."
)
@click.option(
    "--familiar-snapshots",
    is_flag=True,
    help="Keep the weights at each new lowest familiar-viewpoint error (checkpoints/familiar-step*.pt).",
)
@click.option("--checkpoint-every", type=int, default=0, show_default=True, help="Steps; 0: each epoch.")
@click.option(
    "--eval-every",
    type=int,
    default=1,
    show_default=True,
    help="Epochs between validations (and familiar-error evaluations); the last epoch always validates.",
)
@click.option("--patience", type=int, default=0, show_default=True,
              help="Stop after this many validations without a new best val error (0: never).")  # fmt: skip
@click.option("--out", type=click.Path(file_okay=False), help="Run directory [runs/MODEL-SPLIT-sSEED].")
@click.option("--resume", is_flag=True, help="Continue --out from checkpoints/last.pt (its config.json).")
@click.pass_context
def train(ctx: click.Context, **options) -> None:
    """Train a model; writes config.json, metadata.json, metrics.csv and checkpoints/{last,best}.pt.

    Multi-GPU/CPU: torchrun --nproc-per-node N -m robustcaps train ... (--batch-size is the global batch).
    """
    if options["out"] is None:
        if options["resume"]:
            raise RobustcapsError("--resume needs --out RUN_DIR")
        options["out"] = f"runs/{options['model']}-{options['split']}-s{options['seed']}"
    config = _config(ctx, options)
    from robustcaps.report.tables import family_of  # imports pandas: not at CLI start-up

    if config.amp == "bf16" and family_of(config.model) == "capsnet":
        click.echo(
            "warning: --amp bf16 with a capsule network: EM routing turns the bfloat16 rounding of the poses "
            "into gradients 57-75 % (relative L2) from float64, against 1e-4 in float32 (capsnet-small, "
            "benchmarks/NOTES.md); use --amp none",
            err=True,
        )
    training.fit(config, options["out"], resume=options["resume"])


def _eval_rows(
    loaded: checkpoints.LoadedRun, parts: tuple[str, ...], multi_crop: bool, device: str
) -> list[dict]:
    data = load_split(loaded.config)
    rows = []
    for part in parts:
        tensorset = getattr(data, part)
        if len(tensorset) == 0:
            continue  # the full split has no novel viewpoints
        result = evaluation.evaluate(
            loaded.model, tensorset, device, multi_crop, batch_size=loaded.config.eval_batch_size
        )
        base = {"which": loaded.which, "step": loaded.step, "part": part, "crops": result["crops"]}
        rows.append(base | {"class": "all", "error": result["error"], "n": result["n"]})
        rows += [base | {"class": name, **r} for name, r in result["per_class"].items()]
    return rows


@click.command("eval")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--part", "parts", type=click.Choice(("familiar", "novel", "test", "val")), multiple=True,
              help="Parts to evaluate (repeatable) [all non-empty].")  # fmt: skip
@click.option("--multi-crop", is_flag=True, help="Average 13 crops (centre + 12 diagonal offsets).")
@click.option(
    "--which",
    default="best",
    show_default=True,
    help="Checkpoint: best, last, or a familiar-stepN snapshot (--familiar-snapshots).",
)
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@run_data_option
def eval_(
    run_dir: str, parts: tuple[str, ...], multi_crop: bool, which: str, device: str, data: str | None
) -> None:
    """Error per part and per class of a trained run; prints it and writes RUN_DIR/eval.csv."""
    import pandas as pd

    from robustcaps.training.distributed import World

    device = str(training.resolve_device(device, World()))
    loaded = checkpoints.load_run(run_dir, which, device, data=data)
    rows = _eval_rows(loaded, parts or ("familiar", "novel", "test", "val"), multi_crop, device)
    table = pd.DataFrame(rows)
    path = Path(run_dir) / checkpoints.EVAL_FILE
    if path.exists():  # keep rows of other checkpoints/crop counts; replace the ones evaluated now
        old = pd.read_csv(path, keep_default_na=False, dtype={"class": str})
        keys = ["which", "part", "crops"]
        fresh = set(map(tuple, table[keys].astype(str).values))
        old = old[[tuple(k) not in fresh for k in old[keys].astype(str).values]]
        table = pd.concat([old, table], ignore_index=True)
    atomic_write_text(path, table.to_csv(index=False))
    shown = table[table["which"] == which].pivot_table("error", ["part", "crops"], "class", sort=False)
    click.echo(f"{run_dir} ({which}.pt, step {loaded.step}): error per part and class")
    click.echo(shown.to_string(float_format=lambda e: f"{e:.4f}"))
    click.echo(f"wrote {path}")
