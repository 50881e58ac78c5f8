"""`robustcaps data render` and `data contact-sheet`: wiring only; the work is in data.standin.render."""

from __future__ import annotations

from pathlib import Path

import click


def _int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None


@click.command("render")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the six smallNORB-format files and manifest.json.",
)
@click.option(
    "--size",
    default="full",
    show_default=True,
    type=click.Choice(["full", "small", "tiny"]),
    help="full: the smallNORB grid, 24,300 pairs per part; small: 6 elevations x 18 azimuths x 2 lightings "
    "(5,400); tiny: 2 x 18 x 1 (900). Always all 5 classes x 10 instances.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for the per-image nuisance.")
@click.option(
    "--elevations", callback=_int_list, help="Elevation indices 0..8, e.g. 0,2,5,8 (overrides --size)."
)
@click.option("--azimuths", callback=_int_list, help="Azimuth info values 0,2,..,34 (overrides --size).")
@click.option("--lightings", callback=_int_list, help="Lighting indices 0..5 (overrides --size).")
@click.option(
    "--supersample",
    default=2,
    show_default=True,
    type=click.IntRange(1, 4),
    help="Rasterise at this multiple of 96 px and box-filter down (anti-aliasing); 1 is ~3x faster.",
)
@click.option(
    "--workers",
    default=None,
    type=click.IntRange(1, 64),
    help="Processes (default: one per core, at most 16).",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
def render(
    out_dir: Path,
    size: str,
    seed: int,
    elevations,
    azimuths,
    lightings,
    supersample: int,
    workers,
    progress: bool,
) -> None:
    """Render the stand-in viewpoint dataset in the exact smallNORB file format."""
    from robustcaps.data.standin.render import render_dataset

    path = render_dataset(
        out_dir,
        seed=seed,
        size=size,
        elevations=elevations,
        azimuths=azimuths,
        lightings=lightings,
        progress=progress,
    )
    click.echo(f"wrote {path}")


@click.command("contact-sheet")
@click.argument("data_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_path",
    default=Path("results/dataset/contact_sheet.png"),
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="PNG to write.",
)
def contact_sheet(data_dir: Path, out_path: Path) -> None:
    """Draw category x instance x a few viewpoints of a smallNORB-format dataset (rendered or real)."""
    from robustcaps.data.contact_sheet import write_contact_sheet

    click.echo(f"wrote {write_contact_sheet(data_dir, out_path)}")


COMMANDS = [render, contact_sheet]
