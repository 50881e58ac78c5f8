"""White-box attacks on our models through torchattacks 3.5.1, under one threat model: L∞ balls in [0, 1].

The contract (RobustBench style). torchattacks wants an `nn.Module` that takes images in [0, 1] and returns
(N, classes) scores. Our models already take [0, 1] pixels with the paper's per-image standardisation
inside, so `AttackTarget` only picks which head the attack differentiates: `output="logits"` (capsnet:
the pre-sigmoid class activation λ(β_a − Σ_h cost_h); cnn: pre-softmax scores) or, for the vote attack
of Gu et al. (ICLR 2021), `output="vote_logits"` (routing bypassed). Adversarial images are always
*judged* on the model's normal routed `logits`.

Units of ε. HSF18 Fig. 3 gives ε "in units of the standardised input". Standardisation is per image,
x̂ = (x − mean(x)) / σ(x), so a pixel step ε_pixel is a step ε_pixel / σ(x) in the standardised input and
the conversion differs per image. We convert with one number for the whole evaluated set,

    ε_pixel = ε_std · σ̄,   σ̄ = mean over evaluated images of σ(x) (population std over C×H×W),

so every image gets the same pixel budget (the usual L∞ threat model) and a row's `eps_std` is exact for
an image of average contrast. Every row records `sigma_mean`, `eps_pixel` and `eps_std`.

Objective. torchattacks' FGSM/BIM/PGD maximise cross-entropy on whatever the module returns, so we feed
them logits, never the sigmoid activations (CE on activations in (0, 1) is a weak objective). The
`loss="margin"` option turns the same CE into a monotone function of the CW logit margin (`margin_logits`).

Settings, recorded per row (`steps`, `restarts`, `loss`): BIM and PGD take steps of α = 2.5·ε/steps
(Madry et al.), PGD starts uniformly in the ball; APGD-CE/DLR use torchattacks' step-size schedule;
CW-L2 uses c = 1, lr 0.01 and its perturbation is clipped into the L∞ ball; Square (gradient-free)
uses the margin loss with `queries` queries per restart (its `steps` column holds the queries).
`autoattack` is Croce & Hein's "standard" ensemble at its published budget (APGD-CE, APGD-T and FAB-T at
100 iterations, Square at 5,000 queries; attacks/autoattack.py), whatever --steps says; `autoattack-fast`
is the same ensemble at --steps, a cheaper variant under its own name.

Crafting path (`crafting`, recorded per row). "plain": the attacks differentiate the model as loaded
(eager; EM routing plain, on a CPU computed by the C++ kernel of models/routing_cpu.py). "compiled":
they differentiate a copy of it under torch.compile, a capsule network's routing computed the fused way
(models/routing_fused.py; on a CPU the C++ kernel again): the same function to float32
rounding, faster after a compile, so it pays for long sweeps, not short ones (benchmarks/NOTES.md).
Either way, adversarial images are judged by the plain model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchattacks
from torch import nn

from robustcaps.attacks.autoattack import ENSEMBLES, LOSS, build_ensemble
from robustcaps.errors import RobustcapsError

NUM_CLASSES = 5
# name -> (supports targeted mode, uses gradients). APGD in torchattacks 3.5.1 is untargeted only.
BASE_ATTACKS = {
    "fgsm": (True, True),
    "bim": (True, True),
    "pgd": (True, True),
    "apgd-ce": (False, True),
    "apgd-dlr": (False, True),
    "cw": (True, True),
    "square": (True, False),
    "autoattack": (False, True),
    "autoattack-fast": (False, True),
}
VOTE_SUFFIX = "-vote"
# the vote attack swaps one gradient source for another; an ensemble with its own schedule stays whole
ATTACKS = tuple(BASE_ATTACKS) + tuple(
    f"{a}{VOTE_SUFFIX}" for a, (_, grad) in BASE_ATTACKS.items() if grad and a not in ENSEMBLES
)
UNITS = ("std", "pixel")
ATTACK_LOSSES = ("ce", "margin")
CRAFTING = ("plain", "compiled")
ATTACK_PARTS = ("test", "familiar", "novel")
# Madry et al.'s rule: a step of 2.5·ε/steps lets PGD cross the ball and come back.
STEP_SIZE_FACTOR = 2.5
MARGIN_WRAPPABLE = ("fgsm", "bim", "pgd")


@dataclass(frozen=True)
class AttackConfig:
    """One sweep: every attack × ε × targeting mode, evaluated on one seeded, class-stratified subset."""

    attacks: tuple[str, ...] = ("fgsm", "bim", "pgd")
    eps: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
    units: str = "std"
    targeted: tuple[bool, ...] = (False,)
    loss: str = "ce"
    steps: int = 20
    restarts: int = 1
    queries: int = 1000
    n: int = 500
    part: str = "test"
    batch_size: int = 100
    fit_batch: bool = False  # lower batch_size to what fits in memory (attacks.memory), recorded as used
    seed: int = 0
    device: str = "cpu"
    checks: bool = True
    crafting: str = "plain"  # which computation the attacks differentiate: one of CRAFTING (see above)
    # AutoAttack (either budget) only at these ε, in `units`; None: at every ε. The full ensemble costs
    # hundreds of PGD cells, so a CPU preset runs it where the headline is read (benchmarks/README.md).
    ensemble_eps: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for name in self.attacks:
            if name not in ATTACKS:
                raise RobustcapsError(f"--attack {name}: unknown attack; choose from {', '.join(ATTACKS)}")
        for option, value, choices in (
            ("units", self.units, UNITS),
            ("loss", self.loss, ATTACK_LOSSES),
            ("crafting", self.crafting, CRAFTING),
        ):
            if value not in choices:
                raise RobustcapsError(f"--{option} {value}: choose one of {', '.join(choices)}")
        if self.part not in ATTACK_PARTS:
            raise RobustcapsError(f"--part {self.part}: choose one of {', '.join(ATTACK_PARTS)}")
        if not self.eps or any(e < 0 for e in self.eps):
            raise RobustcapsError(f"--eps {self.eps}: give one or more ε ≥ 0")
        for option in ("steps", "restarts", "queries", "n", "batch_size"):
            if getattr(self, option) < 1:
                raise RobustcapsError(f"--{option.replace('_', '-')} must be at least 1")


def base_attack(name: str) -> str:
    return name.removesuffix(VOTE_SUFFIX)


def is_vote_attack(name: str) -> bool:
    return name.endswith(VOTE_SUFFIX)


def supports_targeted(name: str) -> bool:
    return BASE_ATTACKS[base_attack(name)][0]


def per_image_sigma(images: torch.Tensor) -> torch.Tensor:
    """σ(x) of each image over C×H×W (population std, as the model's standardisation uses); (N,)."""
    return images.flatten(1).std(dim=1, unbiased=False)


def eps_pixel_and_std(eps: float, units: str, sigma_mean: float) -> tuple[float, float]:
    """(ε_pixel, ε_std) from ε in `units`, via ε_pixel = ε_std · σ̄ (see the module docstring)."""
    assert units in UNITS and sigma_mean > 0
    if units == "pixel":
        return eps, eps / sigma_mean
    return eps * sigma_mean, eps


def crafting_model(model: nn.Module, crafting: str) -> nn.Module:
    """What the attacks differentiate: `model` itself ("plain") or a `CompiledCrafter` of it ("compiled"),
    built once per sweep, since the compiled code lives with it. `model` stays as it is, for judging."""
    return model if crafting == "plain" else CompiledCrafter(model)


class CompiledCrafter(nn.Module):
    """`model`'s function, computed by a torch.compile copy (capsule routing fused) for every call that will
    be differentiated (grad mode on, input requiring grad) and by `model` itself for the rest: the restart
    checks, Square's queries and torchattacks' bookkeeping. Each guard dynamo keeps per compiled frame
    (grad mode, input requires_grad, batch size 1 / 100 / any, output head) is another graph, and past
    torch's recompile limit (8) a frame runs eagerly, where fused routing is 2.6× slower than plain: a
    sweep of every attack with both modes on a toy model already made 7 graphs when all calls went through
    the compiled copy. Sending it only the differentiated calls leaves 3 per head (batch 100, any, 1)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.fast = copy.deepcopy(model)
        if hasattr(self.fast, "use_routing"):
            self.fast.use_routing("cpu" if self.fast.routing == "cpu" else "fused")  # "cpu": as loaded
        self.compiled = {"forward": torch.compile(self.fast)}  # a dict: not a second registered child

    def forward(self, images: torch.Tensor, output: str = "logits") -> torch.Tensor:
        if torch.is_grad_enabled() and images.requires_grad:
            return self.compiled["forward"](images, output=output)
        return self.model(images, output=output)


def margin_logits(logits: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Scores whose cross-entropy is a decreasing function of the CW logit margin.

    m = z_r − max_{j≠r} z_j for reference class r (the label, or the target when targeted). With
    z'_r = m and z'_j = 0 otherwise, CE(z', r) = log(1 + (K−1)·e^{−m}): its gradient is a positive
    multiple of −∇m, so sign-gradient attacks (FGSM/BIM/PGD) take exactly the margin-loss step, and
    argmax z' = r exactly when m > 0. We wrap the output rather than copy torchattacks' attack loops,
    whose loss is a hard-coded `nn.CrossEntropyLoss`.
    """
    own = logits.gather(1, reference[:, None])
    others = logits.masked_fill(F.one_hot(reference, logits.shape[1]).bool(), float("-inf"))
    margin = own - others.max(dim=1, keepdim=True).values
    return torch.zeros_like(logits).scatter(1, reference[:, None], margin)


class AttackTarget(nn.Module):
    """What torchattacks sees: [0, 1] images in, (N, 5) scores out, in eval mode with frozen weights.

    `output` picks the model head ("logits" or "vote_logits"); `loss="margin"` rewrites the scores with
    `margin_logits`, which needs the reference class of every example: set `reference` before a call.
    """

    def __init__(self, model: nn.Module, output: str = "logits", loss: str = "ce"):
        super().__init__()
        self.model = model.eval()
        # Attacks differentiate w.r.t. the input only; CW calls backward() and would otherwise
        # accumulate gradients into the weights.
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.output, self.loss = output, loss
        self.reference: torch.Tensor | None = None
        # torchattacks puts a module that was in training mode back into training mode after the
        # attack, recursively: a fresh wrapper would switch dropout on in the model it wraps.
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(images, output=self.output)
        if self.loss == "ce":
            return logits
        assert self.reference is not None and len(self.reference) == len(images), "set reference first"
        return margin_logits(logits, self.reference)


def build_attack(name: str, target: AttackTarget, eps: float, config: AttackConfig) -> torchattacks.Attack:
    """The torchattacks object for one base attack at L∞ radius `eps` (pixels)."""
    alpha = STEP_SIZE_FACTOR * eps / config.steps
    kind = base_attack(name)
    if kind == "fgsm":
        return torchattacks.FGSM(target, eps=eps)
    if kind == "bim":
        return torchattacks.BIM(target, eps=eps, alpha=alpha, steps=config.steps)
    if kind == "pgd":
        return torchattacks.PGD(target, eps=eps, alpha=alpha, steps=config.steps, random_start=True)
    if kind in ("apgd-ce", "apgd-dlr"):
        return torchattacks.APGD(
            target,
            norm="Linf",
            eps=eps,
            steps=config.steps,
            n_restarts=config.restarts,
            seed=config.seed,
            loss=kind.removeprefix("apgd-"),
        )
    if kind in ENSEMBLES:  # the cell's budget: the standard one, or twice it in the convergence check
        return build_ensemble(target, eps, config.steps, config.restarts, NUM_CLASSES, config.seed)
    if kind == "cw":
        # c=1: torchattacks warns that its default c rarely finds adversarial images.
        return torchattacks.CW(target, c=1.0, kappa=0.0, steps=config.steps, lr=0.01)
    assert kind == "square"
    return torchattacks.Square(
        target,
        norm="Linf",
        eps=eps,
        n_queries=config.queries,
        n_restarts=config.restarts,
        seed=config.seed,
        loss="margin",
    )


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, output: str = "logits") -> torch.Tensor:
    """Arg-max class of `model(images, output=...)`; (N,) int64 on the images' device."""
    return model(images, output=output).argmax(dim=1)


