"""The fused EM routing with a backward that forms each layer's vote gradient once ("gathered").

Same Procedure 1, arguments and results as `routing_fused.fused_em_routing` (its forward is the same
code: every vote-sized sum reads votes formed from M and W). What differs is backward. Derived by
autograd, as the fused path's is, every use of the votes in the iterations yields its own vote-sized
gradient, and under torch.compile inductor stores several of them per use and then sums them: of the
72.9 GB that a compiled fused capsnet training step moves at batch 64, 59.4 GB are backward
(benchmarks/results/inductor-bytes-cpu.csv). Yet the gradient that each use sends to the votes has one
form,

    gV_ijh = c_ij (u_jh + w_jh V_ijh)
    M-step (S1, S2) = (Σ_i s_ij V_ij, Σ_i s_ij V_ij²)      c = s,    u = ∂L/∂S1,  w = 2 ∂L/∂S2
    E-step D_ij = Σ_h a_jh (V_ijh − μ_jh)², a = 1/2σ²     c = ∂L/∂D, u = −2aμ,    w = 2a

so K responsibility-sized c and K parent-sized (u, w) determine a layer's whole vote gradient
Σ_k c^k (u^k + w^k V). Here each sum's backward computes only the gradients of its small inputs (s, or
μ and a: one read of the votes) and hands on its coefficients; one backward per layer then forms gV
once and reduces it to the gradients of the poses M and of W.

How the coefficients travel: autograd has no channel for "a gradient, in parts, to be finished later",
so `_LayerVotes` returns, beside the votes (which autograd does not differentiate), one zero pair of
"slots" per sum; each sum takes its pair as an input that its forward ignores, and its backward returns
its coefficients as the pair's gradient. Autograd calls `_LayerVotes.backward` after every sum's
backward, with all the coefficients at once. The slots' gradients are not derivatives and nothing but
`_LayerVotes` sees them; the gradients that leave the routing are (tests/test_routing_gathered.py:
float64 gradcheck, and the plain path's gradients). Hand-written for the reason the fused path is: no
library computes EM routing's sums, and only here can the backward's form be chosen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from robustcaps.models.routing import Routed
from robustcaps.models.routing_fused import fused_em_routing, fused_votes


class _LayerVotes(torch.autograd.Function):
    """(M, W, offsets) → (votes, slots…): votes (N, L, J, I, 16), not differentiated; 2·sums slot tensors,
    (N, L, J, I) and (N, L, J, 2, 16) zeros, whose gradients are the sums' coefficients (c, (u, w))."""

    @staticmethod
    def forward(ctx, poses: Tensor, weight: Tensor, offsets: Tensor | None, sums: int):
        votes = fused_votes(poses, weight, offsets)
        ctx.save_for_backward(poses, weight)
        ctx.offsets = offsets
        ctx.mark_non_differentiable(votes)
        ctx.set_materialize_grads(False)  # a sum that no loss depends on sends nothing
        n, positions, parents, children = votes.shape[:4]
        # a zero expanded, no memory; distinct tensors, as autograd keeps one gradient per output tensor
        shapes = [(n, positions, parents, children), (n, positions, parents, 2, 16)] * sums
        return (votes, *(votes.new_zeros(()).expand(shape) for shape in shapes))

    @staticmethod
    def backward(ctx, _votes, *coefficients):
        poses, weight = ctx.saved_tensors
        votes = fused_votes(poses, weight, ctx.offsets)
        sums = [(c, uw) for c, uw in zip(coefficients[::2], coefficients[1::2], strict=True) if c is not None]
        if not sums:
            return None, None, None, None
        # gV = Σ_k c^k (u^k + w^k V), in one pass over the votes, formed directly in the layout of the
        # matrix products below, [i, n, l, r, j, c] (V_ij's entry (r, c)), every operand a view. Written
        # as a reduction over the stacked k: as a sum of K terms, inductor stores any partial sum that has
        # read over 8 inputs (`realize_acc_reads_threshold`), and torch 2.11's then stored Σ_k c^k u^k and
        # Σ_k c^k w^k, 4 vote passes more per layer (benchmarks/README.md)
        n, positions, parents, children = votes.shape[:4]
        votes = votes.unflatten(-1, (4, 4)).permute(3, 0, 1, 4, 2, 5)
        c = torch.stack([c for c, _ in sums]).permute(0, 4, 1, 2, 3)[:, :, :, :, None, :, None]
        uw = torch.stack([uw for _, uw in sums]).unflatten(-1, (4, 4)).permute(0, 4, 1, 2, 5, 3, 6)
        u, w = uw[:, 0, None], uw[:, 1, None]  # (K, 1, N, L, 4, J, 4)
        g_votes = (c * (u + w * votes)).sum(0).reshape(children, n * positions * 4, parents * 4)
        return *vote_product_gradients(g_votes, poses, weight, ctx.needs_input_grad[:2]), None, None


