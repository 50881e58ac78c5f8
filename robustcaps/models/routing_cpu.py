"""EM routing of a whole layer in one C++ kernel per direction, an image per task ("cpu").

The same Procedure 1 as `routing.em_routing` and the same arguments as `routing_fused.fused_em_routing`.
On a CPU the fused path under torch.compile is bound by passes over batch-sized vote buffers (inductor
writes the votes once per pass: 170 MB per pass for capsnet-small's ConvCaps1 at batch 64) and by the
dozens of responsibility-sized kernels around them (benchmarks/NOTES.md, the profile). `routing_cpu.cpp`
instead routes one image at a time, OpenMP over the batch: its votes (2.7 MB) are formed once and stay in
cache for every M-step and E-step, and nothing vote-sized is written to memory. With gradients, the forward
also keeps each iteration's parents and responsibilities R_t (responsibility-sized); backward forms the
image's votes again and walks the iterations back:

    M-step   g_s = Σ_h g1 V + g2 V²,  gV += s (g1 + 2 g2 V)   with g2 = g_σ² (where the spread ≥ 0),
             g1 = g_μ − 2 μ (2 − Σs) g2; s = R a/(m + ε) and the mass m pass their gradient to R and a
    E-step   g_logR = g_R R;  g_log-joint = g_logR − R Σ_set g_logR  (the softmax over each child's set)
             g_d = −T g_joint: gV += g_d (V − μ)/σ², g_μ −= Σ_i the same, g_σ² −= Σ_i g_d (V − μ)²/2σ⁴
    votes    g_M = Σ_j gV Wᵀ,  g_W = Σ_{n,l} Mᵀ gV

Why hand-written: no library implements EM routing (routing_fused.py says why), and a C++ loop is the one
way on a CPU to keep an image's votes in cache across the iterations. The kernel is built on first use with
torch's extension builder (the C++ compiler that torch.compile needs on a CPU anyway); where that fails,
`available()` is false and capsnet falls back to the fused path, the same function.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor

from robustcaps.models.routing import Routed

SOURCE = Path(__file__).with_suffix(".cpp")
FLAGS = ["-O3", "-march=native", "-fopenmp"]
_kernel: dict[str, object] = {}  # "module" once built, "error" when building failed


def available() -> bool:
    """Whether the C++ kernel is built and loaded (building it on the first call)."""
    if not _kernel:
        try:
            from torch.utils import cpp_extension

            _kernel["module"] = cpp_extension.load(
                "robustcaps_em_routing_cpu", [str(SOURCE)], extra_cflags=FLAGS, extra_ldflags=["-fopenmp"]
            )
        except Exception as error:  # no compiler, no headers: the fused path computes the same function
            _kernel["error"] = error
            logging.getLogger(__name__).warning(
                "routing 'cpu': the C++ kernel could not be built (%s); using the fused path", error
            )
    return "module" in _kernel


def _module():
    assert available(), "routing 'cpu': the C++ kernel is not built"
    return _kernel["module"]


# The kernel as torch custom operators: opaque to torch.compile, which compiles the layers around them.
@torch.library.custom_op("robustcaps::em_routing_cpu", mutates_args=())
def em_routing_op(
    poses: Tensor,
    weight: Tensor,
    offsets: Tensor,
    activations: Tensor,
    beta_u: Tensor,
    beta_a: Tensor,
    lambdas: list[float],
    children: Tensor,
    n_children: int,
    min_variance: float,
    mass_scale: float,
    temperature: float,
    keep_state: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return tuple(
        _module().forward(
            poses,
            weight,
            offsets,
            activations,
            beta_u,
            beta_a,
            lambdas,
            children,
            n_children,
            min_variance,
            mass_scale,
            temperature,
            keep_state,
        )
    )


@em_routing_op.register_fake
def _(poses, weight, offsets, activations, beta_u, beta_a, lambdas, children, n_children, *settings):
    (n, positions, slots), parents = poses.shape[:3], weight.shape[1]
    mean = poses.new_empty(n, positions, parents, 16)
    packed = positions * parents * (3 * 16 + 2 + slots)  # Iteration::packed_size
    state = poses.new_empty(n if settings[-1] else 0, len(lambdas), packed if settings[-1] else 0)
    return mean, torch.empty_like(mean), mean.new_empty(mean.shape[:3]), state


@torch.library.custom_op("robustcaps::em_routing_cpu_backward", mutates_args=())
def em_routing_backward_op(
    poses: Tensor,
    weight: Tensor,
    offsets: Tensor,
    activations: Tensor,
    beta_u: Tensor,
    beta_a: Tensor,
    lambdas: list[float],
    children: Tensor,
    n_children: int,
    min_variance: float,
    mass_scale: float,
    temperature: float,
    g_mean: Tensor,
    g_variance: Tensor,
    g_logits: Tensor,
    state: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    grads = _module().backward(
        poses,
        weight,
        offsets,
        activations,
        beta_u,
        beta_a,
        lambdas,
        children,
        n_children,
        min_variance,
        mass_scale,
        temperature,
        g_mean,
        g_variance,
        g_logits,
        state,
    )
    return tuple(grads)


@em_routing_backward_op.register_fake
def _(poses, weight, offsets, activations, beta_u, beta_a, *rest):
    return tuple(torch.empty_like(t) for t in (poses, weight, activations, beta_u, beta_a))


def _save(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:6], inputs[7], output[3])  # the state: each iteration's parents and R
    ctx.settings = (inputs[6], inputs[8], inputs[9], inputs[10], inputs[11])


def _backward(ctx, g_mean: Tensor, g_variance: Tensor, g_logits: Tensor, _):
    poses, weight, offsets, activations, beta_u, beta_a, children, state = ctx.saved_tensors
    lambdas, n_children, min_variance, mass_scale, temperature = ctx.settings
    g_poses, g_weight, g_act, g_beta_u, g_beta_a = em_routing_backward_op(
        poses,
        weight,
        offsets,
        activations,
        beta_u,
        beta_a,
        lambdas,
        children,
        n_children,
        min_variance,
        mass_scale,
        temperature,
        g_mean,
        g_variance,
        g_logits,
        state,
    )
    return g_poses, g_weight, None, g_act, g_beta_u, g_beta_a, None, None, None, None, None, None, None


torch.library.register_autograd("robustcaps::em_routing_cpu", _backward, setup_context=_save)


def cpu_em_routing(
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
    (float64 if given float64), outside autocast; CPU tensors only."""
    if poses.device.type != "cpu":
        raise RuntimeError("routing 'cpu' runs on the CPU; use routing 'fused' or 'triton' on a GPU")
    n, positions, slots = poses.shape[:3]
    dtype = poses.dtype if offsets is None else torch.promote_types(poses.dtype, offsets.dtype)
    with torch.autocast("cpu", enabled=False):
        work = torch.promote_types(dtype, torch.float32)
        inputs = (poses, weight, activations, beta_u, beta_a)
        keep_state = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
        mean, variance, logits, _ = em_routing_op(
            poses.to(work).reshape(n, positions, slots, 16).contiguous(),
            weight.to(work).reshape(slots, weight.shape[1], 16).contiguous(),
            poses.new_empty(0, dtype=work) if offsets is None else offsets.to(work).contiguous(),
            activations.to(work).contiguous(),
            beta_u.to(work).contiguous(),
            beta_a.to(work).contiguous(),
            list(inverse_temperatures),
            poses.new_empty(0, dtype=torch.int64) if children is None else children.contiguous(),
            n_children,
            min_variance,
            mass_scale,
            estep_temperature,
            keep_state,
        )
        out = Routed(mean, variance, torch.sigmoid(logits), logits)
    return Routed(*(t.to(dtype) for t in out))
