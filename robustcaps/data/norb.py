"""smallNORB on disk: the official files and MD5s, loading with validation, and the dataset's identity.

The binary matrix format itself is in `norb_format.py` (re-exported here); `verify` in `norb_verify.py`;
the `SmallNORB` Dataset in `dataset.py`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from robustcaps.data.norb_format import (  # noqa: F401 (write_matrix is re-exported: the contract's home)
    NorbFormatError,
    cache_root,
    file_digest,
    read_matrix,
    write_matrix,
)
from robustcaps.io import atomic_write_json

PARTS = ("train", "test")
KINDS = ("dat", "cat", "info")
FILE_NAMES = {
    (part, kind): f"smallnorb-5x{ids}x9x18x6x2x96x96-{word}-{kind}.mat"
    for part, ids, word in (("train", "46789", "training"), ("test", "01235", "testing"))
    for kind in KINDS
}
# (raw, gz) MD5 of each official file, from the NYU page (PAPER.md)
OFFICIAL_MD5 = {
    ("train", "dat"): ("8138a0902307b32dfa0025a36dfa45ec", "66054832f9accfe74a0f4c36a75bc0a2"),
    ("train", "info"): ("19faee774120001fc7e17980d6960451", "51dee1210a742582ff607dfd94e332e3"),
    ("train", "cat"): ("fd5120d3f770ad57ebe620eb61a0b633", "23c8b86101fbf0904a000b43d3ed2fd9"),
    ("test", "dat"): ("e9920b7f7b2869a8f1a12e945b2c166c", "e4ad715691ed5a3a5f138751a4ceb071"),
    ("test", "info"): ("7c5b871cc69dcadec1bf6a18141f5edc", "a9454f3864d7fd4bb3ea7fc3eb84924e"),
    ("test", "cat"): ("fd5120d3f770ad57ebe620eb61a0b633", "5aa791cd7e6016cf957ce9bdb93b8603"),
}

CLASSES = ("animal", "human", "airplane", "truck", "car")
INFO_FIELDS = ("instance", "elevation", "azimuth", "lighting")
IMAGE_SIZE = 96
MANIFEST = "manifest.json"


class NorbArrays(NamedTuple):
    dat: np.ndarray  # (N, 2, 96, 96) uint8, memmapped
    cat: np.ndarray  # (N,) int64 class 0..4
    info: np.ndarray  # (N, 4) int64: instance, elevation 0..8, azimuth 0,2,..,34, lighting 0..5


def _check_part(part: str) -> None:
    if part not in PARTS:
        raise NorbFormatError(f"part {part!r}: expected one of {', '.join(PARTS)}")


def norb_paths(root: str | os.PathLike, part: str) -> dict[str, Path]:
    """{dat, cat, info} -> the file under `root`, plain if present, else `.gz`; a missing file is an error."""
    root, paths = Path(root), {}
    _check_part(part)
    if not root.is_dir():
        raise NorbFormatError(
            f"{root}: data directory not found (run `robustcaps data fetch --root {root}`, "
            "or pass --data with the directory that holds it)"
        )
    for kind in KINDS:
        plain = root / FILE_NAMES[part, kind]
        gz = plain.with_name(plain.name + ".gz")
        if not plain.is_file() and not gz.is_file():
            raise NorbFormatError(
                f"{plain}: file not found (nor {gz.name}); run `robustcaps data fetch --root {root}`"
            )
        paths[kind] = plain if plain.is_file() else gz
    return paths


def check_arrays(
    paths: dict[str, Path], dat_dtype: np.dtype, dat_shape: tuple, cat: np.ndarray, info: np.ndarray
) -> None:
    """Shapes, dtypes, matching counts and value ranges of one part; errors name the file at fault."""
    want = (2, IMAGE_SIZE, IMAGE_SIZE)
    if dat_dtype != np.uint8 or len(dat_shape) != 4 or tuple(dat_shape[1:]) != want:
        raise NorbFormatError(
            f"{paths['dat']}: expected uint8 of shape (N, 2, 96, 96), got {dat_dtype} {tuple(dat_shape)}"
        )
    if cat.dtype != np.int32 or cat.ndim != 1:
        raise NorbFormatError(
            f"{paths['cat']}: expected an int32 matrix of shape (N,), got {cat.dtype} {cat.shape}"
        )
    if info.dtype != np.int32 or info.ndim != 2 or info.shape[1] != 4:
        raise NorbFormatError(
            f"{paths['info']}: expected an int32 matrix of shape (N, 4), got {info.dtype} {info.shape}"
        )
    n = dat_shape[0]
    for kind, count in (("cat", len(cat)), ("info", len(info))):
        if count != n:
            raise NorbFormatError(f"{paths[kind]}: {count} rows, but {paths['dat'].name} has {n} image pairs")
    _check_range(paths["cat"], "label", cat, set(range(len(CLASSES))))
    valid = {
        "instance": set(range(10)),
        "elevation": set(range(9)),
        "azimuth": set(range(0, 36, 2)),
        "lighting": set(range(6)),
    }
    for column, field in enumerate(INFO_FIELDS):
        _check_range(paths["info"], field, info[:, column], valid[field])


def _check_range(path: Path, field: str, values: np.ndarray, valid: set[int]) -> None:
    bad = sorted(set(np.unique(values).tolist()) - valid)
    if bad:
        raise NorbFormatError(
            f"{path}: {field} values out of range: {bad[:5]} (valid: {min(valid)}..{max(valid)}"
            + (", even only)" if field == "azimuth" else ")")
        )


def load_arrays(root: str | os.PathLike, part: str) -> NorbArrays:
    """The dat/cat/info of one part, validated; dat stays memmapped (no copy of the 447 MB file)."""
    paths = norb_paths(root, part)
    dat, cat, info = (read_matrix(paths[kind]) for kind in KINDS)
    check_arrays(paths, dat.dtype, dat.shape, cat, info)
    return NorbArrays(dat, np.asarray(cat, dtype=np.int64), np.asarray(info, dtype=np.int64))


def file_md5(path: Path, known_md5: str | None = None) -> str:
    """MD5 of a file as stored, cached by (path, size, mtime) so that loading stays cheap.

    `known_md5`: the caller has just hashed the file (verify does, while streaming it); only remember it.
    """
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    cache = cache_root() / "md5.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = known_md5 or file_digest(path, "md5")
        try:
            atomic_write_json(cache, known)
        except OSError:  # a read-only cache only costs speed
            pass
    return known[key]


def is_official(part: str, kind: str, path: Path, md5: str) -> bool:
    raw, gz = OFFICIAL_MD5[part, kind]
    return md5 == (gz if path.suffix == ".gz" else raw)


def dataset_identity(root: str | os.PathLike) -> dict[str, Any]:
    """Which data a result came from: real smallNORB (and whether all six MD5s are official) or rendered.

    For a rendered set this reads its `manifest.json` and trusts it; `verify` checks its SHA-256s.
    """
    root = Path(root)
    manifest = root / MANIFEST
    if manifest.is_file():
        try:
            meta = json.loads(manifest.read_text())
            return {
                "kind": "rendered",
                "root": str(root.resolve()),
                "seed": int(meta["seed"]),
                "generator_version": str(meta["generator_version"]),
                "options": dict(meta.get("options", {})),
                "sha256": dict(meta["sha256"]),
            }
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise NorbFormatError(f"{manifest}: not a valid rendered-dataset manifest ({error!r})") from None
    md5, official = {}, []
    for part, kind in FILE_NAMES:
        path = norb_paths(root, part)[kind]
        md5[path.name] = file_md5(path)
        official.append(is_official(part, kind, path, md5[path.name]))
    return {"kind": "smallnorb", "root": str(root.resolve()), "md5_verified": all(official), "md5": md5}


def content_identity(identity: dict[str, Any]) -> dict[str, Any]:
    """A dataset identity without where the files lie ("root"): what the data are, which is all that may
    decide a result or a seed. The same files in another folder or on another machine compare equal."""
    return {key: value for key, value in identity.items() if key != "root"}
