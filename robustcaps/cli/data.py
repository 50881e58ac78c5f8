"""`robustcaps data ...`: fetch, verify and render smallNORB-format data (logic in robustcaps.data)."""

from __future__ import annotations

from pathlib import Path

import click

from robustcaps.cli import data_render


@click.group()
def data() -> None:
    """Get, check and render smallNORB-format data."""


@data.command()
@click.option(
    "--root",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the six smallnorb-*.mat.gz files.",
)
@click.option("--url", "base_url", default=None, help="Base URL to download from (default: the NYU page).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def fetch(root: Path, base_url: str | None, progress: bool) -> None:
    """Download smallNORB (~251 MB), resumable, checking the official MD5s."""
    from robustcaps.data.fetch import BASE_URL, fetch

    for path in fetch(root, base_url=base_url or BASE_URL, progress=progress):
        click.echo(f"ok {path}")


@data.command()
@click.argument("root", type=click.Path(path_type=Path))
def verify(root: Path) -> None:
    """Check the six smallNORB-format files in ROOT (plain or .gz): format, shapes, counts, MD5s."""
    from robustcaps.data.norb_verify import verify

    click.echo("\n".join(verify(root).lines()))


for _command in data_render.COMMANDS:
    data.add_command(_command)
