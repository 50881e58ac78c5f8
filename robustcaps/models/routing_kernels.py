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

How the work is laid out (benchmarks/NOTES.md has the first design and why it was replaced): each thread
owns whole votes, its 16 entries in registers as a 16-tuple, so the 4×4 products and every
sum over pose entries stay inside a thread. The threads of a program are the parents j of one row (moments,
quadratic, W's gradient) or 32 children i (the poses' gradient), and each loops over the other index, so
that what all its threads share (M_i, or μ_j, a_j, b_j, W_ij) is loaded once per iteration or once per
program, and what differs between threads is read with consecutive addresses: W is passed transposed for
that ((I, 16, J) or (J, 16, I)) and Q is written (NL, I, J). No thread reads another's registers, so the
compiled loops have no shuffles, no shared memory and no barriers (benchmarks/kernel_sass.py checks it).
Sums over the looped index are split over several programs where a layer has few rows, their partial
sums added afterwards in a fixed order: no atomics, so every result is deterministic.

Layouts: c, Q (NL, J, I), c at any strides (a share expanded over parents is read in place); M (NL, I, 16);
W (I, J, 16); offsets (I, 16); μ, a, b, u, w, S1, S2 (NL, J, 16); 4×4 matrices flattened row-major. The
kernels index in int32 (every tensor under 2³¹ entries: at batch 64 the largest, c of ConvCaps1, is 2·10⁷).
On a CPU they run only in Triton's interpreter (NumPy, slow; see INTERPRETED): that is how the tests check
them.
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

LANES = 32  # threads per warp, each owning the votes of one parent (or child)
# Warps per program, each a row (or a child): they read the same W (or u, w) entries at about the same
# time, so all but the first read hit the SM's L1 cache instead of L2.
WARPS = 4
# Programs per launch worth splitting a loop for: several per SM of an H100 (132).
TARGET_PROGRAMS = 1024


@triton.jit
def _load16(ptr, stride):
    """The 16 entries ptr[h · stride] as a tuple (of scalars or of vectors, as ptr is)."""
    out = ()
    for h in tl.static_range(16):
        out = out + (tl.load(ptr + h * stride),)
    return out


@triton.jit
def _zeros16(WARPS: tl.constexpr, LANES: tl.constexpr, dtype: tl.constexpr):
    out = ()
    for _ in tl.static_range(16):
        out = out + (tl.zeros((WARPS, LANES), dtype),)
    return out


@triton.jit
def _vote(m, w, offset, HAS_OFFSETS: tl.constexpr):
    """V[r, c] = Σ_k M[r, k] W[k, c] (+ offset[r, c]) from 16-tuples: 64 multiply-adds in one thread."""
    v = ()
    for r in tl.static_range(4):
        for c in tl.static_range(4):
            entry = m[4 * r] * w[c]
            for k in tl.static_range(1, 4):
                entry += m[4 * r + k] * w[4 * k + c]
            if HAS_OFFSETS:
                entry += offset[4 * r + c]
            v = v + (entry,)
    return v


@triton.jit
def _add_product(acc, a, b, A_TRANSPOSED: tl.constexpr, B_TRANSPOSED: tl.constexpr):
    """acc + A B for 4×4 16-tuples, A = aᵀ or a and B = bᵀ or b as flagged: the gradients' contractions."""
    out = ()
    for x in tl.static_range(4):
        for y in tl.static_range(4):
            entry = acc[4 * x + y]
            for z in tl.static_range(4):
                a_xz = a[4 * z + x] if A_TRANSPOSED else a[4 * x + z]
                b_zy = b[4 * y + z] if B_TRANSPOSED else b[4 * z + y]
                entry += a_xz * b_zy
            out = out + (entry,)
    return out


@triton.jit
def _vote_gradient(c, u, w, v):
    """gV = c (u + w ⊙ V), entry by entry."""
    out = ()
    for h in tl.static_range(16):
        out = out + (c * (u[h] + w[h] * v[h]),)
    return out


