"""Batches that fit: how many examples an attack may craft at once without running out of memory.

On a CPU the batch is sized before the sweep from the memory budget (robustcaps.memory: MemAvailable or a
cgroup limit, whichever is smaller) and the memory one crafting step and one judging forward take per
example, measured on a few examples; where not even one example fits, the sweep stops before it starts.
On a GPU a batch that runs out of memory is split in halves and crafted again
(models.common.in_halves_on_oom). Written by hand: neither torch nor torchattacks sizes batches.
"""

from __future__ import annotations

import torch
from torch import nn

from robustcaps.memory import batch_within, bytes_per_example, memory_budget, release_freed_memory

# One example needs at most STEP × the probe's measure: a BIM sweep on capsnet-full held 0.8× it per example
# (benchmarks/NOTES.md), and the rest is room for attacks that keep more copies and for the allocator.
STEP = 2.0
# Of the budget, what a batch may take by the probe's measure: the rest for the process itself, the
# allocator's slack and what the measurement misses (a batch's size hardly changes a CPU's throughput).
SAFETY = 0.3
ADVICE = (
    "raise the memory limit, attack a smaller model, or give --batch-size 1 to craft one example at a time "
    "regardless"
)


def fitting_batch(
    model: nn.Module, images: torch.Tensor, requested: int, device: str, crafter: nn.Module | None = None
) -> int:
    """The batch to craft with: `requested`, or on a CPU as many examples as fit in SAFETY of the memory
    budget, if fewer. RobustcapsError before any work where not even one example fits."""
    if torch.device(device).type != "cpu":
        return requested  # a GPU backs off when it runs out instead (models.common.in_halves_on_oom)
    release_freed_memory()
    budget = memory_budget()
    per_example = _per_example(model, crafter if crafter is not None else model, images)
    return batch_within(budget, per_example, requested, SAFETY, STEP, ADVICE)


def _per_example(model: nn.Module, crafter: nn.Module, images: torch.Tensor) -> float | None:
    """The larger of a crafting step (forward and input gradient through `crafter`) and a judging forward
    (no gradient, through `model`), per example."""

    def craft(probe: torch.Tensor) -> torch.Tensor:
        probe = probe.detach().clone().requires_grad_(True)
        return torch.autograd.grad(crafter(probe).sum(), probe)[0]

    @torch.no_grad()
    def judge(probe: torch.Tensor) -> torch.Tensor:
        return model(probe)

    measured = [bytes_per_example(craft, images), bytes_per_example(judge, images)]
    return None if None in measured else max(measured)
