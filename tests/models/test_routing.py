"""EM routing against a plain-loop float64 reading of Procedure 1, and on the inputs that break it."""

from __future__ import annotations

import math

import pytest
import torch

from robustcaps.models.routing import (
    MASS_EPSILON,
    _normalise,
    conv_children,
    em_routing,
    initial_responsibilities,
    inverse_temperature_schedule,
    mass_scale,
)

H = 16


def oracle(
    votes, activations, beta_u, beta_a, lambdas, children, cross, min_variance, scale, temperature=1.0
):
    """Procedure 1 one child and one parent at a time; a child's E-step set is every parent it feeds
    (cross) or the parent types at its position. votes (N, L, J, I, H), activations (N, L, I). The E-step
    weighs a_j p_ij^temperature (1: the paper)."""
    n_batch, n_pos, n_types, n_slots, n_dims = votes.shape
    V, a, ch = votes.tolist(), activations.tolist(), children.tolist()
    fan = {}
    for l in range(n_pos):
        for i in range(n_slots):
            fan[ch[l][i]] = fan.get(ch[l][i], 0) + 1
    results = []
    for n in range(n_batch):
        R = [
            [
                [1 / ((fan[ch[l][i]] if cross else 1) * n_types) for i in range(n_slots)]
                for _ in range(n_types)
            ]
            for l in range(n_pos)
        ]
        for t, lam in enumerate(lambdas):
            mu, var, act, logit = {}, {}, {}, {}
            for l in range(n_pos):
                for j in range(n_types):
                    rp = [R[l][j][i] * a[n][l][i] for i in range(n_slots)]
                    mass = sum(rp)
                    mu[l, j] = [
                        sum(rp[i] * V[n][l][j][i][h] for i in range(n_slots)) / (mass + MASS_EPSILON)
                        for h in range(n_dims)
                    ]
                    var[l, j] = [
                        sum(rp[i] * (V[n][l][j][i][h] - mu[l, j][h]) ** 2 for i in range(n_slots))
                        / (mass + MASS_EPSILON)
                        + min_variance
                        for h in range(n_dims)
                    ]
                    cost = sum((beta_u[j] + 0.5 * math.log(v)) * mass * scale for v in var[l, j])
                    logit[l, j] = lam * (beta_a[j] - cost)
                    act[l, j] = 1 / (1 + math.exp(-logit[l, j]))
            if t == len(lambdas) - 1:
                break
            log_q = {}
            for l in range(n_pos):
                for j in range(n_types):
                    for i in range(n_slots):
                        log_p = sum(
                            -0.5 * (V[n][l][j][i][h] - mu[l, j][h]) ** 2 / var[l, j][h]
                            - 0.5 * math.log(2 * math.pi * var[l, j][h])
                            for h in range(n_dims)
                        )
                        log_q[l, j, i] = math.log(act[l, j]) + temperature * log_p
            slots = {}  # the E-step's normalising set of each slot: every (l', j', i') sharing its child
            for key in log_q:
                slots.setdefault(ch[key[0]][key[2]] if cross else key[::2], []).append(key)
            for (l, j, i), value in log_q.items():
                peers = slots[ch[l][i] if cross else (l, i)]
                top = max(log_q[key] for key in peers)
                R[l][j][i] = math.exp(value - top) / sum(math.exp(log_q[key] - top) for key in peers)
        results.append(
            [[[mu[l, j], var[l, j], act[l, j], logit[l, j]] for j in range(n_types)] for l in range(n_pos)]
        )
    return results


