"""EM routing whose vote-sized sums run in Triton kernels that never store a vote ("triton").

The same Procedure 1 as `routing.em_routing` and the same arguments as `routing_fused.fused_em_routing`
(poses and W instead of votes). Everything of the size of the responsibilities (batch, positions,
parents, children) — the data shares, the E-step's normalisation — stays in torch; the two sums that
touch every vote entry are custom autograd functions over `routing_kernels`:

    M-step   (S1, S2) = (Σ_i s_ij V_ij, Σ_i s_ij V_ij²)          backward: ∂/∂s_ij = Σ_h g1 V + g2 V²,
                                                                 gV = s_ij (g1 + 2 g2 V)
    E-step   Q_ij = Σ_h (V_ijh − μ_jh)² / (2σ_jh²)              backward: ∂/∂μ, ∂/∂(1/2σ²) are moments
                                                                 of g, gV = g_ij (1/σ²)(V − μ)

and every gV goes to the poses and W through `vote_gradients` without being stored either. On the
float64 oracle these match the plain path to rounding (tests/test_routing_triton.py); that on a GPU they
are faster is the GPU benchmark's to show (benchmarks/README.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from robustcaps.models import routing_kernels as kernels
from robustcaps.models.routing import (
    Routed,
    _normalise,
    data_shares,
    initial_responsibilities,
    parents_from_moments,
)

# Programs per vote-gradient launch that sum W's gradient over rows (partial sums added afterwards): a few
# per streaming multiprocessor of an H100 (132) keeps it busy without many partial sums to add.
WEIGHT_GRADIENT_PROGRAMS = 2048


def require_triton(device: torch.device) -> None:
    """Refuse, with what to do, a device on which the Triton kernels cannot run."""
    if device.type != "cuda" and not kernels.INTERPRETED:
        raise RuntimeError(
            "routing='triton' needs a CUDA GPU (or TRITON_INTERPRET=1 set before Python starts, which runs "
            "Triton's slow CPU interpreter); use routing='plain' or 'fused' on the CPU"
        )


class _MStepMoments(torch.autograd.Function):
    @staticmethod
    def forward(ctx, shares: Tensor, poses: Tensor, weight: Tensor, offsets: Tensor | None):
        ctx.save_for_backward(shares, poses, weight)
        ctx.offsets = offsets
        return kernels.moments(shares, poses, weight, offsets)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_first: Tensor, g_second: Tensor):
        shares, poses, weight = ctx.saved_tensors
        g_first, g_second = g_first.contiguous(), g_second.contiguous()
        need = ctx.needs_input_grad
        g_shares = kernels.quadratic(poses, weight, ctx.offsets, g_second, b=g_first) if need[0] else None
        g_poses = g_weight = None
        if need[1] or need[2]:
            g_poses, g_weight = kernels.vote_gradients(
                shares, g_first, 2 * g_second, poses, weight, ctx.offsets, _chunks(shares, weight)
            )
        return g_shares, g_poses, g_weight, None


class _EStepDistance(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, poses: Tensor, weight: Tensor, offsets: Tensor | None, mean: Tensor, half_precision: Tensor
    ):
        ctx.save_for_backward(poses, weight, mean, half_precision)
        ctx.offsets = offsets
        return kernels.quadratic(poses, weight, offsets, half_precision, mean=mean)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):
        poses, weight, mean, half_precision = ctx.saved_tensors
        g = g.contiguous()
        need = ctx.needs_input_grad
        g_mean = g_half_precision = g_poses = g_weight = None
        if need[3] or need[4]:
            centred, centred_sq = kernels.moments(g, poses, weight, ctx.offsets, mean)
            g_mean, g_half_precision = -2 * half_precision * centred, centred_sq
        if need[0] or need[1]:
            precision = 2 * half_precision
            g_poses, g_weight = kernels.vote_gradients(
                g, -precision * mean, precision, poses, weight, ctx.offsets, _chunks(g, weight)
            )
        return g_poses, g_weight, None, g_mean, g_half_precision


def _chunks(per_child: Tensor, weight: Tensor) -> int:
    tiles = -(-weight.shape[0] // kernels.BLOCK_CHILDREN)
    return max(1, WEIGHT_GRADIENT_PROGRAMS // (weight.shape[1] * tiles))


# Under torch.compile the routing runs eagerly (a graph break) and the model's other layers compile: dynamo
# tracing into these autograd functions and kernel launches is not something the tests can check on a CPU.
@torch.compiler.disable
def triton_em_routing(
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
) -> Routed:
    """Route children with poses (N, L, I, 4, 4) and `activations` (N, L, I) through W (I, J, 4, 4) to J
    parents per position; arguments and results as `routing_fused.fused_em_routing`. Computed in float32
    (float64 if given float64), outside autocast."""
    require_triton(poses.device)
    n, positions, slots = poses.shape[:3]
    parents = weight.shape[1]
    dtype = poses.dtype if offsets is None else torch.promote_types(poses.dtype, offsets.dtype)
    with torch.autocast(poses.device.type, enabled=False):
        work = torch.promote_types(dtype, torch.float32)
        flat_poses = poses.to(work).reshape(n * positions, slots, 16).contiguous()
        flat_weight = weight.to(work).reshape(slots, parents, 16).contiguous()
        offsets = None if offsets is None else offsets.to(work).contiguous()
        a_child = activations.to(work).unsqueeze(2)  # (N, L, 1, I)
        beta_u, beta_a = beta_u.to(work), beta_a.to(work)
        r = initial_responsibilities(children, n_children, parents, work).to(poses.device).unsqueeze(-2)
        for step, inverse_temperature in enumerate(inverse_temperatures):
            mass, total, share = data_shares(r * a_child)  # (N, L, J or 1 before the first E-step, I)
            share = share.expand(n, positions, parents, slots).reshape(n * positions, parents, slots)
            first, second = _MStepMoments.apply(share.contiguous(), flat_poses, flat_weight, offsets)
            mean, variance, logits = parents_from_moments(
                first.view(n, positions, parents, 16),
                second.view(n, positions, parents, 16),
                total, mass, beta_u, beta_a, inverse_temperature, min_variance, mass_scale,
            )  # fmt: skip
            if step < len(inverse_temperatures) - 1:
                distance = _EStepDistance.apply(
                    flat_poses, flat_weight, offsets,
                    mean.reshape(n * positions, parents, 16).contiguous(),
                    (0.5 / variance).reshape(n * positions, parents, 16).contiguous(),
                )  # fmt: skip
                constant = 0.5 * (2 * math.pi * variance).log().sum(-1)  # (N, L, J)
                distance = distance.view(n, positions, parents, slots)
                log_joint = (F.logsigmoid(logits) - constant).unsqueeze(-1) - distance
                r = _normalise(log_joint, children, n_children).exp()
        out = Routed(mean, variance, torch.sigmoid(logits), logits)
    return Routed(*(t.to(dtype) for t in out))
