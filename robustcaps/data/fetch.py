"""`fetch`: download the six smallNORB .gz files from the NYU page, resumable, MD5-checked.

Standard library only (urllib): a download is resumed with an HTTP Range request into `<name>.part`, and
only a file with the official MD5 is renamed into place, so `root` never holds a half or wrong file under
an official name.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from robustcaps.data.norb import FILE_NAMES, OFFICIAL_MD5
from robustcaps.data.norb_format import file_digest
from robustcaps.errors import RobustcapsError

BASE_URL = "https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/"
GZ_MD5 = {FILE_NAMES[key] + ".gz": gz for key, (_raw, gz) in OFFICIAL_MD5.items()}
_CHUNK = 1 << 20


def _manual_hint(root: Path) -> str:
    return (
        f"without network, download the six smallnorb-*.mat.gz files from {BASE_URL} by hand, "
        f"put them in {root}, then run `robustcaps data verify {root}`"
    )


def _download(url: str, part: Path, timeout: float, progress: bool) -> None:
    """Append the rest of `url` to `part` (HTTP Range from its current size); restart if Range is ignored."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # nothing left to send: the .part is complete (the MD5 will tell)
            return
        raise
    with response:
        if offset and response.status != 206:  # the server sent the whole file: start over
            offset = 0
        total = response.headers.get("Content-Length")
        total = int(total) + offset if total is not None else None
        with (
            open(part, "ab" if offset else "wb") as f,
            tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, desc=part.name, disable=not progress
            ) as bar,
        ):
            while chunk := response.read(_CHUNK):
                f.write(chunk)
                bar.update(len(chunk))


def fetch_file(name: str, root: Path, base_url: str, md5: str, timeout: float, progress: bool) -> Path:
    """One file: skip if present with the right MD5, else (resume the) download and check it."""
    target, part = root / name, root / (name + ".part")
    if target.is_file() and file_digest(target, "md5") == md5:
        return target
    url = base_url.rstrip("/") + "/" + name
    try:
        _download(url, part, timeout, progress)
    except (urllib.error.URLError, OSError) as error:  # timeouts and refused connections are OSErrors
        reason = getattr(error, "reason", None) or error
        raise RobustcapsError(f"cannot download {url} ({reason}); {_manual_hint(root)}") from None
    got = file_digest(part, "md5")
    if got != md5:
        part.unlink()
        raise RobustcapsError(
            f"{url}: MD5 {got} is not the official {md5}; removed the download, run fetch again"
        )
    os.replace(part, target)
    return target


def fetch(
    root: str | os.PathLike,
    base_url: str = BASE_URL,
    md5s: dict[str, str] | None = None,
    timeout: float = 60.0,
    progress: bool = True,
) -> list[Path]:
    """Download the six .gz files into `root`, checked against `md5s` (default: the official ones)."""
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RobustcapsError(f"--root {root}: cannot create the directory ({error.strerror})") from None
    md5s = GZ_MD5 if md5s is None else md5s
    return [fetch_file(name, root, base_url, md5, timeout, progress) for name, md5 in md5s.items()]
