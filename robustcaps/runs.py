"""Run directories: atomic writes, and the metadata that makes every result traceable.

Every file in results/ and every checkpoint is written through `atomic_write_*`: a temporary
file in the same directory, fsync, then `os.replace`, so a crash never leaves half a file.
"""

from __future__ import annotations

import io
import json
import os
import platform
import socket
import subprocess
import tempfile
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch

LIBRARIES = ("robustcaps", "torch", "torchvision", "torchattacks", "numpy", "pandas", "seaborn", "click")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def git_commit(repo: str | os.PathLike | None = None) -> str:
    """The current commit, with `+dirty` when the work tree has uncommitted changes; 'unknown' outside git."""
    cwd = Path(repo) if repo else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
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
