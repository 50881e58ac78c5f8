"""Training losses: the spread loss of HSF18 §3 with its margin schedule, and cross-entropy for the CNN.

    L = Σ_{i≠t} max(0, m − (a_t − a_i))²
    m(step) = 0.2 + 0.79 · sigmoid(min(10, step / scale − 4)),   scale = 50,000 steps

The paper's text says the margin grows "linearly from 0.2 to 0.9"; the schedule above is the authors'
answer on OpenReview and what we implement. `scale` is configurable so a short run can ramp the margin
in proportion to its length; the run's config.json records it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MARGIN_START = 0.2
MARGIN_RANGE = 0.79
MARGIN_STEP_SCALE = 50_000.0

LOSSES = ("auto", "spread", "cross_entropy")


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


def resolve_loss(loss: str, family: str) -> str:
    """'auto' picks the paper's choice: spread loss for capsules, cross-entropy for the baseline CNN."""
    assert loss in LOSSES, loss
    if loss != "auto":
        return loss
    return "spread" if family == "capsnet" else "cross_entropy"


def training_loss(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, loss: str, margin: float):
    """The loss for one batch, and the model's output (whose argmax is the prediction).

    Spread loss acts on activations (the class capsules' sigmoid activations), cross-entropy on logits;
    both are computed in float32 so that bf16 autocast only touches the model's layers.
    """
    if loss == "spread":
        activations = model(x, output="activations")
        return spread_loss(activations.float(), labels, margin), activations
    assert loss == "cross_entropy", loss
    logits = model(x, output="logits")
    return F.cross_entropy(logits.float(), labels), logits
