"""`robustcaps models`: the registered models, their parameters and FLOPs per image."""

from __future__ import annotations

import click

from robustcaps.models import list_models, model_info


@click.command("models")
@click.option(
    "--in-channels",
    type=click.IntRange(1, 2),
    default=1,
    show_default=True,
    help="1: one camera per sample; 2: the stereo pair as channels (adds first-layer parameters).",
)
def models(in_channels: int) -> None:
    """List the models --model accepts: parameters, configuration and FLOPs per 32×32 image.

    FLOPs are counted with torch.utils.flop_counter.FlopCounterMode (convolutions and matrix products,
    routing's included; element-wise operations are not counted), as executed: capsnet casts its votes
    as (I4 x W) products, four times the multiply-adds of the 4x4 matrix products. Each row names the
    paper whose smallNORB configuration the model follows.
    """
    rows = [model_info(name, in_channels) for name in list_models()]
    header = f"{'name':<22} {'parameters':>11} {'MFLOPs/image':>13}  configuration; paper"
    click.echo(header)
    click.echo("-" * len(header))
    for row in rows:
        mflops = row["flops_per_image"] / 1e6
        described = f"{row['configuration']}; {row['paper']}"
        click.echo(f"{row['name']:<22} {row['parameters']:>11,} {mflops:>13.1f}  {described}")
