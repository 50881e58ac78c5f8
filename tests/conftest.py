"""Shared fixtures: `rendered_root` (a tiny rendered smallNORB-format directory, made once per session),
`norb_dir` (a small smallNORB-format set over the full viewpoint grid, per module) and `private_cache`."""

from __future__ import annotations

import os

import pytest

# Without an NVIDIA driver, the Triton kernels of routing="triton" can run only in Triton's interpreter,
# which Triton reads from TRITON_INTERPRET when it is first imported (by torch): set here, before that.
if not os.path.exists("/proc/driver/nvidia/version"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

# A viewpoint subset that keeps every split meaningful: azimuths 0, 2, 32 are in the azimuth split's
# training set {30, 32, 34, 0, 2, 4} and 8, 16, 24 are not; elevation 0 is in the elevation split's
# training set {0, 1, 2} and 5 is not. All 5 categories and all 10 instances: 300 stereo pairs per part.
RENDERED_SUBSET = {"elevations": (0, 5), "azimuths": (0, 2, 8, 16, 24, 32), "lightings": (0,)}


@pytest.fixture(scope="session")
def rendered_root(tmp_path_factory: pytest.TempPathFactory):
    """Path of a rendered directory with the six official-name files and manifest.json (seed 0)."""
    from robustcaps.data.standin.render import render_dataset

    # supersample=1 (aliased edges) renders in ~2 s of CPU; the images are otherwise the full renderer's
    return render_dataset(
        tmp_path_factory.mktemp("rendered"),
        seed=0,
        size="tiny",
        progress=False,
        supersample=1,
        **RENDERED_SUBSET,
    )


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """A ROBUSTCAPS_CACHE of the test's own, so .gz decompression and MD5 caches never leak between tests."""
    monkeypatch.setenv("ROBUSTCAPS_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def norb_dir(tmp_path_factory: pytest.TempPathFactory):
    from tests.data.test_norb import write_norb_set

    return write_norb_set(tmp_path_factory.mktemp("norb"))
