"""Layers every model shares."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from collections.abc import Iterator

import torch
from torch import Tensor, nn


class Standardize(nn.Module):
    """Per-image standardisation, the first layer of every model (HSF18 §5: "zero mean, unit variance").

        x' = (x − mean(x)) / (std(x) + ε),   mean and std over (C, H, W) of each image

    Living inside the model keeps the RobustBench contract: data loaders, training and attacks all
    feed [0, 1] pixels, and gradients flow through the normalisation. ε keeps a flat image finite.
    """

    def __init__(self, epsilon: float = 1e-5) -> None:
        super().__init__()
        self.epsilon = epsilon

    def forward(self, x: Tensor) -> Tensor:
        dims = tuple(range(1, x.dim()))
        std, mean = torch.std_mean(x, dim=dims, correction=0, keepdim=True)
        return (x - mean) / (std + self.epsilon)


@contextlib.contextmanager
def full_float32_convolutions(enabled: bool = True) -> Iterator[None]:
    """cuDNN convolutions in full float32 while inside (torch lets cuDNN use TF32 on Ampere and later GPUs).

    Why capsule networks need it: EM routing turns small changes of the poses into large changes of the
    vote variances that set every capsule's cost. On the H200 the float32 gradients of capsnet were 10-15 %
    (relative L2) from float64, against 3e-5 on the CPU; emulating TF32 (operands rounded to 10 mantissa
    bits) in the convolutions of a trained capsnet-small on the CPU gives 16 %, full float32 3e-4
    (benchmarks/README.md). The convolutions are a small part of a capsule network's work. Written here
    because torch.backends.cudnn.flags() sets every cuDNN flag at once, not this one alone. Read when a
    convolution is traced or run, so torch.compile must compile inside the block.
    """
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = previous and not enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = previous


def keep_freed_cpu_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of unmapping it; call once at process start.

    glibc serves every block over 32 MiB with a fresh mmap and unmaps it on free, so each large tensor
    (ConvCaps votes are 40 MB to 1.4 GB a batch) pays its page faults again on every step. Measured on the
    project's 2-core VM: allocating and filling a fresh 42 MB tensor took 120 ms, refilling one 10 ms; the
    end-to-end gains are in benchmarks/results (malloc=no-mmap). Memory then stays with the process until
    it exits, as with torch's CUDA caching allocator. Returns whether
    the setting took (False off Linux or without glibc's mallopt).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


# Inductor's store-or-recompute thresholds for fused EM routing (routing_fused, routing_gathered): each vote
# is an expression of 8 loads (9 with coordinate offsets) that several sums consume. At torch's defaults
# inductor writes the votes to memory once per pass, forward and backward, because an expression of over
# 4 reads with several users is stored (`realize_reads_threshold`), and so is any whose reads pile up past
# 8 (`realize_acc_reads_threshold`: a vote times the responsibilities is 9) or whose operations pass 30
# (`realize_opcount_threshold`). Raised to these, it forms the votes inside each consumer instead, and
# a compiled capsnet training step at batch 64 (3 iterations, recompute all) moves, by inductor's own count
# for its GPU code generator (benchmarks/inductor_bytes.py --codegen cuda, torch 2.11 as on the GPU
# machine): gathered 15.6 GB instead of 36.4, fused 23.4 instead of 58.2. The re-formed votes cost
# arithmetic, and the step is slower for it on the 2-core CPU and on an H100 too (gathered 1,285 img/s
# against 2,189 at the defaults, fused 1,490 against 2,726; benchmarks/README.md): kept selectable
# (train --compile-mode raised), used by no preset.
FUSED_ROUTING_INDUCTOR = {
    "realize_reads_threshold": 16,
    "realize_opcount_threshold": 60,
    "realize_acc_reads_threshold": 32,
}


# How this project compiles a model (train --compile-mode): torch.compile's mode and inductor settings on
# top of it. "reduce-overhead" replays the compiled step as CUDA graphs (on a GPU; elsewhere it is the
# default mode), which removes the launch cost of the hundreds of small kernels in a capsnet step; "raised"
# is the default mode with FUSED_ROUTING_INDUCTOR, under which the fused and gathered routings form the
# votes in every consumer instead of storing them (fewer bytes, more arithmetic).
COMPILE_SETTINGS = {
    "default": ("default", {}),
    "reduce-overhead": ("reduce-overhead", {}),
    "raised": ("default", FUSED_ROUTING_INDUCTOR),
}


def compile_model(model: nn.Module, mode: str = "default", inductor: dict | None = None) -> nn.Module:
    """torch.compile(model, mode=mode), with these inductor settings on top of the mode's, if any."""
    if not inductor:
        return torch.compile(model, mode=mode)
    return torch.compile(model, options={**torch._inductor.list_mode_options(mode), **inductor})


def compile_as(model: nn.Module, setting: str, extra: dict | None = None) -> nn.Module:
    """`model` compiled in one of COMPILE_SETTINGS, with `extra` inductor settings on top, if any."""
    mode, inductor = COMPILE_SETTINGS[setting]
    return compile_model(model, mode, {**inductor, **(extra or {})})
