"""The `robustcaps` command: a click group. Each submodule wires one command family and holds no logic."""

from __future__ import annotations

import sys
from importlib import import_module

import click

from robustcaps import __version__
from robustcaps.errors import RobustcapsError
from robustcaps.models.common import keep_freed_cpu_memory

# (module under robustcaps.cli, attribute): each is a click.Command or click.Group.
COMMANDS = (
    ("data", "data"),
    ("models", "models"),
    ("train", "train"),
    ("train", "eval_"),
    ("attack", "attack"),
    ("viewpoint", "viewpoint"),
    ("reproduce", "reproduce"),
    ("report", "report"),
)


class _Group(click.Group):
    """Turns a RobustcapsError anywhere below into click's one-line `Error: ...` and exit code 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RobustcapsError as error:
            raise click.ClickException(str(error)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="robustcaps")
def cli() -> None:
    """Train matrix capsules (EM routing) and CNNs, attack them, and report whether capsules are really more
    robust to novel viewpoints and white-box attacks (Hinton, Sabour, Frosst, ICLR 2018)."""


for _module, _attr in COMMANDS:
    cli.add_command(getattr(import_module(f"robustcaps.cli.{_module}"), _attr))


def main(args: list[str] | None = None) -> None:
    """The `robustcaps` command, with `args` instead of sys.argv when given."""
    # Every command trains or attacks capsule networks, whose large routing tensors otherwise pay fresh
    # page faults each step on CPU (see keep_freed_cpu_memory).
    keep_freed_cpu_memory()
    cli(args, prog_name="robustcaps")


if __name__ == "__main__":
    sys.exit(main())
