"""`verify(root)`: check the six smallNORB-format files and summarise them, writing nothing.

Every file is streamed once (a .gz is unzipped in memory, chunk by chunk, not into the cache), so a broken
file leaves no trace; its MD5 as stored is compared with the official one. A well-formed set that is not
the official one is reported, not rejected: the rendered stand-in is such a set.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robustcaps.data.norb import (
    CLASSES,
    INFO_FIELDS,
    KINDS,
    PARTS,
    check_arrays,
    dataset_identity,
    file_md5,
    is_official,
    norb_paths,
)
from robustcaps.data.norb_format import file_digest, scan_matrix


@dataclass(frozen=True)
class PartSummary:
    part: str
    files: dict[str, Path]
    shapes: dict[str, tuple[int, ...]]
    md5: dict[str, str]
    official: dict[str, bool]
    counts: dict[str, dict[int, int]]  # per class, and per each info field: value -> image pairs


@dataclass(frozen=True)
class VerifyReport:
    root: Path
    parts: tuple[PartSummary, ...]
    identity: dict[str, Any]
    sha256_mismatch: tuple[str, ...] = field(default=())  # rendered sets: files whose SHA-256 differs

    @property
    def mismatch(self) -> tuple[str, ...]:
        """Alias of `sha256_mismatch` (the name `robustcaps.study.pipeline` reads)."""
        return self.sha256_mismatch

    @property
    def official(self) -> bool:
        return all(all(p.official.values()) for p in self.parts)

    def lines(self) -> list[str]:
        out = [f"{self.root}:"]
        for p in self.parts:
            out.append(f"  {p.part}: " + ", ".join(f"{p.files[k].name} {p.shapes[k]}" for k in KINDS))
            for name, counts in p.counts.items():
                out.append(f"    per {name}: " + " ".join(f"{key}:{n}" for key, n in sorted(counts.items())))
        if self.official:
            out.append("MD5: all six files are the official smallNORB files")
        else:
            odd = sum(not ok for p in self.parts for ok in p.official.values())
            out.append(f"MD5: not the official smallNORB files ({odd} of 6 files differ from the NYU MD5s)")
        if self.identity["kind"] == "rendered":
            match = (
                "all match" if not self.sha256_mismatch else "MISMATCH: " + ", ".join(self.sha256_mismatch)
            )
            out.append(
                f"rendered stand-in (seed {self.identity['seed']}, generator "
                f"{self.identity['generator_version']}); manifest SHA-256: {match}"
            )
        return out


def verify(root: str | os.PathLike) -> VerifyReport:
    """Check format, shapes, counts and value ranges of both parts; NorbFormatError on the first fault."""
    root = Path(root)
    parts = tuple(_verify_part(root, part) for part in PARTS)
    for part in parts:  # all well-formed: remember the MD5s, so dataset_identity does not read 900 MB again
        for kind in KINDS:
            file_md5(part.files[kind], known_md5=part.md5[kind])
    identity = dataset_identity(root)
    mismatch: tuple[str, ...] = ()
    if identity["kind"] == "rendered":
        mismatch = tuple(
            name for name, digest in sorted(identity["sha256"].items()) if _sha256(root / name) != digest
        )
    return VerifyReport(root, parts, identity, mismatch)


def _verify_part(root: Path, part: str) -> PartSummary:
    paths = norb_paths(root, part)
    scans = {kind: scan_matrix(paths[kind], keep_data=kind != "dat") for kind in KINDS}
    cat, info = scans["cat"].data, scans["info"].data
    check_arrays(paths, scans["dat"].dtype, scans["dat"].shape, cat, info)
    counts = {"class": _count(cat)} | {name: _count(info[:, i]) for i, name in enumerate(INFO_FIELDS)}
    assert set(counts["class"]) <= set(range(len(CLASSES)))
    return PartSummary(
        part=part,
        files=paths,
        shapes={kind: scans[kind].shape for kind in KINDS},
        md5={kind: scans[kind].md5 for kind in KINDS},
        official={kind: is_official(part, kind, paths[kind], scans[kind].md5) for kind in KINDS},
        counts=counts,
    )


def _count(values: np.ndarray) -> dict[int, int]:
    return dict(Counter(values.tolist()))


def _sha256(path: Path) -> str | None:
    return file_digest(path, "sha256") if path.is_file() else None
