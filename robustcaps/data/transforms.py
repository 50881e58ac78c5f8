"""The paper's preprocessing (HSF18 §5): 96→48 downsampling, 32×32 crops, brightness/contrast, multi-crop.

Downsampling happens once per dataset (`downsample`, torchvision's antialiased resize). The rest runs on
whole uint8 batches on the training device (`train_batch`, `test_batch`, `multi_crop_batch`) and returns
float pixels in [0, 1]: per-image standardisation is the model's first layer, not done here (the
`standardize` below is for the Dataset path and for checks).

torchvision.transforms.v2 draws one crop and one jitter per call, i.e. per batch; the paper's augmentation
is per image, so the batched crop and jitter are written by hand (one gather, no Python loop).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

DOWNSAMPLED = 48
CROP = 32
# HSF18 gives no amounts for "random brightness and contrast"; these are TF's usual
# `random_brightness(max_delta=32/255)` and `random_contrast(0.5, 1.5)` on [0, 1] images.
BRIGHTNESS_DELTA = 32 / 255
CONTRAST_RANGE = (0.5, 1.5)
# Official multi-crop: the centre crop plus crops shifted by ±1, ±2, ±3 px along both diagonals.
MULTI_CROP_OFFSETS: tuple[tuple[int, int], ...] = (
    ((0, 0),) + tuple((d, d) for d in (-3, -2, -1, 1, 2, 3)) + tuple((d, -d) for d in (-3, -2, -1, 1, 2, 3))
)


def downsample(images: np.ndarray | torch.Tensor, size: int = DOWNSAMPLED, chunk: int = 2048) -> torch.Tensor:
    """uint8 (N, C, H, W) → uint8 (N, C, size, size), antialiased; chunked, a memmap stays on disk."""
    out = torch.empty((len(images), images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk]
        block = block if isinstance(block, torch.Tensor) else torch.from_numpy(np.array(block))
        out[start : start + chunk] = F.resize(block, [size, size], antialias=True)
    return out


def standardize(x: torch.Tensor) -> torch.Tensor:
    """Per-image standardisation as TF's per_image_standardization: (x − mean) / max(std, 1/√n) over C,H,W."""
    flat = x.flatten(1).float()
    mean = flat.mean(1, keepdim=True)
    std = flat.std(1, unbiased=False, keepdim=True).clamp_min(flat.shape[1] ** -0.5)
    return ((flat - mean) / std).view_as(x)


def crop_at(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int = CROP) -> torch.Tensor:
    """(N, C, H, W) → (N, C, size, size), image n cut at (top[n], left[n])."""
    steps = torch.arange(size, device=x.device)
    rows = (top.to(x.device)[:, None] + steps)[:, :, None]  # (N, size, 1)
    cols = (left.to(x.device)[:, None] + steps)[:, None, :]  # (N, 1, size)
    batch = torch.arange(len(x), device=x.device)[:, None, None]
    return x[batch, :, rows, cols].permute(0, 3, 1, 2)  # advanced indexing puts C last


def _centre(x: torch.Tensor, size: int = CROP) -> int:
    return (x.shape[-1] - size) // 2


def train_batch(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    brightness: float = BRIGHTNESS_DELTA,
    contrast: tuple[float, float] = CONTRAST_RANGE,
) -> torch.Tensor:
    """uint8 (N, C, 48, 48) → float [0, 1] (N, C, 32, 32): random crop, brightness, contrast per image.

    brightness: x + δ, δ ~ U(−brightness, brightness); contrast: (x − mean_c)·f + mean_c, f ~ U(contrast),
    the mean per image and channel (each camera its own, as TF's adjust_contrast); then clipped to [0, 1].
    Deterministic given `generator` (which must live on x's device).
    """
    n, device = len(x), x.device
    span = x.shape[-1] - CROP + 1
    top, left = (torch.randint(0, span, (n,), generator=generator, device=device) for _ in range(2))
    out = crop_at(x, top, left).float().div_(255)
    delta = (torch.rand(n, 1, 1, 1, generator=generator, device=device) * 2 - 1) * brightness
    factor = torch.empty(n, 1, 1, 1, device=device).uniform_(*contrast, generator=generator)
    out.add_(delta)
    mean = out.mean(dim=(2, 3), keepdim=True)
    return out.sub_(mean).mul_(factor).add_(mean).clamp_(0, 1)


def test_batch(x: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, 48, 48) → float [0, 1] (N, C, 32, 32): the centre crop."""
    c = _centre(x)
    return x[..., c : c + CROP, c : c + CROP].float().div(255)


def multi_crop_batch(x: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, 48, 48) → float [0, 1] (13, N, C, 32, 32): centre crop, then the 12 diagonal shifts."""
    c, unit = _centre(x), x.float().div_(255)  # convert once, then slice: 6x faster than the other order
    return torch.stack(
        [unit[..., c + dy : c + dy + CROP, c + dx : c + dx + CROP] for dy, dx in MULTI_CROP_OFFSETS]
    )


def paper_transform(train: bool, standardized: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """For `SmallNORB(transform=...)`: one uint8 (C, 96, 96) image → float (C, 32, 32), as the batch path."""
    crop = (lambda x: train_batch(x[None])[0]) if train else (lambda x: test_batch(x[None])[0])
    steps = [v2.Resize([DOWNSAMPLED, DOWNSAMPLED], antialias=True), v2.Lambda(crop)]
    if standardized:
        steps.append(v2.Lambda(lambda x: standardize(x[None])[0]))
    return v2.Compose(steps)
