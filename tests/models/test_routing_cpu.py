"""The C++ EM routing ("cpu") against the float64 plain path (the reference): outputs and every gradient,
both E-step variants, 2 and 3 iterations, T ≠ 1, coordinate offsets, a whole capsnet, under torch.compile,
on degenerate inputs, and the fused fallback where the kernel cannot be built."""

from __future__ import annotations

import pytest
import torch

from robustcaps.models import routing_cpu
from robustcaps.models.routing import em_routing
from robustcaps.models.routing_cpu import cpu_em_routing
from tests.models.test_routing_fused import (
    SCALE,
    assert_compiled_matches_eager_plain,
    pose_problem,
    reference_votes,
    twin_models,
)

needs_kernel = pytest.mark.skipif(not routing_cpu.available(), reason="no C++ compiler for the kernel")
SCHEDULES = {2: (0.05, 0.2), 3: (0.05, 0.1, 0.2)}


def route_both(problem, cross, iterations, temperature, offsets=None):
    """(outputs, gradients of every input) of the cpu and the plain path on one float64 problem."""
    children, n_children = problem[5:]
    results = []
    for path in ("cpu", "plain"):
        leaves = [t.clone().requires_grad_() for t in problem[:5]]
        poses, weight, activations, beta_u, beta_a = leaves
        settings = dict(
            mass_scale=SCALE,
            children=children if cross else None,
            n_children=n_children,
            estep_temperature=temperature,
        )
        if path == "cpu":
            routed = cpu_em_routing(*leaves, SCHEDULES[iterations], offsets=offsets, **settings)
        else:
            votes = reference_votes(poses, weight)
            votes = votes if offsets is None else votes + offsets
            routed = em_routing(votes, activations, beta_u, beta_a, SCHEDULES[iterations], **settings)
        loss = routed.logits.sin().sum() + routed.poses.square().sum() + routed.variances.log().sum()
        loss = (loss + routed.activations.cos().sum()) / 7
        results.append((routed, torch.autograd.grad(loss, leaves)))
    return results


@needs_kernel
@pytest.mark.parametrize("iterations", [2, 3])
@pytest.mark.parametrize("temperature", [1.0, 0.25], ids=["T1", "T0.25"])
@pytest.mark.parametrize("cross", [True, False], ids=["cross", "position"])
def test_cpu_routing_gives_the_plain_outputs_and_gradients(cross, temperature, iterations):
    problem = pose_problem(6, 3, 2)  # stride 2: some children feed no parent
    offsets = torch.randn(
        problem[1].shape[0], 16, generator=torch.Generator().manual_seed(7), dtype=torch.float64
    )
    for extra in (None, offsets):
        (got, got_grads), (want, want_grads) = route_both(problem, cross, iterations, temperature, extra)
        assert want.activations.std() > 0.03, "a problem on which routing is not trivial"
        for name, a, b in zip(want._fields, got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=name)
        for name, a, b in zip(
            ("poses", "W", "activations", "β_u", "β_a"), got_grads, want_grads, strict=True
        ):
            assert b.abs().max() > 0, name
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-11, msg=f"gradient w.r.t. {name}")


@needs_kernel
def test_cpu_routing_passes_gradcheck():
    problem = pose_problem(3, 2, 1, in_types=1, out_types=2, batch=2)
    children, n_children = problem[5:]
    inputs = [t.clone().requires_grad_() for t in problem[:5]]

    def route(*args):
        out = cpu_em_routing(
            *args,
            SCHEDULES[3],
            mass_scale=SCALE,
            children=children,
            n_children=n_children,
            estep_temperature=0.5,
        )
        return tuple(out[:3])

    assert torch.autograd.gradcheck(route, inputs, eps=1e-6, atol=1e-5, fast_mode=True)


@needs_kernel
def test_cpu_routing_stays_finite_on_degenerate_inputs():
    poses, weight, activations, beta_u, beta_a, children, n_children = pose_problem(4, 3, 1)
    same = poses[:, :, :1].expand_as(poses).contiguous()  # every child the same pose: zero variance
    for p, a in (
        (poses, torch.zeros_like(activations)),
        (same, activations),
        (same, torch.ones_like(activations)),
    ):
        leaves = [t.float().clone().requires_grad_() for t in (p, weight, a, beta_u, beta_a)]
        routed = cpu_em_routing(
            *leaves, SCHEDULES[3], mass_scale=SCALE, children=children, n_children=n_children
        )
        routed.logits.sum().backward()
        assert all(torch.isfinite(t).all() for t in routed)
        assert all(torch.isfinite(t.grad).all() for t in leaves)


@needs_kernel
@pytest.mark.parametrize(
    "estep, overrides",
    [("cross", {}), ("position", {}), ("cross", dict(iterations=2, estep_temperature=0.25))],
    ids=["cross", "position", "cpu-recipe-2-iterations-T0.25"],
)
def test_cpu_capsnet_gives_the_plain_logits_and_parameter_gradients(estep, overrides):
    plain, fast = twin_models(estep, routing="cpu", **overrides)
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for output in ("logits", "activations", "vote_logits"):
        torch.testing.assert_close(fast(x, output=output), plain(x, output=output), rtol=1e-10, atol=1e-12)
    for model in (plain, fast):
        torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 3, 4])).backward()
    for (name, p), q in zip(plain.named_parameters(), fast.parameters(), strict=True):
        assert p.grad.abs().max() > 0, name
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-8, atol=1e-12, msg=f"gradient of {name}")


@needs_kernel
def test_cpu_capsnet_under_torch_compile_matches_eager_plain():
    assert_compiled_matches_eager_plain("cpu", fullgraph=True)


def test_without_its_kernel_cpu_routing_computes_the_fused_path(monkeypatch):
    plain, fast = twin_models("cross", routing="cpu")
    monkeypatch.setattr(routing_cpu, "_kernel", {"error": RuntimeError("no compiler")})
    assert not routing_cpu.available()
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-10, atol=1e-12)


@needs_kernel
def test_attacks_crafted_through_cpu_routing_match_the_plain_path():
    import torchattacks

    from robustcaps.attacks.adapters import AttackTarget

    plain, fast = twin_models("cross", routing="cpu")
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 4])
    crafted = []
    for model in (plain, fast):
        torch.manual_seed(0)  # the same random start
        attack = torchattacks.PGD(AttackTarget(model), eps=0.1, alpha=0.03, steps=4, random_start=True)
        crafted.append(attack(x, y))
    assert (crafted[1] - x).abs().max() > 0.05, "the attack moved the images"
    torch.testing.assert_close(crafted[1], crafted[0], rtol=0, atol=1e-9)
