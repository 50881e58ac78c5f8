"""`robustcaps train` and `robustcaps eval`: options in, a TrainConfig out; logic in robustcaps.training."""

from __future__ import annotations

import json
from dataclasses import MISSING, fields
from pathlib import Path

import click

from robustcaps.cli import options as shared
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
    SPEEDS,
    SPLITS,
    STEREO,
    VALIDATIONS,
    TrainConfig,
    load_split,
)

# every TrainConfig field with a plain default: all but model_overrides (--model-option sets it)
DEFAULTS = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
# Shown by `train --help`; every other TrainConfig field is set with --set KEY=VALUE (its option still
# works, unlisted). Defaults are TrainConfig's, never restated here.
SHOWN = set("model model_option data split val epochs steps batch_size lr seed device".split())
SHOWN |= {"speed", "out", "resume", "set"}
# what --speed stands for; giving any of them by hand makes the run's speed "custom"
SPEED_FIELDS = ("compile", "compile_mode", "routing", "recompute")


def _value(text: str) -> object:
    """A JSON value (numbers, true/false, null, objects), else the bare word as a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _pairs(option: str, items: tuple[str, ...], keys: set[str] | None = None) -> dict:
    values = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise RobustcapsError(f"{option} {item!r}: write KEY=VALUE, e.g. {option} iterations=2")
        if keys is not None and key not in keys:
            raise RobustcapsError(f"{option} {key}: not a training setting; one of {', '.join(sorted(keys))}")
        values[key] = _value(text)
    return values


def _config(ctx: click.Context, options: dict) -> TrainConfig:
    """From the options given; with --resume, from the run's config.json with only the options given."""
    settings = _pairs("--set", options["set"], set(DEFAULTS))
    values = {k: v for k, v in options.items() if k in DEFAULTS} | settings
    values["model_overrides"] = _pairs("--model-option", options["model_option"])
    given = {k for k in values if shared.given_on_command_line(ctx, k)} | set(settings)
    by_hand = sorted(given & set(SPEED_FIELDS))
    if by_hand:  # the four settings given one by one: the run's speed is what they say
        if "speed" in given and values["speed"] != "custom":
            raise RobustcapsError(
                f"--speed {values['speed']} sets {', '.join(SPEED_FIELDS)} itself; "
                f"drop {', '.join(by_hand)} or use --speed custom"
            )
        values["speed"] = "custom"
        given.add("speed")
    if not options["resume"] or not (Path(options["out"]) / checkpoints.CONFIG_FILE).exists():
        return TrainConfig(**values)  # nothing stored yet: fit starts the run afresh
    stored = TrainConfig.from_json(Path(options["out"]) / checkpoints.CONFIG_FILE).to_dict()
    if shared.given_on_command_line(ctx, "model_option"):
        given.add("model_overrides")
    if shared.given_on_command_line(ctx, "epochs") and "steps" not in given:
        values["steps"], given = None, given | {"steps"}  # --epochs given alone replaces a stored --steps
    return TrainConfig(**(stored | {k: values[k] for k in given}))


def _option(*decls: str, **kwargs):
    """A train option named after its TrainConfig field: the default is the field's, the help as given."""
    name = decls[0].lstrip("-").replace("-", "_")
    if name in DEFAULTS:
        kwargs.setdefault("default", DEFAULTS[name])
        kwargs.setdefault("show_default", DEFAULTS[name] is not None and not kwargs.get("is_flag"))
    return click.option(*decls, hidden=name not in SHOWN, **kwargs)


def _rare_settings() -> str:
    rare = [f"{k}={json.dumps(v)}" for k, v in DEFAULTS.items() if k not in SHOWN]
    return "Other settings, with their defaults (--set KEY=VALUE): " + ", ".join(rare) + "."


