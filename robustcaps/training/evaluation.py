"""Test-time error: centre crop, or the official 13-crop average (HSF18: 1.8% → 1.4% on smallNORB).

    prediction = argmax_k (1/|crops|) Σ_c activation_k(crop_c(x))

Activations (capsule sigmoid / CNN softmax) are averaged, not logits, as the official multi-crop test
averages the class predictions.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch

from robustcaps.data.norb import CLASSES
from robustcaps.memory import PROBE, batch_within, bytes_per_example, memory_budget
from robustcaps.models.common import in_halves_on_oom

# Of the memory budget, what an evaluation batch may take (the probe measures the whole forward); the rest
# for the allocator's slack and what the measurement misses.
SHARE = 0.3
ADVICE = "raise the memory limit or evaluate a smaller model"
# bytes per example of a forward, per model and (multi_crop, image shape): measured once, not at every
# validation of a training run (each measurement resets the process's peak RSS, VmHWM)
_measured: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@torch.no_grad()
def predict_views(model: torch.nn.Module, images: torch.Tensor, multi_crop: bool = False) -> torch.Tensor:
    """Predicted classes (N,) for uint8 images (N, C, 48, 48) already on the model's device."""
    from robustcaps.data import transforms

    if not multi_crop:
        return model(transforms.test_batch(images), output="activations").argmax(dim=1)
    crops = transforms.multi_crop_batch(images)  # (13, N, C, 32, 32)
    mean = sum(model(crop, output="activations").float() for crop in crops) / len(crops)
    return mean.argmax(dim=1)


def evaluate(
    model: torch.nn.Module,
    tensorset: Any,
    device: str | torch.device = "cpu",
    multi_crop: bool = False,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Error overall and per class on a `TensorSet`: {"error", "n", "crops", "per_class": {name: {error, n}},
    "wrong": (N,) bool, per example in the set's order (for paired comparisons of two models)}.

    An empty set (the novel part of the full split) gives error NaN and n 0. The model's train/eval mode
    is restored afterwards, so `fit` can call this between steps.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    batch_size = fitting_eval_batch(model, tensorset.images, batch_size, device, multi_crop)
    predictions = []
    for start in range(0, len(tensorset), batch_size):
        images = tensorset.images[start : start + batch_size].to(device, non_blocking=True)
        # a batch that runs out of device memory is predicted in halves
        predicted = in_halves_on_oom(lambda x: predict_views(model, x, multi_crop), images)
        predictions.append(predicted.cpu())
    model.train(was_training)
    labels = tensorset.labels.cpu()
    wrong = torch.cat(predictions).ne(labels) if predictions else torch.zeros(0, dtype=torch.bool)
    per_class = {}
    for k, name in enumerate(CLASSES):
        mask = labels == k
        n = int(mask.sum())
        per_class[name] = {"error": float(wrong[mask].double().mean()) if n else math.nan, "n": n}
    n = len(labels)
    error = float(wrong.double().mean()) if n else math.nan
    return {"error": error, "n": n, "crops": 13 if multi_crop else 1, "per_class": per_class, "wrong": wrong}


def fitting_eval_batch(
    model: torch.nn.Module, images: torch.Tensor, requested: int, device: torch.device, multi_crop: bool
) -> int:
    """`requested`, or on a CPU as many examples as fit in SHARE of the memory budget (robustcaps.memory)
    if fewer; RobustcapsError before any work where not even one example fits. A GPU halves a batch
    that runs out instead (in_halves_on_oom)."""
    if device.type != "cpu" or len(images) == 0:
        return requested
    # the memory glibc keeps counts as used here (conservative): trimming it at every validation of a
    # training run would make the next steps fault their pages in again
    budget = memory_budget()
    key = (multi_crop, tuple(images.shape[1:]))
    per_model = _measured.setdefault(model, {})
    if key not in per_model:
        probe = images[:PROBE].to(device)
        per_model[key] = bytes_per_example(lambda x: predict_views(model, x, multi_crop), probe)
    return batch_within(budget, per_model[key], requested, SHARE, 1.0, ADVICE)
