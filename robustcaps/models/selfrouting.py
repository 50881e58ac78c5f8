"""Self-routing capsules (Hahn, Pyeon, Kim, NeurIPS 2019, "Self-Routing Capsule Networks").

No agreement and no iterations: each child capsule decides its own routing with a small subordinate
network, a linear map of its pose followed by a softmax over the parents (a mixture of experts per child):

    c_ij = softmax_j(W^route_i u_i + b^route_i)                    routing coefficients
    û_j|i = W^pose_ij u_i                                          votes
    a_j  = Σ_i c_ij a_i / Σ_i a_i                                  parent activation
    u_j  = Σ_i c_ij a_i û_j|i / Σ_i c_ij a_i                       parent pose

The smallNORB network of the authors' release ("SmallNet"), on 32×32 crops:

    x (N, C, 32, 32) in [0, 1] → Standardize → ReLU BN Conv1 7×7/2 pad 1, 256 channels        → 14×14×256
      → PrimaryCaps: activations sigmoid(BN conv 5×5 pad 1), poses BN conv 5×5 pad 1; 16 types of 16D → 12×12
      → SR ConvCaps 3×3/2 pad 1, 16 → 16 types, then BN on the poses                          →  6×6×16
      → SR ClassCaps over the whole 6×6 map, activations only                                 → 5

The class activations sum to one over the classes (Σ_j c_ij = 1), so `logits` = log a_j and the loss is
the negative log-likelihood (cross-entropy on the logits), as in the release.

No routing-bypass (vote) attack: the coefficients are one softmax of a linear map, computed in a single
pass, so the attacks' gradients already reach the input through routing as through any gated layer; and
with the coefficients made uniform every class would get the same activation, a head with no information.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustcaps.models.common import Standardize, check_images

OUTPUTS = ("logits", "activations")
# Keeps the weighted means finite when every child in a window is inactive (all a_i = 0).
MASS_EPSILON = 1e-8


@dataclass(frozen=True)
class SelfRoutingCapsNetConfig:
    """Widths of the release's smallNORB network; `asdict` of it rebuilds the model."""

    in_channels: int = 1
    conv1_channels: int = 256
    capsule_types: int = 16  # per layer, primary and convolutional
    pose_dim: int = 16
    n_classes: int = 5


class SelfRouted(NamedTuple):
    """Parents after self-routing; shapes (batch, positions L, parents J[, dim])."""

    activations: Tensor  # a_j: (N, L, J)
    poses: Tensor | None  # u_j: (N, L, J, D), None for a layer that outputs activations only
    coupling: Tensor  # c_ij: (N, L, I, J)


def self_routing(
    poses: Tensor, activations: Tensor, route_weight: Tensor, route_bias: Tensor, pose_weight: Tensor | None
) -> SelfRouted:
    """Self-routing of children poses (N, L, I, C) and activations (N, L, I) in each of L receptive fields.

    route_weight (I, J, C) and route_bias (I, J): each child's subordinate network; pose_weight
    (I, J, D, C): W^pose_ij, or None when the layer computes activations only.
    """
    coupling = torch.softmax(torch.einsum("ijc,nlic->nlij", route_weight, poses) + route_bias, dim=-1)
    weighted = coupling * activations[..., None]  # c_ij a_i: (N, L, I, J)
    mass = weighted.sum(2)  # Σ_i c_ij a_i: (N, L, J)
    parent_activations = mass / (activations.sum(2, keepdim=True) + MASS_EPSILON)
    if pose_weight is None:
        return SelfRouted(parent_activations, None, coupling)
    votes = torch.einsum("ijdc,nlic->nlijd", pose_weight, poses)  # û_j|i: (N, L, I, J, D)
    parent_poses = torch.einsum("nlij,nlijd->nljd", weighted, votes) / (mass[..., None] + MASS_EPSILON)
    return SelfRouted(parent_activations, parent_poses, coupling)