@triton.jit
def _moments_kernel(
    c_ptr,
    c_nl,
    c_j,
    c_i,
    m_ptr,
    wt_ptr,
    off_ptr,
    mu_ptr,
    s1_ptr,
    s2_ptr,
    NL,
    I,
    J,
    PER_PROGRAM,
    HAS_OFFSETS: tl.constexpr,
    HAS_MEAN: tl.constexpr,
    WARPS: tl.constexpr,
    LANES: tl.constexpr,
):
    """A warp per row nl, a thread per parent j (spare threads repeat the last of each: stores masked)."""
    part = tl.program_id(1)
    rows = tl.program_id(0) * WARPS + tl.arange(0, WARPS)[:, None]  # (WARPS, 1)
    lanes = tl.arange(0, LANES)[None, :]  # (1, LANES)
    nl, j = tl.minimum(rows, NL - 1), tl.minimum(lanes, J - 1)
    mean = _load16(mu_ptr + (nl * J + j) * 16, 1) if HAS_MEAN else ()
    first = _zeros16(WARPS, LANES, c_ptr.dtype.element_ty)
    second = first
    start = part * PER_PROGRAM
    for i in range(start, tl.minimum(start + PER_PROGRAM, I)):
        weight = _load16(wt_ptr + i * 16 * J + j, J)  # W_ij: consecutive over j, the same for every warp
        offset = _load16(off_ptr + i * 16, 1) if HAS_OFFSETS else ()
        votes = _vote(_load16(m_ptr + (nl * I + i) * 16, 1), weight, offset, HAS_OFFSETS)
        c = tl.load(c_ptr + nl * c_nl + j * c_j + i * c_i)
        new_first, new_second = (), ()
        for h in tl.static_range(16):
            centred = votes[h] - mean[h] if HAS_MEAN else votes[h]
            weighted = c * centred
            new_first = new_first + (first[h] + weighted,)
            new_second = new_second + (second[h] + weighted * centred,)
        first, second = new_first, new_second
    out = ((part * NL + nl) * J + j) * 16
    live = (rows < NL) & (lanes < J)
    for h in tl.static_range(16):
        tl.store(s1_ptr + out + h, first[h], mask=live)
        tl.store(s2_ptr + out + h, second[h], mask=live)


@triton.jit
def _quadratic_kernel(
    m_ptr,
    wt_ptr,
    off_ptr,
    a_ptr,
    mu_ptr,
    b_ptr,
    q_ptr,
    NL,
    I,
    J,
    PER_PROGRAM,
    HAS_OFFSETS: tl.constexpr,
    HAS_MEAN: tl.constexpr,
    HAS_LINEAR: tl.constexpr,
    WARPS: tl.constexpr,
    LANES: tl.constexpr,
):
    """A warp per row nl, a thread per parent j."""
    part = tl.program_id(1)
    rows = tl.program_id(0) * WARPS + tl.arange(0, WARPS)[:, None]
    lanes = tl.arange(0, LANES)[None, :]
    nl, j = tl.minimum(rows, NL - 1), tl.minimum(lanes, J - 1)
    live = (rows < NL) & (lanes < J)
    row = (nl * J + j) * 16
    a = _load16(a_ptr + row, 1)
    mean = _load16(mu_ptr + row, 1) if HAS_MEAN else ()
    linear = _load16(b_ptr + row, 1) if HAS_LINEAR else ()
    start = part * PER_PROGRAM
    for i in range(start, tl.minimum(start + PER_PROGRAM, I)):
        offset = _load16(off_ptr + i * 16, 1) if HAS_OFFSETS else ()
        votes = _vote(
            _load16(m_ptr + (nl * I + i) * 16, 1), _load16(wt_ptr + i * 16 * J + j, J), offset, HAS_OFFSETS
        )
        total = tl.zeros_like(a[0])
        for h in tl.static_range(16):
            centred = votes[h] - mean[h] if HAS_MEAN else votes[h]
            total += a[h] * centred * centred
            if HAS_LINEAR:
                total += linear[h] * votes[h]
        tl.store(q_ptr + (nl * I + i) * J + j, total, mask=live)  # Q as (NL, I, J): consecutive over j


@triton.jit
def _grad_poses_kernel(
    c_ptr,
    c_nl,
    c_j,
    c_i,
    u_ptr,
    w_ptr,
    m_ptr,
    wp_ptr,
    off_ptr,
    gm_ptr,
    NL,
    I,
    J,
    HAS_OFFSETS: tl.constexpr,
    WARPS: tl.constexpr,
    LANES: tl.constexpr,
):
    """A warp per row nl, a thread per child i."""
    rows = tl.program_id(0) * WARPS + tl.arange(0, WARPS)[:, None]
    lanes = tl.program_id(1) * LANES + tl.arange(0, LANES)[None, :]
    nl, i = tl.minimum(rows, NL - 1), tl.minimum(lanes, I - 1)
    poses = _load16(m_ptr + (nl * I + i) * 16, 1)  # M_i stays in registers over all parents
    offset = _load16(off_ptr + i * 16, 1) if HAS_OFFSETS else ()
    grad = _zeros16(WARPS, LANES, m_ptr.dtype.element_ty)  # gM_i[r, k]
    for j in range(J):
        weight = _load16(wp_ptr + j * 16 * I + i, I)  # W_ij: consecutive over i, the same for every warp
        votes = _vote(poses, weight, offset, HAS_OFFSETS)
        c = tl.load(c_ptr + nl * c_nl + j * c_j + i * c_i)
        row = (nl * J + j) * 16
        g_votes = _vote_gradient(c, _load16(u_ptr + row, 1), _load16(w_ptr + row, 1), votes)
        grad = _add_product(grad, g_votes, weight, False, True)  # gM += gV Wᵀ
    for h in tl.static_range(16):
        tl.store(gm_ptr + (nl * I + i) * 16 + h, grad[h], mask=(rows < NL) & (lanes < I))


