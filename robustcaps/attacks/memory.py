"""Batches that fit: how many examples an attack may craft at once without running out of memory.

On a CPU the batch is sized before the sweep from the memory one crafting step takes per example,
measured on a few examples, and the memory the system has available. On a GPU a batch that runs out of
memory is split in halves and crafted again (models.common.in_halves_on_oom). Written by hand: neither
torch nor torchattacks sizes batches.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

PROBE = 4  # examples in the measuring step
# Of the available memory: the probe sees one forward and input gradient, and an attack step holds about
# twice that (torchattacks' own copies; benchmarks/NOTES.md).
SAFETY = 0.3


def available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (Linux), else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def bytes_per_example(model: nn.Module, images: torch.Tensor) -> float | None:
    """Peak resident memory per example of one crafting step (forward and input gradient) on PROBE
    examples; None where the peak cannot be measured (it is reset through /proc/self/clear_refs, Linux)."""
    probe = images[:PROBE].detach().clone().requires_grad_(True)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak resident set size
        before = _status_kb("VmRSS")
        (gradient,) = torch.autograd.grad(model(probe).sum(), probe)
        peak = _status_kb("VmHWM")
    except OSError:
        return None
    del gradient
    return max(peak - before, 1) * 1024 / len(probe)


def fitting_batch(model: nn.Module, images: torch.Tensor, requested: int, device: str) -> int:
    """The batch to craft with: `requested`, or on a CPU as many examples as fit in SAFETY of the
    available memory, if fewer."""
    if torch.device(device).type != "cpu":
        return requested  # a GPU backs off when it runs out instead (models.common.in_halves_on_oom)
    per_example, available = bytes_per_example(model, images), available_bytes()
    if per_example is None or available is None:
        return requested
    return max(1, min(requested, int(SAFETY * available / per_example)))
