"""Atomic file writes and reading a JSON object back: the file helpers under every results/ file.

Every file in results/ and every checkpoint is written through `atomic_write_*`: a temporary file in the
same directory, fsync, then `os.replace`, so a crash never leaves half a file.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from robustcaps.errors import RobustcapsError

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; give it the mode an ordinary open() would (0666 less the umask).
        os.fchmod(fd, 0o666 & ~_UMASK)
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


def read_json(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """A JSON object from `path`, or one RobustcapsError line naming the file."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RobustcapsError(
            f"{path}: no {what} here; is this a run directory made by `robustcaps train`?"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RobustcapsError(
            f"{path}: cannot read the {what} ({error}); restore it or retrain the run"
        ) from None
    if not isinstance(obj, dict):
        raise RobustcapsError(f"{path}: the {what} is not a JSON object; restore it or retrain the run")
    return obj