@triton.jit
def _grad_weight_kernel(
    c_ptr,
    c_nl,
    c_j,
    c_i,
    ut_ptr,
    wt_coef_ptr,
    m_ptr,
    wt_ptr,
    off_ptr,
    gw_ptr,
    NL,
    I,
    J,
    PER_PROGRAM,
    HAS_OFFSETS: tl.constexpr,
    WARPS: tl.constexpr,
    LANES: tl.constexpr,
):
    """A warp per child i, a thread per parent j; each program sums over a part of the rows."""
    part = tl.program_id(1)
    children = tl.program_id(0) * WARPS + tl.arange(0, WARPS)[:, None]
    lanes = tl.arange(0, LANES)[None, :]
    i, j = tl.minimum(children, I - 1), tl.minimum(lanes, J - 1)
    weight = _load16(wt_ptr + i * 16 * J + j, J)  # W_ij stays in registers over all rows
    offset = _load16(off_ptr + i * 16, 1) if HAS_OFFSETS else ()
    grad = _zeros16(WARPS, LANES, m_ptr.dtype.element_ty)  # gW_ij[k, c]
    start = part * PER_PROGRAM
    for nl in range(start, tl.minimum(start + PER_PROGRAM, NL)):
        poses = _load16(m_ptr + (nl * I + i) * 16, 1)
        votes = _vote(poses, weight, offset, HAS_OFFSETS)
        c = tl.load(c_ptr + nl * c_nl + j * c_j + i * c_i)
        column = nl * 16 * J + j  # u and w passed as (NL, 16, J): consecutive over j, the same for every warp
        g_votes = _vote_gradient(c, _load16(ut_ptr + column, J), _load16(wt_coef_ptr + column, J), votes)
        grad = _add_product(grad, poses, g_votes, True, False)  # gW += Mᵀ gV
    out = (part * I + i) * 16 * J + j  # partial sums as (parts, I, 16, J)
    for h in tl.static_range(16):
        tl.store(gw_ptr + out + h * J, grad[h], mask=(children < I) & (lanes < J))


def _dense(*tensors: Tensor | None) -> list[Tensor | None]:
    """Contiguous copies where needed: the kernels index these as their dense row-major layout (and
    torch.compile may hand a custom operator other strides than eager mode would)."""
    return [None if t is None else t.contiguous() for t in tensors]


def _offsets_arg(offsets: Tensor | None, poses: Tensor) -> tuple[Tensor, bool]:
    return (poses, False) if offsets is None else (offsets, True)  # a placeholder pointer when absent


