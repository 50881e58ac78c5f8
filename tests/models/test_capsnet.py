"""The capsule network: the paper's sizes, the model contract, the initialisation, the numerics."""

from __future__ import annotations

import dataclasses
import platform
import sys

import pytest
import torch
import torch.nn.functional as F

from robustcaps.errors import RobustcapsError
from robustcaps.models import create_model, describe, list_models, model_info
from robustcaps.models.capsnet import CapsNet, receptive_field_centres
from robustcaps.models.common import Standardize, keep_freed_cpu_memory
from robustcaps.report.tables import family_of


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return create_model("capsnet-small").eval()


def images(n=4, channels=1, seed=1):
    return torch.rand(n, channels, 32, 32, generator=torch.Generator().manual_seed(seed))


def parameters(model):
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_every_family_each_with_its_paper():
    assert list_models() == [
        "capsnet",
        "capsnet-small",
        "cnn",
        "cnn-small",
        "dynamic-capsnet",
        "dynamic-capsnet-small",
        "sr-capsnet",
        "sr-capsnet-small",
    ]
    families = {name: model_info(name)["family"] for name in list_models()}
    assert set(families.values()) == {"capsnet", "cnn", "dynamic", "self-routing"}
    assert all(family_of(name) == family for name, family in families.items())  # the reports' reading
    assert "Sabour" in model_info("dynamic-capsnet")["paper"] and "Hahn" in model_info("sr-capsnet")["paper"]


def test_paper_parameter_counts():
    # HSF18: A=B=C=D=32 → "310K"; A=64, B=8, C=D=16 → "68K" (exact counts in docs/PAPER.md)
    assert parameters(create_model("capsnet")) == 316_394
    assert parameters(create_model("capsnet-small")) == 67_154
    assert parameters(create_model("capsnet-small", in_channels=2)) == 67_154 + 25 * 64  # Conv1 only


def test_outputs_have_the_documented_ranges_and_relations(small):
    x = images()
    logits, activations = small(x), small(x, output="activations")
    vote_logits = small(x, output="vote_logits")
    for out in (logits, activations, vote_logits):
        assert out.shape == (4, 5) and torch.isfinite(out).all()
    assert ((activations > 0) & (activations < 1)).all()
    torch.testing.assert_close(torch.sigmoid(logits), activations)
    assert not torch.allclose(vote_logits, logits), "vote logits bypass routing"
    torch.testing.assert_close(small(x), logits, rtol=0, atol=0)  # deterministic: attacks rely on it
    with pytest.raises(ValueError, match="output"):
        small(x, output="probabilities")
    with pytest.raises(ValueError, match="32, 32"):
        small(torch.rand(2, 1, 48, 48))


def test_half_of_the_capsules_in_each_layer_are_active_at_the_start(small):
    x = images(8, seed=7)  # not the calibration images
    primary = small.primary_caps(F.relu(small.conv1(small.standardize(x))))[..., -1]
    means = [primary.mean().item()] + [layer.activations.mean().item() for layer in small.routed(x)]
    assert all(0.35 < m < 0.65 for m in means), means
    first_layer = small.routed(x)[0].activations
    assert first_layer.std() > 1e-3, "activations must depend on the input, not sit at one value"


def test_official_initialisation_has_the_released_scales_and_still_starts_half_active():
    torch.manual_seed(0)
    model = create_model("capsnet", init="official")
    assert torch.all(model.conv1.bias == 0.1) and model.conv1.weight.abs().max() <= 0.1
    assert model.conv1.weight.std().item() == pytest.approx(0.05 * 0.88, rel=0.05)  # truncated at 2σ
    weight = model.primary_caps.conv.weight.view(32, 17, -1)
    bias = model.primary_caps.conv.bias.view(32, 17)
    assert weight[:, :16].std().item() == pytest.approx(0.5, rel=0.05)
    assert weight[:, 16].std().item() == pytest.approx(3.0, rel=0.1) and torch.all(bias[:, 16] == -1)
    assert model.conv_caps1.weight.std().item() == pytest.approx(0.3, rel=0.05)
    assert model.class_caps.weight.std().item() == pytest.approx(0.01, rel=0.05)
    with torch.no_grad():
        routed = model.routed(images())
    for layer in routed:  # calibrate_half_active runs after the official draw
        assert torch.isfinite(layer.activations).all()
        assert layer.activations.median().item() == pytest.approx(0.5, abs=0.1)
    assert "official init" in describe(model.config) and "official" not in describe(
        create_model("cnn").config
    )


def test_batchnorm_after_conv1_is_an_option_that_old_weights_do_not_need():
    plain, normed = create_model("capsnet-small"), create_model("capsnet-small", conv1_batchnorm=True)
    assert not any("conv1_norm" in key for key in plain.state_dict())
    assert {"conv1_norm.weight", "conv1_norm.running_mean"} <= set(normed.state_dict())
    features = normed.train().features(images(16))
    pre_relu = normed.conv1_norm(normed.conv1(normed.standardize(images(16))))
    assert pre_relu.mean(dim=(0, 2, 3)).abs().max() < 1e-5 and torch.equal(features, F.relu(pre_relu))
    with pytest.raises(RobustcapsError, match="init 'xavier': choose one of default, official"):
        create_model("capsnet-small", init="xavier")


