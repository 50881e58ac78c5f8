"""How much memory a run may still use, and how many examples a step can take at once within it.

The budget is the smallest of the machine's MemAvailable and what the cgroups of this process have left
(its own cgroup and every ancestor, v1 and v2): in Docker, under SLURM or Kubernetes a cgroup limits
memory far below what /proc/meminfo reports, and a run sized for the machine is killed without a word.
Batch sizes follow from the budget and a step measured on a few examples. Written by hand: neither torch
nor the standard library reads cgroup limits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from robustcaps.errors import RobustcapsError

# cgroup v1 writes "no limit" as the largest page-aligned int64 (9223372036854771712); anything this large
# is no limit either
UNLIMITED = 2**60
V1_MEMORY = "sys/fs/cgroup/memory"
# Examples in a measuring step: one, so that measuring needs no more memory than the smallest batch (a
# probe that does not fit is killed before it can say so); per example it reads as four do, within noise.
PROBE = 1


@dataclass(frozen=True)
class Budget:
    """`bytes` a run may still allocate, and `source`: where that number was found, for error messages."""

    bytes: int
    source: str

    def __str__(self) -> str:
        return f"{gib(self.bytes)} ({self.source})"


def gib(count: float) -> str:
    return f"{count / 2**30:.2f} GiB"


def memory_budget(root: str | Path = "/") -> Budget | None:
    """The smallest of MemAvailable and every cgroup limit above this process less its use; None where none
    is readable (not Linux). `root`: where the file system starts (tests pass a tree of fixture files)."""
    root = Path(root)
    budgets = [_meminfo(root), *_cgroup_budgets(root)]
    budgets = [b for b in budgets if b is not None]
    return min(budgets, key=lambda b: b.bytes) if budgets else None


def _meminfo(root: Path) -> Budget | None:
    for line in _read(root / "proc/meminfo").splitlines():
        if line.startswith("MemAvailable:"):
            return Budget(int(line.split()[1]) * 1024, "MemAvailable of /proc/meminfo")
    return None


def _cgroup_budgets(root: Path) -> list[Budget]:
    """One budget per limited cgroup: this process's own, in /proc/self/cgroup, and its ancestors (a SLURM
    job's limit sits on the job, above the task's cgroup the process is in)."""
    v2_mount = root / "sys/fs/cgroup"
    if not (v2_mount / "cgroup.controllers").exists():  # hybrid layout: v2 beside the v1 controllers
        v2_mount = v2_mount / "unified"
    budgets = []
    for line in _read(root / "proc/self/cgroup").splitlines():
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and controllers == "":
            budgets += [_v2(d, root) for d in _own_and_ancestors(v2_mount, path)]
        elif "memory" in controllers.split(","):
            budgets += [_v1(d, root) for d in _own_and_ancestors(root / V1_MEMORY, path)]
    return [b for b in budgets if b is not None]


def _own_and_ancestors(mount: Path, path: str) -> list[Path]:
    """The directories of the cgroup at `path` and of its ancestors that exist under `mount`. Inside a
    container the mount is the container's own cgroup and the host's path to it does not exist there: the
    mount itself, always included, stands for it."""
    parts = [p for p in path.strip().split("/") if p and p != ".."]
    levels = [mount.joinpath(*parts[:depth]) for depth in range(len(parts), 0, -1)]
    return [d for d in levels if d.is_dir()] + [mount]


def _v1(directory: Path, root: Path) -> Budget | None:
    limit = _number(directory / "memory.limit_in_bytes")
    usage = _number(directory / "memory.usage_in_bytes")
    if limit is None or usage is None or limit >= UNLIMITED:
        return None
    cache = _stat(directory, "total_inactive_file")
    return _left(limit, usage, cache, f"cgroup v1 memory.limit_in_bytes of /{directory.relative_to(root)}")


def _v2(directory: Path, root: Path) -> Budget | None:
    limit = _number(directory / "memory.max")  # "max" (no limit) reads as None
    usage = _number(directory / "memory.current")
    if limit is None or usage is None or limit >= UNLIMITED:
        return None
    cache = _stat(directory, "inactive_file")
    return _left(limit, usage, cache, f"cgroup v2 memory.max of /{directory.relative_to(root)}")


def _left(limit: int, usage: int, inactive_file: int, where: str) -> Budget:
    """limit − usage, where usage leaves out the inactive file cache: the kernel reclaims it before it
    kills (the working set that docker stats and the kubelet report)."""
    in_use = max(0, usage - inactive_file)
    return Budget(max(0, limit - in_use), f"{where}: {gib(limit)} limit, {gib(in_use)} in use")


def _stat(directory: Path, field: str) -> int:
    for line in _read(directory / "memory.stat").splitlines():
        name, _, value = line.partition(" ")
        if name == field and value.strip().isdigit():
            return int(value)
    return 0


def _number(path: Path) -> int | None:
    text = _read(path).strip()
    return int(text) if text.isdigit() else None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:  # missing (no such controller or level) or unreadable: no limit found there
        return ""


def release_freed_memory() -> None:
    """Hand the memory glibc keeps after frees (models.common.keep_freed_cpu_memory) back to the system, so
    that the cgroup's usage and a measured step's growth count only live memory."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def bytes_per_example(step: Callable[[torch.Tensor], object], images: torch.Tensor) -> float | None:
    """Peak resident memory per example that `step` adds on PROBE of `images`; None where the peak cannot
    be measured (it is reset through /proc/self/clear_refs, Linux)."""
    probe = images[:PROBE]
    release_freed_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak resident set size
        before = _status_kb("VmRSS")
        result = step(probe)
        peak = _status_kb("VmHWM")
    except OSError:
        return None
    del result
    return max(peak - before, 1) * 1024 / len(probe)


def batch_within(
    budget: Budget | None, per_example: float | None, requested: int, share: float, need: float, advice: str
) -> int:
    """`requested`, or as many examples as fit in `share` of the budget if fewer; RobustcapsError (naming
    the budget, where it was found, and `advice`) where one example's `need` × `per_example` exceeds all of
    it. Unknown budget or measurement: `requested`."""
    if budget is None or per_example is None:
        return requested
    if need * per_example > budget.bytes:
        raise RobustcapsError(
            f"one example needs about {gib(need * per_example)} and the memory budget is {budget}; {advice}"
        )
    return max(1, min(requested, int(share * budget.bytes / per_example)))
