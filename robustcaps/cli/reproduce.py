"""`robustcaps reproduce`: the whole study for one preset, resumable; logic in robustcaps.study.pipeline."""

from __future__ import annotations

import click

from robustcaps.cli.options import data_option, device_option, preset_option, runs_option


@click.command()
@preset_option(
    "quick: the CPU demo (make demo); converged: every family trained to its plateau on a CPU "
    "(results/converged); gpu: full-size models sized for one lent GPU; families, gpu-families: quick, gpu "
    "with the dynamic-routing and self-routing networks added; paper: HSF18 settings; tiny: for tests."
)
@data_option
@click.option(
    "--out",
    "results_dir",
    type=click.Path(file_okay=False),
    default="results",
    show_default=True,
    help="Results tree: CSVs, tables, figures, README.md.",
)
@runs_option("Checkpoints and per-example attack results [default: runs/reproduce-<preset>].")
@device_option
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes that work through the steps side by side, each with its share of the cores; a step "
    "waits for the steps it needs (2 on a 2-core machine finishes the converged preset sooner).",
)
def reproduce(
    preset: str, data: str | None, results_dir: str, runs_dir: str | None, device: str, jobs: int
) -> None:
    """Render/verify data, train capsnet and CNN on the full, azimuth and elevation splits, attack them,
    check the attacks, and write the report. Finished steps (same config, outputs present) are skipped."""
    from robustcaps.study.pipeline import reproduce as run
    from robustcaps.study.presets import get_preset

    run(
        get_preset(preset),
        data=data,
        results_dir=results_dir,
        runs_dir=runs_dir,
        device=device,
        echo=click.echo,
        jobs=jobs,
    )
