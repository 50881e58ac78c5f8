"""Attacks on tiny models trained here: ε units, accuracy against ε, targeted averaging, transfer, resume."""

from __future__ import annotations

import copy
from dataclasses import replace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustcaps.attacks.adapters import (
    AttackConfig,
    craft,
    crafting_model,
    eps_pixel_and_std,
    margin_logits,
    per_image_sigma,
)
from robustcaps.attacks.run import attack_model
from robustcaps.attacks.sweep import EvalSet, Victim, balanced_examples
from robustcaps.errors import RobustcapsError

SIZE = 8  # toy images are (1, 8, 8): the attack code only assumes (N, C, H, W) in [0, 1]


def toy_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Five classes, each a fixed random pattern on grey plus noise, in [0, 1]; linearly separable."""
    prototypes = torch.randn(5, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(123))
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 5
    noise = 0.35 * torch.randn(n, 1, SIZE, SIZE, generator=generator)
    contrast = 0.5 + torch.rand(n, 1, 1, 1, generator=generator)
    images = 0.5 + 0.12 * contrast * (prototypes[labels] + noise)
    return images.clamp(0, 1), labels


class ToyNet(nn.Module):
    """Per-image standardisation inside the model, then an MLP: the same input contract as ours."""

    family = "cnn"

    def __init__(self, seed: int = 0, hidden: int = 32):
        super().__init__()
        torch.manual_seed(seed)
        self.name = f"toy-{seed}"
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(SIZE * SIZE, hidden), nn.ReLU(), nn.Linear(hidden, 5)
        )

    def forward(self, x: torch.Tensor, output: str = "logits") -> torch.Tensor:
        x = (x - x.mean(dim=(1, 2, 3), keepdim=True)) / x.std(dim=(1, 2, 3), keepdim=True, unbiased=False)
        logits = self.body(x)
        return logits.softmax(1) if output == "activations" else logits


def train(model: nn.Module, steps: int = 300, seed: int = 0) -> nn.Module:
    images, labels = toy_data(1000, seed=seed + 1)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = torch.randint(0, len(labels), (64,), generator=generator)
        loss = F.cross_entropy(model(images[batch]), labels[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def eval_set(n: int = 100) -> EvalSet:
    images, labels = toy_data(n, seed=999)
    return EvalSet(images, labels, torch.arange(n), identity='{"kind": "toy"}')


def accuracy(summary: pd.DataFrame, attack: str, targeted: bool = False) -> pd.Series:
    rows = summary[
        (summary["attack"] == attack) & (summary["targeted"] == targeted) & (summary["role"] == "sweep")
    ]
    return rows.sort_values("eps_pixel").set_index("eps_pixel")["value"]


def test_eps_units_convert_through_the_mean_per_image_sigma():
    # A checkerboard of 0.25 and 0.75 has σ = 0.25 exactly; a flat-grey image has σ = 0.
    board = torch.full((1, 1, 4, 4), 0.25)
    board[..., ::2, ::2] = board[..., 1::2, 1::2] = 0.75
    images = torch.cat([board, 0.5 * board / board])
    sigma = per_image_sigma(images)
    assert sigma.tolist() == pytest.approx([0.25, 0.0])
    sigma_mean = float(sigma.mean())
    pixel, std = eps_pixel_and_std(0.2, "std", sigma_mean)
    assert pixel == pytest.approx(0.2 * 0.125) and std == 0.2
    pixel, std = eps_pixel_and_std(0.05, "pixel", sigma_mean)
    assert std * sigma_mean == pytest.approx(pixel) and pixel == 0.05


def test_margin_logits_keep_the_decision_and_rank_by_margin():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5], [0.0, 3.0, 1.0, 0.0, 0.0]])
    labels = torch.tensor([0, 0])
    scores = margin_logits(logits, labels)
    assert (scores.argmax(1) == labels).tolist() == [True, False]
    assert scores[:, 0].tolist() == pytest.approx([1.0, -3.0])  # z_y − max_{j≠y} z_j
    losses = F.cross_entropy(scores, labels, reduction="none")
    assert losses[1] > losses[0]  # a smaller margin is a larger loss


def test_accuracy_falls_with_eps_and_eps_zero_is_clean(toy, tmp_path):
    config = AttackConfig(attacks=("fgsm", "pgd"), eps=(0.0, 0.02, 0.05, 0.1, 0.3), units="pixel", steps=20)
    results = attack_model(Victim(toy, "toy"), eval_set(), config, tmp_path, progress=False)
    clean = accuracy(results.summary, "clean").iloc[0]
    assert clean >= 0.9
    for attack in ("fgsm", "pgd", "worst"):
        curve = accuracy(results.summary, attack)
        assert curve.iloc[0] == clean  # ε = 0 leaves every image as it is
        assert curve.is_monotonic_decreasing
        assert curve.iloc[-1] <= 0.2
    assert (accuracy(results.summary, "pgd") <= accuracy(results.summary, "fgsm")).all()
    checks = results.checks.set_index("check")["passed"]
    assert checks.all(), results.failed_checks
    for name in ("per_example.csv", "summary.csv", "checks.csv"):
        assert (tmp_path / name).exists()
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert (summary["eps_std"] * summary["sigma_mean"]).to_numpy() == pytest.approx(
        summary["eps_pixel"].to_numpy()
    )


def test_every_attack_stays_in_the_ball(toy):
    images, labels = toy_data(20, seed=5)
    config = AttackConfig(steps=5, queries=50)
    for attack in ("fgsm", "bim", "pgd", "apgd-ce", "apgd-dlr", "cw", "square"):
        adversarial = craft(attack, toy, images, labels, 0.03, config)
        assert (adversarial - images).abs().max() <= 0.03 + 1e-6, attack
        assert adversarial.min() >= 0 and adversarial.max() <= 1, attack


def test_targeted_success_averages_over_the_four_wrong_classes(toy, tmp_path):
    config = AttackConfig(
        attacks=("bim",), eps=(0.0, 0.1), units="pixel", targeted=(True,), steps=5, checks=False
    )
    data = eval_set(40)
    results = attack_model(Victim(toy, "toy"), data, config, tmp_path, progress=False)
    rows = results.per_example[(results.per_example["attack"] == "bim")]
    for _, example in rows[rows["eps_pixel"] == 0.1].groupby("example"):
        assert sorted(example["target"]) == sorted(set(range(5)) - {int(example["label"].iloc[0])})
    hits = rows[rows["eps_pixel"] == 0.1].eval("prediction == target")
    success = accuracy(results.summary, "bim", targeted=True)
    assert success[0.1] == pytest.approx(hits.mean()) and success[0.1] > success[0.0]
    assert success[0.0] == 0.0  # a correctly classified clean image never hits a wrong target


def test_margin_loss_attacks_as_strongly_as_cross_entropy(toy, tmp_path):
    data, eps = eval_set(), (0.0, 0.05)
    base = AttackConfig(attacks=("pgd",), eps=eps, units="pixel", steps=10, checks=False)
    margin = AttackConfig(attacks=("pgd",), eps=eps, units="pixel", steps=10, checks=False, loss="margin")
    ce = attack_model(Victim(toy, "toy"), data, base, tmp_path / "ce", progress=False)
    mg = attack_model(Victim(toy, "toy"), data, margin, tmp_path / "mg", progress=False)
    assert accuracy(mg.summary, "pgd")[0.05] <= accuracy(ce.summary, "pgd")[0.05] + 0.05
    assert set(mg.summary.loc[mg.summary["attack"] == "pgd", "loss"]) == {"margin"}


def test_transfer_from_another_model_is_recorded_and_weaker(toy, tmp_path):
    source = train(ToyNet(seed=7, hidden=16), seed=7)
    victim = Victim(toy, "toy", source=source, source_name="runs/source")
    config = AttackConfig(attacks=("pgd",), eps=(0.0, 0.05, 0.1), units="pixel", steps=10, checks=False)
    results = attack_model(victim, eval_set(), config, tmp_path, progress=False)
    summary = results.summary[results.summary["attack"] == "pgd"]
    assert set(summary["source"]) == {"self", "runs/source"}
    white = summary[summary["source"] == "self"].set_index("eps_pixel")["value"]
    transfer = summary[summary["source"] == "runs/source"].set_index("eps_pixel")["value"]
    assert (transfer >= white - 0.05).all() and transfer[0.1] < transfer[0.0]


def test_an_interrupted_sweep_resumes_without_redoing_finished_cells(toy, tmp_path, monkeypatch):
    import robustcaps.attacks.sweep as sweep

    calls = []
    real_craft = sweep.craft
    monkeypatch.setattr(sweep, "craft", lambda *a, **k: calls.append(a[0]) or real_craft(*a, **k))
    config = AttackConfig(attacks=("fgsm",), eps=(0.0, 0.05), units="pixel", checks=False)
    data = eval_set(20)
    first = attack_model(Victim(toy, "toy"), data, config, tmp_path, progress=False)
    assert len(calls) == 2 and len(list((tmp_path / "cells").glob("*.csv"))) == 2
    calls.clear()
    wider = AttackConfig(attacks=("fgsm",), eps=(0.0, 0.05, 0.1), units="pixel", checks=False)
    second = attack_model(Victim(toy, "toy"), data, wider, tmp_path, progress=False)
    assert len(calls) == 1  # only the new ε
    same = second.summary.merge(first.summary, on=["attack", "eps_pixel"], suffixes=("", "_first"))
    assert (same["value"] == same["value_first"]).all()
    assert sorted(same.loc[same["attack"] == "fgsm", "eps_pixel"]) == [0.0, 0.05]
    calls.clear()
    retrained = copy.deepcopy(toy)
    with torch.no_grad():
        retrained.body[1].bias.add_(0.01)
    attack_model(Victim(retrained, "toy"), data, wider, tmp_path, progress=False)
    assert len(calls) == 3  # new weights: no finished cell is reused


def test_stratified_subset_is_seeded_and_balanced():
    labels = torch.tensor([0] * 50 + [1] * 50 + [2] * 50 + [3] * 50 + [4] * 3)
    subset = balanced_examples(labels, 23, seed=1)
    assert torch.equal(subset, balanced_examples(labels, 23, seed=1))
    assert not torch.equal(subset, balanced_examples(labels, 23, seed=2))
    counts = torch.bincount(labels[subset], minlength=5).tolist()
    assert counts == [5, 5, 5, 5, 3] and len(set(subset.tolist())) == 23


def test_bad_options_name_the_option():
    with pytest.raises(RobustcapsError, match="--attack"):
        AttackConfig(attacks=("deepfool",))
    with pytest.raises(RobustcapsError, match="--units"):
        AttackConfig(units="percent")
    with pytest.raises(RobustcapsError, match="--crafting"):
        AttackConfig(crafting="fast")


def test_the_same_data_elsewhere_draws_the_same_random_starts(toy, tmp_path):
    # PGD's random starts are seeded from the cell key: moving the dataset to another folder (another
    # machine, another HOME) must not change the key, the starts or the numbers; other data must.
    config = AttackConfig(attacks=("pgd",), eps=(0.1,), units="pixel", steps=2, checks=False)
    base = eval_set(20)
    located = [
        EvalSet(base.images, base.labels, base.index, identity=f'{{"kind": "toy", "root": "{root}"}}')
        for root in ("/home/a/data", "/mnt/b/data")
    ]
    names, values = [], []
    for i, data in enumerate(located):
        result = attack_model(Victim(toy, "toy"), data, config, tmp_path / str(i), progress=False)
        names.append(sorted(p.name for p in (tmp_path / str(i) / "cells").glob("*.csv")))
        values.append(result.per_example["prediction"].tolist())
    assert names[0] == names[1] and values[0] == values[1]
    other = EvalSet(base.images, base.labels, base.index, identity='{"kind": "toy", "seed": 1}')
    attack_model(Victim(toy, "toy"), other, config, tmp_path / "other", progress=False)
    assert sorted(p.name for p in (tmp_path / "other" / "cells").glob("*.csv")) != names[0]


def test_compiled_crafting_differentiates_a_compiled_copy_and_gives_the_same_results(toy, tmp_path):
    """The same function to float32 rounding: the same predictions (up to a rare flipped sign in FGSM's
    gradient); every row says how it was crafted, and neither crafting reuses the other's cells."""
    config = AttackConfig(attacks=("fgsm", "bim"), eps=(0.0, 0.1, 0.3), units="pixel", steps=5, checks=False)
    results = {
        crafting: attack_model(
            Victim(toy, "toy"), eval_set(), replace(config, crafting=crafting), tmp_path / crafting, False
        )
        for crafting in ("plain", "compiled")
    }
    plain, compiled = (results[c].per_example["prediction"] for c in ("plain", "compiled"))
    assert (plain != compiled).mean() <= 0.01
    for crafting, result in results.items():
        assert set(result.summary["crafting"]) == {crafting}
    cells = [{p.name for p in (tmp_path / c / "cells").glob("*.csv")} for c in ("plain", "compiled")]
    # the same keys (so the same random starts), stored apart
    assert len(cells[0]) == 6 and cells[1] == {name.replace(".csv", "-compiled.csv") for name in cells[0]}


