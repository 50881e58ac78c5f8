"""The integrity checks must catch a gradient-masked model, and the vote attack must get around it."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from robustcaps.attacks.adapters import AttackConfig, craft
from robustcaps.attacks.checks import (
    LARGE_EPS_PIXEL,
    check_cells,
    check_iterative,
    check_monotone,
    check_targeted_large_eps,
    run_checks,
    tolerance,
)
from robustcaps.attacks.run import attack_model
from robustcaps.attacks.sweep import Victim
from tests.attacks.test_attack import eval_set


class QuantisedInput(nn.Module):
    """An accurate model whose forward rounds the input to 1/16 steps: ∂output/∂x = 0 almost everywhere,
    so gradient attacks see nothing while the decision is as fragile as the unmasked model's."""

    family = "cnn"

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.name = inner, "masked-toy"

    def forward(self, x: torch.Tensor, output: str = "logits") -> torch.Tensor:
        return self.inner(torch.round(x * 16) / 16, output=output)


class MaskedRoutingToy(QuantisedInput):
    """A stand-in capsnet: the routed `logits` are gradient-masked, the `vote_logits` path is smooth."""

    family = "capsnet"
    vote_head = True

    def forward(self, x: torch.Tensor, output: str = "logits") -> torch.Tensor:
        if output == "vote_logits":
            return self.inner(x)
        return super().forward(x, output)


def rows(summary: pd.DataFrame, attack: str, source: str = "self") -> pd.Series:
    chosen = summary[
        (summary["attack"] == attack) & (summary["source"] == source) & (summary["role"] == "sweep")
    ]
    return chosen.set_index("eps_pixel")["value"]


def test_gradient_masked_model_fails_the_checks(toy, tmp_path):
    masked = QuantisedInput(toy).eval()
    config = AttackConfig(
        attacks=("fgsm", "pgd", "square"), eps=(0.0, 0.05, 0.1), units="pixel", steps=10, queries=200
    )
    victim = Victim(masked, "masked-toy", source=toy, source_name="runs/smooth-toy")
    results = attack_model(victim, eval_set(60), config, tmp_path, progress=False)
    assert rows(results.summary, "clean").iloc[0] >= 0.9  # accurate, and ...
    assert rows(results.summary, "pgd")[0.1] >= 0.9  # ... apparently robust to white-box PGD
    checks = results.checks.set_index("check")["passed"]
    assert not checks["input_gradients"]
    assert not checks["blackbox_weaker_than_whitebox"]  # Square and transfer succeed where PGD fails
    assert {"input_gradients", "blackbox_weaker_than_whitebox"} <= {
        f.split(":")[0] for f in results.failed_checks
    }
    written = pd.read_csv(tmp_path / "checks.csv")
    assert list(written.columns) == ["model", "check", "passed", "detail"]
    assert not written.set_index("check").loc["input_gradients", "passed"]


def test_vote_attack_breaks_routing_masked_gradients(toy, tmp_path):
    capsnet = MaskedRoutingToy(toy).eval()
    config = AttackConfig(attacks=("pgd", "pgd-vote"), eps=(0.0, 0.1), units="pixel", steps=10)
    results = attack_model(Victim(capsnet, "toy-capsnet"), eval_set(60), config, tmp_path, progress=False)
    routed, votes = rows(results.summary, "pgd"), rows(results.summary, "pgd-vote")
    assert routed[0.1] >= 0.9 and votes[0.1] <= routed[0.1] - 0.5  # both judged on the routed output
    # the worst case takes the vote attack, and the convergence check's rerun of it at twice its budget
    worst = results.summary[results.summary["attack"] == "worst"].set_index("eps_pixel").loc[0.1]
    assert worst["value"] <= votes[0.1]
    assert worst["worst_of"] == "pgd+pgd-vote+pgd(10x1)+pgd(40x3)+pgd-vote(20x2)"
    checks = results.checks.set_index("check")
    assert (
        "vote_logits: finite for 1.000 of examples, all-zero for 0.000"
        in checks.loc["input_gradients", "detail"]
    )
    assert not checks.loc["vote_not_stronger_than_routed", "passed"]
    assert not checks.loc["input_gradients", "passed"]  # the routed logits have no gradient


class ReversedVotesToy(nn.Module):
    """A stand-in capsnet whose vote head ranks the classes backwards (as a weakly trained capsnet's did on
    the GPU): attacking it pushes the routed output towards the right class."""

    family = "capsnet"
    vote_head = True

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.name = inner, "reversed-votes-toy"

    def forward(self, x: torch.Tensor, output: str = "logits") -> torch.Tensor:
        logits = self.inner(x)
        return -logits if output == "vote_logits" else logits


