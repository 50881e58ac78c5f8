"""The Triton routing path (routing="triton") against torch and the float64 loop oracle. Without a GPU the
kernels run in Triton's interpreter (tests/conftest.py sets it up), which is slow: the problems are small."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from robustcaps.models import capsnet, create_model, routing_triton
from robustcaps.models import routing_kernels as kernels
from robustcaps.models.routing import Routed, em_routing
from robustcaps.models.routing_fused import fused_em_routing
from robustcaps.models.routing_triton import triton_em_routing
from tests.models.test_routing import oracle
from tests.models.test_routing_fused import LAMBDAS, SCALE, TINY, pose_problem, reference_votes

pytestmark = pytest.mark.skipif(
    not (kernels.INTERPRETED or torch.cuda.is_available()), reason="needs a GPU or TRITON_INTERPRET=1"
)
DEVICE = "cpu" if kernels.INTERPRETED else "cuda"


def flat_problem(rows=3, parents=5, children=40, seed=0):
    """Kernel-layout tensors, float64: 40 children are a full tile of 32 and a masked one."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(DEVICE)

    poses, weight, offsets = rand(rows, children, 16), rand(children, parents, 16), rand(children, 16)
    c = rand(rows, parents, children).abs()
    vectors = rand(rows, parents, 16), rand(rows, parents, 16).abs(), rand(rows, parents, 16)
    return poses, weight, offsets, c, *vectors


def flat_votes(poses, weight, offsets):
    votes = torch.einsum("nirk,ijkc->njirc", poses.unflatten(-1, (4, 4)), weight.unflatten(-1, (4, 4)))
    return votes.flatten(-2) + (0 if offsets is None else offsets)  # (NL, J, I, 16)


