"""`robustcaps data ...`: fetch, verify and render smallNORB-format data (logic in robustcaps.data)."""

from __future__ import annotations

import click

from robustcaps.cli import data_render


@click.group()
def data() -> None:
    """Get, check and render smallNORB-format data."""


for _command in data_render.COMMANDS:
    data.add_command(_command)
