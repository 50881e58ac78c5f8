"""`SmallNORB`: one part (train or test) of a smallNORB-format directory as a torch Dataset.

The stereo pair is either two channels of one sample (`stereo="channels"`, as the official capsule code
feeds it) or two samples with one channel each (`stereo="samples"`, as most ports do); the choice is
recorded by whoever builds the Dataset. Images stay uint8 (C, 96, 96) unless a `transform` is given
(e.g. `robustcaps.data.transforms.paper_transform(train=True)`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from enum import StrEnum

import numpy as np
import torch
from torch.utils.data import Dataset

from robustcaps import choices
from robustcaps.data.norb import INFO_FIELDS, load_arrays


class Stereo(StrEnum):
    CHANNELS = "channels"  # the pair as two channels of one sample (the official code)
    SAMPLES = "samples"  # each camera its own one-channel sample (most ports)


# How a run splits the data (implemented in splits.py, which imports torchvision): named here so that a
# config can be checked without that import.
class Split(StrEnum):
    FULL = "full"
    AZIMUTH = "azimuth"
    ELEVATION = "elevation"


class Validation(StrEnum):
    INSTANCES = "instances"  # one whole training instance per category
    PAIRS = "pairs"  # a random fraction of the training pairs
    NONE = "none"  # none: every training pair trains (a final run whose epoch count was chosen on another)


def check_stereo(stereo: str) -> None:
    choices.parse(Stereo, stereo, "--stereo")


class SmallNORB(Dataset):
    """Items are `(image, label)`: image uint8 (2 or 1, 96, 96) (or whatever `transform` returns), label int.

    `labels` (len,) and `info` (len, 4: instance, elevation, azimuth, lighting) are per sample;
    `cameras` (len,) is 0/1 with `stereo="samples"` and -1 (both) with `stereo="channels"`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        part: str = "train",
        stereo: str = "channels",
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        check_stereo(stereo)
        self.root, self.part, self.stereo, self.transform = root, part, stereo, transform
        self.dat, cat, info = load_arrays(root, part)
        per_pair = 2 if stereo == "samples" else 1
        self.labels = np.repeat(cat, per_pair)
        self.info = np.repeat(info, per_pair, axis=0)
        self.cameras = np.tile([0, 1], len(cat)) if stereo == "samples" else np.full(len(cat), -1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index %= len(self)
        if self.stereo == "samples":
            pair, camera = divmod(index, 2)
            image = torch.from_numpy(np.array(self.dat[pair, camera : camera + 1]))
        else:
            image = torch.from_numpy(np.array(self.dat[index]))
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def info_dict(self, index: int) -> dict[str, int]:
        """The viewpoint of one sample by name: instance, elevation, azimuth, lighting, camera."""
        fields = dict(zip(INFO_FIELDS, (int(v) for v in self.info[index]), strict=True))
        return fields | {"camera": int(self.cameras[index])}