def test_a_vote_head_that_does_not_classify_is_reported_and_kept_out_of_the_checks(toy, tmp_path):
    capsnet = ReversedVotesToy(toy).eval()
    config = AttackConfig(attacks=("bim", "bim-vote"), eps=(0.0, 0.1, 0.2), units="pixel", steps=5)
    results = attack_model(Victim(capsnet, "toy-capsnet"), eval_set(60), config, tmp_path, progress=False)
    votes, routed = rows(results.summary, "bim-vote"), rows(results.summary, "bim")
    assert votes[0.2] >= votes[0.0] and routed[0.2] <= votes[0.2] - 0.5, "the vote 'attack' does nothing"
    checks = results.checks.set_index("check")
    assert not checks.loc["vote_surrogate_classifies", "passed"]
    assert "vote head: accuracy 0.0" in checks.loc["vote_surrogate_classifies", "detail"]
    assert "vote_not_stronger_than_routed" not in checks.index
    # a vote curve that rises with ε (accuracy above the clean one) is not held against such a model
    rising = results.summary.copy()
    vote_rows = (rising["attack"] == "bim-vote") & (rising["eps_pixel"] > 0)
    rising.loc[vote_rows, "value"] = 1.0
    rising.loc[(rising["attack"] == "bim-vote") & (rising["eps_pixel"] == 0), "value"] = 0.5
    reversed_checks = run_checks(rising, Victim(capsnet, "toy-capsnet"), eval_set(60), config)
    smooth_checks = run_checks(rising, Victim(MaskedRoutingToy(toy).eval(), "toy"), eval_set(60), config)
    assert reversed_checks.set_index("check").loc["monotone_in_eps", "passed"]
    assert not smooth_checks.set_index("check").loc["monotone_in_eps", "passed"]
    # a vote head that classifies passes, and its attack stays in the checks
    smooth = MaskedRoutingToy(toy).eval()
    results = attack_model(
        Victim(smooth, "toy-capsnet"), eval_set(60), config, tmp_path / "b", progress=False
    )
    checks = results.checks.set_index("check")
    assert (
        checks.loc["vote_surrogate_classifies", "passed"] and "vote_not_stronger_than_routed" in checks.index
    )


def test_cli_warns_on_stderr_naming_every_failed_check(toy, tmp_path, monkeypatch):
    """The masked model through the real command: its failed checks reach stderr, one line each."""
    from click.testing import CliRunner

    import robustcaps.attacks.run as attack_run
    from robustcaps.cli import cli

    def masked_run(run_dir, config, out_dir, source, which, progress, data, source_which):
        return attack_model(Victim(QuantisedInput(toy).eval(), "masked-toy"), eval_set(40), config, out_dir)

    monkeypatch.setattr(attack_run, "attack_run_dir", masked_run)
    args = [
        "attack",
        str(tmp_path),
        "--eps",
        "0,0.05",
        "--units",
        "pixel",
        "--attack",
        "pgd",
        "--attack",
        "square",
    ]
    result = CliRunner().invoke(
        cli, [*args, "--queries", "100", "--steps", "5", "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    warnings = [
        line for line in result.stderr.splitlines() if line.startswith("Warning: integrity check failed")
    ]
    failed = pd.read_csv(tmp_path / "out" / "checks.csv").query("not passed")["check"]
    assert len(failed) >= 2 and len(warnings) == len(failed)
    assert all(any(name in line for line in warnings) for name in failed)


def test_monotonicity_tolerates_noise_but_not_a_real_rise():
    def summary(values: list[float], n: int) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "attack": "fgsm",
                "targeted": False,
                "source": "self",
                "role": "sweep",
                "metric": "accuracy",
                "eps_pixel": [0.0, 0.1, 0.2],
                "eps_std": [0.0, 0.1, 0.2],
                "value": values,
                "n": n,
            }
        )

    assert check_monotone(summary([0.9, 0.5, 0.51], 1000))[0]  # one example's worth of noise
    passed, detail = check_monotone(summary([0.9, 0.5, 0.7], 1000))
    assert not passed and "fgsm" in detail
    assert tolerance(0.5, 100) == pytest.approx(0.1) and tolerance(1.0, 100) == pytest.approx(0.01)


def test_iterative_attacks_must_beat_fgsm_white_box_but_may_transfer_worse():
    def summary(source: str, pgd: float) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "attack": ["fgsm", "pgd"],
                "targeted": False,
                "source": source,
                "role": "sweep",
                "metric": "accuracy",
                "eps_pixel": 0.1,
                "eps_std": 0.5,
                "value": [0.375, pgd],
                "n": 1000,
            }
        )

    passed, detail = check_iterative(summary("self", 0.55))
    assert not passed and "pgd" in detail and "0.375" in detail
    assert check_iterative(summary("self", 0.30))[0]
    # crafted on another model, PGD overfits that model: weaker than FGSM there is expected, not masking
    assert check_iterative(summary("cnn-small", 0.55)) is None


