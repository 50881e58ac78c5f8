"""The rendered stand-in: valid smallNORB-format files, deterministic bytes, a real viewpoint signal."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from click.testing import CliRunner

from robustcaps.cli import cli
from robustcaps.data.norb import FILE_NAMES, MANIFEST, load_arrays, read_matrix
from robustcaps.data.norb_verify import verify
from robustcaps.data.standin import scene
from robustcaps.data.standin.mesh import ellipsoid, merge, tube
from robustcaps.data.standin.render import INSTANCES, make_config, render_dataset, render_elevation, row_order
from robustcaps.data.standin.scene import coverage
from robustcaps.errors import RobustcapsError
from tests.conftest import RENDERED_SUBSET

# Two objects' worth of views is enough to compare seeds; keep these renders to ~1 s of CPU.
SMALL = {"elevations": (1,), "azimuths": (0, 18), "lightings": (0, 3), "supersample": 1, "progress": False}


def _images(root, part="train"):
    dat, cat, info = load_arrays(root, part)
    return {(int(c), *map(int, i)): dat[n] for n, (c, i) in enumerate(zip(cat, info, strict=True))}


@pytest.fixture(scope="module")
def outlines():
    """(category, instance, elevation) -> coverage (azimuth, camera, 96, 96) at the fixture's viewpoints."""
    config = make_config(0, "tiny", supersample=1, **RENDERED_SUBSET)
    return {
        (c, i, e): coverage(config, c, i, e) for c in range(5) for i in INSTANCES["train"] for e in (0, 5)
    }


def test_fixture_is_valid_smallnorb_format(rendered_root):
    report = verify(rendered_root)
    assert not report.official and report.identity["kind"] == "rendered"
    assert report.sha256_mismatch == ()
    for part, summary in zip(("train", "test"), report.parts, strict=True):
        assert set(summary.counts["instance"]) == set(INSTANCES[part])
        assert set(summary.counts["class"]) == set(range(5))
        assert len(set(summary.counts["class"].values())) == 1  # balanced classes
    dat = read_matrix(rendered_root / FILE_NAMES["train", "dat"])
    assert dat.dtype == np.uint8 and dat.shape[1:] == (2, 96, 96)


def test_manifest_records_subset_and_sha256(rendered_root):
    manifest = json.loads((rendered_root / MANIFEST).read_text())
    assert manifest["seed"] == 0 and manifest["options"]["azimuths"] == [0, 2, 8, 16, 24, 32]
    assert sorted(manifest["sha256"]) == sorted(FILE_NAMES.values())
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256((rendered_root / name).read_bytes()).hexdigest() == digest
    assert manifest["rows"] == {"train": 300, "test": 300}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = render_dataset(tmp_path / "a", seed=3, workers=2, **SMALL)  # worker count must not change the bytes
    b = render_dataset(tmp_path / "b", seed=3, workers=1, **SMALL)
    c = render_dataset(tmp_path / "c", seed=4, workers=1, **SMALL)
    for name in FILE_NAMES.values():
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / MANIFEST).read_bytes() == (b / MANIFEST).read_bytes()
    dat = FILE_NAMES["test", "dat"]
    assert (a / dat).read_bytes() != (c / dat).read_bytes()
    assert (a / FILE_NAMES["test", "info"]).read_bytes() == (c / FILE_NAMES["test", "info"]).read_bytes()


def test_subset_shows_the_same_images_as_the_larger_set(rendered_root, tmp_path):
    """Nuisance is drawn for the whole grid, so an image does not depend on which subset was rendered."""
    sub = render_dataset(
        tmp_path / "sub",
        seed=0,
        size="tiny",
        elevations=(5,),
        azimuths=(16,),
        **{k: v for k, v in SMALL.items() if k not in ("elevations", "azimuths")} | {"lightings": (0,)},
    )
    small, big = _images(sub, "test"), _images(rendered_root, "test")
    assert len(small) == 25
    for key, image in small.items():
        np.testing.assert_array_equal(image, big[key])


def test_train_and_test_cat_files_are_identical_like_the_official_ones(rendered_root):
    train = (rendered_root / FILE_NAMES["train", "cat"]).read_bytes()
    assert train == (rendered_root / FILE_NAMES["test", "cat"]).read_bytes()
    order = row_order(300)
    assert sorted(order.tolist()) == list(range(300)) and not np.array_equal(order, np.arange(300))
    cat = read_matrix(rendered_root / FILE_NAMES["train", "cat"])
    assert set(cat[:25].tolist()) == set(range(5))  # any prefix mixes the categories


