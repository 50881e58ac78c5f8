"""The NORB binary format, loading with validation, identity, verify and the SmallNORB Dataset.

`write_norb_set` (also used by the split and CLI tests) writes a small smallNORB-format directory that
covers the full viewpoint grid: 5 classes x `instances` x 9 elevations x 18 azimuths x 1 lighting.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest

from robustcaps.data import norb, norb_format
from robustcaps.data.dataset import SmallNORB
from robustcaps.data.norb import (
    FILE_NAMES,
    NorbFormatError,
    dataset_identity,
    load_arrays,
    norb_paths,
    read_matrix,
    write_matrix,
)
from robustcaps.data.norb_verify import verify

MAGICS = {
    np.uint8: 0x1E3D4C55,
    np.int32: 0x1E3D4C54,
    np.float32: 0x1E3D4C51,
    np.float64: 0x1E3D4C53,
    np.int16: 0x1E3D4C56,
}
INSTANCES = {"train": (4, 6), "test": (0, 1)}

pytestmark = pytest.mark.usefixtures("private_cache")


def norb_grid(part: str, instances: int = 1) -> np.ndarray:
    """int32 (N, 5): class, instance, elevation, azimuth, lighting over the whole viewpoint grid."""
    rows = [
        (c, i, e, a, 0)
        for c in range(5)
        for i in INSTANCES[part][:instances]
        for e in range(9)
        for a in range(0, 36, 2)
    ]
    return np.array(rows, dtype=np.int32)


def write_norb_set(root: Path, gz: bool = False, instances: int = 1, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gz else ""
    for part in ("train", "test"):
        grid = norb_grid(part, instances)
        # 8x8 blocks of random grey keep gzip fast; a per-pair pixel lets tests recognise a pair
        dat = rng.integers(0, 256, (len(grid), 2, 12, 12), dtype=np.uint8).repeat(8, 2).repeat(8, 3)
        dat[:, :, 0, 0] = np.arange(len(grid))[:, None] % 251
        write_matrix(root / (FILE_NAMES[part, "dat"] + suffix), dat)
        write_matrix(root / (FILE_NAMES[part, "cat"] + suffix), grid[:, 0].copy())
        write_matrix(root / (FILE_NAMES[part, "info"] + suffix), grid[:, 1:].copy())
    return root


def snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")}


# --- the binary format ---------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", list(MAGICS), ids=lambda d: np.dtype(d).name)
def test_round_trip_every_header_variant(tmp_path, dtype, ndim, gz):
    shape = (5, 3, 2, 4)[:ndim]
    array = (np.random.default_rng(ndim).standard_normal(shape) * 100).astype(dtype)
    path = write_matrix(tmp_path / ("m.mat.gz" if gz else "m.mat"), array)
    back = read_matrix(path)
    assert back.dtype == np.dtype(dtype) and back.shape == shape
    np.testing.assert_array_equal(back, array)
    raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    header = np.frombuffer(raw[: 8 + 4 * max(ndim, 3)], dtype="<i4")
    assert header[0] == MAGICS[dtype] and header[1] == ndim
    assert list(header[2 : 2 + ndim]) == list(shape)
    assert all(header[2 + ndim :] == 1), "unused dim slots are padding"
    assert len(raw) == 8 + 4 * max(ndim, 3) + array.nbytes


def test_plain_file_is_memmapped_not_copied(tmp_path):
    path = write_matrix(tmp_path / "m.mat", np.arange(24, dtype=np.int32).reshape(2, 3, 4))
    assert isinstance(read_matrix(path), np.memmap)


def test_known_official_header_bytes(tmp_path):
    # the official cat file: int32 magic, ndim 1, dims 24300 1 1 (PAPER.md: 97,220 bytes)
    path = write_matrix(tmp_path / "cat.mat", np.zeros(24300, dtype=np.int32))
    assert path.read_bytes()[:20] == bytes.fromhex("544c3d1e 01000000 ec5e0000 01000000 01000000")
    assert path.stat().st_size == 97_220


def test_gz_is_decompressed_once_and_again_when_it_changes(tmp_path):
    path = write_matrix(tmp_path / "m.mat.gz", np.arange(10, dtype=np.int16))
    first = read_matrix(path)
    cache = Path(first.filename)
    assert cache.parent == tmp_path / ".robustcaps-cache"
    mtime = cache.stat().st_mtime_ns
    assert Path(read_matrix(path).filename) == cache and cache.stat().st_mtime_ns == mtime
    write_matrix(path, np.arange(5, dtype=np.int16) * 7)
    os.utime(path, ns=(mtime + 10**9, mtime + 10**9))
    np.testing.assert_array_equal(read_matrix(path), np.arange(5) * 7)
    assert not cache.exists(), "the stale decompressed copy is removed"


def test_gz_cache_goes_to_cache_root_when_directory_is_read_only(tmp_path, monkeypatch):
    path = write_matrix(tmp_path / "data" / "m.mat.gz", np.arange(6, dtype=np.uint8))
    monkeypatch.setattr(norb_format.os, "access", lambda p, mode: False)
    array = read_matrix(path)
    assert Path(array.filename).parent.parent == tmp_path / "cache" / "norb"
    assert not (tmp_path / "data" / ".robustcaps-cache").exists()


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda raw: b"\x00\x00\x00\x00" + raw[4:], "bad magic 0x00000000"),
        (lambda raw: raw[:-7], "truncated: expected 44 bytes, got 37"),
        (lambda raw: raw + b"xyz", "expected 44 bytes, got 47"),
        (lambda raw: raw[:4] + np.int32(99).tobytes() + raw[8:], "ndim 99"),
        (lambda raw: raw[:10], "truncated"),
    ],
    ids=["bad-magic", "truncated", "trailing", "bad-ndim", "short-header"],
)
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_corrupt_files_name_the_file_and_the_fault(tmp_path, corrupt, message, gz):
    raw = write_matrix(tmp_path / "good.mat", np.arange(6, dtype=np.int32).reshape(2, 3)).read_bytes()
    path = tmp_path / ("bad.mat.gz" if gz else "bad.mat")
    data = corrupt(raw)
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(NorbFormatError, match=message) as info:
        read_matrix(path)
    assert str(path) in str(info.value)
    with pytest.raises(NorbFormatError, match=message):
        norb_format.scan_matrix(path)
    assert not (tmp_path / ".robustcaps-cache").exists() or not any(
        (tmp_path / ".robustcaps-cache").iterdir()
    )


def test_broken_gzip_stream_is_a_format_error_and_leaves_no_cache(tmp_path):
    good = write_matrix(tmp_path / "m.mat.gz", np.arange(1000, dtype=np.float64))
    bad = tmp_path / "bad.mat.gz"
    bad.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(NorbFormatError, match=r"bad\.mat\.gz: corrupt gzip"):
        read_matrix(bad)
    assert not (tmp_path / ".robustcaps-cache").exists()


def test_missing_file_and_unwritable_dtype(tmp_path):
    with pytest.raises(NorbFormatError, match=r"nope\.mat: file not found"):
        read_matrix(tmp_path / "nope.mat")
    with pytest.raises(NorbFormatError, match="int64"):
        write_matrix(tmp_path / "x.mat", np.zeros(3, dtype=np.int64))
    assert not list(tmp_path.iterdir()), "a refused write leaves nothing behind"


# --- the six files ----------------------------------------------------------------------------------------


def test_load_arrays_shapes_ranges_and_plain_or_gz(tmp_path, norb_dir):
    gz_dir = write_norb_set(tmp_path / "gz", gz=True)
    for root in (norb_dir, gz_dir):
        dat, cat, info = load_arrays(root, "train")
        assert dat.shape == (810, 2, 96, 96) and dat.dtype == np.uint8
        assert cat.dtype == np.int64 and set(cat.tolist()) == set(range(5))
        assert info.shape == (810, 4) and set(info[:, 2].tolist()) == set(range(0, 36, 2))
    assert norb_paths(gz_dir, "test")["dat"].name.endswith("-testing-dat.mat.gz")
    np.testing.assert_array_equal(load_arrays(norb_dir, "test").dat, load_arrays(gz_dir, "test").dat)


def _broken_set(tmp_path: Path, norb_dir: Path, fault: str) -> tuple[Path, str]:
    """A copy of `norb_dir` with one fault; returns the directory and the file name the error must name."""
    root = tmp_path / fault
    root.mkdir()
    for p in norb_dir.glob("smallnorb-*"):
        (root / p.name).write_bytes(p.read_bytes())
    name = {k: FILE_NAMES["test", k] for k in ("dat", "cat", "info")}
    grid = norb_grid("test")
    if fault == "missing":
        (root / name["info"]).unlink()
    elif fault == "count":
        write_matrix(root / name["cat"], grid[:-1, 0].copy())
    elif fault == "shape":
        write_matrix(root / name["dat"], np.zeros((810, 2, 48, 48), dtype=np.uint8))
    elif fault == "ndim":
        write_matrix(root / name["info"], grid[:, 1:4].copy())
    elif fault == "label":
        write_matrix(root / name["cat"], np.where(grid[:, 0] == 4, 7, grid[:, 0]).astype(np.int32))
    elif fault == "azimuth":
        write_matrix(root / name["info"], (grid[:, 1:] + np.array([0, 0, 1, 0], dtype=np.int32)).copy())
    elif fault == "truncated":
        path = root / name["dat"]
        path.write_bytes(path.read_bytes()[:-100])
    elif fault == "magic":
        path = root / name["cat"]
        path.write_bytes(b"\x00\x11\x22\x33" + path.read_bytes()[4:])
    return root, name[CULPRIT[fault]]


FAULTS = {
    "missing": "file not found",
    "count": "809 rows, but .* has 810",
    "shape": r"expected uint8 of shape \(N, 2, 96, 96\)",
    "ndim": r"shape \(N, 4\)",
    "label": r"label values out of range: \[7\]",
    "azimuth": "azimuth values out of range",
    "truncated": "truncated: expected",
    "magic": "bad magic 0x33221100",
}
CULPRIT = {"missing": "info", "count": "cat", "shape": "dat", "ndim": "info", "label": "cat"}
CULPRIT |= {"azimuth": "info", "truncated": "dat", "magic": "cat"}


@pytest.mark.parametrize("fault", FAULTS)
def test_load_arrays_and_verify_reject_broken_sets(tmp_path, norb_dir, fault):
    root, culprit = _broken_set(tmp_path, norb_dir, fault)
    before = snapshot(root)
    for check in (lambda: load_arrays(root, "test"), lambda: verify(root)):
        with pytest.raises(NorbFormatError, match=FAULTS[fault]) as info:
            check()
        assert culprit in str(info.value) and "\n" not in str(info.value)
    assert load_arrays(root, "train").dat.shape[0] == 810, "the other part is unaffected"
    assert snapshot(root) == before


def test_identity_of_real_files_checks_official_md5(norb_dir, monkeypatch):
    identity = dataset_identity(norb_dir)
    assert identity["kind"] == "smallnorb" and identity["md5_verified"] is False
    assert set(identity["md5"]) == set(FILE_NAMES.values())
    official = {key: (identity["md5"][name], "0" * 32) for key, name in FILE_NAMES.items()}
    monkeypatch.setattr(norb, "OFFICIAL_MD5", official)
    assert dataset_identity(norb_dir)["md5_verified"] is True
    report = verify(norb_dir)
    assert report.official and "all six files are the official" in "\n".join(report.lines())


def test_identity_and_verify_of_a_rendered_set(tmp_path, norb_dir):
    root = tmp_path / "rendered"
    root.mkdir()
    sha = {}
    for p in norb_dir.glob("smallnorb-*"):
        (root / p.name).write_bytes(p.read_bytes())
        sha[p.name] = norb_verify_sha(root / p.name)
    manifest = {"seed": 7, "generator_version": "1.0", "options": {"size": "tiny"}, "sha256": sha}
    (root / "manifest.json").write_text(json.dumps(manifest))
    identity = dataset_identity(root)
    assert identity["kind"] == "rendered" and identity["seed"] == 7 and identity["sha256"] == sha
    text = "\n".join(verify(root).lines())
    assert "rendered stand-in (seed 7" in text and "SHA-256: all match" in text
    assert "not the official smallNORB files" in text
    manifest["sha256"][FILE_NAMES["train", "cat"]] = "0" * 64
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert verify(root).sha256_mismatch == verify(root).mismatch == (FILE_NAMES["train", "cat"],)


def norb_verify_sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_verify_counts_per_class_instance_and_viewpoint(tmp_path):
    root = write_norb_set(tmp_path / "two", gz=True, instances=2)
    report = verify(root)
    train = report.parts[0]
    assert train.shapes["dat"] == (1620, 2, 96, 96) and train.shapes["cat"] == (1620,)
    assert train.counts["class"] == {c: 324 for c in range(5)}
    assert train.counts["instance"] == {4: 810, 6: 810}
    assert train.counts["elevation"] == {e: 180 for e in range(9)}
    assert train.counts["azimuth"] == {a: 90 for a in range(0, 36, 2)}
    assert not (root / ".robustcaps-cache").exists(), "verify streams; it writes no cache"


# --- the Dataset ------------------------------------------------------------------------------------------


def test_smallnorb_dataset_channels_and_samples(norb_dir):
    pairs = SmallNORB(norb_dir, "train", stereo="channels")
    singles = SmallNORB(norb_dir, "train", stereo="samples")
    assert len(pairs) == 810 and len(singles) == 1620
    image, label = pairs[5]
    assert image.shape == (2, 96, 96) and image.dtype.is_floating_point is False and 0 <= label < 5
    left, right = singles[10][0], singles[11][0]
    assert left.shape == (1, 96, 96)
    assert (left[0] == pairs[5][0][0]).all() and (right[0] == pairs[5][0][1]).all()
    assert singles.info_dict(11) == pairs.info_dict(5) | {"camera": 1}
    assert set(singles.labels.tolist()) == set(range(5)) and singles.info.shape == (1620, 4)
    with pytest.raises(IndexError):
        pairs[810]


def test_files_from_another_writer_with_zero_padding_slots(tmp_path, norb_dir):
    """The unused dim slots carry no meaning: files written by hand with 0 there load and verify alike."""
    import struct

    root = tmp_path / "other"
    root.mkdir()
    for (_part, kind), name in FILE_NAMES.items():
        array = np.asarray(read_matrix(norb_dir / name))
        magic = {"dat": 0x1E3D4C55, "cat": 0x1E3D4C54, "info": 0x1E3D4C54}[kind]
        dims = list(array.shape) + [0] * (3 - array.ndim)
        header = struct.pack(f"<{2 + len(dims)}i", magic, array.ndim, *dims)
        with gzip.open(root / (name + ".gz"), "wb") as f:
            f.write(header + array.astype(array.dtype.newbyteorder("<")).tobytes())
    report = verify(root)
    assert [p.shapes["info"] for p in report.parts] == [(810, 4), (810, 4)]
    np.testing.assert_array_equal(load_arrays(root, "train").info, load_arrays(norb_dir, "train").info)
