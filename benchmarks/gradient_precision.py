"""How far a capsule network's training gradient is from float64 under each GPU precision mode.

    python benchmarks/gradient_precision.py RUN_DIR [--data DIR] [--n 32]

One batch of the run's test images, cross-entropy on the logits, the gradient of every parameter in
float64 (the yardstick), then in float32, with TF32 convolutions, and under bfloat16 autocast; prints the
relative L2 error and the cosine with the float64 gradient. Runs on the CPU: TF32 is emulated there by
rounding each convolution's operands to TF32's 10 mantissa bits (round to nearest even) and accumulating
in float32, which is what cuDNN does on Ampere and later GPUs. Hand-written because no library emulates
TF32 off a GPU. The backward convolutions get the rounding on their incoming gradient only (cuDNN rounds
both operands of each backward product too), so the TF32 row is a close, slightly optimistic estimate.
"""

from __future__ import annotations

import argparse
import contextlib
import copy

import torch
import torch.nn.functional as F
from torch import nn

from robustcaps.attacks.adapters import AttackConfig
from robustcaps.attacks.run import load_eval_set
from robustcaps.training.checkpoints import load_run


def round_to_tf32(t: torch.Tensor) -> torch.Tensor:
    bits = t.contiguous().view(torch.int32)
    bits = (bits + 0x0FFF + ((bits >> 13) & 1)) & ~0x1FFF  # drop 13 of float32's 23 mantissa bits
    return bits.view(torch.float32)


class _TF32(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t):
        return round_to_tf32(t)

    @staticmethod
    def backward(ctx, grad):
        return round_to_tf32(grad)


@contextlib.contextmanager
def tf32_convolutions():
    original = nn.Conv2d._conv_forward

    def rounded(self, x, weight, bias):
        return original(self, _TF32.apply(x), _TF32.apply(weight), bias)

    nn.Conv2d._conv_forward = rounded
    try:
        yield
    finally:
        nn.Conv2d._conv_forward = original


def gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, context) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    with context:
        logits = model(x)
    F.cross_entropy(logits.to(x.dtype), y).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()]).double()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--data", default=None, help="where the run's dataset is, if not where it was made")
    parser.add_argument("--which", default="best")
    parser.add_argument("--n", type=int, default=32, help="test images in the batch")
    args = parser.parse_args()
    loaded = load_run(args.run_dir, which=args.which, data=args.data)
    model = loaded.model.train()
    examples = load_eval_set(loaded, AttackConfig(part="test", n=args.n, seed=0))
    x, y = examples.images, examples.labels
    reference = gradient(copy.deepcopy(model).double(), x.double(), y, contextlib.nullcontext())
    modes = {
        "float32": contextlib.nullcontext(),
        "float32, TF32 convolutions (emulated)": tf32_convolutions(),
        "bfloat16 autocast": torch.autocast("cpu", dtype=torch.bfloat16),
    }
    print(f"{args.run_dir} ({loaded.config.model}, step {loaded.step}), {len(y)} test images, CPU")
    print("| mode | ‖g − g64‖ / ‖g64‖ | cosine(g, g64) |\n| --- | --- | --- |")
    for name, context in modes.items():
        g = gradient(model, x, y, context)
        error = float((g - reference).norm() / reference.norm())
        print(f"| {name} | {error:.3g} | {float(F.cosine_similarity(g, reference, dim=0)):.4f} |")


if __name__ == "__main__":
    main()
