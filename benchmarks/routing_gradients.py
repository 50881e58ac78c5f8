"""How the number of EM routing iterations changes a capsule network's gradients at initialisation.

    python benchmarks/routing_gradients.py [--model capsnet-small] [--data DIR] [--n 64]

Same initial weights (seed 0) for every iteration count, one batch of the full split's test images
(centre crop), cross-entropy on the logits; prints the spread of the class logits and the gradient norm
of each layer (docs/LEARNING.md, where it explains why the short-run presets route twice).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from robustcaps.data import transforms
from robustcaps.models import create_model
from robustcaps.presets import CAPSNET_INIT
from robustcaps.train import TrainConfig, load_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="capsnet-small")
    parser.add_argument("--data", default=None, help="smallNORB-format directory [small stand-in]")
    parser.add_argument("--n", type=int, default=64, help="test images in the batch")
    parser.add_argument("--iterations", default="1,2,3,4")
    args = parser.parse_args()
    test = load_split(TrainConfig(model=args.model, data=args.data, data_size="small")).test
    x, y = transforms.test_batch(test.images[: args.n]), test.labels[: args.n]
    print(f"{args.model}, {len(y)} test images, seed-0 initial weights, CPU")
    print("| iterations | class-logit std | gradient norm per layer |\n| --- | --- | --- |")
    for iterations in (int(i) for i in args.iterations.split(",")):
        torch.manual_seed(0)
        overrides = dict(CAPSNET_INIT, iterations=iterations, in_channels=x.shape[1])
        model = create_model(args.model, **overrides).train()
        logits = model(x)
        F.cross_entropy(logits, y).backward()
        squares: dict[str, float] = {}
        for name, parameter in model.named_parameters():
            layer = name.split(".")[0]
            squares[layer] = squares.get(layer, 0.0) + float(parameter.grad.norm() ** 2)
        norms = ", ".join(f"{layer} {total**0.5:.3g}" for layer, total in squares.items())
        print(f"| {iterations} | {float(logits.detach().std(1).mean()):.3f} | {norms} |")


if __name__ == "__main__":
    main()