@click.command(epilog=_rare_settings())
@_option("--model", help="Registered model (robustcaps models).")
@_option("--model-option", multiple=True, metavar="KEY=VALUE", help="Model config override (JSON value).")
@_option("--data", type=click.Path(file_okay=False), help="smallNORB-format directory [rendered stand-in].")
@_option("--data-size", help="Stand-in size when --data is not given.")
@_option("--split", type=click.Choice(SPLITS))
@_option(
    "--stereo",
    type=click.Choice(STEREO),
    help="Stereo pair as 2 channels (official code) or each camera as its own sample.",
)
@_option(
    "--val",
    type=click.Choice(VALIDATIONS),
    help="Validation data, held out from training: one whole instance per category (measures "
    "generalisation to unseen objects, like the test set) or random pairs (val_fraction; their "
    "instances and viewpoints stay in training, so it reads lower than test error).",
)
@_option("--val-fraction", type=float, help="Pairs held out with --val pairs.")
@_option("--max-per-part", type=int, help="Keep at most this many images per part (quick runs).")
@_option("--epochs", type=int)
@_option("--steps", type=int, help="Train this many steps (replaces --epochs).")
@_option("--batch-size", type=int, help="Global batch (all processes).")
@_option("--lr", type=float)
@_option(
    "--lr-schedule",
    type=click.Choice(LR_SCHEDULES),
    help="exponential: lr ×0.96 per lr_decay_steps (HSF18); cosine: down to lr × lr_min_factor over the run.",
)
@_option("--lr-decay-steps", type=float, help="lr ×0.96 per this.")
@_option("--lr-min-factor", type=float, help="With the cosine schedule: the final lr as a fraction of lr.")
@_option("--warmup-steps", type=int, help="Linear lr warm-up, not in the paper (0: none).")
@_option(
    "--margin-step-scale",
    type=float,
    help="Spread-loss margin schedule: m = 0.2 + 0.79·σ(min(10, step/scale − 4)).",
)
@_option(
    "--loss",
    type=click.Choice(losses.LOSSES),
    help="auto: each family's paper (EM: spread; dynamic routing: margin; self-routing, CNN: cross-entropy).",
)
@_option(
    "--calibrate-images",
    type=int,
    help="Capsules: start half the capsules active as measured on this many training images "
    "(0: on the noise the model is built with).",
)
@_option("--seed", type=int)
@_option("--device", type=click.Choice(DEVICES))
@_option(
    "--speed",
    type=click.Choice(SPEEDS),
    default="auto",
    show_default=True,
    help="How the same function is computed: auto picks the fastest path here (Triton kernels under CUDA "
    "graphs on a GPU, compiled fused routing on a CPU for runs long enough to pay for compiling); "
    "reference is plain eager; the choice is recorded in config.json.",
)
@_option("--compile", is_flag=True, help="torch.compile the model.")
@_option(
    "--compile-mode",
    type=click.Choice(COMPILE_MODES),
    help="With --compile: reduce-overhead replays each training step as CUDA graphs (GPU only).",
)
@_option(
    "--routing",
    type=click.Choice(ROUTINGS),
    help="How capsule EM routing is computed in training: fused is the fast path under --compile, "
    "triton the GPU kernels (same function; evaluation uses plain, or triton when training does).",
)
@_option(
    "--recompute",
    type=click.Choice(RECOMPUTE),
    help="With fused or triton routing: which routed layers recompute their routing in backward "
    "instead of keeping what it saves (all: least memory; same results).",
)
@_option("--amp", type=click.Choice(AMP))
@_option("--target-familiar-error", type=float, help="Stop when familiar-viewpoint error ≤ this (HSF18 T2).")
@_option(
    "--familiar-snapshots",
    is_flag=True,
    help="Keep the weights at each new lowest familiar-viewpoint error (checkpoints/familiar-step*.pt).",
)
@_option("--checkpoint-every", type=int, help="Steps; 0: each epoch.")
@_option(
    "--eval-every",
    type=int,
    help="Epochs between validations (and familiar-error evaluations); the last epoch always validates.",
)
@_option(
    "--patience", type=int, help="Stop after this many validations without a new best val error (0: never)."
)
@_option(
    "--set",
    "set",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any other training setting (JSON value), e.g. --set lr_schedule=cosine --set patience=5.",
)
@_option("--out", type=click.Path(file_okay=False), help="Run directory [runs/MODEL-SPLIT-sSEED].")
@_option("--resume", is_flag=True, help="Continue --out from checkpoints/last.pt (its config.json).")
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
@click.argument("run_dir", type=click.Path(file_okay=False), required=False)
@click.option(
    "--part",
    "parts",
    type=click.Choice(("familiar", "novel", "test", "val")),
    multiple=True,
    help="Parts to evaluate (repeatable) [all non-empty; without RUN_DIR: test].",
)
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
    run_dir: str | None, parts: tuple[str, ...], multi_crop: bool, which: str, device: str, data: str | None
) -> None:
    """Error per part and per class of a trained run; prints it and writes RUN_DIR/eval.csv.

    Without RUN_DIR: the capsule network and the CNN committed in results/gpu/models, on their test part,
    into ./robustcaps-eval/.
    """
    from robustcaps.training.distributed import World

    device = str(training.resolve_device(device, World()))
    if run_dir is not None:
        _evaluate_into(
            Path(run_dir), Path(run_dir) / checkpoints.EVAL_FILE, parts, multi_crop, which, device, data
        )
        return
    for run in shared.bundled_runs():
        out = Path("robustcaps-eval") / run.name / checkpoints.EVAL_FILE
        _evaluate_into(run, out, parts or ("test",), multi_crop, which, device, data)


def _evaluate_into(
    run_dir: Path, path: Path, parts: tuple[str, ...], multi_crop: bool, which: str, device: str, data
) -> None:
    import pandas as pd

    loaded = checkpoints.load_run(run_dir, which, device, data=data)
    rows = _eval_rows(loaded, parts or ("familiar", "novel", "test", "val"), multi_crop, device)
    table = pd.DataFrame(rows)
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