@pytest.mark.parametrize("name", ["cnn-small", "capsnet-small"])
def test_registered_models_give_finite_gradients_and_stay_in_the_ball(name):
    from robustcaps.models import create_model

    model = create_model(name).eval()
    images, labels = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    attacks = ("fgsm", "pgd", "fgsm-vote") if model.family == "capsnet" else ("fgsm", "pgd")
    for attack in attacks:
        adversarial = craft(attack, model, images, labels, 0.05, AttackConfig(steps=2))
        assert torch.isfinite(adversarial).all() and (adversarial - images).abs().max() <= 0.05 + 1e-6
        assert not model.training
    images.requires_grad_(True)
    model(images).logsumexp(1).sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_attacks_on_a_capsule_network_run_without_tf32_convolutions(toy, tmp_path):
    class Recording(MaskedRoutingToy):
        def forward(self, x: torch.Tensor, output: str = "logits") -> torch.Tensor:
            seen.append(torch.backends.cudnn.allow_tf32)
            return super().forward(x, output)

    config = AttackConfig(attacks=("fgsm",), eps=(0.0, 0.1), units="pixel", checks=False)
    for family, allowed in (("capsnet", False), ("cnn", True)):
        seen = []
        model = Recording(toy).eval()
        model.family = family
        attack_model(Victim(model, "toy"), eval_set(20), config, tmp_path / family, progress=False)
        assert seen and set(seen) == {allowed}
        assert torch.backends.cudnn.allow_tf32


def test_a_targeted_sweep_checks_that_a_large_budget_reaches_the_targets(toy, tmp_path):
    config = AttackConfig(attacks=("fgsm", "bim"), eps=(0.0, 0.1), units="pixel", steps=10, targeted=(True,))
    cells = check_cells(config, Victim(toy, "toy"), pd.DataFrame(), sigma_mean=0.2)
    assert [(c.attack, c.eps_pixel, c.targeted, c.role) for c in cells] == [
        ("bim", LARGE_EPS_PIXEL, True, "check")
    ]
    empty = pd.DataFrame(columns=["attack", "targeted", "eps_pixel", "source", "role", "value"])
    mixed = check_cells(
        AttackConfig(attacks=("pgd",), targeted=(False, True)), Victim(toy, "toy"), empty, 0.2
    )
    assert [c.targeted for c in mixed][-1] and not mixed[0].targeted  # the untargeted check cells stay
    assert (
        check_cells(
            AttackConfig(attacks=("fgsm",), targeted=(True,)), Victim(toy, "toy"), pd.DataFrame(), 0.2
        )
        == []
    )
    smooth = attack_model(Victim(toy, "toy"), eval_set(40), config, tmp_path / "smooth", progress=False)
    masked = QuantisedInput(toy).eval()
    stuck = attack_model(
        Victim(masked, "masked-toy"), eval_set(40), config, tmp_path / "masked", progress=False
    )
    verdict = {
        name: r.checks.set_index("check")["passed"] for name, r in (("smooth", smooth), ("masked", stuck))
    }
    assert verdict["smooth"]["targeted_large_eps_succeeds"] and verdict["smooth"]["monotone_in_eps"]
    assert not verdict["masked"]["targeted_large_eps_succeeds"]  # the gradients never point at a target
    assert "large_eps_to_chance" not in verdict["smooth"]  # no untargeted check cells in a targeted sweep
    assert any(f.startswith("targeted_large_eps_succeeds") for f in stuck.failed_checks)


def test_targeted_large_eps_threshold_allows_for_sampling_noise():
    def summary(value: float, n: int = 100) -> pd.DataFrame:
        row = dict(
            attack="bim", targeted=True, eps_pixel=LARGE_EPS_PIXEL, role="check", value=value, n=n, steps=10
        )
        return pd.DataFrame([row])

    assert check_targeted_large_eps(summary(0.95))[0]
    assert check_targeted_large_eps(summary(0.75))[0]  # within two standard errors of 0.8 on 100 examples
    assert not check_targeted_large_eps(summary(0.71))[0]  # where results/gpu's capsnet got at ε_std 0.5
    assert "success 0.710, at least 0.8 expected" in check_targeted_large_eps(summary(0.71))[1]
    assert check_targeted_large_eps(summary(0.95).assign(targeted=False)) is None
