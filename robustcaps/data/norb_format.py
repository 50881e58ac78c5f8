"""The NORB binary matrix format (Huang & LeCun 2005), read without copies and written atomically.

Layout, little-endian: int32 magic (picks the dtype), int32 ndim, then max(ndim, 3) int32 dims of which
only the first ndim count (the others are padding, written as 1), then the data in row-major order.
No library reads this format, so it is written here by hand.

A plain file is opened as an `np.memmap` (the 447 MB training dat file is never copied). A `.gz` file is
decompressed once, streamed, into a cache file that is then memmapped; the cache key includes the .gz's
size and mtime, so a changed .gz is decompressed again.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from robustcaps.errors import RobustcapsError

MAGIC_TO_DTYPE = {
    0x1E3D4C55: np.dtype("<u1"),
    0x1E3D4C54: np.dtype("<i4"),
    0x1E3D4C51: np.dtype("<f4"),
    0x1E3D4C53: np.dtype("<f8"),
    0x1E3D4C56: np.dtype("<i2"),
}
DTYPE_TO_MAGIC = {dtype: magic for magic, dtype in MAGIC_TO_DTYPE.items()}
MAX_NDIM = 16  # a sanity bound: a corrupt ndim would otherwise ask for gigabytes of header
_CHUNK = 1 << 24


class NorbFormatError(RobustcapsError):
    """A NORB file that is missing, truncated, or not in the format; the message names the file."""


def header_size(ndim: int) -> int:
    return 8 + 4 * max(ndim, 3)


def write_matrix(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write `array` as a NORB matrix; its dtype picks the magic, a `.gz` suffix writes it gzipped.

    The write is atomic (temporary file, then rename) and streamed, so a 447 MB array is not copied
    into one bytes object first (which `robustcaps.io.atomic_write_bytes` would need).
    """
    path = Path(path)
    array = np.asarray(array)
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder not in "|" else array.dtype
    if dtype not in DTYPE_TO_MAGIC:
        names = ", ".join(str(d) for d in DTYPE_TO_MAGIC.values())
        raise NorbFormatError(f"{path}: cannot write dtype {array.dtype} as a NORB matrix (use {names})")
    if not 1 <= array.ndim <= MAX_NDIM:
        raise NorbFormatError(f"{path}: cannot write a {array.ndim}-dimensional array (1..{MAX_NDIM})")
    dims = list(array.shape) + [1] * (3 - array.ndim)
    header = np.array([DTYPE_TO_MAGIC[dtype], array.ndim, *dims], dtype="<i4").tobytes()
    data = np.ascontiguousarray(array, dtype=dtype).reshape(-1).view(np.uint8)
    with _atomic_file(path) as f:
        # mtime=0 and no embedded name: the same array always gives the same .gz bytes (reproducible hashes)
        # level 6 (gzip's own default) is ~5x faster than Python's 9 on image data for ~2% more bytes
        gz = path.suffix == ".gz"
        out = gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0, compresslevel=6) if gz else f
        out.write(header)
        for start in range(0, data.size, _CHUNK):
            out.write(memoryview(data[start : start + _CHUNK]))
        if out is not f:
            out.close()
    return path


