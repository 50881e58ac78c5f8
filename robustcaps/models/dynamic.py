"""Capsules with dynamic routing (Sabour, Frosst, Hinton, NeurIPS 2017, "Dynamic Routing Between Capsules").

The smallNORB configuration of §7 of that paper, on 32×32 crops:

    x (N, C, 32, 32) in [0, 1] → Standardize → ReLU Conv1 9×9/1, 256 channels            → 24×24×256
      → PrimaryCaps: conv 9×9/2, 32 types of 8D capsules, squashed                       →  8×8×32 (2,048)
      → ClassCaps: one 16D capsule per class, a W_ij (16×8) per child and class, 3 routing iterations
      → class score ‖v_j‖;  margin loss;  optional reconstruction decoder (FC 512 → 1024 → image)

Routing (Procedure 1 of the paper), over votes û_j|i = W_ij u_i:

    b_ij = 0
    repeat r times:  c_i = softmax_j(b_i);  s_j = Σ_i c_ij û_j|i;  v_j = squash(s_j);  b_ij += û_j|i · v_j
    squash(s) = ‖s‖² / (1 + ‖s‖²) · s / ‖s‖

The class score attacks differentiate is the logit of the capsule length: since
‖v‖ = ‖s‖² / (1 + ‖s‖²) = sigmoid(log ‖s‖²), `logits` = log ‖s_j‖² and `activations` = sigmoid(logits)
= ‖v_j‖, the same (logits, sigmoid activations) pair as the EM capsule network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustcaps.models.common import INPUT_SIZE, Standardize, check_images

OUTPUTS = ("logits", "activations", "vote_logits")
# Keeps ‖s‖ differentiable at s = 0 (a flat image, or a child whose votes cancel).
NORM_EPSILON = 1e-12


@dataclass(frozen=True)
class DynamicCapsNetConfig:
    """Sizes of Sabour 2017's network and its routing; `asdict` of it rebuilds the model.

    decoder: the reconstruction network of Sabour 2017 §4.1 (the masked class capsule → FC 512 → FC 1024
    → the input image, sum of squared errors × `reconstruction_weight` added to the margin loss). Off by
    default: it is a regulariser of training, and attacks see the class scores either way; config.json
    records which.
    """

    in_channels: int = 1
    conv1_channels: int = 256
    primary_types: int = 32
    primary_dim: int = 8
    class_dim: int = 16
    n_classes: int = 5
    iterations: int = 3
    decoder: bool = False
    reconstruction_weight: float = 0.0005  # Sabour 2017: scaled down so it does not dominate the margin loss


class DynamicRouted(NamedTuple):
    """Parent capsules after routing; shapes (batch, parents[, dim])."""

    capsules: Tensor  # v_j = squash(s_j): (N, J, D)
    logits: Tensor  # log ‖s_j‖²: (N, J)
    coupling: Tensor  # c_ij of the last iteration: (N, I, J)


def squash(s: Tensor) -> Tensor:
    """squash(s) = ‖s‖² / (1 + ‖s‖²) · s / ‖s‖ = s ‖s‖ / (1 + ‖s‖²), over the last dimension."""
    squared = s.pow(2).sum(-1, keepdim=True)
    return s * (squared + NORM_EPSILON).sqrt() / (1.0 + squared)


def dynamic_routing(votes: Tensor, iterations: int) -> DynamicRouted:
    """Routing by agreement over votes û_j|i: (batch, children I, parents J, dim D).

    The coupling coefficients start uniform (b = 0) and the last iteration skips the update of b, which
    nothing reads. Gradients flow through every iteration, as in the paper.
    """
    logits_b = votes.new_zeros(votes.shape[:3])  # b_ij: (N, I, J)
    for iteration in range(iterations):
        coupling = torch.softmax(logits_b, dim=2)  # c_ij, over the parents of child i
        s = torch.einsum("nij,nijd->njd", coupling, votes)  # s_j: (N, J, D)
        capsules = squash(s)
        if iteration < iterations - 1:
            logits_b = logits_b + torch.einsum("nijd,njd->nij", votes, capsules)
    logits = (s.pow(2).sum(-1) + NORM_EPSILON).log()
    return DynamicRouted(capsules, logits, coupling)


class PrimaryCaps(nn.Module):
    """A convolution whose output channels are `types` capsules of `dim` numbers per position, squashed."""

    def __init__(self, in_channels: int, types: int, dim: int) -> None:
        super().__init__()
        self.types, self.dim = types, dim
        self.conv = nn.Conv2d(in_channels, types * dim, kernel_size=9, stride=2)

    def forward(self, features: Tensor) -> Tensor:
        n = features.shape[0]
        x = self.conv(features).permute(0, 2, 3, 1)  # (N, H, W, types·dim), channels grouped by type
        return squash(x.reshape(n, -1, self.dim))  # u_i: (N, H·W·types, dim)


class ClassCaps(nn.Module):
    """One capsule per class, routed from every primary capsule through its own W_ij (no weight sharing)."""

    def __init__(self, children: int, in_dim: int, n_classes: int, out_dim: int, iterations: int) -> None:
        super().__init__()
        self.iterations = iterations
        # std 1/√I keeps s_j of order one whatever the number of children I (the authors' MNIST release drew
        # W with std 0.01 for its 1,152 children, about the same scale)
        self.weight = nn.Parameter(torch.randn(children, n_classes, out_dim, in_dim) / children**0.5)

    def votes(self, poses: Tensor) -> Tensor:
        """û_j|i = W_ij u_i: poses (N, I, D_in) → votes (N, I, J, D_out)."""
        return torch.einsum("ijoc,nic->nijo", self.weight, poses)

    def forward(self, poses: Tensor, output: str = "logits") -> DynamicRouted:
        """`output="vote_logits"` bypasses routing: coupling left uniform, as in the first iteration."""
        iterations = 1 if output == "vote_logits" else self.iterations
        return dynamic_routing(self.votes(poses), iterations)


class Decoder(nn.Module):
    """Sabour 2017 §4.1: class capsules, all but one masked to zero, → FC 512 → FC 1024 → sigmoid image."""

    def __init__(self, n_classes: int, dim: int, in_channels: int) -> None:
        super().__init__()
        self.shape = (in_channels, INPUT_SIZE, INPUT_SIZE)
        self.layers = nn.Sequential(
            nn.Linear(n_classes * dim, 512),
            nn.ReLU(),
            nn.Linear(512, 1024),
            nn.ReLU(),
            nn.Linear(1024, in_channels * INPUT_SIZE * INPUT_SIZE),
            nn.Sigmoid(),
        )

    def forward(self, capsules: Tensor, classes: Tensor) -> Tensor:
        mask = F.one_hot(classes, capsules.shape[1]).to(capsules.dtype)[..., None]
        return self.layers((capsules * mask).flatten(1)).view(-1, *self.shape)


class DynamicCapsNet(nn.Module):
    """Sabour 2017's capsule network for smallNORB (6,640,384 parameters at the paper's sizes, one camera)."""

    family = "dynamic"
    vote_head = True  # output="vote_logits": uniform coupling, for the vote attack

    def __init__(self, config: DynamicCapsNetConfig, name: str = "dynamic-capsnet") -> None:
        super().__init__()
        self.config, self.name = config, name
        self.standardize = Standardize()
        self.conv1 = nn.Conv2d(config.in_channels, config.conv1_channels, kernel_size=9)
        self.primary_caps = PrimaryCaps(config.conv1_channels, config.primary_types, config.primary_dim)
        side = ((INPUT_SIZE - 8) - 9) // 2 + 1  # 32 → 24 (Conv1) → 8 (PrimaryCaps)
        children = side * side * config.primary_types
        self.class_caps = ClassCaps(
            children, config.primary_dim, config.n_classes, config.class_dim, config.iterations
        )
        self.decoder = (
            Decoder(config.n_classes, config.class_dim, config.in_channels) if config.decoder else None
        )

    def routed(self, x: Tensor, output: str = "logits") -> DynamicRouted:
        check_images(x, self.config.in_channels, self.name)
        features = F.relu(self.conv1(self.standardize(x)))
        return self.class_caps(self.primary_caps(features), output)

    def forward(self, x: Tensor, output: str = "logits", labels: Tensor | None = None):
        """Class scores (N, n_classes): `logits` log ‖s_j‖² (what attacks see), `activations` ‖v_j‖, or
        `vote_logits` (routing bypassed, for the vote attack). `output="training"` returns (activations,
        reconstruction or None), the decoder masked by `labels` (by the prediction when None)."""
        if output == "training":
            routed = self.routed(x)
            activations = torch.sigmoid(routed.logits)
            if self.decoder is None:
                return activations, None
            classes = labels if labels is not None else activations.argmax(1)
            return activations, self.decoder(routed.capsules, classes)
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        logits = self.routed(x, output).logits
        return torch.sigmoid(logits) if output == "activations" else logits
