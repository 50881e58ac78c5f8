"""Viewpoint splits on a small set covering the full grid: exact sizes, disjointness, seeding, the cache."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as F

from robustcaps.data import splits
from robustcaps.data.norb import load_arrays
from robustcaps.data.splits import TRAIN_AZIMUTHS, TRAIN_ELEVATIONS, stratified_subset
from robustcaps.errors import RobustcapsError
from tests.data.test_norb import write_norb_set

# 5 classes x 1 instance x 9 elevations x 18 azimuths x 1 lighting = 810 pairs per part
SIZES = {
    # split: (train, val, test, familiar, novel) in stereo pairs, val_fraction 0.1
    "full": (729, 81, 810, 810, 0),
    "azimuth": (243, 27, 810, 270, 540),
    "elevation": (243, 27, 810, 270, 540),
}
PART_NAMES = ("train", "val", "test", "familiar", "novel")


def make_split(root, **options):
    """The splits of the one-instance set: validation by pairs (there is no second instance to hold out)."""
    return splits.make_split(root, **({"val": "pairs"} | options))


@pytest.fixture(scope="module")
def norb_dir(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROBUSTCAPS_CACHE", str(cache))
        yield write_norb_set(tmp_path_factory.mktemp("norb"))


def keys(tensorset) -> set[tuple[int, ...]]:
    """(class, elevation, azimuth): unique per pair in this one-instance, one-lighting set."""
    return {(int(c), int(i[1]), int(i[2])) for c, i in zip(tensorset.labels, tensorset.info, strict=True)}


@pytest.mark.parametrize("split", list(SIZES))
def test_exact_sizes_and_disjoint_parts(norb_dir, split):
    data = make_split(norb_dir, split=split)
    assert tuple(len(getattr(data, name)) for name in PART_NAMES) == SIZES[split]
    assert data.identity["sizes"] == dict(zip(PART_NAMES, SIZES[split], strict=True))
    assert data.train.images.shape[1:] == (2, 48, 48) and data.train.images.dtype == torch.uint8
    assert not keys(data.train) & keys(data.val), "validation pairs are not training pairs"
    assert not keys(data.familiar) & keys(data.novel)
    assert keys(data.familiar) | keys(data.novel) == keys(data.test)
    assert set(data.test.info[:, 0].tolist()) == {0} and set(data.train.info[:, 0].tolist()) == {4}
    values = {
        name: {col: set(getattr(data, name).info[:, col].tolist()) for col in (1, 2)} for name in PART_NAMES
    }
    if split == "azimuth":
        assert values["train"][2] == set(TRAIN_AZIMUTHS) == values["familiar"][2]
        assert not values["novel"][2] & set(TRAIN_AZIMUTHS) and values["train"][1] == set(range(9))
    if split == "elevation":
        assert values["train"][1] == set(TRAIN_ELEVATIONS) == values["val"][1] == values["familiar"][1]
        assert values["novel"][1] == set(range(3, 9))


def test_stereo_as_samples_keeps_both_views_of_a_pair_together(norb_dir):
    pairs = make_split(norb_dir, split="azimuth", stereo="channels")
    singles = make_split(norb_dir, split="azimuth", stereo="samples")
    assert tuple(len(getattr(singles, n)) for n in PART_NAMES) == tuple(2 * n for n in SIZES["azimuth"])
    assert singles.val.images.shape[1:] == (1, 48, 48)
    assert keys(singles.val) == keys(pairs.val), "the same pairs, split before the cameras are separated"
    assert torch.equal(singles.val.images[0::2, 0], pairs.val.images[:, 0])
    assert torch.equal(singles.val.images[1::2, 0], pairs.val.images[:, 1])
    assert singles.identity["stereo"] == "samples" and singles.identity["kind"] == "smallnorb"


def test_validation_is_seeded_and_stratified(norb_dir):
    a, b = make_split(norb_dir, split="full", seed=0), make_split(norb_dir, split="full", seed=0)
    c = make_split(norb_dir, split="full", seed=1)
    assert keys(a.val) == keys(b.val) and keys(a.val) != keys(c.val)
    assert set(torch.bincount(a.val.labels).tolist()) <= {16, 17}, "81 pairs over 5 equal classes"


def test_max_per_part_subsamples_by_class(norb_dir):
    data = make_split(norb_dir, split="elevation", stereo="samples", max_per_part=40, seed=3)
    assert all(len(getattr(data, n)) == 40 for n in PART_NAMES)
    for name in PART_NAMES:
        counts = torch.bincount(getattr(data, name).labels, minlength=5)
        assert counts.min() >= 7 and counts.max() <= 9, (name, counts)
    assert not set(data.novel.info[:, 1].tolist()) & set(TRAIN_ELEVATIONS)
    full = make_split(norb_dir, split="full", max_per_part=50)
    assert full.familiar is full.test and len(full.novel) == 0


def test_downsampling_is_cached_and_matches_torchvision(norb_dir, monkeypatch):
    data = make_split(norb_dir, split="full", val_fraction=0.0)
    dat = load_arrays(norb_dir, "test").dat
    expected = F.resize(torch.from_numpy(dat[:4].copy()), [48, 48], antialias=True)
    assert torch.equal(data.test.images[:4], expected)

    def no_reload(*args, **kwargs):
        raise AssertionError("the 48x48 cache should have been used")

    monkeypatch.setattr(splits, "load_arrays", no_reload)
    assert torch.equal(make_split(norb_dir, split="full", val_fraction=0.0).test.images, data.test.images)


def test_cache_is_rebuilt_when_the_data_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTCAPS_CACHE", str(tmp_path / "cache"))
    root = write_norb_set(tmp_path / "data", seed=0)
    before = make_split(root, split="full").test.images.clone()
    write_norb_set(root, seed=1)
    after = make_split(root, split="full").test.images
    assert not torch.equal(before, after)
    assert len(list((root / ".robustcaps-cache").glob("downsampled48-*.pt"))) == 1


def test_stratified_subset_keeps_class_shares():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    index = stratified_subset(labels, 20, torch.Generator().manual_seed(0))
    assert torch.bincount(labels[index]).tolist() == [12, 6, 2]
    assert len(set(index.tolist())) == 20 and torch.equal(index, index.sort().values)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"split": "lighting"}, "--split 'lighting'"),
        ({"stereo": "both"}, "--stereo 'both'"),
        ({"val_fraction": 1.0}, "--val-fraction"),
        ({"max_per_part": 0}, "--max-per-part"),
    ],
)
def test_bad_options_name_the_option(norb_dir, options, message):
    with pytest.raises(RobustcapsError, match=message):
        make_split(norb_dir, **options)


def test_read_only_data_directory_caches_under_cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTCAPS_CACHE", str(tmp_path / "cache"))
    root = write_norb_set(tmp_path / "data")
    monkeypatch.setattr(splits.os, "access", lambda path, mode: False)
    make_split(root, split="elevation")
    assert not (root / ".robustcaps-cache").exists()
    assert len(list((tmp_path / "cache" / "downsampled").glob("*/downsampled48-*.pt"))) == 1


@pytest.fixture(scope="module")
def two_instances(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROBUSTCAPS_CACHE", str(tmp_path_factory.mktemp("cache2")))
        yield write_norb_set(tmp_path_factory.mktemp("norb2"), instances=2)


@pytest.mark.parametrize("split", ["full", "azimuth", "elevation"])
def test_instance_validation_holds_out_one_whole_instance_per_category(two_instances, split):
    data = splits.make_split(two_instances, split=split)  # the default: val="instances"
    held_out = data.identity["val_instances"]
    assert data.identity["val"] == "instances" and sorted(held_out) == list(range(5))
    train = set(zip(data.train.labels.tolist(), data.train.info[:, 0].tolist(), strict=True))
    val = set(zip(data.val.labels.tolist(), data.val.info[:, 0].tolist(), strict=True))
    assert val == set(held_out.items()), "exactly one instance per category"
    assert not train & val, "no image of a validation instance is trained on"
    assert len(train) == 5, "the other instance of every category trains"
    pool = 9 * 18 if split == "full" else 3 * 18 if split == "elevation" else 9 * 6
    assert len(data.val) == len(data.train) == 5 * pool, "all its familiar-viewpoint images"
    assert data.identity["sizes"]["val"] == len(data.val)


@pytest.mark.parametrize("split", ["full", "azimuth"])
def test_no_validation_trains_every_pair_the_split_trains_on(two_instances, split):
    held_out, every = (splits.make_split(two_instances, split=split, val=v) for v in ("instances", "none"))
    assert len(every.val) == 0 and every.identity["val"] == "none" and every.identity["val_instances"] == {}
    assert len(every.train) == len(held_out.train) + len(held_out.val)
    assert torch.equal(every.test.images, held_out.test.images)  # the test data does not depend on it


def test_instance_validation_is_seeded(two_instances):
    draws = [splits.make_split(two_instances, seed=seed).identity["val_instances"] for seed in range(6)]
    assert draws[0] == splits.make_split(two_instances, seed=0).identity["val_instances"]
    assert len({tuple(d.values()) for d in draws}) > 1, "another seed holds out other instances"


def test_instance_validation_needs_two_instances(norb_dir):
    with pytest.raises(RobustcapsError, match="--val instances: category 0 has 1 training instance"):
        splits.make_split(norb_dir)
    with pytest.raises(RobustcapsError, match="--val 'objects'"):
        splits.make_split(norb_dir, val="objects")


def test_pairs_validation_keeps_the_identity_written_before_instances_existed(norb_dir):
    identity = make_split(norb_dir).identity
    assert identity["val_fraction"] == 0.1 and "val" not in identity and "val_instances" not in identity
