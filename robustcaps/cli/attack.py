"""`robustcaps attack`: options in, an AttackConfig out; the logic is in robustcaps.attacks.run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import torch

from robustcaps.attacks.adapters import (
    ATTACK_LOSSES,
    ATTACK_PARTS,
    ATTACKS,
    CRAFTING,
    UNITS,
    AttackConfig,
    supports_targeted,
)
from robustcaps.cli import options as shared
from robustcaps.cli.options import device_option, run_data_option
from robustcaps.errors import RobustcapsError

# AttackConfig's defaults, never restated here
DEFAULT = {f.name: f.default for f in dataclasses.fields(AttackConfig)}

MODES = {"untargeted": (False,), "targeted": (True,), "both": (False, True)}
# Without RUN_DIR (options.BUNDLED): the defaults below where the user gave none, and an output folder in
# the current directory.
# Sized so that the full-size capsnet's sweep takes minutes, not hours, on a 2-core CPU.
BUNDLED_DEFAULTS = {
    "attacks": ("fgsm", "bim"),
    "n": 50,
    "steps": 5,
    "checks": False,
    "out_dir": "robustcaps-attack",
}


def parse_eps(values: tuple[str, ...]) -> tuple[float, ...]:
    """`0:0.5:0.05` (start:stop:step, stop included), `0,0.1,0.25` or `0.1`; repeatable; sorted, unique."""
    grid: list[float] = []
    for value in values:
        try:
            if ":" in value:
                start, stop, step = (float(part) for part in value.split(":"))
                if step <= 0 or stop < start:
                    raise ValueError
                count = round((stop - start) / step)
                grid += [round(start + i * step, 10) for i in range(count + 1)]
            else:
                grid += [float(part) for part in value.split(",") if part.strip()]
        except ValueError:
            raise RobustcapsError(
                f"--eps {value!r}: write start:stop:step (e.g. 0:0.5:0.05), a comma list or one number"
            ) from None
    return tuple(sorted(set(grid)))


def attack_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RobustcapsError("--device cuda: no CUDA device is visible; use --device cpu")
    return device


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False), required=False)
@click.option(
    "--attack",
    "attacks",
    multiple=True,
    type=click.Choice(ATTACKS),
    default=DEFAULT["attacks"],
    show_default=True,
    help="Repeatable. '-vote' variants attack a capsnet's routing-free vote logits.",
)
@click.option(
    "--eps",
    "eps",
    multiple=True,
    default=("0:0.5:0.05",),
    show_default=True,
    help="ε grid: start:stop:step, a comma list or one value; repeatable.",
)
@click.option(
    "--units",
    type=click.Choice(UNITS),
    default=DEFAULT["units"],
    show_default=True,
    help="ε in standardised-input units (HSF18 Fig. 3; ε_pixel = ε·mean per-image σ) or in pixels.",
)
@click.option(
    "--mode",
    type=click.Choice(list(MODES)),
    default="untargeted",
    show_default=True,
    help="Targeted: success over the 4 wrong classes of every example (APGD is untargeted only).",
)
@click.option(
    "--loss",
    type=click.Choice(ATTACK_LOSSES),
    default=DEFAULT["loss"],
    show_default=True,
    help="FGSM/BIM/PGD objective on logits: cross-entropy or the CW logit margin.",
)
@click.option(
    "--steps",
    type=int,
    default=DEFAULT["steps"],
    show_default=True,
    help="Iterations of BIM, PGD, APGD and CW.",
)
@click.option(
    "--restarts",
    type=int,
    default=DEFAULT["restarts"],
    show_default=True,
    help="Random restarts of PGD, APGD, Square.",
)
@click.option(
    "--queries", type=int, default=DEFAULT["queries"], show_default=True, help="Square attack query budget."
)
@click.option(
    "--n",
    type=int,
    default=DEFAULT["n"],
    show_default=True,
    help="Examples: a seeded class-stratified subset.",
)
@click.option("--part", type=click.Choice(ATTACK_PARTS), default=DEFAULT["part"], show_default=True)
@click.option(
    "--source",
    type=click.Path(exists=True, file_okay=False),
    help="Also craft every attack on this run's model and evaluate on RUN_DIR's (transfer).",
)
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False), help="Output directory [RUN_DIR/attacks]."
)
@click.option(
    "--which",
    default="best",
    show_default=True,
    help="Checkpoint to attack: best, last, or a familiar-stepN snapshot.",
)
@click.option(
    "--source-which",
    default="best",
    show_default=True,
    help="Checkpoint of --source to craft on (as --which).",
)
@click.option(
    "--batch-size",
    type=int,
    help="Examples crafted at once [at most 100, fewer where memory is short: on a CPU sized from a "
    "measured step and the memory budget (MemAvailable or the cgroup's limit, e.g. Docker's or SLURM's "
    "--mem), stopping with an error if one example does not fit; halved on a GPU that runs out]. Given, "
    "it is used as it is (a GPU still halves it if it runs out).",
)
@device_option
@click.option("--seed", type=int, default=DEFAULT["seed"], show_default=True)
@click.option(
    "--checks/--no-checks",
    default=True,
    show_default=True,
    help="Integrity checks (checks.csv); they add PGD cells at ε_pixel=0.5 and with a 4× budget.",
)
@click.option(
    "--crafting",
    type=click.Choice(CRAFTING),
    default="plain",
    show_default=True,
    help="What the attacks differentiate: the model as loaded, or a copy under torch.compile with fused "
    "capsule routing (the same function, faster once compiled: for long sweeps). Judged by the model "
    "either way.",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
@run_data_option
@click.pass_context
def attack(
    ctx: click.Context,
    run_dir: str | None,
    attacks: tuple[str, ...],
    eps: tuple[str, ...],
    mode: str,
    out_dir: str | None,
    source: str | None,
    which: str,
    source_which: str,
    device: str,
    progress: bool,
    data: str | None,
    **options,
) -> None:
    """White-box (and transfer, vote, Square) attacks on RUN_DIR's model across ε, via torchattacks.

    Writes per_example.csv, summary.csv and checks.csv; an interrupted sweep resumes where it stopped.
    Without RUN_DIR: the capsule network and the CNN committed in results/gpu/models, side by side (FGSM
    and BIM at 5 steps on 50 examples, no checks, unless given), into ./robustcaps-attack.
    """
    from robustcaps.attacks.run import attack_run_dir

    bundled = run_dir is None
    if bundled:
        if source is not None:
            raise RobustcapsError("--source: give RUN_DIR too (without it both bundled models are attacked)")
        defaults = {k: v for k, v in BUNDLED_DEFAULTS.items() if not shared.given_on_command_line(ctx, k)}
        out_dir, attacks = defaults.pop("out_dir", out_dir), defaults.pop("attacks", attacks)
        options |= defaults
    if options["batch_size"] is None:  # not chosen by the user: the largest that fits, up to the default
        options |= {"batch_size": AttackConfig.batch_size, "fit_batch": True}
    config = AttackConfig(
        attacks=tuple(dict.fromkeys(attacks)),
        eps=parse_eps(eps),
        targeted=MODES[mode],
        device=attack_device(device),
        **options,
    )
    if True in config.targeted:
        for name in config.attacks:
            if not supports_targeted(name):
                click.echo(
                    f"Note: --attack {name} has no targeted mode in torchattacks; untargeted only.", err=True
                )
    if bundled:
        _compare_bundled(config, Path(out_dir), which, progress, data)
        return
    results = attack_run_dir(
        run_dir, config, out_dir, source, which=which, progress=progress, data=data, source_which=source_which
    )
    table = results.summary[results.summary["role"] == "sweep"]
    table = table.pivot_table(
        index=["source", "attack", "targeted", "metric"], columns="eps_std", values="value"
    )
    click.echo(table.round(3).rename(columns=lambda e: f"{e:.3g}").to_string())
    click.echo(f"Wrote per_example.csv, summary.csv, checks.csv to {results.out_dir}")
    _warn_failed(results)


def _warn_failed(results) -> None:
    for failure in results.failed_checks:
        click.echo(f"Warning: integrity check failed: {failure}", err=True)


def _compare_bundled(
    config: AttackConfig, out_dir: Path, which: str, progress: bool, data: str | None
) -> None:
    """Attack the committed capsule network and CNN on the same examples and print them side by side."""
    from robustcaps.attacks.run import attack_run_dir
    from robustcaps.report.compare import side_by_side

    runs = shared.bundled_runs()
    results = []
    for run in runs:
        click.echo(f"attacking {run.name} ({which}.pt) on {config.n} test examples", err=True)
        results.append(
            attack_run_dir(run, config, out_dir / run.name, which=which, progress=progress, data=data)
        )
        _warn_failed(results[-1])
    table = side_by_side(results[0].per_example, results[1].per_example, ("capsules", "CNN"))
    click.echo(
        "Untargeted accuracy on the same examples (95 % intervals; difference: capsules − CNN, paired):"
    )
    click.echo(table.to_string(index=False))
    names = ",".join(shared.BUNDLED_RUNS)
    click.echo(f"Wrote per_example.csv, summary.csv, checks.csv to {out_dir}/{{{names}}}")
    click.echo(
        "The full sweep: robustcaps attack RUN_DIR --eps 0:0.5:0.05 --attack fgsm --attack bim --attack pgd "
        "--attack autoattack --n 500 --checks (RUN_DIR: results/gpu/models/capsnet-full or cnn-full)"
    )
