"""`robustcaps viewpoint`: HSF18 Table 2 at matched familiar error; logic in robustcaps.study.viewpoint."""

from __future__ import annotations

from pathlib import Path

import click

from robustcaps.cli.options import data_option, device_option, preset_option, runs_option


@click.command()
@click.option("--split", type=click.Choice(["azimuth", "elevation"]), required=True)
@data_option
@preset_option("Models, step budget and data size (see `robustcaps reproduce --help`).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="results/viewpoint",
    show_default=True,
    help="Where <split>.csv and <split>.md go.",
)
@runs_option("Run directories of the two models [default: runs/viewpoint-<preset>].")
@device_option
def viewpoint(
    split: str, data: str | None, preset: str, out_dir: str, runs_dir: str | None, device: str
) -> None:
    """Train the CNN, then the capsule network until its familiar-viewpoint error matches the CNN's;
    write both models' familiar and novel error next to the paper's (Table 2)."""
    from robustcaps.study.presets import get_preset
    from robustcaps.study.viewpoint import resolve_data_root, run_viewpoint

    chosen = get_preset(preset)
    root = resolve_data_root(data, chosen.data_size)
    runs = Path(runs_dir) if runs_dir else Path("runs") / f"viewpoint-{chosen.name}"
    note = f"Regenerate: robustcaps viewpoint --split {split} --preset {preset}" + (
        f" --data {data}" if data else ""
    )
    rows = run_viewpoint(split, chosen, root, runs, Path(out_dir), device, note, click.echo)
    click.echo(rows[["model", "familiar_error", "novel_error", "familiar_gap"]].to_string(index=False))
