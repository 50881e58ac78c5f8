"""TrainConfig: everything that defines a training run, and the recipe's pieces that follow from it alone.

HSF18 §5: Adam, learning rate 3e-3 decayed ×0.96 every 20k steps (continuously, lr·0.96^(step/20000)),
weight decay 2e-7, batch 64. We add a linear warm-up over the first `warmup_steps` (not in the paper):
Adam moves every weight by about ±lr on its first steps whatever the gradient's size, and at lr 3e-3
that killed every ReLU of the baseline CNN's second convolution within a few steps on the full rendered
split (GPU run, seed 0: loss ln 5 for 1000 steps; see `lr_factor`).

Validation uses held-out *training* data only (by default whole held-out instances, `val`) and picks
`best.pt`; the matched protocol of HSF18
Table 2 (`target_familiar_error`) stops when the error on familiar viewpoints reaches a target. No
choice is ever made on novel viewpoints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
from dataclasses import MISSING, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch

from robustcaps.choices import check_fields
from robustcaps.data.dataset import Split, Stereo, Validation
from robustcaps.data.standin.render import default_data_root
from robustcaps.errors import RobustcapsError
from robustcaps.io import read_json
from robustcaps.models import REGISTRY, create_model, list_models, model_config
from robustcaps.models.capsnet import Recompute, Routing
from robustcaps.models.common import CompileMode
from robustcaps.training.losses import MARGIN_STEP_SCALE, Loss


class LrSchedule(StrEnum):
    EXPONENTIAL = "exponential"  # lr·lr_decay^(step/lr_decay_steps), HSF18
    COSINE = "cosine"  # from lr down to lr·lr_min_factor over the run's steps (not in the paper)


class Device(StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class Amp(StrEnum):
    NONE = "none"
    BF16 = "bf16"


class Speed(StrEnum):
    """How a run computes the same function: "auto" picks one of the named paths on the device at hand
    when the run starts (resolve_speed); "custom" leaves the four settings of SPEED_SETTINGS as given."""

    AUTO = "auto"
    REFERENCE = "reference"
    COMPILED = "compiled"
    TRITON = "triton"
    CUSTOM = "custom"


class Recipe(StrEnum):
    """How a capsule network routes while it learns. "converged": 2 EM iterations, E-step temperature 0.25
    and β_a calibration, the recipe that converged on the CPU (docs/LEARNING.md) and the one every CPU preset
    uses; "paper": HSF18's own (3 iterations, T = 1, β_u calibration). Model options given by hand win."""

    CONVERGED = "converged"
    PAPER = "paper"


# model settings per recipe and model family (families not named route as their own paper says)
RECIPES = {
    Recipe.CONVERGED: {"capsnet": {"calibrate": "beta_a", "iterations": 2, "estep_temperature": 0.25}},
    Recipe.PAPER: {},
}

# The four settings each named speed stands for (benchmarks/README.md has the speeds).
SPEED_SETTINGS = {
    Speed.REFERENCE: dict(compile=False, compile_mode="default", routing="plain", recompute="all"),
    Speed.COMPILED: dict(compile=True, compile_mode="default", routing="fused", recompute="none"),
    Speed.TRITON: dict(compile=True, compile_mode="reduce-overhead", routing="triton", recompute="none"),
}
# Below this many training images compiling costs more than it saves on a CPU (benchmarks/README.md).
AUTO_COMPILE_IMAGES = 5_000
WARMUP_STEPS = 100


def setting(
    default: Any = MISSING,
    *,
    help: str = "",
    shown: bool = False,
    resumable: bool = False,
    computation: bool = False,
    named_if_changed: bool = False,
    legacy: Any = MISSING,
    check: tuple | None = None,
    kind: type | None = None,
    cli_default: Any = MISSING,
    factory: Any = MISSING,
) -> Any:
    """A TrainConfig field and everything the rest of the code needs to know about it, in one place.

    help/shown: its `train` option's help and whether `train --help` lists it (every field is an option,
    and `--set KEY=VALUE` sets any); resumable: a resumed run may change it; computation: it changes how
    the same function is computed (rounding only), so it is not part of the run's identity (run_digest);
    named_if_changed: part of the identity only where it differs from its default (a setting added after
    runs were named: at its default, existing run folders keep their names and resume); legacy: its value
    for a config.json written before it existed; check: (predicate, what is allowed);
    kind: a StrEnum of allowed values, or the option's type where the default is None; cli_default: the
    option's default where it differs from the field's.
    """
    metadata = {
        "help": help,
        "shown": shown,
        "resumable": resumable,
        "computation": computation,
        "named_if_changed": named_if_changed,
        "check": check,
        "cli_default": cli_default,
    }
    if legacy is not MISSING:
        metadata["legacy"] = legacy
    if isinstance(kind, type) and issubclass(kind, StrEnum):
        metadata["choice"] = kind
    elif kind is not None:
        metadata["type"] = kind
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


