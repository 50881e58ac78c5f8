"""Training losses: the spread loss of HSF18 §3 with its margin schedule, the margin loss of Sabour 2017
(dynamic routing), and cross-entropy (the CNN; self-routing's negative log-likelihood on log a_j).

    L = Σ_{i≠t} max(0, m − (a_t − a_i))²
    m(step) = 0.2 + 0.79 · sigmoid(min(10, step / scale − 4)),   scale = 50,000 steps

The paper's text says the margin grows "linearly from 0.2 to 0.9"; the schedule above is the authors'
answer on OpenReview and what we implement. `scale` is configurable so a short run can ramp the margin
in proportion to its length; the run's config.json records it.
"""

from __future__ import annotations

import math
from enum import StrEnum

import torch
import torch.nn.functional as F

MARGIN_START = 0.2
MARGIN_RANGE = 0.79
MARGIN_STEP_SCALE = 50_000.0


class Loss(StrEnum):
    AUTO = "auto"  # each family's own (FAMILY_LOSSES)
    SPREAD = "spread"
    MARGIN = "margin"
    CROSS_ENTROPY = "cross_entropy"


# Sabour 2017 eq. 4: m⁺ = 0.9, m⁻ = 0.1, λ = 0.5 down-weights the absent classes
MARGIN_PRESENT, MARGIN_ABSENT, ABSENT_WEIGHT = 0.9, 0.1, 0.5
# each family's loss in its paper
FAMILY_LOSSES = {
    "capsnet": "spread",
    "dynamic": "margin",
    "self-routing": "cross_entropy",
    "cnn": "cross_entropy",
}


def spread_margin(step: int, scale: float = MARGIN_STEP_SCALE) -> float:
    """m = 0.2 + 0.79 · sigmoid(min(10, step / scale − 4)): 0.214 at step 0, 0.99 in the limit."""
    z = min(10.0, step / scale - 4.0)
    return MARGIN_START + MARGIN_RANGE / (1.0 + math.exp(-z))


def spread_loss(activations: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Spread loss, L = Σ_{i≠t} max(0, m − (a_t − a_i))², averaged over the batch.

    activations: (batch, classes), the class capsules' activations a in (0, 1); labels: (batch,) int.
    """
    target = activations.gather(1, labels[:, None])  # a_t: (batch, 1)
    per_class = torch.clamp(margin - (target - activations), min=0.0) ** 2
    # The i = t term is max(0, m)² = m², a constant: mask it instead of subtracting it, so no gradient
    # and no rounding from it reaches the sum.
    not_target = torch.ones_like(per_class, dtype=torch.bool).scatter_(1, labels[:, None], False)
    return (per_class * not_target).sum(dim=1).mean()


def margin_loss(lengths: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Margin loss, L = Σ_k T_k max(0, m⁺ − ‖v_k‖)² + λ (1 − T_k) max(0, ‖v_k‖ − m⁻)², batch-averaged.

    lengths: (batch, classes), the class capsules' lengths ‖v_k‖ in (0, 1); labels: (batch,) int.
    """
    present = F.one_hot(labels, lengths.shape[1]).to(lengths.dtype)
    missed = torch.clamp(MARGIN_PRESENT - lengths, min=0.0) ** 2
    spurious = torch.clamp(lengths - MARGIN_ABSENT, min=0.0) ** 2
    return (present * missed + ABSENT_WEIGHT * (1.0 - present) * spurious).sum(dim=1).mean()


def resolve_loss(loss: str, family: str) -> str:
    """'auto' picks each family's paper: spread loss (EM capsules), margin loss (dynamic routing),
    cross-entropy (the CNN, and self-routing's log-likelihood)."""
    return FAMILY_LOSSES.get(family, "cross_entropy") if loss == "auto" else loss


def training_loss(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, loss: str, margin: float):
    """The loss for one batch, and the model's output (whose argmax is the prediction).

    Spread loss acts on activations (the class capsules' sigmoid activations), margin loss on capsule
    lengths (plus the reconstruction error where the model has a decoder), cross-entropy on logits; all are
    computed in float32 so that bf16 autocast only touches the model's layers.
    """
    if loss == "margin":
        lengths, reconstruction = model(x, output="training", labels=labels)
        total = margin_loss(lengths.float(), labels)
        if reconstruction is not None:
            weight = _unwrapped(model).config.reconstruction_weight
            total = total + weight * (reconstruction.float() - x.float()).pow(2).flatten(1).sum(1).mean()
        return total, lengths
    if loss == "spread":
        activations = model(x, output="activations")
        return spread_loss(activations.float(), labels, margin), activations
    assert loss == "cross_entropy", loss
    logits = model(x, output="logits")
    return F.cross_entropy(logits.float(), labels), logits


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DistributedDataParallel (`module`) and torch.compile (`_orig_mod`) wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