def split_loop(length: int, programs: int) -> tuple[int, int]:
    """(parts, length per part) for a loop of `length` shared by `programs` programs per part: enough
    parts to give the GPU TARGET_PROGRAMS programs, none shorter than 8 iterations."""
    return chunked(length, min(triton.cdiv(TARGET_PROGRAMS, programs), length // 8))


def chunked(length: int, parts: int) -> tuple[int, int]:
    """(parts, length per part) for `length` iterations in at most `parts` equal parts (the last shorter)."""
    per_part = triton.cdiv(length, max(1, min(parts, length)))
    return triton.cdiv(length, per_part), per_part


def moments(
    c: Tensor, poses: Tensor, weight: Tensor, offsets: Tensor | None, mean: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Σ_i c_ij (V_ij − μ_j) and Σ_i c_ij (V_ij − μ_j)²: (NL, J, 16) each."""
    poses, offsets, mean = _dense(poses, offsets, mean)
    rows, parents, children = c.shape
    off, has_off = _offsets_arg(offsets, poses)
    parts, per_part = split_loop(children, triton.cdiv(rows, WARPS))
    first, second = (c.new_empty(parts, rows, parents, 16) for _ in range(2))
    _moments_kernel[(triton.cdiv(rows, WARPS), parts)](
        c,
        *c.stride(),
        poses,
        weight.permute(0, 2, 1).contiguous(),
        off,
        poses if mean is None else mean,
        first,
        second,
        rows,
        children,
        parents,
        per_part,
        HAS_OFFSETS=has_off,
        HAS_MEAN=mean is not None,
        WARPS=WARPS,
        LANES=LANES,
        num_warps=WARPS,
    )
    return first.sum(0), second.sum(0)


def quadratic(
    poses: Tensor,
    weight: Tensor,
    offsets: Tensor | None,
    a: Tensor,
    mean: Tensor | None = None,
    b: Tensor | None = None,
) -> Tensor:
    """Σ_h a_jh (V_ijh − μ_jh)² + b_jh V_ijh: (NL, J, I), stored as (NL, I, J) (see quadratic_layout)."""
    poses, offsets, a, mean, b = _dense(poses, offsets, a, mean, b)
    rows, children = poses.shape[:2]
    parents = weight.shape[1]
    off, has_off = _offsets_arg(offsets, poses)
    parts, per_part = split_loop(children, triton.cdiv(rows, WARPS))
    out = quadratic_layout(a.new_empty, rows, parents, children)
    _quadratic_kernel[(triton.cdiv(rows, WARPS), parts)](
        poses,
        weight.permute(0, 2, 1).contiguous(),
        off,
        a,
        a if mean is None else mean,
        a if b is None else b,
        out,
        rows,
        children,
        parents,
        per_part,
        HAS_OFFSETS=has_off,
        HAS_MEAN=mean is not None,
        HAS_LINEAR=b is not None,
        WARPS=WARPS,
        LANES=LANES,
        num_warps=WARPS,
    )
    return out


def quadratic_layout(empty, rows: int, parents: int, children: int) -> Tensor:
    """Q's memory: (NL, I, J), so that a program's threads (its parents) write consecutive addresses; seen
    as (NL, J, I). The custom operator's fake tensor must have these strides too."""
    return empty(rows, children, parents).transpose(1, 2)


def vote_gradients(
    c: Tensor, u: Tensor, w: Tensor, poses: Tensor, weight: Tensor, offsets: Tensor | None, chunks: int
) -> tuple[Tensor, Tensor]:
    """gM (NL, I, 16) and gW (I, J, 16) for gV_ij = c_ij (u_j + w_j ⊙ V_ij). gW is summed over rows in
    `chunks` programs per child, whose partial sums are added here in a fixed order: no atomics."""
    u, w, poses, offsets = _dense(u, w, poses, offsets)
    rows, parents, children = c.shape
    off, has_off = _offsets_arg(offsets, poses)
    g_poses = torch.empty_like(poses)
    _grad_poses_kernel[(triton.cdiv(rows, WARPS), triton.cdiv(children, LANES))](
        c,
        *c.stride(),
        u,
        w,
        poses,
        weight.permute(1, 2, 0).contiguous(),
        off,
        g_poses,
        rows,
        children,
        parents,
        HAS_OFFSETS=has_off,
        WARPS=WARPS,
        LANES=LANES,
        num_warps=WARPS,
    )
    chunks, per_chunk = chunked(rows, chunks)
    partial = weight.new_empty(chunks, children, 16, parents)
    by_column = [t.transpose(1, 2).contiguous() for t in (u, w)]  # (NL, 16, J)
    _grad_weight_kernel[(triton.cdiv(children, WARPS), chunks)](
        c,
        *c.stride(),
        *by_column,
        poses,
        weight.permute(0, 2, 1).contiguous(),
        off,
        partial,
        rows,
        children,
        parents,
        per_chunk,
        HAS_OFFSETS=has_off,
        WARPS=WARPS,
        LANES=LANES,
        num_warps=WARPS,
    )
    return g_poses, partial.sum(0).transpose(1, 2).contiguous()


def compile_for(capability: int = 90, warp_size: int = 32) -> list:
    """Compile every kernel variant that the wrappers launch, in float32, to machine code for an NVIDIA GPU
    of this compute capability (90: H100/H200), without one: Triton's frontend and its bundled ptxas catch
    what the interpreter does not check. Needs TRITON_INTERPRET unset. Returns the compiled kernels."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    assert not INTERPRETED, "compile_for needs TRITON_INTERPRET unset"
    target = GPUTarget("cuda", capability, warp_size)
    compiled = []
    for kernel, flags in variants():
        constants = dict(flags, WARPS=WARPS, LANES=LANES)
        signature = {
            name: "constexpr" if name in constants else "*fp32" if name.endswith("_ptr") else "i32"
            for name in kernel.arg_names
        }
        fixed = {(kernel.arg_names.index(name),): value for name, value in constants.items()}
        source = ASTSource(kernel, signature, fixed)
        compiled.append(triton.compile(source, target=target, options={"num_warps": WARPS}))
    return compiled


def variants() -> list[tuple]:
    """(kernel, its constexpr flags) for every variant that the wrappers launch."""
    flags = (False, True)
    out = [(_moments_kernel, dict(HAS_OFFSETS=o, HAS_MEAN=m)) for o in flags for m in flags]
    out += [
        (_quadratic_kernel, dict(HAS_OFFSETS=o, HAS_MEAN=m, HAS_LINEAR=not m)) for o in flags for m in flags
    ]
    return out + [(k, dict(HAS_OFFSETS=o)) for k in (_grad_poses_kernel, _grad_weight_kernel) for o in flags]
