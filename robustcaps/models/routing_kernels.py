"""Triton kernels for the three vote-sized sums of EM routing, each forming the votes in registers.

A vote V_ij = M_i W_ij (+ the coordinate offset of child i) is 16 numbers made from 32 loaded ones that
every child slot i shares across parents j (M_i) or every position shares (W_ij), so a kernel that forms
it where it is consumed reads the responsibilities and little else: the votes never exist in memory.
The three sums, over (rows nl = batch × positions, parents j, children i, pose entries h):

    moments     S1_j = Σ_i c_ij (V_ij − μ_j),  S2_j = Σ_i c_ij (V_ij − μ_j)²       (μ optional, else 0)
    quadratic   Q_ij = Σ_h a_jh (V_ijh − μ_jh)² + b_jh V_ijh                        (μ, b optional)
    vote grads  for gV_ij = c_ij (u_j + w_j ⊙ V_ij):  gM_i = Σ_j gV_ij W_ijᵀ,  gW_ij = Σ_nl M_iᵀ gV_ij

The M-step is `moments` with c = the data shares; the E-step's log-density is `quadratic`; the backward
pass of either is the other plus `vote grads` (routing_triton.py). Why hand-written: inductor writes the
votes to memory once per pass (routing_fused.py); no library sums over a vote computed on the fly.

Layouts (contiguous): c, Q (NL, J, I); M (NL, I, 16); W (I, J, 16); offsets (I, 16); μ, a, b, u, w, S1,
S2 (NL, J, 16); 4×4 matrices flattened row-major. On a CPU the kernels run only in Triton's interpreter
(NumPy, slow; see INTERPRETED): that is how the tests check them.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

# Without a GPU, Triton's interpreter runs the kernels when TRITON_INTERPRET=1 was set before triton was
# first imported (torch imports it): tests/conftest.py does so on machines without an NVIDIA driver.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"  # what triton.jit reads (any version)

BLOCK_CHILDREN = 32  # children per tile: a (32, 4, 4) vote tile, 4 values per thread at 4 warps


@triton.jit
def _vote_tile(m_ptr, w_ptr, off_ptr, nl, j, i, live, I, J, HAS_OFFSETS: tl.constexpr, BI: tl.constexpr):
    """V for children `i` (BI, 1, 1) of row nl and parent j: (BI, 4, 4), zero where not `live`."""
    r = tl.arange(0, 4)[None, :, None]
    col = tl.arange(0, 4)[None, None, :]
    votes = tl.zeros((BI, 4, 4), dtype=m_ptr.dtype.element_ty)
    for k in tl.static_range(4):
        m_k = tl.load(m_ptr + (nl * I + i) * 16 + r * 4 + k, mask=live, other=0.0)  # M[r, k]: (BI, 4, 1)
        w_k = tl.load(w_ptr + (i * J + j) * 16 + k * 4 + col, mask=live, other=0.0)  # W[k, c]: (BI, 1, 4)
        votes += m_k * w_k
    if HAS_OFFSETS:
        votes += tl.load(off_ptr + i * 16 + r * 4 + col, mask=live, other=0.0)
    return votes


@triton.jit
def _moments_kernel(
    c_ptr, m_ptr, w_ptr, off_ptr, mu_ptr, s1_ptr, s2_ptr, I, J,
    HAS_OFFSETS: tl.constexpr, HAS_MEAN: tl.constexpr, BI: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)  # nl · J + j
    nl, j = row // J, row % J
    entry = tl.arange(0, 4)[None, :, None] * 4 + tl.arange(0, 4)[None, None, :]  # (1, 4, 4)
    mean = tl.load(mu_ptr + row * 16 + entry) if HAS_MEAN else 0.0
    first = tl.zeros((BI, 4, 4), dtype=c_ptr.dtype.element_ty)
    second = tl.zeros((BI, 4, 4), dtype=c_ptr.dtype.element_ty)
    for start in range(0, I, BI):
        i = start + tl.arange(0, BI)[:, None, None]
        live = i < I
        centred = _vote_tile(m_ptr, w_ptr, off_ptr, nl, j, i, live, I, J, HAS_OFFSETS, BI) - mean
        weight = tl.load(c_ptr + row * I + i, mask=live, other=0.0)  # (BI, 1, 1)
        first += weight * centred
        second += weight * centred * centred
    out = row * 16 + tl.arange(0, 4)[:, None] * 4 + tl.arange(0, 4)[None, :]
    tl.store(s1_ptr + out, tl.sum(first, axis=0))
    tl.store(s2_ptr + out, tl.sum(second, axis=0))


@triton.jit
def _quadratic_kernel(
    m_ptr, w_ptr, off_ptr, a_ptr, mu_ptr, b_ptr, q_ptr, I, J,
    HAS_OFFSETS: tl.constexpr, HAS_MEAN: tl.constexpr, HAS_LINEAR: tl.constexpr, BI: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)  # nl · J + j
    nl, j = row // J, row % J
    i = tl.program_id(1) * BI + tl.arange(0, BI)[:, None, None]
    live = i < I
    entry = tl.arange(0, 4)[None, :, None] * 4 + tl.arange(0, 4)[None, None, :]
    votes = _vote_tile(m_ptr, w_ptr, off_ptr, nl, j, i, live, I, J, HAS_OFFSETS, BI)
    centred = votes - tl.load(mu_ptr + row * 16 + entry) if HAS_MEAN else votes
    terms = tl.load(a_ptr + row * 16 + entry) * centred * centred
    if HAS_LINEAR:
        terms += tl.load(b_ptr + row * 16 + entry) * votes
    child = tl.program_id(1) * BI + tl.arange(0, BI)
    tl.store(q_ptr + row * I + child, tl.sum(tl.sum(terms, axis=2), axis=1), mask=child < I)


@triton.jit
def _vote_gradient_tile(
    c_ptr, u_ptr, v_ptr, m_ptr, w_ptr, off_ptr, nl, j, i, live, I, J,
    HAS_OFFSETS: tl.constexpr, BI: tl.constexpr,
):  # fmt: skip
    """gV = c_ij (u_j + w_j ⊙ V_ij) for children `i` (BI, 1, 1) of row nl and parent j: (BI, 4, 4)."""
    row = nl * J + j
    votes = _vote_tile(m_ptr, w_ptr, off_ptr, nl, j, i, live, I, J, HAS_OFFSETS, BI)
    scale = tl.load(c_ptr + row * I + i, mask=live, other=0.0)
    entry = row * 16 + tl.arange(0, 4)[None, :, None] * 4 + tl.arange(0, 4)[None, None, :]
    return scale * (tl.load(u_ptr + entry) + tl.load(v_ptr + entry) * votes)


@triton.jit
def _grad_poses_kernel(
    c_ptr, u_ptr, v_ptr, m_ptr, w_ptr, off_ptr, gm_ptr, I, J,
    HAS_OFFSETS: tl.constexpr, BI: tl.constexpr,
):  # fmt: skip
    nl = tl.program_id(0)
    i = tl.program_id(1) * BI + tl.arange(0, BI)[:, None, None]
    live = i < I
    r = tl.arange(0, 4)[None, :, None]
    col = tl.arange(0, 4)[None, None, :]  # c for gV and W, k for the result
    grad = tl.zeros((BI, 4, 4), dtype=m_ptr.dtype.element_ty)  # gM[i, r, k]
    for j in range(J):
        g_votes = _vote_gradient_tile(
            c_ptr, u_ptr, v_ptr, m_ptr, w_ptr, off_ptr, nl, j, i, live, I, J, HAS_OFFSETS, BI
        )
        for k in tl.static_range(4):
            w_k = tl.load(w_ptr + (i * J + j) * 16 + k * 4 + col, mask=live, other=0.0)  # W[k, c]
            grad += tl.where(col == k, tl.sum(g_votes * w_k, axis=2)[:, :, None], 0.0)  # into column k
    tl.store(gm_ptr + (nl * I + i) * 16 + r * 4 + col, grad, mask=live)


@triton.jit
def _grad_weight_kernel(
    c_ptr, u_ptr, v_ptr, m_ptr, w_ptr, off_ptr, gw_ptr, NL, I, J, ROWS_PER_CHUNK,
    HAS_OFFSETS: tl.constexpr, BI: tl.constexpr,
):  # fmt: skip
    j, chunk = tl.program_id(0), tl.program_id(2)
    i = tl.program_id(1) * BI + tl.arange(0, BI)[:, None, None]
    live = i < I
    r = tl.arange(0, 4)[None, :, None]  # r for gV and M, k for the result
    col = tl.arange(0, 4)[None, None, :]
    grad = tl.zeros((BI, 4, 4), dtype=m_ptr.dtype.element_ty)  # gW[i, k, c]
    first = chunk * ROWS_PER_CHUNK
    for nl in range(first, tl.minimum(first + ROWS_PER_CHUNK, NL)):
        g_votes = _vote_gradient_tile(
            c_ptr, u_ptr, v_ptr, m_ptr, w_ptr, off_ptr, nl, j, i, live, I, J, HAS_OFFSETS, BI
        )
        for k in tl.static_range(4):
            m_k = tl.load(m_ptr + (nl * I + i) * 16 + r * 4 + k, mask=live, other=0.0)  # M[r, k]
            grad += tl.where(r == k, tl.sum(m_k * g_votes, axis=1)[:, None, :], 0.0)  # into row k
    tl.store(gw_ptr + ((chunk * I + i) * J + j) * 16 + r * 4 + col, grad, mask=live)


def _dense(*tensors: Tensor | None) -> list[Tensor | None]:
    """Contiguous copies where needed: the kernels index every tensor as its dense row-major layout (and
    torch.compile may hand a custom operator other strides than eager mode would)."""
    return [None if t is None else t.contiguous() for t in tensors]


def _offsets_arg(offsets: Tensor | None, poses: Tensor) -> tuple[Tensor, bool]:
    return (poses, False) if offsets is None else (offsets, True)  # a placeholder pointer when absent


def moments(
    c: Tensor, poses: Tensor, weight: Tensor, offsets: Tensor | None, mean: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Σ_i c_ij (V_ij − μ_j) and Σ_i c_ij (V_ij − μ_j)²: (NL, J, 16) each."""
    c, poses, weight, offsets, mean = _dense(c, poses, weight, offsets, mean)
    rows, parents, children = c.shape
    off, has_off = _offsets_arg(offsets, poses)
    first, second = (c.new_empty(rows, parents, 16) for _ in range(2))
    _moments_kernel[(rows * parents,)](
        c, poses, weight, off, poses if mean is None else mean, first, second, children, parents,
        HAS_OFFSETS=has_off, HAS_MEAN=mean is not None, BI=BLOCK_CHILDREN,
    )  # fmt: skip
    return first, second


