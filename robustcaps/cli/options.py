"""Options that several commands share, defined once so that their names, defaults and help agree."""

from __future__ import annotations

import click

from robustcaps.study.presets import PRESETS

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