def test_compiled_crafting_differentiates_a_fused_copy_and_leaves_the_rest_to_the_model(monkeypatch):
    from robustcaps.models import create_model

    tiny = {"conv1_channels": 8, "primary_types": 4, "convcaps1_types": 4, "convcaps2_types": 4}
    model = create_model("capsnet-small", in_channels=2, **tiny).eval()
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module: compiled.append(module) or module)
    assert crafting_model(model, "plain") is model and not compiled
    crafter = crafting_model(model, "compiled")
    assert compiled == [crafter.fast] and crafter.model is model
    assert (crafter.fast.routing, model.routing) == ("fused", "plain")  # the judge keeps the reference path
    for (name, weight), copied in zip(
        model.state_dict().items(), crafter.fast.state_dict().values(), strict=True
    ):
        assert torch.equal(weight, copied), name
    calls = []
    crafter.fast.register_forward_hook(lambda *_: calls.append("fast"))
    model.register_forward_hook(lambda *_: calls.append("model"))
    images = torch.rand(3, 2, 32, 32, generator=torch.Generator().manual_seed(0))
    for output in ("logits", "vote_logits"):
        want = model(images, output=output)
        with torch.no_grad():  # bookkeeping, restart checks, Square: the model itself
            torch.testing.assert_close(crafter(images, output=output), want)
        torch.testing.assert_close(crafter(images, output=output), want)  # nothing to differentiate
        attacked = images.clone().requires_grad_()
        torch.testing.assert_close(crafter(attacked, output=output), want)  # the fused copy
    assert calls == ["model", "model", "model", "fast"] * 2
