"""Where a number came from: the commit, the device and the library versions, for every run and result."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch

LIBRARIES = ("robustcaps", "torch", "torchvision", "torchattacks", "numpy", "pandas", "seaborn", "click")

# What the pipeline itself writes into the tracked tree; changes there do not make the code dirty.
GENERATED_PATHS = ("results", "benchmarks/results")


def shown_path(path: str | os.PathLike) -> str:
    """`path` as a committed record shows it: under the home directory as `~/...`, so that no user name
    or machine layout lands in results/."""
    path, home = Path(path), Path.home()
    return f"~/{path.relative_to(home)}" if path.is_relative_to(home) else str(path)


def git_commit(repo: str | os.PathLike | None = None) -> str:
    """The current commit, with `+dirty` when tracked code has uncommitted changes; 'unknown' outside git.

    $ROBUSTCAPS_GIT_COMMIT, when set, is the answer: a copy of the tree sent to a GPU machine may carry no
    .git or a stale one (one such copy reported its session's first commit, +dirty, for code committed
    later), so the sender names the commit it sent.

    Files under GENERATED_PATHS are left out of the dirty check: `make demo` rewrites the committed
    results/ while it runs, and that must not mark its own numbers as coming from modified code.
    """
    if os.environ.get("ROBUSTCAPS_GIT_COMMIT"):
        return os.environ["ROBUSTCAPS_GIT_COMMIT"]
    cwd = Path(repo) if repo else Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        excluded = [f":(top,exclude){path}" for path in GENERATED_PATHS]
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ":(top)", *excluded)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def device_description(device: str | torch.device = "cpu") -> str:
    """A human name for where the numbers came from: the GPU's name, or the CPU and its core count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu} x{os.cpu_count()} ({socket.gethostname()})"


def environment_metadata(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Commit, device and library versions: attach to every run and every results file."""
    return {
        "git_commit": git_commit(),
        "device": str(torch.device(device)),
        "device_name": device_description(device),
        "versions": library_versions(),
    }
