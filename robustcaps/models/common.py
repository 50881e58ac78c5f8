"""Layers every model shares."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

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
