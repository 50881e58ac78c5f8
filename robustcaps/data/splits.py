"""The viewpoint splits of HSF18 §5 (Table 2): full, azimuth and elevation; familiar and novel test subsets.

- `full`: train on the training set, test on the test set (familiar = test, novel is empty).
- `azimuth`: train on azimuths 300°, 320°, 340°, 0°, 20°, 40° (info values 30, 32, 34, 0, 2, 4);
  novel = test images at the other twelve azimuths.
- `elevation`: train on the three lowest elevations, 30°–40° (info values 0, 1, 2); novel = 3..8.
"Familiar" is the test set at the training viewpoints, never the training images themselves; the
validation set is drawn from the training images only, so no checkpoint is ever chosen on test data.

Validation (`val`): "instances" (the default) holds out one whole training instance per category, every
image of it, so that val error measures what test error measures, generalisation to unseen objects;
"pairs" holds out a random fraction of stereo pairs, whose own instance and viewpoint (under another
lighting) stay in training, so it measures interpolation and reads far lower than test error; "none"
holds out nothing, for a final run trained on every instance for an epoch count chosen on another run.

The 96×96 images are downsampled to 48×48 once and cached (keyed by the dataset's identity and the files'
sizes and mtimes): the full set is 48,600 stereo pairs and the resize costs seconds each time.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from robustcaps import choices
from robustcaps.data.dataset import Split, Validation, check_stereo
from robustcaps.data.norb import PARTS, dataset_identity, load_arrays, norb_paths
from robustcaps.data.norb_format import cache_root
from robustcaps.data.transforms import DOWNSAMPLED, downsample
from robustcaps.errors import RobustcapsError
from robustcaps.io import atomic_torch_save

TRAIN_AZIMUTHS = (30, 32, 34, 0, 2, 4)  # info values: 300°, 320°, 340°, 0°, 20°, 40°
TRAIN_ELEVATIONS = (0, 1, 2)  # info values: 30°, 35°, 40°
_CACHE_VERSION = 1


@dataclass(frozen=True)
class TensorSet:
    images: torch.Tensor  # uint8 (N, C, 48, 48)
    labels: torch.Tensor  # int64 (N,)
    info: torch.Tensor  # int64 (N, 4): instance, elevation, azimuth, lighting

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> TensorSet:
        return TensorSet(self.images[index], self.labels[index], self.info[index])


@dataclass(frozen=True)
class SplitData:
    train: TensorSet
    val: TensorSet
    test: TensorSet
    familiar: TensorSet
    novel: TensorSet
    identity: dict[str, Any]


def familiar_mask(info: torch.Tensor, split: str) -> torch.Tensor:
    """True where a pair's viewpoint is one the split trains on (all pairs for `full`)."""
    if split == "azimuth":
        return torch.isin(info[:, 2], torch.tensor(TRAIN_AZIMUTHS))
    if split == "elevation":
        return torch.isin(info[:, 1], torch.tensor(TRAIN_ELEVATIONS))
    assert split == "full", split
    return torch.ones(len(info), dtype=torch.bool)


