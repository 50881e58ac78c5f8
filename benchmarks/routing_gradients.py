"""How the number of EM routing iterations changes a capsule network's gradients, at init or trained.

    python benchmarks/routing_gradients.py [--model capsnet-small] [--data DIR] [--n 64] [--run RUN_DIR]
                                           [--iterations 1,2,3,4] [--estep-temperature 1]

Same weights for every iteration count (seed-0 initial ones, or a trained run's with --run); two
batches of the full split's test images (centre crop, interleaved), cross-entropy on the logits. Prints
the spread of the class logits, each layer's gradient norm on the first batch, and the cosine between
the two batches' gradients per layer: how much of the gradient is signal shared across batches rather
than batch-specific; then how hard each E-step's assignments are (Σ R² / Σ R per routed layer and E-step: 1
when every child goes to one parent, 1/k when it is spread evenly over k). docs/LEARNING.md uses it to
explain why the short-run presets route twice.
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from robustcaps.data import transforms
from robustcaps.models import create_model, routing
from robustcaps.study.presets import CAPSNET_INIT
from robustcaps.training import TrainConfig, checkpoints, load_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="capsnet-small")
    parser.add_argument("--data", default=None, help="smallNORB-format directory [small stand-in]")
    parser.add_argument("--n", type=int, default=64, help="test images in each of the two batches")
    parser.add_argument("--iterations", default="1,2,3,4")
    parser.add_argument("--estep-temperature", type=float, default=1.0, help="T of every E-step (1: HSF18)")
    parser.add_argument("--run", default=None, help="a trained run's best weights instead of seed-0 init")
    args = parser.parse_args()
    trained = None if args.run is None else checkpoints.load_run(args.run, data=args.data)
    model_name = args.model if trained is None else trained.config.model
    test = load_split(TrainConfig(model=model_name, data=args.data, data_size="small")).test
    x, y = transforms.test_batch(test.images[: 2 * args.n]), test.labels[: 2 * args.n]
    weights = "seed-0 initial weights" if trained is None else f"the weights of {args.run}"
    print(f"{model_name}, 2 × {args.n} test images, {weights}, E-step T={args.estep_temperature:g}, CPU")
    print("| iterations | class-logit std | gradient norm per layer | cosine of two batches' gradients |")
    print("| --- | --- | --- | --- |")
    hardness: dict[int, list[float]] = {}
    for iterations in (int(i) for i in args.iterations.split(",")):
        torch.manual_seed(0)
        base = CAPSNET_INIT if trained is None else trained.config.model_overrides
        overrides = dict(
            base, iterations=iterations, in_channels=x.shape[1], estep_temperature=args.estep_temperature
        )
        model = create_model(model_name, **overrides).train()
        if trained is not None:  # the same weights, routed with a different number of iterations
            model.load_state_dict(trained.model.state_dict())
        (first, spread), (second, _) = (layer_gradients(model, x[k::2], y[k::2]) for k in (0, 1))
        norms = ", ".join(f"{layer} {float(g.norm()):.3g}" for layer, g in first.items())
        cosines = ", ".join(
            f"{layer} {float(F.cosine_similarity(g, second[layer], dim=0)):.2f}" for layer, g in first.items()
        )
        print(f"| {iterations} | {spread:.3f} | {norms} | {cosines} |")
        with record_sharpness() as sharpness, torch.no_grad():
            model(x[0::2])
        hardness[iterations] = sharpness
    print("\n| iterations | Σ R² / Σ R after each E-step: " + ", ".join(ROUTED) + " |\n| --- | --- |")
    for iterations, sharpness in hardness.items():
        steps = max(iterations - 1, 1)
        per_layer = [sharpness[k : k + steps] for k in range(0, len(sharpness), steps)]
        cells = ", ".join(f"{name} " + " / ".join(f"{v:.2f}" for v in values) for name, values in zip(
            ROUTED, per_layer, strict=False))  # fmt: skip
        print(f"| {iterations} | {cells or 'no E-step'} |")


ROUTED = ("ConvCaps1", "ConvCaps2", "ClassCaps")  # the routed layers, in the order they route


@contextmanager
def record_sharpness():
    """Collect Σ R² / Σ R of every E-step's responsibilities while the block runs (plain routing path:
    em_routing looks `_normalise` up in its module at each call)."""
    values: list[float] = []
    normalise = routing._normalise

    def spy(log_joint, children, n_children):
        log_r = normalise(log_joint, children, n_children)
        r = log_r.detach().exp()
        values.append(float((r * r).sum() / r.sum()))
        return log_r

    routing._normalise = spy
    try:
        yield values
    finally:
        routing._normalise = normalise


def layer_gradients(model, x, y) -> tuple[dict, float]:
    """Each layer's parameter gradient, flattened, for one batch, and the batch's class-logit spread."""
    model.zero_grad()
    logits = model(x)
    F.cross_entropy(logits, y).backward()
    flat: dict[str, list] = {}
    for name, parameter in model.named_parameters():
        flat.setdefault(name.split(".")[0], []).append(parameter.grad.flatten())
    return {layer: torch.cat(parts) for layer, parts in flat.items()}, float(logits.detach().std(1).mean())


if __name__ == "__main__":
    main()