def succeeded(predictions: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    return predictions == targets if targets is not None else predictions != labels


def attack_loss(name: str, config: AttackConfig) -> str:
    """The objective an attack actually maximises, as recorded in every row."""
    kind = base_attack(name)
    if kind in MARGIN_WRAPPABLE:
        return config.loss
    losses = {"apgd-ce": "ce", "apgd-dlr": "dlr", "cw": "cw-margin", "square": "margin"}
    return {**losses, **dict.fromkeys(ENSEMBLES, LOSS)}[kind]


def craft(
    name: str,
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    config: AttackConfig,
    targets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Adversarial images for one batch, crafted on `model`, inside the L∞ ball of radius `eps` (pixels).

    Restarts (PGD; APGD and Square restart internally) keep, per example, the first restart that fools
    the crafting model's routed output. CW-L2 has no ε: its perturbation is clipped into the same L∞ ball,
    which keeps every row in one threat model (a valid, if untuned, L∞ attack).
    """
    if eps == 0:
        return images.clone()
    output = "vote_logits" if is_vote_attack(name) else "logits"
    # APGD, CW and Square call the model on subsets of the batch and bring their own margin-type losses,
    # so only FGSM/BIM/PGD get the margin wrapper (which needs one reference class per example).
    loss = config.loss if base_attack(name) in MARGIN_WRAPPABLE else "ce"
    target = AttackTarget(model, output=output, loss=loss)
    target.reference = targets if targets is not None else labels
    attack = build_attack(name, target, eps, config)
    if targets is not None:
        attack.set_mode_targeted_by_function(lambda _images, _labels: targets, quiet=True)
    restarts = config.restarts if base_attack(name) == "pgd" else 1
    adversarial = attack(images, labels)
    for _ in range(restarts - 1):
        done = succeeded(predict(model, adversarial), labels, targets)
        if bool(done.all()):
            break
        adversarial = torch.where(done[:, None, None, None], adversarial, attack(images, labels))
    adversarial = torch.minimum(torch.maximum(adversarial, images - eps), images + eps).clamp(0, 1)
    return adversarial.detach()
