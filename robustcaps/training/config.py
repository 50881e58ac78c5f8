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
import importlib.util
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from robustcaps.data.dataset import SPLITS, STEREO, VALIDATIONS
from robustcaps.data.standin.render import default_data_root
from robustcaps.errors import RobustcapsError
from robustcaps.io import read_json
from robustcaps.models import REGISTRY, create_model, list_models
from robustcaps.models.capsnet import RECOMPUTE, ROUTINGS
from robustcaps.models.common import COMPILE_MODES
from robustcaps.training import losses

LR_SCHEDULES = ("exponential", "cosine")
DEVICES = ("auto", "cpu", "cuda")
AMP = ("none", "bf16")
# Options a resumed run may change: how long to train, where, and where the data lives (metadata.json
# checks that it is the same data); anything else would not be the same run.
# `routing`, `recompute` and `compile` change how the same function is computed (rounding only), not what
# is trained.
RESUMABLE_CHANGES = frozenset(
    "epochs steps patience device speed compile compile_mode routing recompute eval_batch_size data".split()
)
# How a run computes the same function (benchmarks/README.md has the speeds): the four settings each speed
# stands for. "auto" picks one on the device at hand when the run starts (resolve_speed); "custom" leaves
# the four settings as given one by one.
SPEED_SETTINGS = {
    "reference": dict(compile=False, compile_mode="default", routing="plain", recompute="all"),
    "compiled": dict(compile=True, compile_mode="default", routing="fused", recompute="none"),
    "triton": dict(compile=True, compile_mode="reduce-overhead", routing="triton", recompute="none"),
}
SPEEDS = ("auto", *SPEED_SETTINGS, "custom")
# Compiling capsnet-small takes about 45 s on 2 CPU cores and then trains about 2× faster than the plain
# path: below this many training images the compile does not pay for itself.
AUTO_COMPILE_IMAGES = 5_000
WARMUP_STEPS = 100
# A config.json written before a setting existed trained without it: loading one must rebuild that run
# (no warm-up; validation on random pairs).
LEGACY_DEFAULTS = {"warmup_steps": 0, "val": "pairs"}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; config.json holds it and rebuilds the run alone."""

    model: str = "capsnet-small"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    data: str | None = None  # a smallNORB-format directory; None renders the stand-in (data_size)
    data_size: str = "small"
    split: str = "full"
    stereo: str = "channels"
    val: str = "instances"  # "instances": one whole training instance per category; "pairs": val_fraction
    val_fraction: float = 0.1
    max_per_part: int | None = None
    epochs: int = 20
    steps: int | None = None  # when given, replaces epochs
    batch_size: int = 64
    lr: float = 3e-3
    lr_decay: float = 0.96
    lr_decay_steps: float = 20_000.0
    # "exponential": lr·lr_decay^(step/lr_decay_steps) (HSF18); "cosine": from lr down to lr·lr_min_factor
    # over the run's steps (not in the paper)
    lr_schedule: str = "exponential"
    lr_min_factor: float = 0.05
    warmup_steps: int = WARMUP_STEPS  # lr rises linearly to `lr` over these steps; 0: none (the paper)
    weight_decay: float = 2e-7
    margin_step_scale: float = losses.MARGIN_STEP_SCALE
    loss: str = "auto"
    # capsules: re-centre β (CapsNet.calibrate_half_active) on this many centre-cropped training images
    # instead of the noise the model is built with; 0 keeps the noise calibration
    calibrate_images: int = 0
    seed: int = 0
    device: str = "auto"
    # one of SPEEDS: which of the fast paths below the run takes ("custom": the four settings as given)
    speed: str = "custom"
    compile: bool = False
    compile_mode: str = "default"  # with `compile`: one of COMPILE_MODES
    # how a capsule network's EM routing is computed while training: "fused" (models/routing_fused.py) is
    # a fast path under --compile, "triton" (models/routing_triton.py) the GPU kernels, the
    # fastest on an H100 (with recompute none and compile mode reduce-overhead); evaluation computes it
    # the plain way (same function), or with the kernels when training does
    routing: str = "plain"
    # with fused or triton routing: which routed layers recompute their routing in backward
    # (CapsNet.use_recompute); "none" with triton and CUDA graphs is the fastest measured
    # (benchmarks/README.md)
    recompute: str = "all"
    amp: str = "none"
    target_familiar_error: float | None = None
    # keep the weights at each new lowest familiar-viewpoint error (checkpoints/familiar-step*.pt): the first
    # step at which this run reached any familiar error is among them, so the run can later be stopped where
    # another model's familiar error is (viewpoint.reverse_match)
    familiar_snapshots: bool = False
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints; 0: at the end of each epoch only
    # validate (and, with a target or snapshots, evaluate familiar error) at the end of every N-th epoch and
    # of the last one: on a 300k-step viewpoint run, evaluating 8,100 familiar images after every epoch of
    # 7,290 training images costs a capsule network as much time as the training itself
    eval_every: int = 1
    # stop once this many validations in a row have not lowered the best val error (a plateau); 0: never
    patience: int = 0
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        checks = {  # option: (value, allowed?, what is allowed)
            "--split": (self.split, self.split in SPLITS, f"one of {SPLITS}"),
            "--stereo": (self.stereo, self.stereo in STEREO, f"one of {STEREO}"),
            "--val": (self.val, self.val in VALIDATIONS, f"one of {VALIDATIONS}"),
            "--lr-schedule": (self.lr_schedule, self.lr_schedule in LR_SCHEDULES, f"one of {LR_SCHEDULES}"),
            "--lr-min-factor": (self.lr_min_factor, 0 <= self.lr_min_factor <= 1, "a factor in [0, 1]"),
            "--calibrate-images": (self.calibrate_images, self.calibrate_images >= 0, "0 or more images"),
            "--device": (self.device, self.device in DEVICES, f"one of {DEVICES}"),
            "--speed": (self.speed, self.speed in SPEEDS, f"one of {SPEEDS}"),
            "--amp": (self.amp, self.amp in AMP, f"one of {AMP}"),
            "--compile-mode": (
                self.compile_mode,
                self.compile_mode in COMPILE_MODES and (self.compile or self.compile_mode == "default"),
                f"one of {COMPILE_MODES}, and a mode other than default only with --compile",
            ),
            "--routing": (self.routing, self.routing in ROUTINGS, f"one of {ROUTINGS}"),
            "--recompute": (self.recompute, self.recompute in RECOMPUTE, f"one of {RECOMPUTE}"),
            "--loss": (self.loss, self.loss in losses.LOSSES, f"one of {losses.LOSSES}"),
            "--batch-size": (self.batch_size, self.batch_size > 0, "a positive number"),
            "--lr": (self.lr, self.lr > 0, "a positive number"),
            "--warmup-steps": (self.warmup_steps, self.warmup_steps >= 0, "0 or more steps"),
            "--val-fraction": (self.val_fraction, 0 < self.val_fraction < 1, "a fraction in (0, 1)"),
            "--checkpoint-every": (self.checkpoint_every, self.checkpoint_every >= 0, "0 or more steps"),
            "--eval-every": (self.eval_every, self.eval_every >= 1, "1 or more epochs"),
            "--patience": (self.patience, self.patience >= 0, "0 or more validations"),
            "--margin-step-scale": (self.margin_step_scale, self.margin_step_scale > 0, "a positive number"),
            "--target-familiar-error": (
                self.target_familiar_error,
                self.target_familiar_error is None or 0 <= self.target_familiar_error <= 1,
                "an error rate in [0, 1]",
            ),
        }
        for option, (value, ok, allowed) in checks.items():
            if not ok:
                raise RobustcapsError(f"{option} {value!r}: expected {allowed}")
        if self.epochs <= 0 or (self.steps is not None and self.steps <= 0):
            raise RobustcapsError("--epochs/--steps must be positive")

    @property
    def in_channels(self) -> int:
        return 2 if self.stereo == "channels" else 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise RobustcapsError(
                f"{source}: unknown settings {sorted(unknown)}; was it written by robustcaps?"
            )
        try:
            return cls(**(LEGACY_DEFAULTS | values))
        except (TypeError, ValueError) as error:
            raise RobustcapsError(f"{source}: {error}") from None
        except RobustcapsError as error:
            raise RobustcapsError(f"{source}: {error}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(read_json(path, "run config"), source=str(path))


def resolve_speed(config: TrainConfig, device_type: str, train_images: int) -> TrainConfig:
    """The config with its speed turned into the four settings it stands for; "auto" becomes the fastest
    path on this device: Triton kernels under CUDA graphs on a GPU with triton installed, the compiled
    fused path on a CPU when the run is long enough to pay for compiling, else the plain path. A CNN,
    which has no routing, always trains plain eager; the dynamic-routing and self-routing networks have
    one routing path, so "compiled" (and "triton") compiles them as they are."""
    speed = config.speed
    if speed == "custom":
        return config
    family = REGISTRY[config.model][0].family
    long_run = (config.steps or config.epochs * max(1, train_images // config.batch_size)) * config.batch_size
    if family != "capsnet":
        if speed == "auto":
            speed = "compiled" if family != "cnn" and long_run >= AUTO_COMPILE_IMAGES else "reference"
        speed = "compiled" if speed == "triton" else speed
        settings = {**SPEED_SETTINGS["reference"], "compile": speed == "compiled"}
        return dataclasses.replace(config, speed=speed, **settings)
    if speed == "auto":
        if device_type == "cuda" and importlib.util.find_spec("triton") is not None:
            speed = "triton"
        elif device_type == "cuda" or long_run >= AUTO_COMPILE_IMAGES:
            speed = "compiled"
        else:
            speed = "reference"
    settings = SPEED_SETTINGS[speed]
    if speed == "compiled" and device_type == "cpu":  # the C++ kernel: models/routing_cpu.py
        settings = {**settings, "routing": "cpu"}
    return dataclasses.replace(config, speed=speed, **settings)


def build_model(config: TrainConfig) -> torch.nn.Module:
    """The untrained model a config describes (the same call rebuilds it in `runs.load_run`)."""
    if config.model not in list_models():
        raise RobustcapsError(f"--model {config.model!r}: choose one of {', '.join(list_models())}")
    return create_model(config.model, in_channels=config.in_channels, **config.model_overrides)


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