def stratified_subset(labels: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Sorted indices of a random subset of size min(k, N) in which every class keeps its share."""
    n = len(labels)
    if k >= n:
        return torch.arange(n)
    perm = torch.randperm(n, generator=generator)
    shuffled = labels[perm]
    counts = torch.bincount(shuffled)
    grouped = torch.argsort(shuffled, stable=True)
    rank = torch.empty(n, dtype=torch.long)
    rank[grouped] = torch.arange(n) - (torch.cumsum(counts, 0) - counts)[shuffled[grouped]]
    # interleave the classes in proportion: the j-th of n_c samples of a class sorts at (j + ½) / n_c
    key = (rank + 0.5) / counts[shuffled]
    return perm[torch.argsort(key, stable=True)[:k]].sort().values


def as_samples(pairs: TensorSet) -> TensorSet:
    """(N, 2, H, W) stereo pairs → (2N, 1, H, W): each camera its own sample, the pair's two adjacent."""
    n, _, h, w = pairs.images.shape
    return TensorSet(
        pairs.images.reshape(2 * n, 1, h, w),
        pairs.labels.repeat_interleave(2),
        pairs.info.repeat_interleave(2, dim=0),
    )


def downsampled_parts(root: str | os.PathLike) -> dict[str, TensorSet]:
    """{train, test}: all stereo pairs at 48×48, computed once per dataset and then loaded from a cache."""
    root = Path(root)
    files = [path for part in PARTS for path in norb_paths(root, part).values()]
    stats = [(path.name, path.stat().st_size, path.stat().st_mtime_ns) for path in files]
    key_source = json.dumps([_CACHE_VERSION, DOWNSAMPLED, dataset_identity(root), stats], sort_keys=True)
    key = hashlib.sha1(key_source.encode()).hexdigest()[:16]
    if os.access(root, os.W_OK):
        cache_dir = root / ".robustcaps-cache"
    else:  # one folder per data directory, so that stale-cache cleaning never touches another dataset's
        cache_dir = cache_root() / "downsampled" / hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    path = cache_dir / f"downsampled{DOWNSAMPLED}-{key}.pt"
    if path.is_file():
        try:
            saved = torch.load(path, weights_only=True, mmap=True)
            return {part: TensorSet(**saved[part]) for part in PARTS}
        except (RuntimeError, KeyError, TypeError, OSError):  # a damaged cache is rebuilt, not fatal
            pass
    parts = {}
    for part in PARTS:
        dat, cat, info = load_arrays(root, part)
        parts[part] = TensorSet(downsample(dat), torch.from_numpy(cat), torch.from_numpy(info))
    atomic_torch_save(path, {part: vars(s) for part, s in parts.items()})
    for stale in cache_dir.glob(f"downsampled{DOWNSAMPLED}-*.pt"):
        if stale != path:
            stale.unlink(missing_ok=True)
    return parts


def _check_options(split: str, stereo: str, val: str, val_fraction: float, max_per_part: int | None) -> None:
    split, val = choices.parse(Split, split, "--split"), choices.parse(Validation, val, "--val")
    check_stereo(stereo)
    if not 0 <= val_fraction < 1:
        raise RobustcapsError(f"--val-fraction {val_fraction}: expected a fraction in [0, 1)")
    if max_per_part is not None and max_per_part < 1:
        raise RobustcapsError(f"--max-per-part {max_per_part}: expected a positive number of images")


def held_out_instances(pool: TensorSet, generator: torch.Generator) -> dict[int, int]:
    """{category: instance}: one of each category's training instances, drawn with `generator`."""
    chosen = {}
    for category in sorted(set(pool.labels.tolist())):
        instances = sorted(set(pool.info[pool.labels == category, 0].tolist()))
        if len(instances) < 2:
            raise RobustcapsError(
                f"--val instances: category {category} has {len(instances)} training instance(s), so none "
                "can be held out; use --val pairs"
            )
        chosen[category] = instances[int(torch.randint(len(instances), (1,), generator=generator))]
    return chosen


def _validation_mask(pool: TensorSet, val: str, val_fraction: float, generator: torch.Generator):
    """True for the pool's validation pairs, and the held-out instances ({} for `pairs` and `none`)."""
    is_val = torch.zeros(len(pool), dtype=torch.bool)
    if val == "none":
        return is_val, {}
    if val == "pairs":
        is_val[stratified_subset(pool.labels, round(val_fraction * len(pool)), generator)] = True
        return is_val, {}
    chosen = held_out_instances(pool, generator)
    for category, instance in chosen.items():
        is_val |= (pool.labels == category) & (pool.info[:, 0] == instance)
    return is_val, chosen


def _viewpoint_sets(
    parts: dict[str, TensorSet], split: str, val: str, val_fraction: float, generator: torch.Generator
) -> tuple[dict[str, TensorSet], dict[int, int]]:
    pool = parts["train"].subset(torch.nonzero(familiar_mask(parts["train"].info, split)).flatten())
    is_val, held_out = _validation_mask(pool, val, val_fraction, generator)
    test, familiar = parts["test"], familiar_mask(parts["test"].info, split)
    return {
        "train": pool.subset(torch.nonzero(~is_val).flatten()),
        "val": pool.subset(torch.nonzero(is_val).flatten()),
        "test": test,
        "familiar": test if split == "full" else test.subset(torch.nonzero(familiar).flatten()),
        "novel": test.subset(torch.nonzero(~familiar).flatten()),
    }, held_out


def make_split(
    root: str | os.PathLike,
    split: str = "full",
    stereo: str = "channels",
    val_fraction: float = 0.1,
    seed: int = 0,
    max_per_part: int | None = None,
    val: str = "instances",
) -> SplitData:
    """The train / val / test / familiar / novel sets of one split, uint8 (N, C, 48, 48), C = 2 or 1.

    val: with `val="instances"` every image of one seeded training instance per category; with "pairs" a
    class-stratified `val_fraction` of the training pairs (seeded); with "none" no pair. It is split before
    the cameras are separated, so both views of a pair stay on the same side. `max_per_part` caps every part
    at that many samples (seeded, class-stratified) for quick runs.
    """
    _check_options(split, stereo, val, val_fraction, max_per_part)
    generator = torch.Generator().manual_seed(seed)
    sets, held_out = _viewpoint_sets(downsampled_parts(root), split, val, val_fraction, generator)
    if stereo == "samples":
        sets = {name: as_samples(s) for name, s in sets.items()}
    if max_per_part is not None:
        sets = {
            name: s.subset(stratified_subset(s.labels, max_per_part, generator)) for name, s in sets.items()
        }
    if split == "full":  # familiar *is* the test set here: one object, not a second draw or copy
        sets["familiar"] = sets["test"]
    identity = dataset_identity(root) | {
        "split": split,
        "stereo": stereo,
        # "pairs" keeps the identity written before instance validation existed, so those runs resume
        **({"val_fraction": val_fraction} if val == "pairs" else {"val": val, "val_instances": held_out}),
        "split_seed": seed,
        "max_per_part": max_per_part,
        "sizes": {name: len(s) for name, s in sets.items()},
    }
    return SplitData(**sets, identity=identity)
