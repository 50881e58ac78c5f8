"""The paper's baseline CNN and the capacity-matched small one."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from robustcaps.models import create_model, model_info


def parameters(model):
    return sum(p.numel() for p in model.parameters())


def test_paper_baseline_has_the_papers_parameter_count():
    assert parameters(create_model("cnn")) == 4_252_549  # HSF18 §5: "4.2M"
    assert parameters(create_model("cnn", in_channels=2)) == 4_252_549 + 25 * 32


def test_small_cnn_matches_the_small_capsnet_in_capacity_and_depth():
    small = create_model("cnn-small")
    assert 60_000 < parameters(small) < 80_000
    convs = [m for m in small.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in small.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) == 2 and len(linears) == 2 and all(c.kernel_size == (5, 5) for c in convs)


@pytest.mark.parametrize("name", ["cnn", "cnn-small"])
def test_outputs_follow_the_contract(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.rand(3, 1, 32, 32)
    logits, probabilities = model(x), model(x, output="activations")
    assert logits.shape == (3, 5) and torch.isfinite(logits).all()
    torch.testing.assert_close(probabilities.sum(1), torch.ones(3))
    torch.testing.assert_close(probabilities, torch.softmax(logits, 1))
    torch.testing.assert_close(model(x), logits, rtol=0, atol=0)  # eval: dropout off, deterministic
    with pytest.raises(ValueError, match="vote_logits"):
        model(x, output="vote_logits")
    assert model.family == "cnn" and model.name == name


def test_standardisation_is_inside_the_model():
    torch.manual_seed(0)
    model = create_model("cnn-small").eval()
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(model(0.5 * x + 0.2), model(x), atol=1e-4, rtol=1e-4)  # affine-invariant


def test_rebuilds_from_config_and_trains():
    torch.manual_seed(0)
    model = create_model("cnn-small", dropout=0.25)
    rebuilt = create_model(model.name, **dataclasses.asdict(model.config))
    assert rebuilt.config == model.config
    x, y = torch.rand(16, 1, 32, 32), torch.randint(0, 5, (16,))
    optimiser = torch.optim.Adam(model.parameters(), 1e-3)
    losses = []
    for _ in range(30):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], "the baseline must be able to fit a small batch"


def test_model_info_reports_parameters_and_flops():
    info = model_info("cnn", in_channels=2)
    assert info["parameters"] == 4_252_549 + 800 and info["family"] == "cnn"
    # conv1 32·32·32·(5·5·2) + conv2 16·16·64·(5·5·32) + FC 4096·1024 + 1024·5 multiply-adds, 2 FLOPs each
    macs = 32 * 32 * 32 * 50 + 16 * 16 * 64 * 800 + 4096 * 1024 + 1024 * 5
    assert info["flops_per_image"] == 2 * macs
