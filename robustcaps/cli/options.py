"""Options that several commands share, defined once so that their names, defaults and help agree."""

from __future__ import annotations

from pathlib import Path

import click

from robustcaps.errors import RobustcapsError
from robustcaps.study.presets import PRESETS

# `attack` and `eval` without RUN_DIR: the trained full-size models committed with the repository.
BUNDLED = Path(__file__).resolve().parents[2] / "results" / "gpu" / "models"
BUNDLED_RUNS = ("capsnet-full", "cnn-full")


def given_on_command_line(ctx: click.Context, name: str) -> bool:
    """Whether the user gave option `name` (as opposed to its default)."""
    return ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE


def bundled_runs() -> list[Path]:
    runs = [BUNDLED / name for name in BUNDLED_RUNS]
    missing = [str(run) for run in runs if not run.is_dir()]
    if missing:
        raise RobustcapsError(
            f"no bundled models at {', '.join(missing)} (they come with the repository's "
            "results/gpu/models); give RUN_DIR"
        )
    return runs


device_option = click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)

data_option = click.option(
    "--data",
    type=click.Path(file_okay=False),
    default=None,
    help="smallNORB-format directory (real or rendered); default: the preset's rendered stand-in.",
)

# Where a trained run's dataset is on this machine (`robustcaps eval`, `robustcaps attack`)
run_data_option = click.option(
    "--data",
    type=click.Path(file_okay=False),
    default=None,
    help="Where RUN_DIR's dataset is, if not where it was trained (checked against its metadata).",
)


def preset_option(help: str) -> click.decorators.FC:
    return click.option(
        "--preset", type=click.Choice(list(PRESETS)), default="quick", show_default=True, help=help
    )


def runs_option(help: str) -> click.decorators.FC:
    return click.option("--runs", "runs_dir", type=click.Path(file_okay=False), default=None, help=help)
