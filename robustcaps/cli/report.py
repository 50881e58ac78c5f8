"""`robustcaps report`: regenerate results/README.md, tables and figures from the results CSVs."""

from __future__ import annotations

import click

from robustcaps.report.readme import write_report


@click.command()
@click.option(
    "--results",
    "results_dir",
    type=click.Path(file_okay=False),
    default="results",
    show_default=True,
    help="Results tree written by `robustcaps reproduce`.",
)
def report(results_dir: str) -> None:
    """Write README.md, tables/ (CSV + Markdown) and figures/ (PNG + PDF) under --results."""
    click.echo(f"wrote {write_report(results_dir)}")