class SelfRoutingCaps(nn.Module):
    """A convolutional self-routing layer: W^route and W^pose per (kernel offset, child type), shared over
    positions; capsules channels-first, poses (N, types·dim, H, W) and activations (N, types, H, W)."""

    def __init__(
        self, in_types: int, out_types: int, dim: int, kernel: int, stride: int, padding: int, poses: bool
    ) -> None:
        super().__init__()
        self.in_types, self.dim, self.kernel, self.stride, self.padding = (
            in_types,
            dim,
            kernel,
            stride,
            padding,
        )
        children = kernel * kernel * in_types
        # routing starts uniform (W^route = 0, b = 0), as in the release
        self.route_weight = nn.Parameter(torch.zeros(children, out_types, dim))
        self.route_bias = nn.Parameter(torch.zeros(children, out_types))
        # std 1/√dim keeps a vote the size of its child's pose
        self.pose_weight = (
            nn.Parameter(torch.randn(children, out_types, dim, dim) / dim**0.5) if poses else None
        )

    def receptive_children(self, x: Tensor, per_child: int) -> Tensor:
        """(N, types·per_child, H, W) → each receptive field's children (N, L, k·k·types, per_child)."""
        n = x.shape[0]
        patches = F.unfold(x, self.kernel, padding=self.padding, stride=self.stride)  # (N, T·P·kk, L)
        patches = patches.view(n, self.in_types, per_child, self.kernel**2, -1)
        return patches.permute(0, 4, 3, 1, 2).flatten(2, 3)  # children numbered (kernel offset, type)

    def forward(self, activations: Tensor, poses: Tensor) -> tuple[Tensor, Tensor | None]:
        side = (poses.shape[-1] + 2 * self.padding - self.kernel) // self.stride + 1
        routed = self_routing(
            self.receptive_children(poses, self.dim),
            self.receptive_children(activations, 1).squeeze(-1),
            self.route_weight,
            self.route_bias,
            self.pose_weight,
        )
        n, types = poses.shape[0], routed.activations.shape[-1]
        out_activations = routed.activations.transpose(1, 2).reshape(n, types, side, side)
        if routed.poses is None:
            return out_activations, None
        out_poses = routed.poses.permute(0, 2, 3, 1).reshape(n, types * self.dim, side, side)
        return out_activations, out_poses


class SelfRoutingCapsNet(nn.Module):
    """The release's smallNORB self-routing network (2,432,864 parameters at its sizes, one camera)."""

    family = "self-routing"

    def __init__(self, config: SelfRoutingCapsNetConfig, name: str = "sr-capsnet") -> None:
        super().__init__()
        self.config, self.name = config, name
        types, dim = config.capsule_types, config.pose_dim
        self.standardize = Standardize()
        self.conv1 = nn.Conv2d(config.in_channels, config.conv1_channels, 7, stride=2, padding=1, bias=False)
        self.conv1_norm = nn.BatchNorm2d(config.conv1_channels)
        self.primary_activations = nn.Conv2d(config.conv1_channels, types, 5, padding=1, bias=False)
        self.primary_activations_norm = nn.BatchNorm2d(types)
        self.primary_poses = nn.Conv2d(config.conv1_channels, types * dim, 5, padding=1, bias=False)
        self.primary_poses_norm = nn.BatchNorm2d(types * dim)
        self.conv_caps = SelfRoutingCaps(types, types, dim, kernel=3, stride=2, padding=1, poses=True)
        self.conv_caps_norm = nn.BatchNorm2d(types * dim)
        self.class_caps = SelfRoutingCaps(
            types, config.n_classes, dim, kernel=6, stride=1, padding=0, poses=False
        )

    def class_activations(self, x: Tensor) -> Tensor:
        check_images(x, self.config.in_channels, self.name)
        features = F.relu(self.conv1_norm(self.conv1(self.standardize(x))))
        activations = torch.sigmoid(self.primary_activations_norm(self.primary_activations(features)))
        poses = self.primary_poses_norm(self.primary_poses(features))
        activations, poses = self.conv_caps(activations, poses)
        activations, _ = self.class_caps(activations, self.conv_caps_norm(poses))
        return activations.flatten(1)  # (N, classes): the 6×6 kernel leaves one position

    def forward(self, x: Tensor, output: str = "logits") -> Tensor:
        """Class scores (N, n_classes): `logits` log a_j (what attacks see) or the `activations` a_j."""
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        activations = self.class_activations(x)
        return activations if output == "activations" else (activations + MASS_EPSILON).log()