def quadratic(
    poses: Tensor,
    weight: Tensor,
    offsets: Tensor | None,
    a: Tensor,
    mean: Tensor | None = None,
    b: Tensor | None = None,
) -> Tensor:
    """Σ_h a_jh (V_ijh − μ_jh)² + b_jh V_ijh: (NL, J, I)."""
    poses, weight, offsets, a, mean, b = _dense(poses, weight, offsets, a, mean, b)
    rows, children = poses.shape[:2]
    parents = weight.shape[1]
    off, has_off = _offsets_arg(offsets, poses)
    out = a.new_empty(rows, parents, children)
    grid = (rows * parents, triton.cdiv(children, BLOCK_CHILDREN))
    _quadratic_kernel[grid](
        poses, weight, off, a, a if mean is None else mean, a if b is None else b, out, children, parents,
        HAS_OFFSETS=has_off, HAS_MEAN=mean is not None, HAS_LINEAR=b is not None, BI=BLOCK_CHILDREN,
    )  # fmt: skip
    return out


def vote_gradients(
    c: Tensor, u: Tensor, w: Tensor, poses: Tensor, weight: Tensor, offsets: Tensor | None, chunks: int
) -> tuple[Tensor, Tensor]:
    """gM (NL, I, 16) and gW (I, J, 16) for gV_ij = c_ij (u_j + w_j ⊙ V_ij). gW is summed over rows in
    `chunks` programs per (parent, child tile), whose partial sums are added here: no atomics, so the
    result is deterministic."""
    c, u, w, poses, weight, offsets = _dense(c, u, w, poses, weight, offsets)
    rows, parents, children = c.shape
    off, has_off = _offsets_arg(offsets, poses)
    tiles = triton.cdiv(children, BLOCK_CHILDREN)
    g_poses = torch.empty_like(poses)
    _grad_poses_kernel[(rows, tiles)](
        c, u, w, poses, weight, off, g_poses, children, parents, HAS_OFFSETS=has_off, BI=BLOCK_CHILDREN
    )
    chunks = max(1, min(chunks, rows))
    per_chunk = triton.cdiv(rows, chunks)
    partial = weight.new_empty(chunks, children, parents, 16)
    _grad_weight_kernel[(parents, tiles, chunks)](
        c, u, w, poses, weight, off, partial, rows, children, parents, per_chunk,
        HAS_OFFSETS=has_off, BI=BLOCK_CHILDREN,
    )  # fmt: skip
    return g_poses, partial.sum(0)