def vote_product_gradients(
    g_votes: Tensor, poses: Tensor, weight: Tensor, needed: tuple[bool, bool]
) -> tuple[Tensor | None, Tensor | None]:
    """Back through V_ij = M_i W_ij, given gV laid out (I, N·L·4, J·4) ([i, (n, l, r), (j, c)]):
    gM_i = Σ_j gV_ij W_ijᵀ (N, L, I, 4, 4) and gW_ij = Σ_{n,l} M_iᵀ gV_ij (I, J, 4, 4), as two batched
    matrix products over the children i, each reading gV once. Written as reductions over 4-term
    products instead, torch 2.11's inductor (the GPU machine's) stored each product before summing it:
    4 more vote passes apiece (benchmarks/README.md)."""
    children, rows, columns = g_votes.shape
    n, positions, parents = poses.shape[0], poses.shape[1], columns // 4
    g_poses = g_weight = None
    if needed[0]:
        w = weight.transpose(2, 3).reshape(children, parents * 4, 4)  # [i, (j, c), k]
        g_poses = torch.bmm(g_votes, w).view(children, n, positions, 4, 4).permute(1, 2, 0, 3, 4)
    if needed[1]:
        m = poses.permute(2, 0, 1, 3, 4).reshape(children, rows, 4)  # [i, (n, l, r), k]
        g_weight = torch.bmm(m.transpose(1, 2), g_votes).view(children, 4, parents, 4).transpose(1, 2)
    return g_poses, g_weight


class _Moments(torch.autograd.Function):
    """(s, V, slots) → (Σ_i s_ij V_ij, Σ_i s_ij V_ij²), each (N, L, J, 16); s (N, L, J or 1, I)."""

    @staticmethod
    def forward(ctx, share: Tensor, votes: Tensor, _c: Tensor, _uw: Tensor):
        ctx.save_for_backward(share, votes)
        share = share.unsqueeze(-1)
        return (share * votes).sum(-2), (share * votes.square()).sum(-2)

    @staticmethod
    def backward(ctx, g_first: Tensor, g_second: Tensor):
        share, votes = ctx.saved_tensors
        g1, g2 = g_first.unsqueeze(-2), g_second.unsqueeze(-2)
        terms = votes * (g1 + g2 * votes)  # summed over h: Σ_h g1 V + g2 V²
        # the first M-step's shares are one per child (N, L, 1, I): its sum over the parents is the same
        # reduction, not a second one (chained, torch 2.11's inductor stored the vote-sized terms)
        g_share = terms.sum((2, -1)).unsqueeze(2) if share.shape[2] == 1 else terms.sum(-1)
        coefficients = share.expand(votes.shape[:-1]), torch.stack((g_first, 2 * g_second), -2)
        return g_share, None, *coefficients


class _Distance(torch.autograd.Function):
    """(V, μ, a, slots) → D_ij = Σ_h a_jh (V_ijh − μ_jh)² (N, L, J, I); μ and a (N, L, J, 16)."""

    @staticmethod
    def forward(ctx, votes: Tensor, mean: Tensor, half_precision: Tensor, _c: Tensor, _uw: Tensor):
        ctx.save_for_backward(votes, mean, half_precision)
        # (V − μ)² summed directly, as the fused path: no cancellation between two large terms
        return ((votes - mean.unsqueeze(-2)).square() * half_precision.unsqueeze(-2)).sum(-1)

    @staticmethod
    def backward(ctx, g: Tensor):
        votes, mean, half_precision = ctx.saved_tensors
        # V + (−μ), not V − μ: the forward's V − μ, were it the same expression, is merged with this one
        # under torch.compile, and without recompute the partitioner then stores it (vote-sized) for here
        centred, weights = votes + mean.neg().unsqueeze(-2), g.unsqueeze(-1)
        # ∂D/∂μ = −2a Σ_i g (V − μ), ∂D/∂a = Σ_i g (V − μ)²: one pass over the votes
        g_mean = -2 * half_precision * (weights * centred).sum(-2)
        g_half_precision = (weights * centred.square()).sum(-2)
        uw = torch.stack((-2 * half_precision * mean, 2 * half_precision), -2)
        return None, g_mean, g_half_precision, g, uw


def gathered_sums(
    poses: Tensor, weight: Tensor, offsets: Tensor | None, iterations: int
) -> tuple[Callable[[Tensor], tuple[Tensor, Tensor]], Callable[[Tensor, Tensor], Tensor]]:
    """The `moments` and `distance` that `routing_fused.em_iterations` takes, for poses (N, L, I, 4, 4)
    and W (I, J, 4, 4) in a float dtype of at least 32 bits, used in Procedure 1's order: `iterations`
    M-steps and one E-step fewer. The offsets (coordinate addition) are constants."""
    if offsets is not None and offsets.requires_grad:
        raise ValueError("gathered routing treats the vote offsets as constants; they require grad here")
    votes, *slots = _LayerVotes.apply(poses, weight, offsets, 2 * iterations - 1)
    pairs: Iterator[Tensor] = iter(slots)

    def moments(share: Tensor) -> tuple[Tensor, Tensor]:
        return _Moments.apply(share, votes, next(pairs), next(pairs))

    def distance(mean: Tensor, variance: Tensor) -> Tensor:
        return _Distance.apply(votes, mean, 0.5 / variance, next(pairs), next(pairs))

    return moments, distance


def gathered_em_routing(*args, **kwargs) -> Routed:
    """`routing_fused.fused_em_routing` (same arguments and results) with the gathered backward."""
    return fused_em_routing(*args, sums=gathered_sums, **kwargs)
