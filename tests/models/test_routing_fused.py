"""The fused EM routing (votes formed inside the routing's sums) against the float64 loop oracle of
test_routing and against the plain path, in eager mode and under torch.compile."""

from __future__ import annotations

import pytest
import torch

from robustcaps.errors import RobustcapsError
from robustcaps.models import create_model
from robustcaps.models.routing import conv_children, em_routing
from robustcaps.models.routing_fused import fused_em_routing, fused_votes
from tests.models.test_routing import oracle

LAMBDAS, SCALE = (0.05, 0.1, 0.2), 0.3
TINY = dict(conv1_channels=8, primary_types=4, convcaps1_types=4, convcaps2_types=4)


def pose_problem(in_size=4, kernel=3, stride=1, in_types=2, out_types=3, batch=2, seed=0):
    """Poses, W, activations and β for one convolutional capsule layer, float64."""
    g = torch.Generator().manual_seed(seed)
    children = conv_children(in_size, kernel, stride, in_types)
    n_children = in_size * in_size * in_types
    activations = torch.rand(batch, n_children, generator=g, dtype=torch.float64)[:, children]
    poses = torch.randn(batch, children.shape[0], children.shape[1], 4, 4, generator=g, dtype=torch.float64)
    weight = 0.5 * torch.randn(children.shape[1], out_types, 4, 4, generator=g, dtype=torch.float64)
    beta_u = 0.1 * torch.randn(out_types, generator=g, dtype=torch.float64)
    beta_a = torch.randn(out_types, generator=g, dtype=torch.float64)
    return poses, weight, activations, beta_u, beta_a, children, n_children


def reference_votes(poses, weight):
    """V_ij = M_i W_ij by einsum: (N, L, J, I, 16)."""
    return torch.einsum("nlirk,ijkc->nljirc", poses, weight).flatten(-2)


def route_fused(poses, weight, activations, beta_u, beta_a, children, n_children, cross):
    index = children if cross else None
    return fused_em_routing(
        poses,
        weight,
        activations,
        beta_u,
        beta_a,
        LAMBDAS,
        mass_scale=SCALE,
        children=index,
        n_children=n_children,
    )


def test_fused_votes_are_the_matrix_products_plus_offsets():
    poses, weight, *_ = pose_problem()
    offsets = torch.randn(weight.shape[0], 16, dtype=torch.float64)
    torch.testing.assert_close(fused_votes(poses, weight, None), reference_votes(poses, weight))
    torch.testing.assert_close(fused_votes(poses, weight, offsets), reference_votes(poses, weight) + offsets)


@pytest.mark.parametrize("cross", [True, False], ids=["cross", "position"])
@pytest.mark.parametrize("geometry", [(4, 3, 1), (6, 3, 2)], ids=["stride1", "stride2-unfed-children"])
def test_fused_routing_matches_the_plain_loop_oracle(cross, geometry):
    poses, weight, activations, beta_u, beta_a, children, n_children = pose_problem(*geometry)
    routed = route_fused(poses, weight, activations, beta_u, beta_a, children, n_children, cross)
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
    )
    mu, var, act, logit = (
        torch.tensor(
            [[[parent[k] for parent in types] for types in positions] for positions in expected],
            dtype=torch.float64,
        )
        for k in range(4)
    )
    # float64 throughout: only summation order differs from the oracle
    torch.testing.assert_close(routed.poses, mu, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(routed.variances, var, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(routed.activations, act, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(routed.logits, logit, rtol=1e-9, atol=1e-12)
    assert routed.activations.std() > 0.05, "λ and scale chosen so that the oracle comparison is not trivial"


@pytest.mark.parametrize("cross", [True, False], ids=["cross", "position"])
def test_fused_gradients_match_finite_differences_and_the_plain_path(cross):
    problem = pose_problem(3, 2, 1, in_types=1, out_types=2, batch=1)
    children, n_children = problem[5:]
    inputs = [t.clone().requires_grad_() for t in problem[:5]]  # poses, W, activations, β_u, β_a

    def fused(*args):
        return tuple(route_fused(*args, children, n_children, cross)[:3])

    assert torch.autograd.gradcheck(fused, inputs, eps=1e-6, atol=1e-5, fast_mode=True)
    # the same gradients as the plain path on a larger problem, every input, both paths in float64
    problem = pose_problem(6, 3, 2)
    for path in ("fused", "plain"):
        leaves = [t.clone().requires_grad_() for t in problem[:5]]
        poses, weight, activations, beta_u, beta_a = leaves
        if path == "fused":
            routed = route_fused(*leaves, children=problem[5], n_children=problem[6], cross=cross)
        else:
            routed = em_routing(
                reference_votes(poses, weight),
                activations,
                beta_u,
                beta_a,
                LAMBDAS,
                mass_scale=SCALE,
                children=problem[5] if cross else None,
                n_children=problem[6],
            )
        loss = (routed.logits.sin().sum() + routed.poses.square().sum() + routed.variances.log().sum()) / 7
        grads = torch.autograd.grad(loss, leaves)
        if path == "fused":
            fused_grads = grads
    for name, got, want in zip(("poses", "W", "activations", "β_u", "β_a"), fused_grads, grads, strict=True):
        assert want.abs().max() > 0, name
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11, msg=f"gradient w.r.t. {name}")


def twin_models(estep, dtype=torch.float64, routing="fused", **overrides):
    torch.manual_seed(0)
    plain = create_model("capsnet-small", estep=estep, **TINY, **overrides).to(dtype)
    fused = create_model("capsnet-small", estep=estep, routing=routing, **TINY, **overrides).to(dtype)
    fused.load_state_dict(plain.state_dict())
    return plain, fused


@pytest.mark.parametrize(
    "estep, temperature",
    [("cross", 1.0), ("position", 1.0), ("cross", 0.5)],
    ids=["cross", "position", "cross-estep-temperature-0.5"],
)
def test_fused_capsnet_gives_the_plain_logits_and_parameter_gradients(estep, temperature):
    plain, fused = twin_models(estep, estep_temperature=temperature)
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for output in ("logits", "activations", "vote_logits"):
        torch.testing.assert_close(fused(x, output=output), plain(x, output=output), rtol=1e-10, atol=1e-12)
    for model in (plain, fused):
        torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 3, 4])).backward()
    for (name, p), q in zip(plain.named_parameters(), fused.parameters(), strict=True):
        assert p.grad.abs().max() > 0, name
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-8, atol=1e-12, msg=f"gradient of {name}")


