"""`robustcaps data ...`: fetch, verify and render smallNORB-format data (logic in robustcaps.data)."""

from __future__ import annotations

import click


@click.group()
def data() -> None:
    """Get, check and render smallNORB-format data."""


try:  # the renderer's commands live in their own module, written by another engineer
    from robustcaps.cli import data_render
except ImportError as _error:
    if _error.name != "robustcaps.cli.data_render":
        raise
else:
    for _command in data_render.COMMANDS:
        data.add_command(_command)
