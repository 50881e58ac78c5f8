"""EM routing with the votes computed inside the routing's sums ("fused"), for torch.compile.

The same Procedure 1 as `routing.em_routing` (see its docstring for the equations), taking the children's
poses M_i (…, I, 4, 4) and the transformation matrices W_ij instead of the votes V_ij = M_i W_ij. The plain
path materialises the votes (batch, positions, parents, children, 16) and V²: for capsnet at batch 64 the
votes of ConvCaps1 alone are 1.36 GB in float32, read again by every M- and E-step and kept for backward,
so a step is bound by memory traffic, not arithmetic. Here every vote is the 4×4 product written out as
four broadcast multiply-adds (Σ_k M[…, r, k] W[…, k, c]) inside the expressions that consume it, with no
matrix product on vote-sized tensors, so inductor can generate each M-step sum and each E-step density as
one loop that reads M, W and R and forms the vote in registers; backward recomputes them from M and W
(`capsnet` checkpoints each routed layer). Inductor (torch 2.14, CPU) still writes the votes once per
layer and pass, forward and backward, because an expression of 8 loads with several users exceeds its
`realize_reads_threshold`; every M-step and E-step then reads that buffer instead of V and V² copies.
In eager mode the same code runs and materialises the votes like the plain path.

Why hand-written: no library implements EM routing (it is a per-parent Gaussian mixture fit over a sparse,
overlapping child→parent graph, with a log-space E-step normalised over that graph), and neither
PyTorch's fused attention nor any scatter/segment library computes its moments; a hand-written Triton
kernel would have to re-derive the backward through the unrolled iterations that autograd gives here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from robustcaps.models.routing import (
    Routed,
    _normalise,
    data_shares,
    initial_responsibilities,
    parents_from_moments,
)


def fused_votes(poses: Tensor, weight: Tensor, offsets: Tensor | None) -> Tensor:
    """V_ij = M_i W_ij (+ coordinate offset): poses (N, L, I, 4, 4), W (I, J, 4, 4), offsets (I, 16) →
    (N, L, J, I, 16), as four broadcast multiply-adds that inductor can inline into the consumer."""
    m = poses.unsqueeze(2)  # (N, L, 1, I, 4, 4)
    w = weight.transpose(0, 1)  # (J, I, 4, 4)
    votes = m[..., :, 0:1] * w[..., 0:1, :]
    for k in range(1, 4):
        votes = votes + m[..., :, k : k + 1] * w[..., k : k + 1, :]  # (N, L, J, I, 4, 4)
    votes = votes.flatten(-2)
    return votes if offsets is None else votes + offsets


def fused_sums(
    poses: Tensor, weight: Tensor, offsets: Tensor | None
) -> tuple[Callable[[Tensor], tuple[Tensor, Tensor]], Callable[[Tensor, Tensor], Tensor]]:
    """The `moments` and `distance` of `em_iterations` as expressions of the votes formed from M and W,
    differentiated by autograd."""
    votes = fused_votes(poses, weight, offsets)  # (N, L, J, I, 16); under compile, never stored

    def moments(share: Tensor) -> tuple[Tensor, Tensor]:
        # element-wise products reduced over I, which inductor fuses with the vote's multiply-adds
        share = share.unsqueeze(-1)  # s_ij: (N, L, J, I, 1)
        return (share * votes).sum(-2), (share * votes.square()).sum(-2)

    def distance(mean: Tensor, variance: Tensor) -> Tensor:
        # (V − μ)²/2σ² summed directly: one fused pass over the votes, no cancellation between two
        # large terms
        return ((votes - mean.unsqueeze(-2)).square() * (0.5 / variance).unsqueeze(-2)).sum(-1)

    return moments, distance


def fused_em_routing(
    poses: Tensor,
    weight: Tensor,
    activations: Tensor,
    beta_u: Tensor,
    beta_a: Tensor,
    inverse_temperatures: tuple[float, ...],
    *,
    offsets: Tensor | None = None,
    min_variance: float = 5e-4,
    mass_scale: float = 1.0,
    children: Tensor | None = None,
    n_children: int = 0,
    estep_temperature: float = 1.0,
) -> Routed:
    """Route the votes of children with poses (N, L, I, 4, 4) and `activations` (N, L, I) through W
    (I, J, 4, 4) to J parents per position; `offsets` (I, 16) are added to every vote (coordinate
    addition). Arguments and results as `routing.em_routing`; computed in at least float32."""
    # the plain path's output dtype: that of its votes (poses, promoted by the offsets when present)
    dtype = poses.dtype if offsets is None else torch.promote_types(poses.dtype, offsets.dtype)
    with torch.autocast(poses.device.type, enabled=False):
        work = torch.promote_types(dtype, torch.float32)
        poses, weight, activations = poses.to(work), weight.to(work), activations.to(work)
        beta_u, beta_a = beta_u.to(work), beta_a.to(work)
        offsets = None if offsets is None else offsets.to(work)
        moments, distance = fused_sums(poses, weight, offsets)
        out = em_iterations(
            moments,
            distance,
            activations,
            beta_u,
            beta_a,
            inverse_temperatures,
            min_variance=min_variance,
            mass_scale=mass_scale,
            children=children,
            n_children=n_children,
            estep_temperature=estep_temperature,
        )
    return Routed(*(t.to(dtype) for t in out))


def em_iterations(
    moments: Callable[[Tensor], tuple[Tensor, Tensor]],
    distance: Callable[[Tensor, Tensor], Tensor],
    activations: Tensor,
    beta_u: Tensor,
    beta_a: Tensor,
    inverse_temperatures: tuple[float, ...],
    *,
    min_variance: float,
    mass_scale: float,
    children: Tensor | None,
    n_children: int,
    estep_temperature: float = 1.0,
) -> Routed:
    """Procedure 1's iterations given its two vote-sized sums, which is all that the fused and triton
    paths compute differently: `moments(s)` → (Σ_i s_ij V_ij, Σ_i s_ij V_ij²), each (N, L, J, 16), for
    the data shares s (N, L, J or 1 before the first E-step, I); `distance(μ, σ²)` → Σ_h (V_ijh −
    μ_jh)²/2σ_jh² (N, L, J, I). Everything else is responsibility-sized and shared here."""
    a_child = activations.unsqueeze(2)  # (N, L, 1, I)
    r = initial_responsibilities(children, n_children, beta_u.shape[0], activations.dtype)
    r = r.to(activations.device).unsqueeze(-2)  # (L, 1, I)
    for step, inverse_temperature in enumerate(inverse_temperatures):
        mass, total, share = data_shares(r * a_child)
        first, second = moments(share)
        mean, variance, logits = parents_from_moments(
            first, second, total, mass, beta_u, beta_a, inverse_temperature, min_variance, mass_scale
        )
        if step < len(inverse_temperatures) - 1:
            log_joint = joint_from_distance(distance(mean, variance), variance, logits, estep_temperature)
            r = _normalise(log_joint, children, n_children).exp()
    return Routed(mean, variance, torch.sigmoid(logits), logits)


def joint_from_distance(
    distance: Tensor, variance: Tensor, logits: Tensor, temperature: float = 1.0
) -> Tensor:
    """log a_j + T log N(V_ij; μ_j, σ_j²) from the distance Σ_h (V_ijh − μ_jh)²/2σ_jh² (N, L, J, I)."""
    constant = 0.5 * (2 * math.pi * variance).log().sum(-1)  # (N, L, J)
    if temperature != 1.0:  # T = 1 keeps Procedure 1's arithmetic exactly
        constant, distance = temperature * constant, temperature * distance
    return (F.logsigmoid(logits) - constant).unsqueeze(-1) - distance