def test_fused_routing_under_bfloat16_autocast_keeps_the_plain_dtypes_and_values():
    plain, fused = twin_models("cross", torch.float32)
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = fused(x), plain(x)
        layers = fused.routed(x), plain.routed(x)
    # ConvCaps return bfloat16 like their votes; ClassCaps' float32 offsets promote the class outputs
    assert [r.poses.dtype for r in layers[0]] == [r.poses.dtype for r in layers[1]]
    assert layers[0][0].poses.dtype == torch.bfloat16 and got.dtype == want.dtype == torch.float32
    assert torch.isfinite(got).all()
    # both paths round the convolutions and (plain) the votes to bfloat16, then route in float32
    torch.testing.assert_close(got.float(), want.float(), rtol=0.05, atol=0.05)


def assert_compiled_matches_eager_plain(routing, fullgraph=False):
    """A float32 capsnet with `routing`, under torch.compile: the eager plain path's logits and gradients."""
    plain, fast = twin_models("cross", torch.float32, routing=routing)
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    got, want = torch.compile(fast, fullgraph=fullgraph)(x), plain(x)
    got.square().sum().backward()
    want.square().sum().backward()
    # float32, different summation orders: agreement to a few ulps of the values' scale
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(plain.named_parameters(), fast.parameters(), strict=True):
        scale = p.grad.abs().max().item()
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-4 * scale, msg=f"gradient of {name}")


def test_fused_capsnet_under_torch_compile_matches_eager_plain():
    assert_compiled_matches_eager_plain("fused")


def test_unknown_routing_names_the_setting():
    with pytest.raises(RobustcapsError, match="routing 'vectorised': choose one of plain, fused, triton"):
        create_model("capsnet-small", routing="vectorised")
    assert create_model("capsnet-small").config.routing == "plain", "the plain path stays the default"


def test_routing_can_be_switched_on_a_built_model_and_back():
    from robustcaps.models import routing_as

    plain, fused = twin_models("cross")
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    want = plain(x)
    plain.use_routing("fused")
    assert plain.routing == "fused" and plain.conv_caps2.routing == plain.class_caps.routing == "fused"
    torch.testing.assert_close(plain(x), want, rtol=1e-10, atol=1e-12)
    with routing_as(plain, "plain"):
        assert plain.routing == "plain" and plain.class_caps.routing == "plain"
    assert plain.routing == "fused", "the block restores the path it found"
    assert plain.config.routing == "plain", "the config keeps what the model was built with"
    with pytest.raises(ValueError, match="not a valid Routing"):
        plain.use_routing("vectorised")
    cnn = create_model("cnn-small")
    with routing_as(cnn, "fused") as same:  # not a capsule network: nothing to switch
        assert same is cnn


@pytest.mark.parametrize("layers", ["first", "none"])
def test_what_fused_routing_recomputes_in_backward_changes_no_gradient(layers):
    plain, fused = twin_models("cross")
    fused.use_recompute(layers)
    assert [m.recompute for m in (fused.conv_caps1, fused.conv_caps2, fused.class_caps)] == (
        [True, False, False] if layers == "first" else [False, False, False]
    )
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for model in (plain, fused):
        torch.nn.functional.cross_entropy(model(x), torch.tensor([1, 2])).backward()
    for (name, p), q in zip(plain.named_parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-8, atol=1e-12, msg=f"gradient of {name}")
    with pytest.raises(ValueError, match="not a valid Recompute"):
        fused.use_recompute("some")
