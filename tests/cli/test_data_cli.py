"""`robustcaps data verify` and `data fetch` through click, against local files and a local HTTP server."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from click.testing import CliRunner

from robustcaps.cli import cli
from robustcaps.data.fetch import GZ_MD5, fetch
from robustcaps.data.norb import FILE_NAMES, write_matrix
from robustcaps.errors import RobustcapsError
from tests.data.test_norb import FAULTS, _broken_set, snapshot, write_norb_set

pytestmark = pytest.mark.usefixtures("private_cache")


def run(*args: str):
    return CliRunner().invoke(cli, ["data", *args])


def test_verify_well_formed_unofficial_files(norb_dir, tmp_path):
    for root in (norb_dir, write_norb_set(tmp_path / "gz", gz=True)):
        result = run("verify", str(root))
        assert result.exit_code == 0, result.output
        assert "not the official smallNORB files" in result.output
        assert "per class: 0:162 1:162 2:162 3:162 4:162" in result.output
        assert "(810, 2, 96, 96)" in result.output


@pytest.mark.parametrize("fault", FAULTS)
def test_verify_broken_files_one_line_naming_the_file(tmp_path, norb_dir, fault):
    root, culprit = _broken_set(tmp_path, norb_dir, fault)
    before = snapshot(root)
    result = run("verify", str(root))
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0
    assert len(lines) == 1 and lines[0].startswith("Error: ") and culprit in lines[0], result.output
    assert "Traceback" not in result.output
    assert snapshot(root) == before, "verify writes nothing"


def test_verify_broken_gzip_writes_nothing(tmp_path, norb_dir):
    root = write_norb_set(tmp_path / "gz", gz=True)
    name = FILE_NAMES["train", "dat"] + ".gz"
    (root / name).write_bytes((root / name).read_bytes()[:-500])
    before = snapshot(root)
    result = run("verify", str(root))
    assert result.exit_code == 1 and name in result.output and len(result.output.strip().splitlines()) == 1
    assert snapshot(root) == before


def test_verify_a_missing_directory():
    result = run("verify", "/nonexistent/norb")
    assert result.exit_code == 1 and "/nonexistent/norb: data directory not found" in result.output


# --- fetch against a local server ----------------------------------------------------------------------


class FileServer(BaseHTTPRequestHandler):
    """Serves `files` with HTTP Range support (http.server's own handler has none) and records the ranges."""

    files: dict[str, bytes] = {}
    ranges: list[str] = []
    honour_range = True

    def do_GET(self):  # noqa: N802 (http.server's naming)
        body = self.files.get(self.path.rsplit("/", 1)[-1])
        if body is None:
            self.send_error(404)
            return
        start = 0
        if "Range" in self.headers and self.honour_range:
            self.ranges.append(self.headers["Range"])
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture()
def server(tmp_path):
    files = {}
    for k, name in enumerate(FILE_NAMES.values()):
        array = np.full((3, 2), k, dtype=np.int32)
        files[name + ".gz"] = write_matrix(tmp_path / "served" / (name + ".gz"), array).read_bytes()
    handler = type("Handler", (FileServer,), {"files": files, "ranges": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/data/", files, handler.ranges
    httpd.shutdown()
    httpd.server_close()


def md5s(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.md5(body).hexdigest() for name, body in files.items()}


def test_fetch_downloads_and_checks_md5(tmp_path, server):
    url, files, _ = server
    paths = fetch(tmp_path / "root", base_url=url, md5s=md5s(files), progress=False)
    assert sorted(p.name for p in paths) == sorted(files)
    assert all(p.read_bytes() == files[p.name] for p in paths)
    assert not list((tmp_path / "root").glob("*.part"))


def test_fetch_resumes_from_a_partial_download(tmp_path, server):
    url, files, ranges = server
    root = tmp_path / "root"
    root.mkdir()
    name = FILE_NAMES["train", "dat"] + ".gz"
    (root / (name + ".part")).write_bytes(files[name][:20])
    fetch(root, base_url=url, md5s={name: md5s(files)[name]}, progress=False)
    assert ranges == ["bytes=20-"] and (root / name).read_bytes() == files[name]


def test_fetch_starts_over_when_the_server_ignores_range(tmp_path, server, monkeypatch):
    url, files, ranges = server
    root = tmp_path / "root"
    root.mkdir()
    name = FILE_NAMES["test", "info"] + ".gz"
    (root / (name + ".part")).write_bytes(b"stale bytes from another file")
    monkeypatch.setattr(FileServer, "honour_range", False)
    fetch(root, base_url=url, md5s={name: md5s(files)[name]}, progress=False)
    assert ranges == [] and (root / name).read_bytes() == files[name]


def test_fetch_cli_detects_md5_mismatch(tmp_path, server):
    url, _, _ = server
    result = run("fetch", "--root", str(tmp_path / "root"), "--url", url, "--no-progress")
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "is not the official" in result.output and next(iter(GZ_MD5.values())) in result.output
    assert not list((tmp_path / "root").iterdir()), "a wrong download is not kept under an official name"


def test_fetch_unreachable_url_gives_one_line_with_the_manual_route(tmp_path):
    result = run("fetch", "--root", str(tmp_path / "root"), "--url", "http://127.0.0.1:9/", "--no-progress")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and "Traceback" not in result.output
    assert "cannot download" in lines[0] and "by hand" in lines[0] and str(tmp_path / "root") in lines[0]
    with pytest.raises(RobustcapsError, match="cs.nyu.edu/~ylclab/data/norb-v1.0-small"):
        fetch(tmp_path / "root", base_url="http://127.0.0.1:9/", progress=False)
