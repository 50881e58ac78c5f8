"""EM routing whose vote-sized sums run in Triton kernels that never store a vote ("triton").

The same Procedure 1 as `routing.em_routing` and the same arguments as `routing_fused.fused_em_routing`
(poses and W instead of votes). Everything of the size of the responsibilities (batch, positions,
parents, children) — the data shares, the E-step's normalisation — stays in torch; the two sums that
touch every vote entry are torch custom operators over `routing_kernels`, with their autograd:

    M-step   (S1, S2) = (Σ_i s_ij V_ij, Σ_i s_ij V_ij²)          backward: ∂/∂s_ij = Σ_h g1 V + g2 V²,
                                                                 gV = s_ij (g1 + 2 g2 V)
    E-step   Q_ij = Σ_h (V_ijh − μ_jh)² / (2σ_jh²)              backward: ∂/∂μ, ∂/∂(1/2σ²) are moments
                                                                 of g, gV = g_ij (1/σ²)(V − μ)

and every gV goes to the poses and W through `vote_gradients` without being stored either. Under
torch.compile the operators are opaque and the torch part around them compiles (no graph break). On the
float64 oracle these match the plain path to rounding (tests/models/test_routing_triton.py); that on a GPU
they are faster is the GPU benchmark's to show (benchmarks/README.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

from robustcaps.models import routing_kernels as kernels
from robustcaps.models.routing import Routed
from robustcaps.models.routing_fused import em_iterations


def require_triton(device: torch.device) -> None:
    """Refuse, with what to do, a device on which the Triton kernels cannot run."""
    if device.type != "cuda" and not kernels.INTERPRETED:
        raise RuntimeError(
            "routing='triton' needs a CUDA GPU (or TRITON_INTERPRET=1 set before Python starts, which runs "
            "Triton's slow CPU interpreter); use routing='plain' or 'fused' on the CPU"
        )


# The kernels as torch custom operators: opaque to torch.compile, which then compiles and fuses the
# responsibility-sized work around them instead of running it op by op; autograd is registered below.
@torch.library.custom_op("robustcaps::vote_moments", mutates_args=())
def vote_moments(
    c: Tensor, poses: Tensor, weight: Tensor, offsets: Tensor | None, mean: Tensor | None
) -> tuple[Tensor, Tensor]:
    return kernels.moments(c, poses, weight, offsets, mean)


@vote_moments.register_fake
def _(c, poses, weight, offsets, mean):
    return c.new_empty(*c.shape[:2], 16), c.new_empty(*c.shape[:2], 16)


@torch.library.custom_op("robustcaps::vote_quadratic", mutates_args=())
def vote_quadratic(
    poses: Tensor, weight: Tensor, offsets: Tensor | None, a: Tensor, mean: Tensor | None, b: Tensor | None
) -> Tensor:
    return kernels.quadratic(poses, weight, offsets, a, mean, b)


@vote_quadratic.register_fake
def _(poses, weight, offsets, a, mean, b):
    return kernels.quadratic_layout(a.new_empty, poses.shape[0], weight.shape[1], poses.shape[1])


@torch.library.custom_op("robustcaps::vote_gradients", mutates_args=())
def vote_gradients(
    c: Tensor, u: Tensor, w: Tensor, poses: Tensor, weight: Tensor, offsets: Tensor | None, chunks: int
) -> tuple[Tensor, Tensor]:
    return kernels.vote_gradients(c, u, w, poses, weight, offsets, chunks)


@vote_gradients.register_fake
def _(c, u, w, poses, weight, offsets, chunks):
    return torch.empty_like(poses), torch.empty_like(weight)


def _save(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _m_step_backward(ctx, g_first: Tensor, g_second: Tensor):
    """Inputs (s, M, W, offsets, μ = None) of the M-step moments Σ_i s V and Σ_i s V²."""
    shares, poses, weight, offsets, mean = ctx.saved_tensors
    if mean is not None:  # the routing calls it without; only backward passes (never differentiated) use μ
        raise NotImplementedError("vote_moments is differentiable only without a mean")
    g_first, g_second = g_first.contiguous(), g_second.contiguous()
    g_shares = vote_quadratic(poses, weight, offsets, g_second, None, g_first)  # Σ_h g1 V + g2 V²
    g_poses, g_weight = vote_gradients(
        shares, g_first, 2 * g_second, poses, weight, offsets, weight_gradient_chunks(weight.shape[0])
    )
    return g_shares, g_poses, g_weight, None, None


def _e_step_backward(ctx, g: Tensor):
    """Inputs (M, W, offsets, a = 1/2σ², μ, b = None) of the E-step distance Σ_h a (V − μ)²."""
    poses, weight, offsets, half_precision, mean, linear = ctx.saved_tensors
    if mean is None or linear is not None:  # the E-step's form; other calls come from backward passes
        raise NotImplementedError("vote_quadratic is differentiable only as the E-step distance")
    centred, centred_sq = vote_moments(g, poses, weight, offsets, mean)  # Σ_i g (V − μ), Σ_i g (V − μ)²
    precision = 2 * half_precision
    g_poses, g_weight = vote_gradients(
        g, -precision * mean, precision, poses, weight, offsets, weight_gradient_chunks(weight.shape[0])
    )  # gV = g (V − μ)/σ²
    return g_poses, g_weight, None, centred_sq, -precision * centred, None


torch.library.register_autograd("robustcaps::vote_moments", _m_step_backward, setup_context=_save)
torch.library.register_autograd("robustcaps::vote_quadratic", _e_step_backward, setup_context=_save)


def weight_gradient_chunks(children: int) -> int:
    """Programs per block of children that sum W's gradient over rows: with one, too few to fill a GPU."""
    return max(1, kernels.TARGET_PROGRAMS // -(-children // kernels.WARPS))


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
    estep_temperature: float = 1.0,
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

        def rows(t: Tensor) -> Tensor:  # (N, L, J, ·) → the kernels' (N·L, J, ·)
            return t.reshape(n * positions, parents, t.shape[-1])

        def moments(share: Tensor) -> tuple[Tensor, Tensor]:
            share = rows(share.expand(n, positions, parents, slots))  # read in place, at its strides
            first, second = vote_moments(share, flat_poses, flat_weight, offsets, None)
            return first.view(n, positions, parents, 16), second.view(n, positions, parents, 16)

        def distance(mean: Tensor, variance: Tensor) -> Tensor:
            out = vote_quadratic(flat_poses, flat_weight, offsets, rows(0.5 / variance), rows(mean), None)
            return out.view(n, positions, parents, slots)

        out = em_iterations(
            moments,
            distance,
            activations.to(work),
            beta_u.to(work),
            beta_a.to(work),
            inverse_temperatures,
            min_variance=min_variance,
            mass_scale=mass_scale,
            children=children,
            n_children=n_children,
            estep_temperature=estep_temperature,
        )
    return Routed(*(t.to(dtype) for t in out))