@pytest.mark.parametrize("with_offsets", [True, False], ids=["offsets", "no-offsets"])
def test_kernel_sums_are_the_torch_sums(with_offsets):
    poses, weight, offsets, c, mean, a, b = flat_problem()
    offsets = offsets if with_offsets else None
    votes = flat_votes(poses, weight, offsets)
    centred = votes - mean.unsqueeze(2)
    first, second = kernels.moments(c, poses, weight, offsets, mean)
    torch.testing.assert_close(first, (c.unsqueeze(-1) * centred).sum(2), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(second, (c.unsqueeze(-1) * centred.square()).sum(2), rtol=1e-12, atol=1e-12)
    plain_first, _ = kernels.moments(c, poses, weight, offsets)
    torch.testing.assert_close(plain_first, (c.unsqueeze(-1) * votes).sum(2), rtol=1e-12, atol=1e-12)
    got = kernels.quadratic(poses, weight, offsets, a, mean=mean, b=b)
    want = (a.unsqueeze(2) * centred.square() + b.unsqueeze(2) * votes).sum(-1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_kernels_read_strided_inputs_as_their_values():
    poses, weight, offsets, c, mean, a, _ = flat_problem()
    strided = poses.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other memory layout
    assert not strided.is_contiguous()
    torch.testing.assert_close(
        kernels.quadratic(strided, weight, offsets, a, mean),
        kernels.quadratic(poses, weight, offsets, a, mean),
    )
    g_poses, _ = kernels.vote_gradients(c, mean, a, strided, weight, offsets, 1)
    torch.testing.assert_close(g_poses, kernels.vote_gradients(c, mean, a, poses, weight, offsets, 1)[0])


@pytest.mark.parametrize("chunks", [1, 2], ids=["one-chunk", "uneven-chunks"])
def test_vote_gradients_are_autograds(chunks):
    poses, weight, offsets, c, u, _, w = flat_problem()
    leaves = poses.clone().requires_grad_(), weight.clone().requires_grad_()
    votes = flat_votes(*leaves, offsets)
    votes.backward(c.unsqueeze(-1) * (u.unsqueeze(2) + w.unsqueeze(2) * votes.detach()))
    g_poses, g_weight = kernels.vote_gradients(c, u, w, poses, weight, offsets, chunks)
    torch.testing.assert_close(g_poses, leaves[0].grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_weight, leaves[1].grad, rtol=1e-12, atol=1e-12)


def route_triton(
    poses, weight, activations, beta_u, beta_a, children, n_children, cross, offsets=None, temperature=1.0
):
    """triton_em_routing on DEVICE (the GPU where there is one), the results back on the CPU."""
    inputs = [t.to(DEVICE) for t in (poses, weight, activations, beta_u, beta_a)]
    routed = triton_em_routing(
        *inputs,
        LAMBDAS,
        offsets=None if offsets is None else offsets.to(DEVICE),
        mass_scale=SCALE,
        children=children.to(DEVICE) if cross else None,
        n_children=n_children,
        estep_temperature=temperature,
    )
    return Routed(*(t.cpu() for t in routed))


@pytest.mark.parametrize(
    "cross, temperature",
    [(True, 1.0), (False, 1.0), (True, 0.5)],
    ids=["cross", "position", "cross-estep-temperature-0.5"],
)
def test_triton_routing_matches_the_plain_loop_oracle(cross, temperature):
    poses, weight, activations, beta_u, beta_a, children, n_children = pose_problem(6, 3, 2)  # unfed children
    routed = route_triton(
        poses, weight, activations, beta_u, beta_a, children, n_children, cross, temperature=temperature
    )
    expected = oracle(
        reference_votes(poses, weight),
        activations,
        beta_u.tolist(),
        beta_a.tolist(),
        LAMBDAS,
        children,
        cross,
        5e-4,
        SCALE,
        temperature,
    )
    for k, got in enumerate((routed.poses, routed.variances, routed.activations, routed.logits)):
        want = [[[parent[k] for parent in types] for types in positions] for positions in expected]
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    assert routed.activations.std() > 0.05, "λ and scale chosen so that the oracle comparison is not trivial"


@pytest.mark.parametrize("cross", [True, False], ids=["cross", "position"])
def test_triton_gradients_match_the_plain_path(cross):
    problem = pose_problem(6, 3, 2)
    children, n_children = problem[5:]
    g = torch.Generator().manual_seed(5)
    offsets = 0.3 * torch.randn(problem[1].shape[0], 16, generator=g, dtype=torch.float64)
    grads = []
    for path in ("triton", "plain"):
        leaves = [t.clone().requires_grad_() for t in problem[:5]]  # poses, W, activations, β_u, β_a
        if path == "triton":
            routed = route_triton(*leaves, children, n_children, cross, offsets)
        else:
            routed = em_routing(
                reference_votes(*leaves[:2]) + offsets,
                *leaves[2:],
                LAMBDAS,
                mass_scale=SCALE,
                children=children if cross else None,
                n_children=n_children,
            )
        loss = (routed.logits.sin().sum() + routed.poses.square().sum() + routed.variances.log().sum()) / 7
        grads.append(torch.autograd.grad(loss, leaves))
    for name, got, want in zip(("poses", "W", "activations", "β_u", "β_a"), *grads, strict=True):
        assert want.abs().max() > 0, name
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11, msg=f"gradient w.r.t. {name}")


def test_triton_routing_compiles_whole_with_the_kernels_as_opaque_operators():
    """fullgraph=True: torch.compile traces the routing around the custom operators without a graph break,
    and the compiled routing gives the plain path's values and gradients (float64)."""
    problem = pose_problem(6, 3, 2)
    children, n_children = problem[5:]

    def run(route):
        leaves = [t.clone().requires_grad_() for t in problem[:5]]
        routed = route(*leaves)
        loss = (routed.logits.sin().sum() + routed.poses.square().sum() + routed.variances.log().sum()) / 7
        return (routed.logits.detach(), *torch.autograd.grad(loss, leaves))

    compiled = run(torch.compile(lambda *x: route_triton(*x, children, n_children, True), fullgraph=True))
    plain = run(
        lambda poses, weight, *rest: em_routing(
            reference_votes(poses, weight),
            *rest,
            LAMBDAS,
            mass_scale=SCALE,
            children=children,
            n_children=n_children,
        )
    )
    names = ("logits", "poses", "W", "activations", "β_u", "β_a")
    for name, got, want in zip(names, compiled, plain, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11, msg=name)


def test_triton_routing_in_float32_keeps_the_dtype_and_the_float64_values():
    problem = pose_problem(4, 3, 1)
    routed = route_triton(*(t.float() for t in problem[:5]), *problem[5:], cross=True)
    exact = route_triton(*problem, cross=True)
    assert routed.poses.dtype == torch.float32
    torch.testing.assert_close(routed.logits, exact.logits.float(), rtol=1e-4, atol=1e-5)


def test_capsnet_dispatches_every_routed_layer_to_the_triton_path(monkeypatch):
    """The model's wiring, with fused_em_routing (same arguments, tested against plain) standing in for
    the kernels: a whole capsnet in Triton's interpreter takes minutes (once run: float64, it matched the
    plain path to 1e-13)."""
    calls = []

    def standing_in(*args, **kwargs):
        calls.append(args[0].shape)
        return fused_em_routing(*args, **kwargs)

    monkeypatch.setattr(capsnet, "triton_routing", lambda: standing_in)
    torch.manual_seed(0)
    plain = create_model("capsnet-small", **TINY).double()
    triton_path = create_model("capsnet-small", routing="triton", **TINY).double()
    triton_path.load_state_dict(plain.state_dict())
    assert not calls, "calibration at construction uses the plain path, which runs on any device"
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(triton_path(x), plain(x), rtol=1e-10, atol=1e-12)
    assert len(calls) == 3 and triton_path.routing == "triton"


def test_kernels_compile_for_an_h100_without_one_and_keep_each_vote_in_one_thread(tmp_path):
    """The interpreter runs Python, not Triton's compiler: compile every kernel variant to sm_90 machine code
    (Triton ships ptxas; no GPU is needed) so that a lent GPU session does not find the compile errors, and
    check the design's point in that code: no inner loop exchanges data between threads (no shuffles,
    barriers or shared memory) and nothing spills to local memory."""
    pytest.importorskip("triton.backends.nvidia")
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "kernel_sass.py"
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    command = [sys.executable, str(script), "--csv", str(tmp_path / "sass.csv")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(tmp_path / "sass.csv")
    assert len(table) == 4 + 4 + 2 + 2
    assert set(table.kernel) == {"moments", "quadratic", "grad_poses", "grad_weight"}
    assert (table.loop_instructions > 100).all(), "each variant has its inner loop"
    assert (table[["shuffle", "barrier", "shared", "spill_bytes"]] == 0).all().all(), table.to_string()


def test_triton_path_without_a_gpu_or_the_interpreter_says_what_to_do(monkeypatch):
    monkeypatch.setattr(kernels, "INTERPRETED", False)
    with pytest.raises(RuntimeError, match="routing='triton' needs a CUDA GPU"):
        routing_triton.require_triton(torch.device("cpu"))
