"""Layers every model shares."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Standardize(nn.Module):
    """Per-image standardisation, the first layer of every model (HSF18 §5: "zero mean, unit variance").

        x' = (x − mean(x)) / (std(x) + ε),   mean and std over (C, H, W) of each image

    Living inside the model keeps the RobustBench contract: data loaders, training and attacks all
    feed [0, 1] pixels, and gradients flow through the normalisation. ε keeps a flat image finite.
    """

    def __init__(self, epsilon: float = 1e-5) -> None:
        super().__init__()
        self.epsilon = epsilon

    def forward(self, x: Tensor) -> Tensor:
        dims = tuple(range(1, x.dim()))
        std, mean = torch.std_mean(x, dim=dims, correction=0, keepdim=True)
        return (x - mean) / (std + self.epsilon)