@contextmanager
def _atomic_file(path: Path) -> Iterator[BinaryIO]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; data files should be as readable as any other
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest (hashlib `algorithm`: "md5", "sha256") of a file, streamed in 16 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def parse_header(path: Path, head: bytes) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, header bytes) from the first bytes of a file; raises NorbFormatError naming `path`."""
    if len(head) < 8:
        raise NorbFormatError(f"{path}: truncated: expected at least 20 header bytes, got {len(head)}")
    magic, ndim = (int(v) for v in np.frombuffer(head[:8], dtype="<i4"))
    if magic & 0xFFFFFFFF not in MAGIC_TO_DTYPE:
        raise NorbFormatError(
            f"{path}: bad magic 0x{magic & 0xFFFFFFFF:08X}, not a NORB matrix file "
            f"(expected one of {', '.join(f'0x{m:08X}' for m in MAGIC_TO_DTYPE)})"
        )
    if not 1 <= ndim <= MAX_NDIM:
        raise NorbFormatError(f"{path}: bad header: ndim {ndim} is not in 1..{MAX_NDIM}")
    size = header_size(ndim)
    if len(head) < size:
        raise NorbFormatError(f"{path}: truncated: expected at least {size} header bytes, got {len(head)}")
    shape = tuple(int(v) for v in np.frombuffer(head[8 : 8 + 4 * ndim], dtype="<i4"))
    if any(d < 0 for d in shape):
        raise NorbFormatError(f"{path}: bad header: negative dimension in shape {shape}")
    return MAGIC_TO_DTYPE[magic & 0xFFFFFFFF], shape, size


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(header_size(MAX_NDIM))


def expected_size(dtype: np.dtype, shape: tuple[int, ...], header: int) -> int:
    return header + dtype.itemsize * int(np.prod(shape, dtype=np.int64))


def read_matrix(path: str | os.PathLike) -> np.ndarray:
    """The array in a NORB matrix file (plain or `.gz`), as a read-only `np.memmap` (no copy)."""
    path = Path(path)
    if not path.is_file():
        raise NorbFormatError(f"{path}: file not found")
    raw = decompressed(path) if path.suffix == ".gz" else path
    try:
        dtype, shape, header = parse_header(path, _head(raw))
    except PermissionError as error:
        raise NorbFormatError(f"{path}: cannot read ({error.strerror})") from None
    expected, actual = expected_size(dtype, shape, header), raw.stat().st_size
    if actual < expected:
        raise NorbFormatError(f"{path}: truncated: expected {expected} bytes, got {actual}")
    if actual > expected:
        raise NorbFormatError(f"{path}: expected {expected} bytes, got {actual} (trailing data)")
    if expected == header:  # mmap cannot map zero bytes
        return np.empty(shape, dtype=dtype)
    return np.memmap(raw, dtype=dtype, mode="r", offset=header, shape=shape)


def cache_root() -> Path:
    """`$ROBUSTCAPS_CACHE`, else `~/.cache/robustcaps`."""
    return Path(os.environ.get("ROBUSTCAPS_CACHE") or Path.home() / ".cache" / "robustcaps")


def decompressed(path: Path) -> Path:
    """The uncompressed copy of a `.gz` NORB file, decompressed (streamed) on first use.

    The cache lives in `.robustcaps-cache/` next to the file when that directory is writable, else under
    `cache_root()/norb`. Its name carries the .gz's path, size and mtime, so a changed .gz is redone.
    A .gz that is corrupt, or whose content is not a well-formed NORB matrix, leaves no cache file behind.
    """
    stat = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    if os.access(path.parent, os.W_OK):
        cache_dir = path.parent / ".robustcaps-cache"
    else:  # one folder per data directory, so that two read-only copies do not evict each other
        cache_dir = cache_root() / "norb" / hashlib.sha1(str(path.parent.resolve()).encode()).hexdigest()[:12]
    target = cache_dir / f"{path.stem}.{key}"
    if target.is_file():
        return target
    created = not cache_dir.exists()
    try:
        _decompress_checked(path, target)
    except OSError as error:
        raise NorbFormatError(
            f"{path}: cannot decompress into {cache_dir} ({error.strerror or error}); "
            "set ROBUSTCAPS_CACHE to a writable directory"
        ) from None
    finally:
        if created and cache_dir.is_dir() and not any(cache_dir.iterdir()):
            cache_dir.rmdir()
    for stale in cache_dir.glob(f"{path.stem}.*"):
        if stale != target and not stale.name.endswith(".tmp"):
            stale.unlink(missing_ok=True)
    return target


def _decompress_checked(path: Path, target: Path) -> None:
    try:
        with gzip.open(path, "rb") as source:
            head = source.read(header_size(MAX_NDIM))
            dtype, shape, header = parse_header(path, head)
            expected = expected_size(dtype, shape, header)
            with _atomic_file(target) as out:
                out.write(head)
                shutil.copyfileobj(source, out, _CHUNK)
                actual = out.tell()
                if actual != expected:
                    word = "truncated: " if actual < expected else ""
                    raise NorbFormatError(f"{path}: {word}expected {expected} bytes, got {actual} unzipped")
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise NorbFormatError(f"{path}: corrupt gzip file ({error})") from None


@dataclass(frozen=True)
class MatrixScan:
    """What one streamed pass over a NORB file learns: its header, MD5 as stored, and (if asked) its data."""

    path: Path
    dtype: np.dtype
    shape: tuple[int, ...]
    md5: str
    data: np.ndarray | None


class _HashingReader(io.RawIOBase):
    """Hashes the bytes as they are read, so a .gz is hashed and unzipped in the same pass."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.hash = f, hashlib.md5()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.f.readinto(buffer)
        self.hash.update(memoryview(buffer)[:n])
        return n


def scan_matrix(path: str | os.PathLike, keep_data: bool = False) -> MatrixScan:
    """Check a NORB file in one streamed pass and writing nothing (what `verify` needs; no cache).

    Raises NorbFormatError naming the file for a missing file, bad magic or ndim, a corrupt .gz, or a
    size that does not match the header.
    """
    path = Path(path)
    if not path.is_file():
        raise NorbFormatError(f"{path}: file not found")
    try:
        with open(path, "rb") as f:
            reader = _HashingReader(f)
            source = (
                gzip.GzipFile(fileobj=reader, mode="rb")
                if path.suffix == ".gz"
                else io.BufferedReader(reader)
            )
            head = source.read(header_size(MAX_NDIM))
            dtype, shape, header = parse_header(path, head)
            expected = expected_size(dtype, shape, header)
            body = bytearray(head[header:]) if keep_data else None
            actual = len(head)
            while chunk := source.read(_CHUNK):
                actual += len(chunk)
                if body is not None and actual <= expected:
                    body += chunk
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise NorbFormatError(f"{path}: corrupt gzip file ({error})") from None
    except OSError as error:
        raise NorbFormatError(f"{path}: cannot read ({error.strerror or error})") from None
    if actual != expected:
        word = "truncated: " if actual < expected else ""
        raise NorbFormatError(f"{path}: {word}expected {expected} bytes, got {actual}")
    data = np.frombuffer(bytes(body), dtype=dtype).reshape(shape) if body is not None else None
    return MatrixScan(path, dtype, shape, reader.hash.hexdigest(), data)
