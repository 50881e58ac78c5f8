"""The gathered EM routing (the fused forward; a backward that forms each layer's vote gradient once)
against the fused and plain paths in float64, by finite differences, and under torch.compile."""

from __future__ import annotations

import pytest
import torch

from robustcaps.models.common import FUSED_ROUTING_INDUCTOR
from robustcaps.models.routing import em_routing
from robustcaps.models.routing_fused import fused_em_routing
from robustcaps.models.routing_gathered import gathered_em_routing
from tests.test_routing_fused import (
    LAMBDAS,
    SCALE,
    assert_compiled_matches_eager_plain,
    pose_problem,
    reference_votes,
    twin_models,
)


def route(path, poses, weight, activations, beta_u, beta_a, children, n_children, cross, **settings):
    settings = dict(mass_scale=SCALE, children=children if cross else None, n_children=n_children, **settings)
    if path == "plain":
        return em_routing(reference_votes(poses, weight), activations, beta_u, beta_a, LAMBDAS, **settings)
    route_vote_free = gathered_em_routing if path == "gathered" else fused_em_routing
    return route_vote_free(poses, weight, activations, beta_u, beta_a, LAMBDAS, **settings)


@pytest.mark.parametrize("cross", [True, False], ids=["cross", "position"])
def test_gathered_gradients_pass_gradcheck(cross):
    problem = pose_problem(3, 2, 1, in_types=1, out_types=2, batch=1)
    inputs = [t.clone().requires_grad_() for t in problem[:5]]  # poses, W, activations, β_u, β_a

    def gathered(*args):
        return tuple(route("gathered", *args, *problem[5:], cross)[:3])

    assert torch.autograd.gradcheck(gathered, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.5], ids=["T1", "T0.5"])
@pytest.mark.parametrize("cross", [True, False], ids=["cross", "position"])
def test_gathered_routing_gives_the_fused_outputs_and_the_plain_gradients(cross, temperature):
    problem = pose_problem(6, 3, 2)
    results = {}
    for path in ("plain", "fused", "gathered"):
        leaves = [t.clone().requires_grad_() for t in problem[:5]]
        routed = route(path, *leaves, *problem[5:], cross, estep_temperature=temperature)
        loss = (routed.logits.sin().sum() + routed.poses.square().sum() + routed.variances.log().sum()) / 7
        results[path] = routed, torch.autograd.grad(loss, leaves)
    (fused, _), (gathered, got), (_, want) = results["fused"], results["gathered"], results["plain"]
    for name, a, b in zip(("poses", "variances", "activations", "logits"), gathered, fused, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"{name}: the forward is the fused path's")
    for name, a, b in zip(("poses", "W", "activations", "β_u", "β_a"), got, want, strict=True):
        assert b.abs().max() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=f"gradient w.r.t. {name}")


@pytest.mark.parametrize("recompute", ["all", "none"])
@pytest.mark.parametrize("estep", ["cross", "position"])
def test_gathered_capsnet_gives_the_plain_logits_and_parameter_gradients(estep, recompute):
    plain, gathered = twin_models(estep, routing="gathered")
    gathered.use_recompute(recompute)
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    # vote_logits routes ClassCaps with one M-step and no E-step: one coefficient slot, not five
    for output in ("logits", "vote_logits"):
        for model in (plain, gathered):
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(x, output=output), torch.tensor([0, 3, 4])).backward()
        torch.testing.assert_close(
            gathered(x, output=output), plain(x, output=output), rtol=1e-10, atol=1e-12
        )
        for (name, p), q in zip(plain.named_parameters(), gathered.parameters(), strict=True):
            assert p.grad.abs().max() > 0, name
            torch.testing.assert_close(
                q.grad, p.grad, rtol=1e-8, atol=1e-12, msg=f"{output}: gradient of {name}"
            )


def test_gathered_capsnet_under_torch_compile_matches_eager_plain():
    assert_compiled_matches_eager_plain("gathered", fullgraph=True)


def test_gathered_capsnet_with_votes_formed_in_every_consumer_matches_eager_plain():
    # FUSED_ROUTING_INDUCTOR: no vote is stored, each sum (and the vote gradient) forms its own
    assert_compiled_matches_eager_plain("gathered", fullgraph=True, inductor=FUSED_ROUTING_INDUCTOR)


def test_gathered_routing_refuses_offsets_that_want_a_gradient():
    poses, weight, activations, beta_u, beta_a, *_ = pose_problem()
    offsets = torch.zeros(weight.shape[0], 16, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="offsets as constants"):
        gathered_em_routing(poses, weight, activations, beta_u, beta_a, LAMBDAS, offsets=offsets)