def problem(in_size, kernel, stride, in_types=2, out_types=3, batch=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    children = conv_children(in_size, kernel, stride, in_types)
    n_children = in_size * in_size * in_types
    child_activation = torch.rand(batch, n_children, generator=g, dtype=dtype)
    activations = child_activation[:, children]  # (N, L, I): one value per child, copied to its slots
    votes = torch.randn(batch, children.shape[0], out_types, children.shape[1], H, generator=g, dtype=dtype)
    beta_u = 0.1 * torch.randn(out_types, generator=g, dtype=dtype)
    beta_a = torch.randn(out_types, generator=g, dtype=dtype)
    return votes, activations, beta_u, beta_a, children, n_children


def route(
    votes,
    activations,
    beta_u,
    beta_a,
    children,
    n_children,
    cross,
    lambdas=(0.05, 0.1, 0.2),
    scale=0.3,
    temperature=1.0,
):
    index = children if cross else None
    return em_routing(
        votes,
        activations,
        beta_u,
        beta_a,
        lambdas,
        mass_scale=scale,
        children=index,
        n_children=n_children,
        estep_temperature=temperature,
    )


@pytest.mark.parametrize("cross", [True, False], ids=["cross", "position"])
@pytest.mark.parametrize(
    "geometry, temperature",
    [((4, 3, 1), 1.0), ((6, 3, 2), 1.0), ((6, 3, 2), 0.5)],
    ids=["stride1", "stride2-unfed-children", "stride2-estep-temperature-0.5"],
)
def test_vectorised_routing_matches_the_plain_loop_oracle(cross, geometry, temperature):
    votes, activations, beta_u, beta_a, children, n_children = problem(*geometry)
    routed = route(votes, activations, beta_u, beta_a, children, n_children, cross, temperature=temperature)
    expected = oracle(
        votes,
        activations,
        beta_u.tolist(),
        beta_a.tolist(),
        (0.05, 0.1, 0.2),
        children,
        cross,
        5e-4,
        0.3,
        temperature,
    )
    for n, positions in enumerate(expected):
        for l, types in enumerate(positions):
            for j, (mu, var, act, logit) in enumerate(types):
                torch.testing.assert_close(routed.poses[n, l, j], torch.tensor(mu, dtype=torch.float64))
                torch.testing.assert_close(routed.variances[n, l, j], torch.tensor(var, dtype=torch.float64))
                assert routed.activations[n, l, j].item() == pytest.approx(act, rel=1e-9)
                assert routed.logits[n, l, j].item() == pytest.approx(logit, rel=1e-9, abs=1e-12)
    assert routed.activations.std() > 0.05, "λ and scale chosen so that the oracle comparison is not trivial"


@pytest.mark.parametrize("cross", [True, False], ids=["cross", "position"])
def test_responsibilities_sum_to_one_over_the_parents_a_child_feeds(cross):
    children = conv_children(6, 3, 2, 2)
    log_joint = 3 * torch.randn(2, children.shape[0], 4, children.shape[1], dtype=torch.float64)
    r = _normalise(log_joint, children if cross else None, 72).exp()  # (N, L, J, I)
    if not cross:
        torch.testing.assert_close(r.sum(2), torch.ones_like(r.sum(2)))
        return
    per_child = torch.zeros(2, 72, dtype=torch.float64).index_add_(1, children.flatten(), r.sum(2).flatten(1))
    fed = torch.unique(children)
    torch.testing.assert_close(per_child[:, fed], torch.ones(2, len(fed), dtype=torch.float64))
    assert (per_child.sum(0) == 0).sum() == 72 - len(fed), (
        "children outside every receptive field get nothing"
    )
    assert (r.sum(2) < 1 - 1e-6).any(), "a child's share at one position is only part of its unit mass"


def last_estep_hardness(monkeypatch, temperature, *problem_args) -> float:
    """Σ R² / Σ R of the last E-step's responsibilities (1: every child to one parent)."""
    import robustcaps.models.routing as routing

    log_r, normalise = [], routing._normalise
    monkeypatch.setattr(routing, "_normalise", lambda *args: log_r.append(normalise(*args)) or log_r[-1])
    route(*problem_args, True, temperature=temperature)
    monkeypatch.setattr(routing, "_normalise", normalise)
    r = log_r[-1].exp()
    return float((r * r).sum() / r.sum())


def test_an_estep_temperature_below_one_softens_the_assignments(monkeypatch):
    # R ∝ a p^T: with T < 1 each child spreads over more parents (Σ R² / Σ R falls towards 1/k); T = 1
    # is the paper's E-step and the default, computed exactly as before the option existed.
    args = problem(6, 3, 2, out_types=4)
    hardness = [last_estep_hardness(monkeypatch, t, *args) for t in (1.0, 0.5, 0.25)]
    assert hardness[0] > hardness[1] > hardness[2]
    votes, activations, beta_u, beta_a = args[:4]
    default = em_routing(votes, activations, beta_u, beta_a, (0.05, 0.1, 0.2), mass_scale=0.3)
    explicit = em_routing(
        votes, activations, beta_u, beta_a, (0.05, 0.1, 0.2), mass_scale=0.3, estep_temperature=1.0
    )
    assert all(torch.equal(a, b) for a, b in zip(default, explicit, strict=True))


def test_initial_responsibilities_are_uniform_over_each_childs_parents():
    children = conv_children(6, 3, 2, 2)
    r0 = initial_responsibilities(children, 72, 5)
    per_child = torch.zeros(72).index_add_(0, children.flatten(), 5 * r0.flatten())
    assert torch.allclose(per_child[torch.unique(children)], torch.ones(len(torch.unique(children))))
    assert r0.max() == pytest.approx(1 / 5) and r0.min() == pytest.approx(1 / (4 * 5))  # corner vs shared


def test_agreeing_votes_make_an_active_tight_parent_that_beats_scattered_votes():
    g = torch.Generator().manual_seed(1)
    centre = torch.randn(H, generator=g)
    votes = torch.stack([centre + 0.01 * torch.randn(30, H, generator=g), torch.randn(30, H, generator=g)])
    args = (votes[None, None], torch.ones(1, 1, 30), torch.zeros(2), torch.zeros(2))
    first = em_routing(*args, (0.01,), mass_scale=100 / 15)  # one M-step: every child counts for both
    assert first.variances[0, 0, 0].max() < 1e-3 and first.variances[0, 0, 1].min() > 0.1
    routed = em_routing(*args, (0.01, 0.02, 0.03), mass_scale=100 / 15)
    assert routed.activations[0, 0, 0] > 0.99 and routed.activations[0, 0, 1] < 0.6
    torch.testing.assert_close(routed.poses[0, 0, 0], centre, atol=0.01, rtol=0)


def test_schedule_follows_the_authors_answer():
    assert inverse_temperature_schedule(0.01, 3) == pytest.approx(
        (0.01 * 0.05, 0.01 * 0.0975, 0.01 * 0.142625)
    )


def test_mass_scale_brings_the_average_parent_to_the_target():
    children = conv_children(6, 3, 1, 2)  # 4×4 parents, every child fed, interior children feed 9 positions
    for index in (children, None):
        r0 = initial_responsibilities(index, 72, 3).expand(children.shape)
        average = 3 * r0.sum() / (children.shape[0] * 3)  # Σ_i R_ij summed over parents / number of parents
        scale = mass_scale(index, 72, 3, children.shape[1], 100.0)
        assert (average * scale).item() == pytest.approx(100.0)
    assert mass_scale(children, 72, 3, 18, None) == 1.0


@pytest.mark.parametrize("cross", [True, False], ids=["cross", "position"])
def test_gradcheck_through_the_unrolled_iterations(cross):
    votes, activations, beta_u, beta_a, children, n_children = problem(
        3, 2, 1, in_types=1, out_types=2, batch=1
    )
    activations = activations.clone()
    inputs = [t.clone().requires_grad_() for t in (votes, activations, beta_u, beta_a)]

    def fn(v, a, bu, ba):
        return tuple(route(v, a, bu, ba, children, n_children, cross, scale=0.5)[:3])

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, fast_mode=True)