POSITIVE = (lambda v: v > 0, "a positive number")
NON_NEGATIVE = (lambda v: v >= 0, "0 or more")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; config.json holds it and rebuilds the run alone.

    Adding a setting means adding a field here: the `train` option, `--set`, config.json, the run folder's
    digest, the resume rules and the checks all read it from the field and its `setting` metadata.
    """

    model: str = setting("capsnet-small", shown=True, help="Registered model (robustcaps models).")
    model_overrides: dict[str, Any] = setting(factory=dict, help="Model config changes (--model-option).")
    recipe: Recipe = setting(
        Recipe.CONVERGED,
        shown=True,
        kind=Recipe,
        legacy="paper",
        help="Capsule routing while learning: converged (2 EM iterations, E-step T 0.25, β_a calibration; "
        "what converged on the CPU) or paper (HSF18: 3 iterations, T 1). --model-option wins.",
    )
    data: str | None = setting(
        None,
        shown=True,
        resumable=True,
        computation=True,
        kind=str,
        help="smallNORB-format directory [rendered stand-in].",
    )
    data_size: str = setting("small", help="Stand-in size when --data is not given.")
    split: Split = setting(Split.FULL, shown=True, kind=Split)
    stereo: Stereo = setting(
        Stereo.CHANNELS,
        kind=Stereo,
        help="Stereo pair as 2 channels (official code) or each camera as its own sample.",
    )
    val: Validation = setting(
        Validation.INSTANCES,
        shown=True,
        kind=Validation,
        legacy="pairs",
        help="Validation data, held out from training: one whole instance per category (measures "
        "generalisation to unseen objects, like the test set) or random pairs (val_fraction; their "
        "instances and viewpoints stay in training, so it reads lower than test error), or none (every "
        "training pair trains and best.pt is the last epoch: for a run whose length another run chose).",
    )
    val_fraction: float = setting(
        0.1, check=(lambda v: 0 < v < 1, "a fraction in (0, 1)"), help="Pairs held out with --val pairs."
    )
    max_per_part: int | None = setting(
        None, kind=int, help="Keep at most this many images per part (quick runs)."
    )
    epochs: int = setting(20, shown=True, resumable=True, check=POSITIVE)
    steps: int | None = setting(
        None,
        shown=True,
        resumable=True,
        kind=int,
        check=(lambda v: v is None or v > 0, "a positive number"),
        help="Train this many steps (replaces --epochs).",
    )
    batch_size: int = setting(64, shown=True, check=POSITIVE, help="Global batch (all processes).")
    lr: float = setting(3e-3, shown=True, check=POSITIVE)
    lr_decay: float = setting(0.96, help="lr ×lr_decay per lr_decay_steps (exponential schedule).")
    lr_decay_steps: float = setting(20_000.0, help="lr ×lr_decay per this many steps.")
    lr_schedule: LrSchedule = setting(
        LrSchedule.EXPONENTIAL,
        kind=LrSchedule,
        help="exponential: lr ×lr_decay per lr_decay_steps (HSF18); cosine: down to lr × lr_min_factor "
        "over the run.",
    )
    lr_min_factor: float = setting(
        0.05,
        check=(lambda v: 0 <= v <= 1, "a factor in [0, 1]"),
        help="With the cosine schedule: the final lr as a fraction of lr.",
    )
    warmup_steps: int = setting(
        WARMUP_STEPS, legacy=0, check=NON_NEGATIVE, help="Linear lr warm-up, not in the paper (0: none)."
    )
    weight_decay: float = setting(2e-7)
    margin_step_scale: float = setting(
        MARGIN_STEP_SCALE,
        check=POSITIVE,
        help="Spread-loss margin schedule: m = 0.2 + 0.79·σ(min(10, step/scale − 4)).",
    )
    loss: Loss = setting(
        Loss.AUTO,
        kind=Loss,
        help="auto: each family's paper (EM: spread; dynamic routing: margin; self-routing, CNN: "
        "cross-entropy).",
    )
    calibrate_images: int = setting(
        0,
        check=NON_NEGATIVE,
        help="Capsules: start half the capsules active as measured on this many training images "
        "(0: on the noise the model is built with).",
    )
    seed: int = setting(0, shown=True)
    device: Device = setting(Device.AUTO, shown=True, resumable=True, computation=True, kind=Device)
    speed: Speed = setting(
        Speed.CUSTOM,
        shown=True,
        resumable=True,
        computation=True,
        kind=Speed,
        cli_default="auto",
        help="How the same function is computed: auto picks the fastest path here (Triton kernels under "
        "CUDA graphs on a GPU, compiled fused routing on a CPU for runs long enough to pay for "
        "compiling); reference is plain eager; the choice is recorded in config.json.",
    )
    compile: bool = setting(False, resumable=True, computation=True, help="torch.compile the model.")
    compile_mode: CompileMode = setting(
        CompileMode.DEFAULT,
        resumable=True,
        computation=True,
        kind=CompileMode,
        help="With --compile: reduce-overhead replays each training step as CUDA graphs (GPU only).",
    )
    routing: Routing = setting(
        Routing.PLAIN,
        resumable=True,
        computation=True,
        kind=Routing,
        help="How capsule EM routing is computed in training: fused is the fast path under --compile, "
        "triton the GPU kernels (same function; evaluation uses plain, or triton when training does).",
    )
    recompute: Recompute = setting(
        Recompute.ALL,
        resumable=True,
        computation=True,
        kind=Recompute,
        help="With fused or triton routing: which routed layers recompute their routing in backward "
        "instead of keeping what it saves (all: least memory; same results).",
    )
    amp: Amp = setting(Amp.NONE, kind=Amp)
    target_familiar_error: float | None = setting(
        None,
        kind=float,
        check=(lambda v: v is None or 0 <= v <= 1, "an error rate in [0, 1]"),
        help="Stop when familiar-viewpoint error ≤ this (HSF18 T2).",
    )
    # the first step at which this run reached any familiar error is among the snapshots, so the run can
    # later be stopped where another model's familiar error is (viewpoint.reverse_match)
    familiar_snapshots: bool = setting(
        False,
        help="Keep the weights at each new lowest familiar-viewpoint error (checkpoints/familiar-step*.pt).",
    )
    # an epoch can move the familiar error by several points; checks inside it let the reverse match stop
    # this run within a point of another model's familiar error
    familiar_checks_per_epoch: int = setting(
        1,
        named_if_changed=True,
        check=POSITIVE,
        help="With familiar snapshots: familiar-error checks (and snapshots) per epoch, evenly spaced.",
    )
    checkpoint_every: int = setting(0, check=NON_NEGATIVE, help="Steps; 0: each epoch.")
    # on a 300k-step viewpoint run, evaluating 8,100 familiar images after every epoch of 7,290 training
    # images costs a capsule network as much time as the training itself
    eval_every: int = setting(
        1,
        check=POSITIVE,
        help="Epochs between validations (and familiar-error evaluations); the last epoch always validates.",
    )
    patience: int = setting(
        0,
        resumable=True,
        check=NON_NEGATIVE,
        help="Stop after this many validations without a new best val error (0: never).",
    )
    eval_batch_size: int = setting(256, resumable=True, computation=True, check=POSITIVE)

    def __post_init__(self) -> None:
        if self.model not in REGISTRY:
            raise RobustcapsError(f"--model {self.model!r}: choose one of {', '.join(list_models())}")
        check_fields(self)
        model_config(self.model, self.in_channels, **self.model_settings)  # --model-option, checked now
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            # `--set lr_decay_steps=607` parses as an int: the same run as 607.0, so the same run digest
            if spec.type == "float" and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, spec.name, float(value))
            check = spec.metadata.get("check")
            if check is not None and not check[0](getattr(self, spec.name)):
                option = "--" + spec.name.replace("_", "-")
                raise RobustcapsError(f"{option} {getattr(self, spec.name)!r}: expected {check[1]}")
        if self.val == Validation.NONE and self.patience:
            raise RobustcapsError(
                f"--set patience={self.patience}: needs validation data, and --val none has none"
            )
        if self.compile_mode != "default" and not self.compile:
            raise RobustcapsError(f"--compile-mode {self.compile_mode.value!r}: only with --compile")

    @property
    def in_channels(self) -> int:
        return 2 if self.stereo == "channels" else 1

    @property
    def family(self) -> str:
        return REGISTRY[self.model][0].family

    @property
    def model_settings(self) -> dict[str, Any]:
        """The model's config changes: the recipe's for its family, then --model-option's."""
        return RECIPES[self.recipe].get(self.family, {}) | self.model_overrides

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # enums as their plain strings

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise RobustcapsError(
                f"{source}: unknown settings {sorted(unknown)}; was it written by robustcaps?"
            )
        try:
            return cls(**(legacy_defaults(cls) | values))
        except (TypeError, ValueError) as error:
            raise RobustcapsError(f"{source}: {error}") from None
        except RobustcapsError as error:
            raise RobustcapsError(f"{source}: {error}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(read_json(path, "run config"), source=str(path))


def fields_where(flag: str, config_class: type = TrainConfig) -> frozenset[str]:
    """Names of the settings whose `setting` metadata sets `flag` (e.g. "resumable", "computation")."""
    return frozenset(f.name for f in dataclasses.fields(config_class) if f.metadata.get(flag))


def legacy_defaults(config_class: type = TrainConfig) -> dict[str, Any]:
    """What a config.json written before a setting existed trained with (e.g. no warm-up)."""
    return {f.name: f.metadata["legacy"] for f in dataclasses.fields(config_class) if "legacy" in f.metadata}


def identity(config: TrainConfig) -> dict[str, Any]:
    """What a run trains: every setting except those that only change how the same function is computed
    or where the data lives (the data's own identity is checked against metadata.json on resume), and those
    added later while they keep their default (`named_if_changed`)."""
    computation = fields_where("computation", type(config))
    later = fields_where("named_if_changed", type(config))
    defaults = {f.name: f.default for f in dataclasses.fields(config) if f.name in later}
    return {
        k: v
        for k, v in config.to_dict().items()
        if k not in computation and not (k in later and v == defaults[k])
    }


def run_digest(config: TrainConfig) -> str:
    """8 hex digits of `identity`: a changed setting gives another digest, so a run folder named by it can
    never be resumed with other settings."""
    return hashlib.sha256(json.dumps(identity(config), sort_keys=True).encode()).hexdigest()[:8]


def resolve_speed(config: TrainConfig, device_type: str, train_images: int) -> TrainConfig:
    """The config with its speed turned into the four settings it stands for; "auto" becomes the fastest
    path on this device: Triton kernels under CUDA graphs on a GPU with triton installed, the compiled
    fused path on a CPU when the run is long enough to pay for compiling, else the plain path. A CNN,
    which has no routing, always trains plain eager; the dynamic-routing and self-routing networks have
    one routing path, so "compiled" (and "triton") compiles them as they are."""
    speed = config.speed
    if speed == "custom":
        return config
    family = config.family
    long_run = (config.steps or config.epochs * max(1, train_images // config.batch_size)) * config.batch_size
    if family != "capsnet":
        if speed == "auto":
            speed = "compiled" if family != "cnn" and long_run >= AUTO_COMPILE_IMAGES else "reference"
        speed = "compiled" if speed == "triton" else speed
        settings = {**SPEED_SETTINGS[Speed.REFERENCE], "compile": speed == "compiled"}
        return dataclasses.replace(config, speed=speed, **settings)
    if speed == "auto":
        if device_type == "cuda" and importlib.util.find_spec("triton") is not None:
            speed = "triton"
        elif device_type == "cuda" or long_run >= AUTO_COMPILE_IMAGES:
            speed = "compiled"
        else:
            speed = "reference"
    settings = SPEED_SETTINGS[Speed(speed)]
    if speed == "compiled" and device_type == "cpu":  # the C++ kernel: models/routing_cpu.py
        settings = {**settings, "routing": "cpu"}
    return dataclasses.replace(config, speed=speed, **settings)


def build_model(config: TrainConfig) -> torch.nn.Module:
    """The untrained model a config describes (the same call rebuilds it in `checkpoints.load_run`)."""
    return create_model(config.model, in_channels=config.in_channels, **config.model_settings)


def load_split(config: TrainConfig):
    """The `SplitData` a config trains and validates on (rendered once into the cache when data is None)."""
    from robustcaps.data.splits import make_split  # imports torchvision: not at CLI start-up

    root = Path(config.data) if config.data is not None else default_data_root(config.data_size)
    return make_split(
        root,
        split=config.split,
        stereo=config.stereo,
        val=config.val,
        val_fraction=config.val_fraction,
        seed=config.seed,
        max_per_part=config.max_per_part,
    )


def config_json(config: TrainConfig) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"


def lr_factor(config: TrainConfig, total_steps: int):
    """lr(step) = lr · min(1, (step + 1) / warmup_steps) · schedule(step), LambdaLR's factor.

    schedule: decay^(step / decay_steps) (HSF18), or with `lr_schedule="cosine"` a half cosine from 1 at
    the end of warm-up down to `lr_min_factor` at `total_steps`.

    Why the warm-up: Adam's update m̂/(√v̂ + ε) is about ±1 per weight on the first steps, so each weight
    of conv2 (init bound 1/√800 = 0.035) moves by 3e-3 a step in the direction of the first, large
    gradients. For the CNN on the full rendered split (seed 0) the loss jumped to 3.8 after the first
    step, conv2's weights and biases were pushed negative together (its inputs are ReLU outputs, ≥ 0),
    and 63 of its 64 channels were dead by step 7 on the CPU, all 64 on the GPU: the FC layers then see
    zeros and the logits are constant (loss ln 5 for good, since dead units get no gradient).
    """
    warmup, floor = config.warmup_steps, config.lr_min_factor

    def schedule(step: int) -> float:
        if config.lr_schedule == "exponential":
            return config.lr_decay ** (step / config.lr_decay_steps)
        progress = min(1.0, max(0, step - warmup) / max(1, total_steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return lambda step: min(1.0, (step + 1) / warmup if warmup else 1.0) * schedule(step)
