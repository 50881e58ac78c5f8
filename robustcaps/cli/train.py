"""`robustcaps train` and `robustcaps eval`: options in, a TrainConfig out; logic in robustcaps.training."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import MISSING
from pathlib import Path

import click

from robustcaps.choices import names
from robustcaps.cli import options as shared
from robustcaps.cli.options import run_data_option
from robustcaps.errors import RobustcapsError
from robustcaps.io import atomic_write_text
from robustcaps.training import checkpoints, evaluation
from robustcaps.training import train as training
from robustcaps.training.config import SPEED_SETTINGS, Device, Speed, TrainConfig, load_split

# Options of `train` that are not training settings: every other option is a TrainConfig field.
RUN_OPTIONS = ("model_option", "set", "out", "resume")


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


def _config(ctx: click.Context, options: dict, config_class: type = TrainConfig) -> TrainConfig:
    """From the options given; with --resume, from the run's config.json with only the options given."""
    settable = {f.name for f in dataclasses.fields(config_class)} - {"model_overrides"}
    settings = _pairs("--set", options["set"], settable)
    values = {k: v for k, v in options.items() if k in settable} | settings
    values["model_overrides"] = _pairs("--model-option", options["model_option"])
    given = {k for k in values if shared.given_on_command_line(ctx, k)} | set(settings)
    speed_fields = set(SPEED_SETTINGS[Speed.REFERENCE])  # what each named speed stands for
    by_hand = sorted(given & speed_fields)
    if by_hand:  # the four settings given one by one: the run's speed is what they say
        if "speed" in given and values["speed"] != "custom":
            raise RobustcapsError(
                f"--speed {values['speed']} sets {', '.join(sorted(speed_fields))} itself; "
                f"drop {', '.join(by_hand)} or use --speed custom"
            )
        values["speed"] = "custom"
        given.add("speed")
    if not options["resume"] or not (Path(options["out"]) / checkpoints.CONFIG_FILE).exists():
        return config_class(**values)  # nothing stored yet: fit starts the run afresh
    stored = config_class.from_json(Path(options["out"]) / checkpoints.CONFIG_FILE).to_dict()
    if shared.given_on_command_line(ctx, "model_option"):
        given.add("model_overrides")
    if shared.given_on_command_line(ctx, "epochs") and "steps" not in given:
        values["steps"], given = None, given | {"steps"}  # --epochs given alone replaces a stored --steps
    return config_class(**(stored | {k: values[k] for k in given}))


def _setting_option(spec: dataclasses.Field) -> click.decorators.FC:
    """The `train` option of one TrainConfig field, from its default and `setting` metadata."""
    meta, default = spec.metadata, spec.default
    default = default if meta.get("cli_default", MISSING) is MISSING else meta["cli_default"]
    kwargs: dict = {"help": meta.get("help") or None, "hidden": not meta.get("shown")}
    if "choice" in meta:
        kwargs["type"] = click.Choice(names(meta["choice"]))
    elif isinstance(default, bool):
        kwargs["is_flag"] = True
    else:
        kwargs["type"] = meta.get("type") or type(default)
    if spec.name == "model":
        from robustcaps.models import list_models

        kwargs["type"] = click.Choice(list_models())
    if spec.name == "data":
        kwargs["type"] = click.Path(file_okay=False)
    show = default is not None and not kwargs.get("is_flag")
    default = default.value if hasattr(default, "value") else default
    return click.option("--" + spec.name.replace("_", "-"), default=default, show_default=show, **kwargs)


def _rare_settings(config_class: type) -> str:
    rare = [
        f"{f.name}={json.dumps(f.default)}"
        for f in dataclasses.fields(config_class)
        if not f.metadata.get("shown") and f.default is not MISSING
    ]
    return "Other settings, with their defaults (--set KEY=VALUE): " + ", ".join(rare) + "."


def train_command(config_class: type = TrainConfig) -> click.Command:
    """`robustcaps train`, built from `config_class`'s fields: a new setting needs no more code here."""

    @click.pass_context
    def train(ctx: click.Context, **options) -> None:
        """Train a model; writes config.json, metadata.json, metrics.csv and checkpoints/{last,best}.pt.

        Multi-GPU/CPU: torchrun --nproc-per-node N -m robustcaps train ... (--batch-size is the global batch).
        """
        if options["out"] is None:
            if options["resume"]:
                raise RobustcapsError("--resume needs --out RUN_DIR")
            options["out"] = f"runs/{options['model']}-{options['split']}-s{options['seed']}"
        config = _config(ctx, options, config_class)
        if config.amp == "bf16" and config.family == "capsnet":
            click.echo(
                "warning: --amp bf16 with a capsule network: EM routing turns the bfloat16 rounding of the "
                "poses into gradients far from float64 (benchmarks/NOTES.md); use --amp none",
                err=True,
            )
        training.fit(config, options["out"], resume=options["resume"])

    run_options = [
        click.option(
            "--model-option", multiple=True, metavar="KEY=VALUE", help="Model config override (JSON value)."
        ),
        click.option(
            "--set",
            "set",
            multiple=True,
            metavar="KEY=VALUE",
            help="Any other training setting (JSON value), e.g. --set lr_schedule=cosine --set patience=5.",
        ),
        click.option(
            "--out", type=click.Path(file_okay=False), help="Run directory [runs/MODEL-SPLIT-sSEED]."
        ),
        click.option(
            "--resume", is_flag=True, help="Continue --out from checkpoints/last.pt (its config.json)."
        ),
    ]
    settings = [_setting_option(f) for f in dataclasses.fields(config_class) if f.name != "model_overrides"]
    for option in reversed(settings + run_options):
        train = option(train)
    return click.command("train", epilog=_rare_settings(config_class))(train)


train = train_command()


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
@click.option("--device", type=click.Choice(names(Device)), default="auto", show_default=True)
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
