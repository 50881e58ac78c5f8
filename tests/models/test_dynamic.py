"""Dynamic routing (Sabour 2017, Procedure 1) against a plain-loop float64 reading, and its network."""

from __future__ import annotations

import math

import pytest
import torch

from robustcaps.models import create_model
from robustcaps.models.dynamic import NORM_EPSILON, dynamic_routing, squash


def oracle(votes: torch.Tensor, iterations: int) -> tuple[list, list]:
    """Procedure 1 one child and one parent at a time: (v_j per batch, c_ij of the last iteration)."""
    n_batch, n_children, n_parents, n_dims = votes.shape
    U = votes.tolist()
    capsules, couplings = [], []
    for n in range(n_batch):
        b = [[0.0] * n_parents for _ in range(n_children)]
        for r in range(iterations):
            c = []
            for i in range(n_children):
                z = sum(math.exp(b[i][k]) for k in range(n_parents))
                c.append([math.exp(b[i][j]) / z for j in range(n_parents)])
            v = []
            for j in range(n_parents):
                s = [sum(c[i][j] * U[n][i][j][d] for i in range(n_children)) for d in range(n_dims)]
                norm2 = sum(x * x for x in s)
                v.append([x * math.sqrt(norm2 + NORM_EPSILON) / (1 + norm2) for x in s])
            if r < iterations - 1:
                for i in range(n_children):
                    for j in range(n_parents):
                        b[i][j] += sum(U[n][i][j][d] * v[j][d] for d in range(n_dims))
        capsules.append(v)
        couplings.append(c)
    return capsules, couplings


@pytest.mark.parametrize("iterations", [1, 3])
def test_vectorised_routing_matches_the_plain_loop_oracle(iterations):
    votes = torch.randn(2, 7, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    routed = dynamic_routing(votes, iterations)
    capsules, couplings = oracle(votes, iterations)
    torch.testing.assert_close(routed.capsules, torch.tensor(capsules, dtype=torch.float64))
    torch.testing.assert_close(routed.coupling, torch.tensor(couplings, dtype=torch.float64))


def test_coupling_coefficients_sum_to_one_over_the_parents_and_start_uniform():
    votes = torch.randn(3, 10, 5, 16)
    torch.testing.assert_close(dynamic_routing(votes, 3).coupling.sum(-1), torch.ones(3, 10))
    torch.testing.assert_close(dynamic_routing(votes, 1).coupling, torch.full((3, 10, 5), 0.2))


def test_squash_keeps_the_direction_and_maps_lengths_into_zero_one():
    s = torch.tensor([[3.0, 4.0], [0.03, 0.04], [0.0, 0.0]], dtype=torch.float64)
    v = squash(s)
    lengths = v.norm(dim=-1)
    torch.testing.assert_close(lengths[:2], torch.tensor([25 / 26, 0.0025 / 1.0025], dtype=torch.float64))
    torch.testing.assert_close(v[0] / lengths[0], s[0] / 5)
    assert lengths[2] == 0


def test_logits_are_the_log_odds_of_the_capsule_length():
    routed = dynamic_routing(torch.randn(2, 6, 5, 8, dtype=torch.float64), 3)
    torch.testing.assert_close(torch.sigmoid(routed.logits), routed.capsules.norm(dim=-1))


def test_agreeing_votes_win_the_coupling_and_the_longer_parent():
    generator = torch.Generator().manual_seed(0)
    # eight children agree on parent 0's pose; their votes for parent 1 point every which way
    votes = torch.zeros(1, 8, 2, 4)
    votes[0, :, 0] = torch.tensor([0.3, -0.2, 0.1, 0.4]) + 0.01 * torch.randn(8, 4, generator=generator)
    votes[0, :, 1] = 0.35 * torch.nn.functional.normalize(torch.randn(8, 4, generator=generator), dim=-1)
    first, third = dynamic_routing(votes, 1), dynamic_routing(votes, 3)
    assert (third.coupling[0, :, 0] > first.coupling[0, :, 0]).all()  # routing moves children to agreement
    lengths = third.capsules.norm(dim=-1)[0]
    assert lengths[0] > 3 * lengths[1]


def test_gradcheck_through_the_unrolled_iterations():
    votes = torch.randn(2, 5, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: dynamic_routing(v, 3).logits, (votes,))
    assert torch.autograd.gradcheck(lambda v: dynamic_routing(v, 3).capsules, (votes,))


@pytest.mark.parametrize("case", ["zero", "cancelling", "huge"])
def test_degenerate_votes_give_finite_outputs_and_gradients(case):
    votes = torch.zeros(2, 6, 5, 16)
    if case == "cancelling":  # children in opposite pairs: every s_j is exactly zero
        votes[:, :3] = torch.randn(2, 3, 5, 16)
        votes[:, 3:] = -votes[:, :3]
    elif case == "huge":
        votes = 1e6 * torch.randn(2, 6, 5, 16)
    votes.requires_grad_()
    routed = dynamic_routing(votes, 3)
    for out in routed:
        assert torch.isfinite(out).all()
    (routed.logits.sum() + routed.capsules.sum()).backward()
    assert torch.isfinite(votes.grad).all()


@pytest.mark.parametrize("image", ["flat", "black", "noise"])
def test_network_outputs_are_finite_on_degenerate_images_with_finite_input_gradients(image):
    model = create_model("dynamic-capsnet-small", in_channels=2).eval()
    x = {
        "flat": torch.full((2, 2, 32, 32), 0.5),
        "black": torch.zeros(2, 2, 32, 32),
        "noise": torch.rand(2, 2, 32, 32),
    }[image].requires_grad_()
    for output in ("logits", "activations", "vote_logits"):
        scores = model(x, output=output)
        assert scores.shape == (2, 5) and torch.isfinite(scores).all()
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 3])).backward()
    assert torch.isfinite(x.grad).all()


def test_vote_head_is_the_routing_with_uniform_coupling():
    model = create_model("dynamic-capsnet-small").eval()
    x = torch.rand(3, 1, 32, 32)
    uniform = create_model("dynamic-capsnet-small", iterations=1).eval()
    uniform.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(x, output="vote_logits"), uniform(x))
    assert not torch.allclose(model(x), uniform(x))


def test_the_paper_sizes_and_the_decoder_option():
    model = create_model("dynamic-capsnet")
    assert sum(p.numel() for p in model.parameters()) == 6_640_384
    assert model.class_caps.weight.shape == (8 * 8 * 32, 5, 16, 8)  # 2,048 primary capsules of 8D → 16D
    assert model.config.iterations == 3 and model.decoder is None
    with_decoder = create_model("dynamic-capsnet-small", in_channels=2, decoder=True)
    lengths, reconstruction = with_decoder(
        torch.rand(4, 2, 32, 32), output="training", labels=torch.arange(4)
    )
    assert lengths.shape == (4, 5) and reconstruction.shape == (4, 2, 32, 32)
    assert ((reconstruction > 0) & (reconstruction < 1)).all()
