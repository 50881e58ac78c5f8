"""The paper's preprocessing: crops, brightness/contrast ranges, the 13 test crops, standardisation."""

from __future__ import annotations

import pytest
import torch

from robustcaps.data.transforms import (
    BRIGHTNESS_DELTA,
    CONTRAST_RANGE,
    MULTI_CROP_OFFSETS,
    downsample,
    multi_crop_batch,
    paper_transform,
    standardize,
    train_batch,
)
from robustcaps.data.transforms import (
    test_batch as centre_batch,
)


def images(n: int = 64, channels: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, channels, 48, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def crop_offset(crop: torch.Tensor, image: torch.Tensor) -> tuple[int, int]:
    """Where in `image` (C, 48, 48) the [0, 1] crop (C, 32, 32) was cut; fails if it is not a pure crop."""
    hits = [
        (t, l)
        for t in range(17)
        for l in range(17)
        if torch.equal((crop * 255).round().to(torch.uint8), image[:, t : t + 32, l : l + 32])
    ]
    assert len(hits) == 1, hits
    return hits[0]


def test_train_batch_shape_range_and_determinism():
    x = images()
    out = train_batch(x, torch.Generator().manual_seed(1))
    assert out.shape == (64, 2, 32, 32) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, train_batch(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(out, train_batch(x, torch.Generator().manual_seed(2)))


def test_train_crops_are_per_image_and_cover_every_offset():
    x = images(200)
    out = train_batch(x, torch.Generator().manual_seed(0), brightness=0.0, contrast=(1.0, 1.0))
    offsets = [crop_offset(out[i], x[i]) for i in range(len(x))]
    tops, lefts = zip(*offsets, strict=True)
    assert min(tops) == 0 and max(tops) == 16 and min(lefts) == 0 and max(lefts) == 16
    assert len(set(offsets)) > 100, "each image draws its own crop"


def test_brightness_and_contrast_stay_in_their_ranges():
    grey = torch.full((2000, 1, 48, 48), 128, dtype=torch.uint8)
    shifted = train_batch(grey, torch.Generator().manual_seed(0), contrast=(1.0, 1.0))
    delta = shifted.flatten(1)[:, 0] - 128 / 255
    assert delta.abs().max() <= BRIGHTNESS_DELTA + 1e-6 and delta.abs().max() > 0.95 * BRIGHTNESS_DELTA
    assert delta.min() < 0 < delta.max()
    two_tone = grey.clone()
    two_tone[..., :, ::2] = 100  # half the columns: any 32x32 crop sees both tones equally
    stretched = train_batch(two_tone, torch.Generator().manual_seed(0), brightness=0.0)
    factor = stretched.flatten(1).std(1) / (two_tone[:, :, :32, :32].float() / 255).flatten(1).std(1)
    low, high = CONTRAST_RANGE
    assert factor.min() >= low - 1e-4 and factor.max() <= high + 1e-4
    assert factor.min() < low + 0.05 and factor.max() > high - 0.05


def test_centre_crop_and_the_13_crops():
    x = images(8)
    assert torch.equal(centre_batch(x), x[..., 8:40, 8:40].float() / 255)
    crops = multi_crop_batch(x)
    assert crops.shape == (13, 8, 2, 32, 32)
    assert torch.equal(crops[0], centre_batch(x))
    found = {crop_offset(crops[k, 0], x[0]) for k in range(13)}
    diagonals = {(8 + d, 8 + d) for d in (-3, -2, -1, 1, 2, 3)} | {
        (8 + d, 8 - d) for d in (-3, -2, -1, 1, 2, 3)
    }
    assert found == {(8, 8)} | diagonals and len(MULTI_CROP_OFFSETS) == 13


def test_standardize_gives_zero_mean_unit_variance_without_nan():
    x = train_batch(images(), torch.Generator().manual_seed(0))
    z = standardize(x)
    assert z.flatten(1).mean(1).abs().max() < 1e-5
    assert (z.flatten(1).std(1, unbiased=False) - 1).abs().max() < 1e-4
    assert torch.equal(standardize(torch.ones(2, 1, 32, 32)), torch.zeros(2, 1, 32, 32))


def test_downsample_is_antialiased():
    checker = ((torch.arange(96)[:, None] + torch.arange(96)[None, :]) % 2 * 255).to(torch.uint8)
    small = downsample(checker.expand(3, 2, 96, 96).numpy())
    assert small.shape == (3, 2, 48, 48) and small.dtype == torch.uint8
    # an aliased (nearest) resize of a 1-px checkerboard gives pure 0 or 255; antialiasing gives mid-grey
    assert (small[..., 1:-1, 1:-1].float() - 127.5).abs().max() <= 1  # borders see the padding


@pytest.mark.parametrize("train", [True, False])
def test_paper_transform_for_the_dataset_path(train):
    image = torch.randint(0, 256, (2, 96, 96), dtype=torch.uint8)
    out = paper_transform(train=train, standardized=True)(image)
    assert out.shape == (2, 32, 32) and abs(out.mean().item()) < 1e-5