def degenerate_cases(dtype):
    g = torch.Generator().manual_seed(2)
    one_child = (torch.randn(2, 3, 4, 1, H, generator=g), torch.rand(2, 3, 1, generator=g))
    identical = (torch.ones(2, 3, 4, 9, H), torch.rand(2, 3, 9, generator=g))
    inactive = (torch.randn(2, 3, 4, 9, H, generator=g), torch.zeros(2, 3, 9))
    cases = {
        "one-child-per-parent": one_child,
        "identical-votes": identical,
        "all-zero-activations": inactive,
    }
    return {k: (v.to(dtype), a.to(dtype)) for k, (v, a) in cases.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", ["one-child-per-parent", "identical-votes", "all-zero-activations"])
def test_degenerate_inputs_give_finite_outputs_and_gradients(case, dtype):
    votes, activations = (t.requires_grad_() for t in degenerate_cases(dtype)[case])
    beta_u, beta_a = torch.zeros(4, requires_grad=True), torch.zeros(4, requires_grad=True)
    routed = em_routing(
        votes, activations, beta_u, beta_a, inverse_temperature_schedule(0.01, 3), mass_scale=100.0
    )
    assert routed.poses.dtype == dtype
    for out in routed:
        assert torch.isfinite(out).all()
    sum(out.float().sum() for out in routed).backward()
    for t in (votes, activations, beta_u, beta_a):
        assert t.grad is not None and torch.isfinite(t.grad).all()
    if dtype == torch.float32:  # bfloat16 rounds a sigmoid within 2^-9 of 1 to 1
        assert (routed.activations > 0).all() and (routed.activations < 1).all()
    assert (routed.activations >= 0).all() and (routed.activations <= 1).all()
