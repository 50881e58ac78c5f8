"""Matrix capsules with EM routing (Hinton, Sabour, Frosst, ICLR 2018, Fig. 1), for 32×32 smallNORB crops.

    x (N, C, 32, 32) in [0, 1] → Standardize → ReLU Conv1 5×5/2, A channels        → 14×14×A
      → PrimaryCaps 1×1, B types (4×4 pose linear in the features + logistic activation) → 14×14×B
      → ConvCaps1 3×3/2, C types, EM routing                                         →  6×6×C
      → ConvCaps2 3×3/1, D types, EM routing                                         →  4×4×D
      → ClassCaps, one type per class, matrices shared over positions, coordinate addition → 5

A capsule between layers is 17 numbers, its 4×4 pose flattened row-major then its activation, kept
channels-last: (N, H, W, types, 17). A vote is V_ij = M_i W_ij, the child's pose times a learned 4×4
transformation matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from robustcaps.choices import check_fields, choice
from robustcaps.errors import RobustcapsError
from robustcaps.models import routing_cpu
from robustcaps.models.common import INPUT_SIZE, Standardize, check_images
from robustcaps.models.routing import (
    Routed,
    conv_children,
    em_routing,
    inverse_temperature_schedule,
    mass_scale,
)
from robustcaps.models.routing_fused import fused_em_routing

POSE = 16  # a 4×4 pose matrix, flattened
OUTPUTS = ("logits", "activations", "vote_logits")


class EStep(StrEnum):
    CROSS = "cross"  # a child's responsibilities over every parent it feeds, at every position
    POSITION = "position"  # over the parent types at one position


class Routing(StrEnum):
    """How the same routing is computed (see CapsNetConfig.routing)."""

    PLAIN = "plain"
    FUSED = "fused"
    TRITON = "triton"
    CPU = "cpu"  # one C++/OpenMP kernel per layer and direction (routing_cpu.py)


class Recompute(StrEnum):
    """With fused or triton routing: which routed layers recompute their routing in backward."""

    ALL = "all"
    FIRST = "first"
    NONE = "none"


class Calibration(StrEnum):
    BETA_U = "beta_u"
    BETA_A = "beta_a"


class Init(StrEnum):
    DEFAULT = "default"
    OFFICIAL = "official"


@dataclass(frozen=True)
class CapsNetConfig:
    """Sizes A, B, C, D of HSF18 Fig. 1 and the routing settings; `asdict` of it rebuilds the model.

    estep: "cross" (default) normalises a child's responsibilities over every parent it feeds, at all
    neighbouring positions, as Procedure 1 reads (R_ij sums to one over Ω_{L+1}) and Gritzman 2019
    argues; "position" normalises over the parent types at one position, as most ports do.
    data_mass: Gritzman's normalisation of the data mass Σ_i R_ij a_i reaching a parent (the average
    parent receives this many units; None keeps the raw paper cost). With it one λ suits layers whose
    parents have 72 or 512 children; without it, it is a number-of-children-dependent inverse temperature.
    Default 100 (Gritzman's value): at init the raw mass leaves the ConvCaps logits almost input-independent,
    and with 100 and β_u = 0 many ConvCaps capsules would saturate, hence calibrate_half_active
    (docs/LEARNING.md).
    estep_temperature: T in every E-step, R_ij ∝ a_j p_ij^T. 1 is Procedure 1 (the model default; the
    training recipe "converged" sets 0.25). Not in the paper: T < 1 keeps the assignments softer, which
    made capsule networks learn much faster in short runs (docs/LEARNING.md).
    routing: how the same routing is computed. "plain" (the reference) casts the votes as a tensor and
    routes them (routing.em_routing); "fused" forms each vote inside the routing's sums and recomputes
    them in backward (routing_fused), written for torch.compile: same results, less memory traffic;
    "triton" computes the vote-sized sums in Triton kernels that never store a vote (routing_triton; a
    CUDA GPU, or Triton's interpreter in the tests): the fastest measured in training on an H100, with
    recompute none under CUDA graphs (benchmarks/README.md); "cpu" routes each layer in one C++/OpenMP
    kernel per direction, an image at a time with its votes in cache (routing_cpu; the CPU's fast path,
    the fused one where no C++ compiler builds it).
    """

    in_channels: int = 1
    conv1_channels: int = 32  # A
    primary_types: int = 32  # B
    convcaps1_types: int = 32  # C
    convcaps2_types: int = 32  # D
    n_classes: int = 5
    iterations: int = 3
    inverse_temperature: float = 0.01  # λ_final of the schedule
    class_inverse_temperature: float = 0.0025  # λ_final / 4 at ClassCaps, as the official code
    min_variance: float = 0.0005  # added to σ², as the official code: one child per parent has σ² = 0
    estep: EStep = choice(EStep.CROSS, "estep")
    data_mass: float | None = 100.0
    coordinate_addition: bool = True
    weight_std: float = 0.5  # ConvCaps/ClassCaps W: ‖V‖ ≈ ‖M‖ for a 4×4 product (4 · 0.5² = 1)
    # which bias starts half the capsules active (calibrate_half_active)
    calibrate: Calibration = choice(Calibration.BETA_U, "calibrate")
    estep_temperature: float = 1.0
    routing: Routing = choice(Routing.PLAIN, "routing")
    # "official": the weight initialisation of the authors' release (CapsNet.official_init) instead of
    # PyTorch's defaults for the convolutions and `weight_std` for the capsule layers
    init: Init = choice(Init.DEFAULT, "init")
    conv1_batchnorm: bool = False  # BatchNorm between Conv1 and its ReLU: not in HSF18, a labelled departure

    def __post_init__(self) -> None:
        check_fields(self, prefix="")
        for setting, ok, allowed in (
            ("iterations", self.iterations >= 1, "at least 1"),
            ("estep_temperature", self.estep_temperature > 0, "positive"),
            ("data_mass", self.data_mass is None or self.data_mass > 0, "positive or None"),
            ("n_classes", self.n_classes >= 2, "at least 2"),
        ):
            if not ok:
                raise RobustcapsError(f"{setting} must be {allowed}, got {getattr(self, setting)!r}")


class PrimaryCaps(nn.Module):
    """1×1 convolution: per position and type a 4×4 pose linear in the features and a logistic activation."""

    def __init__(self, in_channels: int, types: int) -> None:
        super().__init__()
        self.types = types
        self.conv = nn.Conv2d(in_channels, types * (POSE + 1), kernel_size=1)

    def forward(self, features: Tensor) -> Tensor:
        n, _, h, w = features.shape
        x = self.conv(features).permute(0, 2, 3, 1).reshape(n, h, w, self.types, POSE + 1)
        return torch.cat([x[..., :POSE], torch.sigmoid(x[..., POSE:])], dim=-1)  # (N, H, W, B, 17)


class ConvCaps(nn.Module):
    """Convolutional capsules: each K×K patch of `in_types` children votes for `out_types` parents through
    one 4×4 W per (kernel offset, child type, parent type), shared over positions; then EM routing."""

    def __init__(
        self, in_types: int, out_types: int, kernel: int, stride: int, in_size: int, config: CapsNetConfig
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.out_types = kernel, stride, out_types
        self.out_size = (in_size - kernel) // stride + 1
        self.weight = nn.Parameter(
            torch.randn(kernel * kernel * in_types, out_types, 4, 4) * config.weight_std
        )
        self.beta_u = nn.Parameter(torch.zeros(out_types))
        self.beta_a = nn.Parameter(torch.zeros(out_types))
        children = conv_children(in_size, kernel, stride, in_types)
        cross = children if config.estep == "cross" else None
        self.n_children = in_size * in_size * in_types
        self.register_buffer("child_index", cross, persistent=False)
        scale = mass_scale(cross, self.n_children, out_types, children.shape[1], config.data_mass)
        self.settings = routing_settings(config, scale)
        self.schedule = inverse_temperature_schedule(config.inverse_temperature, config.iterations)
        self.routing = config.routing
        self.recompute = True  # fused and triton paths: backward recomputes routing (_route_vote_free)

    def forward(self, capsules: Tensor) -> Routed:
        n, k, s = capsules.shape[0], self.kernel, self.stride
        patches = capsules.unfold(1, k, s).unfold(2, k, s)  # (N, Ho, Wo, B, 17, K, K): a view
        patches = patches.permute(0, 1, 2, 5, 6, 3, 4).reshape(n, self.out_size**2, -1, POSE + 1)
        poses, activations = patches[..., :POSE].unflatten(-1, (4, 4)), patches[..., POSE]
        inputs = (activations, self.beta_u, self.beta_a, self.schedule)
        settings = dict(self.settings, children=self.child_index, n_children=self.n_children)
        if self.routing != "plain":
            return _route_vote_free(self.routing, self.recompute, poses, self.weight, *inputs, **settings)
        return em_routing(cast_votes(poses, self.weight), *inputs, **settings)


class ClassCaps(nn.Module):
    """One capsule per class; every child of a type shares its W over positions, so coordinate addition
    writes where the child sits: the scaled (row, col) of its receptive-field centre is added to the
    first two entries of the vote's right-hand column (vote entries (0, 3) and (1, 3))."""

    def __init__(self, in_types: int, n_classes: int, centres: Tensor, config: CapsNetConfig) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.weight = nn.Parameter(torch.randn(in_types, n_classes, 4, 4) * config.weight_std)
        self.beta_u = nn.Parameter(torch.zeros(n_classes))
        self.beta_a = nn.Parameter(torch.zeros(n_classes))
        offsets = torch.zeros(len(centres) ** 2, POSE)  # one row per child position, row-major
        if config.coordinate_addition:
            offsets[:, 3] = centres.repeat_interleave(len(centres))
            offsets[:, 7] = centres.repeat(len(centres))
        self.register_buffer("offsets", offsets[:, None, :], persistent=False)  # (P, 1, 16)
        child_slots = len(centres) ** 2 * in_types
        self.settings = routing_settings(
            config, mass_scale(None, 0, n_classes, child_slots, config.data_mass)
        )
        self.schedule = inverse_temperature_schedule(config.class_inverse_temperature, config.iterations)
        self.routing = config.routing
        self.recompute = True  # fused and triton paths: backward recomputes routing (_route_vote_free)

    def forward(self, capsules: Tensor, output: str = "logits") -> Routed:
        """`output="vote_logits"` bypasses routing (Gu et al. 2021): uniform R, one M-step at the final λ."""
        n, h, w, d, _ = capsules.shape
        poses = capsules[..., :POSE].reshape(n, h * w, d, 4, 4)
        schedule = self.schedule[-1:] if output == "vote_logits" else self.schedule
        if self.routing != "plain":  # children numbered (position, type): W tiled, offsets per position
            return _route_vote_free(
                self.routing,
                self.recompute,
                poses.reshape(n, 1, h * w * d, 4, 4),
                self.weight.repeat(h * w, 1, 1, 1),
                capsules[..., POSE].reshape(n, 1, h * w * d),
                self.beta_u,
                self.beta_a,
                schedule,
                offsets=self.offsets[:, 0].repeat_interleave(d, 0),
                **self.settings,
            )
        votes = cast_votes(poses, self.weight).transpose(1, 2) + self.offsets  # (N, J, P, D, 16)
        return em_routing(
            votes.reshape(n, 1, self.n_classes, h * w * d, POSE),
            capsules[..., POSE].reshape(n, 1, h * w * d),
            self.beta_u,
            self.beta_a,
            schedule,
            **self.settings,
        )


def routing_settings(config: CapsNetConfig, scale: float) -> dict[str, float]:
    """The keyword settings every routed layer passes to its routing function (any path)."""
    return dict(
        min_variance=config.min_variance, mass_scale=scale, estep_temperature=config.estep_temperature
    )


def cast_votes(poses: Tensor, weight: Tensor) -> Tensor:
    """V_ij = M_i W_ij: poses (N, L, I, 4, 4) and W (I, J, 4, 4) → votes (N, L, J, I, 16).

    Per child slot i one matrix product (N·L × 16) @ (16 × J·16) with the weight expanded to I₄ ⊗ W_ij,
    which writes whole 16-entry votes: the copy into the routing layout then moves 64-byte rows, not
    4-float pieces. Four times the multiply-adds of the 4×4 products, but this step is memory-bound, and
    it ran faster than einsum on the CPU (benchmarks/NOTES.md).
    """
    n, positions, slots = poses.shape[:3]
    parents = weight.shape[1]
    eye = torch.eye(4, dtype=weight.dtype, device=weight.device)
    expanded = torch.einsum("rs,ijkc->irkjsc", eye, weight).reshape(slots, POSE, parents * POSE)
    rows = poses.reshape(n, positions, slots, POSE).permute(2, 0, 1, 3).reshape(slots, n * positions, POSE)
    votes = torch.bmm(rows, expanded).view(slots, n, positions, parents, POSE)
    return votes.permute(1, 2, 3, 0, 4).reshape(n, positions, parents, slots, POSE)


def triton_routing():
    """routing_triton.triton_em_routing, imported on first use: triton is optional (it has no wheels for
    macOS or Windows, nor beside CPU-only torch), so nothing else may need it."""
    try:
        from robustcaps.models.routing_triton import triton_em_routing
    except ImportError as error:
        raise RobustcapsError(
            f"routing 'triton' needs the triton package ({error}); use routing 'plain' or 'fused'"
        ) from None
    return triton_em_routing


def _route_vote_free(routing: str, recompute: bool, *args, **kwargs) -> Routed:
    """cpu_em_routing (its backward recomputes from the inputs by itself), or fused_em_routing (or
    triton_em_routing: same arguments), checkpointed when gradients
    are needed: the forward keeps only the layer's inputs and backward recomputes the routing. Fused under
    torch.compile: without the checkpoint the min-cut partitioner saves one vote-sized tensor per layer,
    (V − μ), for backward; with it, none, at the same speed (benchmarks/NOTES.md). In eager mode it
    replaces a dozen saved vote-sized temporaries with a recompute. Triton: it trades the responsibility-sized
    tensors that torch keeps (several per iteration) for a second forward."""
    if routing == "cpu" and routing_cpu.available():  # keeps only its inputs: nothing to recompute
        return routing_cpu.cpu_em_routing(*args, **kwargs)
    route = triton_routing() if routing == "triton" else fused_em_routing  # "cpu" without its kernel too
    if recompute and torch.is_grad_enabled():
        return Routed(*checkpoint(route, *args, use_reentrant=False, **kwargs))
    return route(*args, **kwargs)


def receptive_field_centres(layers: list[tuple[int, int]], out_size: int) -> Tensor:
    """Centre of each output position's receptive field in the input image, scaled to [0, 1].

    `layers`: (kernel, stride) from the input up; output index o sits over input index s·o + (k − 1)/2.
    """
    centre = torch.arange(out_size, dtype=torch.float64)
    for kernel, stride in reversed(layers):
        centre = stride * centre + (kernel - 1) / 2
    return ((centre + 0.5) / INPUT_SIZE).float()


def _as_capsules(routed: Routed, size: int) -> Tensor:
    """Routed parents (N, L, J, ·) → the channels-last capsule tensor (N, H, W, J, 17) of the next layer."""
    capsules = torch.cat([routed.poses, routed.activations.unsqueeze(-1)], dim=-1)
    return capsules.unflatten(1, (size, size))


class CapsNet(nn.Module):
    """The matrix capsule network of HSF18 Fig. 1; see the module docstring for the layer sizes."""

    family = "capsnet"
    vote_head = True  # output="vote_logits": routing bypassed, for the vote attack

    def __init__(self, config: CapsNetConfig, name: str = "capsnet") -> None:
        super().__init__()
        self.config, self.name = config, name
        self.standardize = Standardize()
        self.conv1 = nn.Conv2d(config.in_channels, config.conv1_channels, kernel_size=5, stride=2)
        self.conv1_norm = nn.BatchNorm2d(config.conv1_channels) if config.conv1_batchnorm else nn.Identity()
        self.primary_caps = PrimaryCaps(config.conv1_channels, config.primary_types)
        self.conv_caps1 = ConvCaps(config.primary_types, config.convcaps1_types, 3, 2, 14, config)
        self.conv_caps2 = ConvCaps(config.convcaps1_types, config.convcaps2_types, 3, 1, 6, config)
        centres = receptive_field_centres([(5, 2), (1, 1), (3, 2), (3, 1)], self.conv_caps2.out_size)
        self.class_caps = ClassCaps(config.convcaps2_types, config.n_classes, centres, config)
        if config.routing == "cpu":
            routing_cpu.available()  # built now (or found unbuildable), not inside a compiled forward
        if config.init == "official":
            self.official_init()
        self.calibrate_half_active()

    @torch.no_grad()
    def official_init(self) -> None:
        """The authors' release: Conv1 weights truncated normal std 0.05 with bias 0.1; PrimaryCaps pose
        weights std 0.5, activation weights std 3.0 with bias −1 (most primary capsules start inactive);
        ConvCaps W std 0.3; ClassCaps W std 0.01 (class votes start close to the coordinate offsets)."""
        nn.init.trunc_normal_(self.conv1.weight, std=0.05, a=-0.1, b=0.1)
        nn.init.constant_(self.conv1.bias, 0.1)
        types = self.primary_caps.types
        weight = self.primary_caps.conv.weight.view(types, POSE + 1, -1)  # output channels are (type, 17)
        bias = self.primary_caps.conv.bias.view(types, POSE + 1)
        weight[:, :POSE].normal_(0.0, 0.5)
        weight[:, POSE].normal_(0.0, 3.0)
        bias[:, :POSE].zero_()
        bias[:, POSE].fill_(-1.0)
        self.conv_caps1.weight.normal_(0.0, 0.3)
        self.conv_caps2.weight.normal_(0.0, 0.3)
        self.class_caps.weight.normal_(0.0, 0.01)

    def use_routing(self, routing: str) -> None:
        """Compute routing the `routing` way from now on (a `Routing`): the same function of the same
        weights (tests/models/test_routing_fused.py, test_routing_triton.py, test_routing_cpu.py), so a
        model trained with one path is evaluated with another.
        The trainer trains with fused under torch.compile and evaluates with plain, which is faster than
        fused in eager mode; `config.routing` keeps what the model was built with."""
        routing = Routing(routing)
        if routing == "triton":
            triton_routing()  # a missing triton package is said now, not at the first forward
        if routing == "cpu":
            routing_cpu.available()  # built now (or found unbuildable), not inside a compiled forward
        for layer in (self.conv_caps1, self.conv_caps2, self.class_caps):
            layer.routing = routing

    def use_recompute(self, layers: str) -> None:
        """Which routed layers recompute their fused or triton routing in backward rather than keep its saves:
        "all" (the default, least memory), "first" (ConvCaps1 only, the largest: its votes are 2.3× those
        of ConvCaps2) or "none" (fastest under torch.compile on the CPU, 1.2×, most memory; with triton
        routing under CUDA graphs the fastest measured on an H100, benchmarks/README.md). How, not what:
        the results are the same."""
        layers = Recompute(layers)
        for index, layer in enumerate((self.conv_caps1, self.conv_caps2, self.class_caps)):
            layer.recompute = layers == "all" or (layers == "first" and index == 0)

    @property
    def routing(self) -> str:
        return self.conv_caps1.routing

    def routed(self, x: Tensor, output: str = "logits") -> list[Routed]:
        """Every routed layer's parents: [ConvCaps1, ConvCaps2, ClassCaps], positions flattened."""
        check_images(x, self.config.in_channels, self.name)
        capsules = self.primary_caps(self.features(x))
        first = self.conv_caps1(capsules)
        second = self.conv_caps2(_as_capsules(first, self.conv_caps1.out_size))
        classes = self.class_caps(_as_capsules(second, self.conv_caps2.out_size), output)
        return [first, second, classes]

    def features(self, x: Tensor) -> Tensor:
        """ReLU Conv1 of the standardised image (with the optional BatchNorm): (N, A, 14, 14)."""
        return F.relu(self.conv1_norm(self.conv1(self.standardize(x))))

    def forward(self, x: Tensor, output: str = "logits") -> Tensor:
        """Class scores (N, n_classes): pre-sigmoid `logits` (what attacks see), sigmoid `activations`, or
        `vote_logits` (class logits from the votes without routing, for the vote attack)."""
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        classes = self.routed(x, output)[-1]
        return (classes.activations if output == "activations" else classes.logits).squeeze(1)

    @torch.no_grad()
    def calibrate_half_active(self, images: int = 4, seed: int = 0, probe: Tensor | None = None) -> None:
        """Initialise β_u (or β_a) so that half of the capsules in each routed layer are active at the start.

        The authors' answer on OpenReview: "half of the capsules in each layer active at the start". A
        parent's final logit is λ(β_a − (16 β_u + Σ_h log σ_h) · mass). `calibrate="beta_u"` (β_a = 0):
        the logit is zero exactly when β_u = −Σ_h log σ_h / 16, so β_u is set from the median Σ_h log σ_h.
        That centres the cost per unit of mass at zero, so for about half the parents more mass (more
        agreeing children) *lowers* the activation. `calibrate="beta_a"` (β_u = 0): β_a is set to the
        median cost instead, which centres the logits the same way but keeps the cost per unit of mass at
        Σ_h log σ_h (< 0 for votes tighter than 1), so agreement raises the activation, as EM routing
        means it to. Each layer in order, over a fixed batch of uniform random images (a fixed generator
        leaves the global random stream alone), or over `probe`, real (N, C, 32, 32) images in [0, 1]:
        noise has other pose statistics than objects, so calibrating on it misplaces the start. Always
        with the plain path (the same function), which runs on any device: a model is built on the CPU
        before it moves to a GPU that the triton path needs.
        """
        if probe is None:
            generator = torch.Generator().manual_seed(seed)
            probe = torch.rand(images, self.config.in_channels, INPUT_SIZE, INPUT_SIZE, generator=generator)
        routing = self.routing
        self.use_routing("plain")
        try:
            self._calibrate(probe.to(self.conv1.weight.device))
        finally:
            self.use_routing(routing)

    def _calibrate(self, probe: Tensor) -> None:
        capsules = self.primary_caps(self.features(probe))
        for layer in (self.conv_caps1, self.conv_caps2, self.class_caps):
            routed = layer(capsules)
            if self.config.calibrate == "beta_a":
                layer.beta_a.fill_((-routed.logits / layer.schedule[-1]).median().item())
            else:
                log_sigma = 0.5 * routed.variances.log().sum(-1)
                layer.beta_u.fill_(-log_sigma.median().item() / POSE)
            if layer is not self.class_caps:
                capsules = _as_capsules(layer(capsules), layer.out_size)
