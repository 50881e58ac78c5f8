"""Spread and margin losses on hand-worked examples, their gradients, and the margin schedule."""

from __future__ import annotations

import math

import pytest
import torch

from robustcaps.models import create_model
from robustcaps.training.losses import margin_loss, resolve_loss, spread_loss, spread_margin, training_loss


def test_spread_loss_hand_worked():
    # a = (0.9, 0.2, 0.5), m = 0.5.
    # t = 0: i=1: max(0, 0.5 − 0.7)² = 0; i=2: (0.5 − 0.4)² = 0.01           → 0.01
    # t = 1: i=0: (0.5 + 0.7)² = 1.44;  i=2: (0.5 + 0.3)² = 0.64              → 2.08
    a = torch.tensor([[0.9, 0.2, 0.5], [0.9, 0.2, 0.5]], dtype=torch.float64)
    assert spread_loss(a[:1], torch.tensor([0]), 0.5).item() == pytest.approx(0.01)
    assert spread_loss(a[1:], torch.tensor([1]), 0.5).item() == pytest.approx(2.08)
    assert spread_loss(a, torch.tensor([0, 1]), 0.5).item() == pytest.approx((0.01 + 2.08) / 2)


def test_spread_loss_is_zero_once_the_target_wins_by_the_margin():
    a = torch.tensor([[0.1, 0.95, 0.2, 0.3, 0.05]])
    assert spread_loss(a, torch.tensor([1]), 0.6).item() == 0.0
    assert spread_loss(a, torch.tensor([1]), 0.7).item() > 0.0  # 0.95 − 0.3 = 0.65 < 0.7


def test_spread_loss_gradient_pushes_target_up_and_the_rest_down():
    a = torch.tensor([[0.4, 0.5, 0.6]], dtype=torch.float64, requires_grad=True)
    spread_loss(a, torch.tensor([0]), 0.2).backward()
    # dL/da_t = −2 Σ_i (m − a_t + a_i) = −2 (0.3 + 0.4); dL/da_i = 2 (m − a_t + a_i)
    assert a.grad[0].tolist() == pytest.approx([-1.4, 0.6, 0.8])


def test_margin_schedule_authors_values():
    assert spread_margin(0) == pytest.approx(0.2 + 0.79 / (1 + math.exp(4)))  # 0.2144
    assert spread_margin(200_000) == pytest.approx(0.2 + 0.79 / 2)  # sigmoid(0)
    assert spread_margin(10**9) == pytest.approx(0.2 + 0.79 / (1 + math.exp(-10)))  # capped at z = 10
    steps = range(0, 1_000_000, 25_000)
    margins = [spread_margin(s) for s in steps]
    assert margins == sorted(margins) and 0.2 < margins[0] and margins[-1] < 0.99


def test_margin_step_scale_compresses_the_schedule():
    assert spread_margin(400, scale=100) == pytest.approx(spread_margin(200_000))
    assert spread_margin(1000, scale=100) == pytest.approx(spread_margin(500_000))


def test_auto_loss_follows_the_paper():
    assert resolve_loss("auto", "capsnet") == "spread"
    assert resolve_loss("auto", "cnn") == "cross_entropy"
    assert resolve_loss("spread", "cnn") == "spread"
    assert resolve_loss("auto", "dynamic") == "margin"
    assert resolve_loss("auto", "self-routing") == "cross_entropy"


def test_margin_loss_hand_worked():
    # target 0 at length 0.5: (0.9 − 0.5)² = 0.16; absent 0.3 and 0.05: 0.5 · (0.3 − 0.1)² = 0.02, and 0
    lengths = torch.tensor([[0.5, 0.3, 0.05]])
    torch.testing.assert_close(margin_loss(lengths, torch.tensor([0])), torch.tensor(0.18))
    assert margin_loss(torch.tensor([[0.95, 0.1, 0.0]]), torch.tensor([0])) == 0


def test_margin_loss_with_the_decoder_adds_the_weighted_reconstruction_error():
    torch.manual_seed(0)
    model = create_model("dynamic-capsnet-small", decoder=True).eval()
    x, labels = torch.rand(3, 1, 32, 32), torch.tensor([0, 2, 4])
    total, lengths = training_loss(model, x, labels, "margin", margin=0.0)
    _, reconstruction = model(x, output="training", labels=labels)
    error = (reconstruction - x).pow(2).flatten(1).sum(1).mean()
    torch.testing.assert_close(total, margin_loss(lengths, labels) + 0.0005 * error)
