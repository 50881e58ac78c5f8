"""Layers every model shares."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from collections.abc import Callable, Iterator
from enum import StrEnum

import torch
from torch import Tensor, nn

INPUT_SIZE = 32  # every model takes 32×32 crops (HSF18 §5)


def check_images(x: Tensor, in_channels: int, name: str) -> None:
    """A ValueError naming the model unless x is a batch of (N, in_channels, 32, 32) images."""
    if x.dim() != 4 or x.shape[1:] != (in_channels, INPUT_SIZE, INPUT_SIZE):
        raise ValueError(f"{name} takes (N, {in_channels}, 32, 32) images, got {tuple(x.shape)}")


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
    (benchmarks/NOTES.md). The convolutions are a small part of a capsule network's work. Written here
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


# How this project compiles a model (train --compile-mode): torch.compile's mode. "reduce-overhead" replays
# the compiled step as CUDA graphs (on a GPU; elsewhere it is the default mode), which removes the launch
# cost of the hundreds of small kernels in a capsnet step.
class CompileMode(StrEnum):
    DEFAULT = "default"
    REDUCE_OVERHEAD = "reduce-overhead"


def compile_model(model: nn.Module, mode: str = "default") -> nn.Module:
    """torch.compile(model, mode=mode), `mode` a CompileMode."""
    return torch.compile(model, mode=CompileMode(mode).value)


def in_halves_on_oom(run: Callable[..., Tensor], *batch: Tensor | None) -> Tensor:
    """run(*batch); where the device runs out of memory, run on the two halves of every tensor of the batch
    in turn (and so on down to one example), concatenated: the same results in smaller pieces. A None in
    the batch passes through as None."""
    try:
        return run(*batch)
    except torch.OutOfMemoryError:
        if len(batch[0]) == 1:
            raise
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    middle = len(batch[0]) // 2
    first = [t[:middle] if t is not None else None for t in batch]
    second = [t[middle:] if t is not None else None for t in batch]
    return torch.cat([in_halves_on_oom(run, *first), in_halves_on_oom(run, *second)])
