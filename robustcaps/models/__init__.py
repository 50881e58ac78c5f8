"""Model registry: `create_model("capsnet-small")` works the same in every command (timm style).

Every model takes [0, 1] images (N, C, 32, 32), C = 1 or 2, standardises them itself, and returns
(N, 5) from `forward(x, output="logits")`; `model.family`, `model.name` and `model.config` (a frozen
dataclass) describe it, and `create_model(model.name, **dataclasses.asdict(model.config))` rebuilds it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from robustcaps.errors import RobustcapsError
from robustcaps.models.capsnet import CapsNet, CapsNetConfig
from robustcaps.models.cnn import CNN, CNNConfig
from robustcaps.models.dynamic import DynamicCapsNet, DynamicCapsNetConfig
from robustcaps.models.selfrouting import SelfRoutingCapsNet, SelfRoutingCapsNetConfig

__all__ = [
    "CNN",
    "CNNConfig",
    "CapsNet",
    "CapsNetConfig",
    "DynamicCapsNet",
    "DynamicCapsNetConfig",
    "SelfRoutingCapsNet",
    "SelfRoutingCapsNetConfig",
    "create_model",
    "has_vote_head",
    "list_models",
    "model_config",
    "model_info",
    "routing_as",
]

# name → (model class, preset configuration); the presets are each paper's smallNORB sizes (EM: HSF18 §5;
# dynamic routing: Sabour 2017 §7; self-routing: Hahn 2019's released SmallNet), "-small" a CPU-sized one.
REGISTRY: dict[str, tuple[type[nn.Module], Any]] = {
    "capsnet": (CapsNet, CapsNetConfig()),  # A=B=C=D=32: 316,394 parameters ("310K")
    "capsnet-small": (
        CapsNet,
        CapsNetConfig(conv1_channels=64, primary_types=8, convcaps1_types=16, convcaps2_types=16),
    ),  # 67,154 ("68K")
    "cnn": (CNN, CNNConfig()),  # 4,252,549 ("4.2M")
    "cnn-small": (CNN, CNNConfig(conv1_channels=8, conv2_channels=16, hidden=64)),  # 69,349: ~capsnet-small
    "dynamic-capsnet": (DynamicCapsNet, DynamicCapsNetConfig()),  # 6,640,384
    "dynamic-capsnet-small": (DynamicCapsNet, DynamicCapsNetConfig(conv1_channels=64, primary_types=8)),
    "sr-capsnet": (SelfRoutingCapsNet, SelfRoutingCapsNetConfig()),  # 2,432,864
    "sr-capsnet-small": (SelfRoutingCapsNet, SelfRoutingCapsNetConfig(conv1_channels=64, capsule_types=8)),
}
# the paper each family follows, for `robustcaps models` and the reports
PAPERS = {
    "capsnet": "Hinton, Sabour, Frosst, ICLR 2018 (EM routing)",
    "cnn": "HSF18 §5 baseline CNN",
    "dynamic": "Sabour, Frosst, Hinton, NeurIPS 2017 (dynamic routing)",
    "self-routing": "Hahn, Pyeon, Kim, NeurIPS 2019 (self-routing)",
}


@contextlib.contextmanager
def routing_as(model: nn.Module, routing: str):
    """Inside the block a capsule network computes routing the `routing` way ("plain" or "fused"; see
    CapsNet.use_routing); afterwards as before. Other models are left alone."""
    if not isinstance(model, CapsNet):
        yield model
        return
    before = model.routing
    model.use_routing(routing)
    try:
        yield model
    finally:
        model.use_routing(before)


def has_vote_head(model: nn.Module) -> bool:
    """Whether the model has a routing-bypass head, `output="vote_logits"` (EM and dynamic routing; the
    self-routing module docstring says why it has none)."""
    return bool(getattr(model, "vote_head", False))


def list_models() -> list[str]:
    return list(REGISTRY)


def model_config(name: str, in_channels: int = 1, **overrides: Any) -> Any:
    """The configuration of the preset `name` with `in_channels` input channels (1: one camera, 2: the
    stereo pair) and any fields overridden; raises RobustcapsError for an unknown name or setting."""
    if name not in REGISTRY:
        raise RobustcapsError(f"unknown model {name!r} (--model): choose one of {', '.join(REGISTRY)}")
    if in_channels not in (1, 2):
        raise RobustcapsError(f"--in-channels must be 1 (one camera) or 2 (stereo pair), got {in_channels}")
    preset = REGISTRY[name][1]
    fields = {field.name for field in dataclasses.fields(preset)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise RobustcapsError(
            f"model {name!r} has no setting {', '.join(unknown)}; its settings: {', '.join(sorted(fields))}"
        )
    try:
        config = dataclasses.replace(preset, in_channels=in_channels, **overrides)
    except RobustcapsError as error:
        raise RobustcapsError(f"model {name!r}: {error}") from None
    _check(name, config)
    return config


def create_model(name: str, in_channels: int = 1, **overrides: Any) -> nn.Module:
    """The preset `name` built with `model_config(name, in_channels, **overrides)`."""
    config = model_config(name, in_channels, **overrides)  # checks the name first
    return REGISTRY[name][0](config, name=name)


def _check(name: str, config: Any) -> None:
    """The settings no config checks itself (CapsNetConfig checks its own in __post_init__)."""
    if isinstance(config, DynamicCapsNetConfig) and config.iterations < 1:
        raise RobustcapsError(f"model {name!r}: iterations must be at least 1, got {config.iterations}")
    if config.n_classes < 2:
        raise RobustcapsError(f"model {name!r}: n_classes must be at least 2, got {config.n_classes}")


def describe(config: Any) -> str:
    """The configuration in one line, in the paper's terms."""
    if isinstance(config, CapsNetConfig):
        mass = "raw" if config.data_mass is None else f"{config.data_mass:g}"
        temperature = "" if config.estep_temperature == 1 else f" at T={config.estep_temperature:g}"
        departures = ", official init" if config.init == "official" else ""
        departures += ", BatchNorm after Conv1" if config.conv1_batchnorm else ""
        return (
            f"A={config.conv1_channels} B={config.primary_types} C={config.convcaps1_types} "
            f"D={config.convcaps2_types}, {config.iterations} iters, E-step {config.estep}{temperature}, "
            f"data mass {mass}{departures}"
        )
    if isinstance(config, DynamicCapsNetConfig):
        decoder = ", decoder" if config.decoder else ", no decoder"
        return (
            f"conv {config.conv1_channels} 9x9, {config.primary_types} primary types {config.primary_dim}D, "
            f"class caps {config.class_dim}D, {config.iterations} iters{decoder}"
        )
    if isinstance(config, SelfRoutingCapsNetConfig):
        return (
            f"conv {config.conv1_channels} 7x7, {config.capsule_types} types {config.pose_dim}D per layer, "
            "one SR ConvCaps + SR ClassCaps"
        )
    widths = f"conv {config.conv1_channels}-{config.conv2_channels}, FC {config.hidden}"
    return f"{widths}, dropout {config.dropout:g}"


def model_info(name: str, in_channels: int = 1) -> dict[str, Any]:
    """Parameters, configuration and FLOPs per image of a registered model.

    FLOPs are counted by torch.utils.flop_counter.FlopCounterMode on one image (2 per multiply-add of
    convolutions and matrix products, routing's included; element-wise work is not counted). These are
    the FLOPs executed: capsnet casts its votes as (I₄ ⊗ W) products, four times the multiply-adds of the
    4×4 matrix products (memory, not arithmetic, bounds that step; see capsnet.cast_votes).
    """
    model = create_model(name, in_channels).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.rand(1, in_channels, 32, 32))
    return {
        "name": name,
        "family": model.family,
        "paper": PAPERS[model.family],
        "in_channels": in_channels,
        "parameters": sum(p.numel() for p in model.parameters()),
        "configuration": describe(model.config),
        "flops_per_image": counter.get_total_flops(),
    }
