"""The baseline CNN of HSF18 §5, and a capacity-matched small one.

x (N, C, 32, 32) in [0, 1] → Standardize → conv 5×5×32 → max-pool 2×2 → conv 5×5×64 → max-pool 2×2
  → FC 1024 → dropout → FC 5;   ReLU after every hidden layer, SAME padding: 32 → 16 → 8.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robustcaps.models.common import INPUT_SIZE, Standardize, check_images

OUTPUTS = ("logits", "activations")


@dataclass(frozen=True)
class CNNConfig:
    """Widths of the two convolutions and the hidden FC layer; `asdict` of it rebuilds the model."""

    in_channels: int = 1
    conv1_channels: int = 32
    conv2_channels: int = 64
    hidden: int = 1024
    dropout: float = 0.5
    n_classes: int = 5


class CNN(nn.Module):
    """The paper's baseline CNN (4,252,549 parameters at the default widths with one input channel)."""

    family = "cnn"

    def __init__(self, config: CNNConfig, name: str = "cnn") -> None:
        super().__init__()
        self.config, self.name = config, name
        flat = config.conv2_channels * (INPUT_SIZE // 4) ** 2
        self.layers = nn.Sequential(
            Standardize(),
            nn.Conv2d(config.in_channels, config.conv1_channels, kernel_size=5, padding="same"),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(config.conv1_channels, config.conv2_channels, kernel_size=5, padding="same"),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(flat, config.hidden),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.n_classes),
        )

    def forward(self, x: Tensor, output: str = "logits") -> Tensor:
        """Class scores (N, n_classes): pre-softmax `logits` (what attacks see) or softmax `activations`."""
        if output not in OUTPUTS:
            raise ValueError(f"{self.name} supports output in {OUTPUTS}, got {output!r}")
        check_images(x, self.config.in_channels, self.name)
        logits = self.layers(x)
        return torch.softmax(logits, dim=-1) if output == "activations" else logits
