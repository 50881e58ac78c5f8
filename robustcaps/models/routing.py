"""EM routing between two capsule layers (Hinton, Sabour, Frosst 2018, Procedure 1).

Every parent capsule j is a Gaussian cluster over the votes V_ij its children cast for its pose:

    M-step:  R'_ij = R_ij a_i
             μ_j^h  = Σ_i R'_ij V_ij^h / Σ_i R'_ij
             σ_j^h² = Σ_i R'_ij (V_ij^h − μ_j^h)² / Σ_i R'_ij  + min_variance
             cost_j^h = (β_u + log σ_j^h) Σ_i R'_ij · mass_scale    (mass_scale = 1 in the paper)
             a_j = logistic(λ (β_a − Σ_h cost_j^h))
    E-step:  p_ij = N(V_ij; μ_j, diag σ_j²)
             R_ij = a_j p_ij^T / Σ_k a_k p_k^T  (log space: a log-sum-exp; T = 1 in the paper)

R starts uniform over the parents a child feeds, the last iteration skips the E-step, and gradients
flow through the unrolled iterations. The normalising set Σ_k of the E-step is either the parent types
at one position (`children=None`, "position") or every parent the child feeds across neighbouring
positions (`children` given, "cross"; Gritzman 2019: in a convolutional capsule layer parents at
different positions compete for the same child). T (`estep_temperature`) is not in the paper: below 1
it keeps the assignments softer (docs/LEARNING.md: what that does to learning with 3 iterations).

Layout, chosen so that every sum over children is one batched matrix product on contiguous memory
(no copy of the votes per iteration): votes (batch, positions L, parent types J, children I, 16).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

# Keeps μ = Σ R'V / Σ R' finite when no child is active (all a_i = 0).
MASS_EPSILON = 1e-6


class Routed(NamedTuple):
    """Parent capsules after routing; shapes (batch, positions, parent types[, 16])."""

    poses: Tensor  # μ_j: (N, L, J, 16)
    variances: Tensor  # σ_j²: (N, L, J, 16)
    activations: Tensor  # a_j: (N, L, J)
    logits: Tensor  # λ(β_a − Σ_h cost_j^h), the pre-sigmoid activation: (N, L, J)


def inverse_temperature_schedule(final: float, iterations: int) -> tuple[float, ...]:
    """λ_i = λ_final · (1 − 0.95^(i+1)), i = 0 … iterations−1 (the authors' answer on OpenReview)."""
    return tuple(final * (1.0 - 0.95 ** (i + 1)) for i in range(iterations))


def conv_children(in_size: int, kernel: int, stride: int, in_types: int) -> Tensor:
    """Index of the child capsule behind every slot of a convolutional capsule layer's receptive fields.

    Slot (l, i) with l = out_row·out_size + out_col and i = (k_row·kernel + k_col)·in_types + type reads
    the child at input position (stride·out_row + k_row, stride·out_col + k_col): (L, I) int64, children
    numbered (row·in_size + col)·in_types + type.
    """
    out_size = (in_size - kernel) // stride + 1
    out = torch.arange(out_size) * stride
    k = torch.arange(kernel)
    rows = (out[:, None, None, None] + k[None, None, :, None]).expand(out_size, out_size, kernel, kernel)
    cols = (out[None, :, None, None] + k[None, None, None, :]).expand(out_size, out_size, kernel, kernel)
    position = (rows * in_size + cols).reshape(out_size * out_size, kernel * kernel, 1)
    return (position * in_types + torch.arange(in_types)).reshape(out_size * out_size, -1)


def initial_responsibilities(
    children: Tensor | None, n_children: int, parent_types: int, dtype: torch.dtype = torch.float32
) -> Tensor:
    """R_ij before the first M-step: uniform over the parents each child feeds. (L, I), or (1, 1)."""
    if children is None:
        return torch.full((1, 1), 1.0 / parent_types, dtype=dtype)
    ones = torch.ones(children.numel(), dtype=dtype, device=children.device)
    fan_out = torch.zeros(n_children, dtype=dtype, device=children.device).scatter_add_(
        0, children.flatten(), ones
    )
    return 1.0 / (fan_out[children] * parent_types)


def mass_scale(
    children: Tensor | None, n_children: int, parent_types: int, child_slots: int, target: float | None
) -> float:
    """Factor on Σ_i R'_ij in the cost so that the average parent gets `target` units of data mass.

    Gritzman 2019: the raw mass a parent receives grows with its number of children (288 children for
    32 parent types in ConvCaps, 512 for 5 in ClassCaps of capsnet), so one λ and one β cannot suit
    every layer. The mass of the average parent is computed for uniform R and all children active;
    `target=None` keeps the raw paper cost.
    """
    if target is None:
        return 1.0
    if children is None:
        return target * parent_types / child_slots
    n_fed = int(torch.unique(children).numel())
    return target * children.shape[0] * parent_types / n_fed


def em_routing(
    votes: Tensor,
    activations: Tensor,
    beta_u: Tensor,
    beta_a: Tensor,
    inverse_temperatures: tuple[float, ...],
    *,
    min_variance: float = 5e-4,
    mass_scale: float = 1.0,
    children: Tensor | None = None,
    n_children: int = 0,
    estep_temperature: float = 1.0,
) -> Routed:
    """Route `votes` (N, L, J, I, 16) of children with `activations` (N, L, I) to J parents per position.

    `children` (L, I) with `n_children`: normalise the E-step over every parent a child feeds ("cross");
    None: over the J types at one position ("position"). Computed in at least float32 whatever the input
    dtype: the moments and log-densities lose everything in bfloat16. One M-step per λ in the schedule.
    """
    dtype = votes.dtype
    with torch.autocast(votes.device.type, enabled=False):
        work = torch.promote_types(dtype, torch.float32)
        votes, activations = votes.to(work), activations.to(work)
        beta_u, beta_a = beta_u.to(work), beta_a.to(work)
        votes_sq = _Square.apply(votes)
        a_child = activations.unsqueeze(2)  # (N, L, 1, I)
        r = initial_responsibilities(children, n_children, votes.shape[2], work).to(votes.device)
        r = r.unsqueeze(-2)  # (L, 1, I)
        for step, inverse_temperature in enumerate(inverse_temperatures):
            mean, variance, logits = _m_step(
                r * a_child, votes, votes_sq, beta_u, beta_a, inverse_temperature, min_variance, mass_scale
            )
            if step < len(inverse_temperatures) - 1:
                log_joint = _log_joint(votes, votes_sq, mean, variance, logits, estep_temperature)
                r = _normalise(log_joint, children, n_children).exp()
        out = Routed(mean, variance, torch.sigmoid(logits), logits)
    return Routed(*(t.to(dtype) for t in out))


class _Square(torch.autograd.Function):
    """V², whose backward is one pass (2 V g): torch's pow backward makes three vote-sized temporaries,
    and the votes are the largest tensors of the model."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return torch.mul(grad, x).mul_(2)


class _Quadratic(torch.autograd.Function):
    """Σ_h (V_ih² p_h − V_ih q_h) for every child i: votes (…, I, 16), p and q (…, 16) → (…, I).

    Autograd would sum over the children for the gradients of p and q as (16 × I) @ (I × 1) products on
    transposed votes, 3–7× slower on the CPU than the (1 × I) @ (I × 16) form on contiguous rows used here.
    """

    @staticmethod
    def forward(ctx, votes: Tensor, votes_sq: Tensor, p: Tensor, q: Tensor) -> Tensor:
        ctx.save_for_backward(votes, votes_sq, p, q)
        return (votes_sq @ p.unsqueeze(-1) - votes @ q.unsqueeze(-1)).squeeze(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        votes, votes_sq, p, q = ctx.saved_tensors
        row, column = grad.unsqueeze(-2), grad.unsqueeze(-1)  # (…, 1, I), (…, I, 1)
        need = ctx.needs_input_grad
        return (
            -column * q.unsqueeze(-2) if need[0] else None,
            column * p.unsqueeze(-2) if need[1] else None,
            (row @ votes_sq).squeeze(-2) if need[2] else None,
            -(row @ votes).squeeze(-2) if need[3] else None,
        )


def _m_step(
    weighted: Tensor,
    votes: Tensor,
    votes_sq: Tensor,
    beta_u: Tensor,
    beta_a: Tensor,
    inverse_temperature: float,
    min_variance: float,
    mass_scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """μ, σ² and the pre-sigmoid activation of every parent from R'_ij = R_ij a_i (N, L, J, I)."""
    mass, total, share = data_shares(weighted)
    share = share.unsqueeze(-2)  # (N, L, J, 1, I): sums over the children as batched matrix products
    mean = (share @ votes).squeeze(-2)  # (N, L, J, 16)
    second = (share @ votes_sq).squeeze(-2)  # Σ_i s_ij V²
    return parents_from_moments(
        mean, second, total, mass, beta_u, beta_a, inverse_temperature, min_variance, mass_scale
    )


def data_shares(weighted: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """From R'_ij (N, L, J, I): the mass Σ_i R'_ij (N, L, J), Σ_i s_ij (N, L, J, 1: 1 up to the ε) and
    the shares s_ij = R'_ij / Σ_i R'_ij (N, L, J, I). The ε keeps μ finite when no child is active."""
    mass = weighted.sum(-1)
    total = (mass / (mass + MASS_EPSILON)).unsqueeze(-1)
    share = weighted / (mass + MASS_EPSILON).unsqueeze(-1)
    return mass, total, share


def parents_from_moments(
    mean: Tensor,
    second: Tensor,
    total: Tensor,
    mass: Tensor,
    beta_u: Tensor,
    beta_a: Tensor,
    inverse_temperature: float,
    min_variance: float,
    mass_scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """μ, σ² and the pre-sigmoid activation from the weighted moments μ = Σ_i s_ij V and Σ_i s_ij V²
    (both routing paths, so that they round alike)."""
    # Σ_i s_ij (V − μ)² = Σ_i s_ij V² − μ² (2 − Σ_i s_ij) saves a pass over the votes; clamp the
    # rounding below zero away.
    spread = second - mean.square() * (2 - total)
    variance = spread.clamp_min(0) + min_variance
    log_sigma = 0.5 * variance.log().sum(-1)  # Σ_h log σ_j^h
    cost = (mean.shape[-1] * beta_u + log_sigma) * mass * mass_scale  # Σ_h cost_j^h
    return mean, variance, inverse_temperature * (beta_a - cost)


def _log_joint(
    votes: Tensor, votes_sq: Tensor, mean: Tensor, variance: Tensor, logits: Tensor, temperature: float = 1.0
) -> Tensor:
    """log a_j + T log N(V_ij; μ_j, σ_j²): (N, L, J, I), with (V − μ)² expanded into two matrix products.
    T scales the precision and the normaliser (parent-sized), not a vote-sized tensor."""
    precision, log_normaliser = variance.reciprocal(), (2 * math.pi * variance).log()
    if temperature != 1.0:  # T = 1 keeps Procedure 1's arithmetic exactly
        precision, log_normaliser = temperature * precision, temperature * log_normaliser
    if (
        torch.compiler.is_compiling()
    ):  # inductor fuses the plain form; the custom backward would break the graph
        p, q = (0.5 * precision).unsqueeze(-1), (mean * precision).unsqueeze(-1)
        quadratic = (votes_sq @ p - votes @ q).squeeze(-1)
    else:
        quadratic = _Quadratic.apply(votes, votes_sq, 0.5 * precision, mean * precision)  # (N, L, J, I)
    constant = 0.5 * (mean.square() * precision + log_normaliser).sum(-1)  # (N, L, J)
    return F.logsigmoid(logits).unsqueeze(-1) - constant.unsqueeze(-1) - quadratic


def _normalise(log_joint: Tensor, children: Tensor | None, n_children: int) -> Tensor:
    """log R_ij = log a_j p_ij − log Σ_k a_k p_ik over the parents k of the E-step's normalising set."""
    per_slot = torch.logsumexp(log_joint, dim=2)  # over the J types at a position: (N, L, I)
    if children is None:
        return log_joint - per_slot.unsqueeze(2)
    # Sum exp over every slot that reads the same child, stabilised by that child's max (no gradient
    # needed: it cancels), then read the child's normaliser back into each of its slots.
    batch = per_slot.shape[0]
    flat, index = per_slot.reshape(batch, -1), children.reshape(1, -1).expand(batch, -1)
    peak = flat.new_full((batch, n_children), -torch.inf)
    peak = peak.scatter_reduce(1, index, flat.detach(), "amax").gather(1, index)
    total = flat.new_zeros((batch, n_children)).scatter_add(1, index, (flat - peak).exp())
    per_child = (total.gather(1, index).log() + peak).reshape(per_slot.shape)
    return log_joint - per_child.unsqueeze(2)