def test_azimuth_and_elevation_change_the_silhouette(outlines):
    """Viewpoint is more than a shift: the object's outline changes even after aligning position and size."""
    azimuth = RENDERED_SUBSET["azimuths"].index
    turned, raised = [], []
    for (category, instance, elevation), views in outlines.items():
        assert views.sum(axis=(2, 3)).min() > 100  # an object in every frame
        if elevation == 0:
            turned.append(_aligned_iou(views[azimuth(0), 0], views[azimuth(8), 0]))  # azimuth 0° -> 80°
            higher = outlines[category, instance, 5][azimuth(8), 0]
            raised.append(_aligned_iou(views[azimuth(8), 0], higher))  # elevation 30° -> 55°
    assert max(turned) < 0.8 and np.mean(turned) < 0.5, turned
    assert max(raised) < 0.97 and np.mean(raised) < 0.8, raised


def _aligned_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two silhouettes after moving b's centroid onto a's and scaling it to a's area (nearest-neighbour
    resampling): what is left is a difference in shape, not the nuisance shift and scale."""
    ca, cb = np.argwhere(a).mean(axis=0), np.argwhere(b).mean(axis=0)
    scale = np.sqrt(b.sum() / a.sum())
    grid = np.indices(a.shape).reshape(2, -1).T  # (pixels, 2) as (row, col)
    source = np.rint(cb + (grid - ca) * scale).astype(int)
    ok = (source >= 0).all(axis=1) & (source < np.array(b.shape)).all(axis=1)
    moved = np.zeros(a.size, dtype=bool)
    moved[ok] = b[source[ok, 0], source[ok, 1]]
    moved = moved.reshape(a.shape)
    return float((a & moved).sum() / (a | moved).sum())


def test_front_and_back_differ_beyond_a_mirror(outlines):
    """Objects are front/back asymmetric: seen from 160° an object is not its 20° view mirrored, as it would
    be for an object symmetric under x -> -x (then view(180° - a) = fliplr(view(a)), cameras swapped)."""
    azimuth = RENDERED_SUBSET["azimuths"].index
    for category in range(5):
        overlap = [
            _aligned_iou(views[azimuth(2), 0], views[azimuth(16), 1][:, ::-1])
            for (c, _, e), views in outlines.items()
            if c == category and e == 0
        ]
        assert np.mean(overlap) < 0.85, (category, overlap)


def test_a_symmetric_object_passes_the_mirror_check(monkeypatch):
    """Control for the test above: a front/back-symmetric object does look like its mirrored view."""

    def symmetric(category, instance):
        body = ellipsoid((0, 0, 0.5), (0.9, 0.3, 0.3), 0.7)
        legs = [tube((x, 0.2, 0.4), (x, 0.2, 0.0), 0.06, 0.06, 0.6) for x in (-0.5, 0.5)]
        return merge([body, *legs])

    monkeypatch.setattr(scene, "build_object", symmetric)
    config = make_config(0, "tiny", elevations=(0,), azimuths=(2, 16), lightings=(0,), supersample=1)
    views = coverage(config, 0, 4, 0)
    assert _aligned_iou(views[0, 0], views[1, 1][:, ::-1]) > 0.9


def test_instances_differ_in_shape_more_than_nuisance_moves_one(outlines):
    """Any two instances of a class differ in outline more than one instance does between two seeds (whose
    scale, offset and lighting nuisance differ): the 10 instances are 10 shapes, not one shape re-shaded."""
    side = RENDERED_SUBSET["azimuths"].index(8)
    other_seed = make_config(1, "tiny", elevations=(0,), azimuths=(8,), supersample=1)
    for category in range(5):
        views = [outlines[category, i, 0][side, 0] for i in INSTANCES["train"]]
        reseeded = [coverage(other_seed, category, i, 0)[0, 0] for i in INSTANCES["train"]]
        same = [_aligned_iou(a, b) for a, b in zip(views, reseeded, strict=True)]
        different = [_aligned_iou(views[k], views[j]) for k in range(len(views)) for j in range(k)]
        assert max(different) < min(same), (category, different, same)


def test_images_change_with_azimuth_beyond_a_shift(rendered_root):
    """Best alignment over ±5 px shifts still leaves the 0° and 80° images of every object far apart."""
    images = _images(rendered_root)
    for category in range(5):
        for instance in INSTANCES["train"]:
            a = images[category, instance, 0, 0, 0][0].astype(float)
            b = images[category, instance, 0, 8, 0][0].astype(float)
            a, b = a - np.median(a), b - np.median(b)  # the background grey is nuisance
            best = min(
                np.abs(a[8:-8, 8:-8] - np.roll(b, (dy, dx), axis=(0, 1))[8:-8, 8:-8]).mean()
                for dy in range(-5, 6)
                for dx in range(-5, 6)
            )
            assert best > 2.0, (category, instance, best)


def test_stereo_cameras_see_different_images(rendered_root):
    dat = read_matrix(rendered_root / FILE_NAMES["test", "dat"])
    assert all(not np.array_equal(dat[n, 0], dat[n, 1]) for n in range(20))


def test_lightings_shade_the_same_geometry_differently():
    config = make_config(0, "tiny", elevations=(2,), azimuths=(4,), lightings=(0, 3), supersample=1)
    views = render_elevation(config, 3, 4, 2)[0]  # (lightings, cameras, 96, 96)
    assert not np.array_equal(views[0, 0], views[1, 0])


def test_bad_options_are_one_line_errors(tmp_path):
    with pytest.raises(RobustcapsError, match="--azimuths"):
        make_config(0, "tiny", azimuths=(1,))
    with pytest.raises(RobustcapsError, match="--size"):
        make_config(0, "huge")
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(
        cli, ["data", "render", "--out", str(tmp_path / "file" / "sub"), "--size", "tiny"]
    )
    assert result.exit_code != 0
    result = CliRunner().invoke(cli, ["data", "render", "--out", str(tmp_path / "x"), "--elevations", "0,9"])
    assert (
        result.exit_code == 1 and "--elevations" in result.output and not (tmp_path / "x" / MANIFEST).exists()
    )


def test_cli_contact_sheet(rendered_root, tmp_path):
    out = tmp_path / "sheet.png"
    result = CliRunner().invoke(cli, ["data", "contact-sheet", str(rendered_root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


def test_cli_render_then_verify(tmp_path):
    out = tmp_path / "set"
    args = [
        "--elevations",
        "3",
        "--azimuths",
        "10",
        "--lightings",
        "5",
        "--supersample",
        "1",
        "--no-progress",
    ]
    result = CliRunner().invoke(cli, ["data", "render", "--out", str(out), "--size", "tiny", *args])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["data", "verify", str(out)])
    assert result.exit_code == 0, result.output
    assert "manifest SHA-256: all match" in result.output
    info = read_matrix(out / FILE_NAMES["test", "info"])
    assert set(map(tuple, info[:, 1:].tolist())) == {(3, 10, 5)} and len(info) == 25


def test_default_data_root_renders_once_into_the_cache(tmp_path, monkeypatch):
    import robustcaps.data.standin.render as render

    monkeypatch.setenv("ROBUSTCAPS_CACHE", str(tmp_path))
    monkeypatch.setitem(render.SIZES, "tiny", ((2,), (6,), (1,)))  # one view per object keeps this quick
    root = render.default_data_root("tiny", seed=7, progress=False)
    assert root == tmp_path / "rendered-tiny-seed7" and verify(root).sha256_mismatch == ()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left behind

    def must_not_render(*args, **kwargs):
        raise AssertionError("a complete cached set was rendered again")

    monkeypatch.setattr(render, "render_dataset", must_not_render)
    assert render.default_data_root("tiny", seed=7) == root
    (root / MANIFEST).unlink()  # an incomplete set is rendered again
    monkeypatch.undo()
    monkeypatch.setenv("ROBUSTCAPS_CACHE", str(tmp_path))
    monkeypatch.setitem(render.SIZES, "tiny", ((2,), (6,), (1,)))
    assert render.default_data_root("tiny", seed=7, progress=False) == root and (root / MANIFEST).is_file()


# SHA-256 of two small renders' dat files (seed 0, elevation 4, azimuths 6 and 22, lighting 2, 2x
# supersampled), as made on the project's CPU machine. Another machine must produce the same bytes; if the
# generator was changed on purpose, bump GENERATOR_VERSION and update these.
GOLDEN = {
    ("train", "dat"): "e724a89a90a6fc611524213ab456df33ca22e44c4fc16e3ce3bf314dc92ad70a",
    ("test", "dat"): "d44fd5570402218f78674a9a37f3c659075fc49c3b9e54585da3dfa03b9db2f8",
}


def test_bytes_match_the_reference_machine(tmp_path):
    root = render_dataset(
        tmp_path, seed=0, size="tiny", elevations=(4,), azimuths=(6, 22), lightings=(2,), progress=False
    )
    for key, digest in GOLDEN.items():
        assert hashlib.sha256((root / FILE_NAMES[key]).read_bytes()).hexdigest() == digest, key