def test_calibrating_beta_a_keeps_agreement_rewarded_and_the_class_activations_apart():
    """calibrate="beta_a": β_u stays 0, so the cost per unit of mass is Σ log σ < 0 (more agreeing mass,
    higher activation), and half the capsules still start active; with β_u calibrated instead, the class
    activations start within ±0.005 of each other (measured: std 0.004 vs 0.09 on capsnet-small)."""
    torch.manual_seed(0)
    by_beta_a = create_model("capsnet-small", calibrate="beta_a")
    torch.manual_seed(0)
    by_beta_u = create_model("capsnet-small")
    x = images(8, seed=7)
    with torch.no_grad():
        layers_a, layers_u = by_beta_a.routed(x), by_beta_u.routed(x)
    layers = (by_beta_a.conv_caps1, by_beta_a.conv_caps2, by_beta_a.class_caps)
    for layer, routed in zip(layers, layers_a, strict=True):
        assert (layer.beta_u == 0).all() and (layer.beta_a != 0).all()
        assert (0.5 * routed.variances.log().sum(-1) < 0).all(), "cost per unit of mass is negative"
        assert 0.3 < routed.activations.median() < 0.7
    assert layers_a[-1].activations.std() > 5 * layers_u[-1].activations.std()
    with pytest.raises(RobustcapsError, match="calibrate"):
        create_model("capsnet-small", calibrate="beta")


@pytest.mark.parametrize("estep", ["cross", "position"])
def test_gradients_are_finite_and_nonzero_for_every_parameter(estep):
    torch.manual_seed(0)
    model = create_model("capsnet-small", estep=estep)
    x = images(2).requires_grad_()
    model(x).sum().backward()
    for name, p in model.named_parameters():
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flat_and_black_images_stay_finite(dtype):
    torch.manual_seed(0)
    model = create_model("capsnet-small").to(dtype)
    x = torch.cat([torch.zeros(1, 1, 32, 32), torch.full((1, 1, 32, 32), 0.5), images(1)]).to(dtype)
    x.requires_grad_()
    for output in ("logits", "activations", "vote_logits"):
        out = model(x, output=output)
        assert out.dtype == dtype and torch.isfinite(out).all()
    model(x).float().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_registry_rebuilds_a_model_from_its_config(small):
    config = dataclasses.asdict(small.config)
    rebuilt = create_model(small.name, **config)
    assert rebuilt.config == small.config and rebuilt.family == "capsnet"
    rebuilt.load_state_dict(small.state_dict())
    x = images()
    torch.testing.assert_close(rebuilt.eval()(x), small(x))
    position = create_model("capsnet-small", estep="position", data_mass=None)
    assert position.config.estep == "position" and position.config.data_mass is None


def test_bad_names_and_settings_name_the_option():
    with pytest.raises(RobustcapsError, match="--model"):
        create_model("capsule")
    with pytest.raises(RobustcapsError, match="routing_iters"):
        create_model("capsnet-small", routing_iters=2)
    with pytest.raises(RobustcapsError, match="estep"):
        create_model("capsnet-small", estep="global")
    with pytest.raises(RobustcapsError, match="estep_temperature must be positive"):
        create_model("capsnet-small", estep_temperature=0.0)
    with pytest.raises(RobustcapsError, match="--in-channels"):
        create_model("capsnet-small", in_channels=3)


def test_stereo_input_is_accepted():
    model = create_model("capsnet-small", in_channels=2)
    assert model(images(2, channels=2)).shape == (2, 5)


def test_coordinate_addition_writes_the_scaled_receptive_field_centre():
    # 32 → Conv1 5/2 → 14 → ConvCaps1 3/2 → 6 → ConvCaps2 3/1 → 4: row o is centred on pixel 4o + 8
    centres = receptive_field_centres([(5, 2), (1, 1), (3, 2), (3, 1)], 4)
    torch.testing.assert_close(centres, (4 * torch.arange(4) + 8.5) / 32)
    model = create_model("capsnet-small")
    offsets = model.class_caps.offsets[:, 0]  # (positions, 16), positions row-major
    assert offsets[:, [3, 7]].tolist() == [
        [centres[r].item(), centres[c].item()] for r in range(4) for c in range(4)
    ]
    assert offsets[:, [i for i in range(16) if i not in (3, 7)]].abs().sum() == 0
    plain = create_model("capsnet-small", coordinate_addition=False)
    assert plain.class_caps.offsets.abs().sum() == 0


def test_standardize_gives_zero_mean_unit_variance_per_image():
    x = torch.rand(5, 2, 32, 32) * torch.rand(5, 1, 1, 1) + torch.rand(5, 1, 1, 1)
    y = Standardize()(x)
    torch.testing.assert_close(y.mean(dim=(1, 2, 3)), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(dim=(1, 2, 3), correction=0), torch.ones(5), atol=1e-3, rtol=0)
    assert torch.isfinite(Standardize()(torch.zeros(1, 1, 32, 32))).all()


def test_model_attributes_follow_the_contract(small):
    assert isinstance(small, CapsNet) and small.family == "capsnet" and small.name == "capsnet-small"
    assert dataclasses.is_dataclass(small.config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        small.config.iterations = 2


def test_autocast_bfloat16_routes_in_float32_and_stays_finite(small):
    x = images(2).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = small(x)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits.float(), small(x).detach(), atol=0.05, rtol=0.05)
    logits.float().sum().backward()
    assert torch.isfinite(x.grad).all()


def test_keep_freed_cpu_memory_takes_on_glibc_linux():
    taken = keep_freed_cpu_memory()
    assert isinstance(taken, bool)
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert taken