def compile_for(capability: int = 90, warp_size: int = 32) -> list:
    """Compile every kernel variant that the wrappers launch, in float32, to machine code for an NVIDIA GPU
    of this compute capability (90: H100/H200), without one: Triton's frontend and its bundled ptxas catch
    what the interpreter does not check. Needs TRITON_INTERPRET unset. Returns the compiled kernels."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    assert not INTERPRETED, "compile_for needs TRITON_INTERPRET unset"
    target = GPUTarget("cuda", capability, warp_size)
    flags = (False, True)
    variants = [(_moments_kernel, dict(HAS_OFFSETS=o, HAS_MEAN=m)) for o in flags for m in flags]
    variants += [
        (_quadratic_kernel, dict(HAS_OFFSETS=o, HAS_MEAN=m, HAS_LINEAR=not m)) for o in flags for m in flags
    ]
    variants += [(k, dict(HAS_OFFSETS=o)) for k in (_grad_poses_kernel, _grad_weight_kernel) for o in flags]
    compiled = []
    for kernel, flags in variants:
        constants = dict(flags, BI=BLOCK_CHILDREN)
        signature = {
            name: "constexpr" if name in constants else "*fp32" if name.endswith("_ptr") else "i32"
            for name in kernel.arg_names
        }
        fixed = {(kernel.arg_names.index(name),): value for name, value in constants.items()}
        compiled.append(triton.compile(ASTSource(kernel, signature, fixed), target=target))
    return compiled
