"""AutoAttack at its published budget, the worst case over every attack, and its convergence check."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from robustcaps.attacks.adapters import ATTACKS, AttackConfig, AttackTarget, attack_loss, craft, predict
from robustcaps.attacks.autoattack import STANDARD_STEPS, build_ensemble
from robustcaps.attacks.run import attack_model
from robustcaps.attacks.sweep import Victim
from robustcaps.attacks.worst import CONVERGE, check_converged, converge_cell
from tests.attacks.test_attack import accuracy, eval_set

EPS = 0.1  # pixels: the toy keeps a third of its accuracy under APGD-CE here, a tenth under AutoAttack
LARGE_EPS = 0.3  # every member breaks every example at once: the sweep tests stay fast


@pytest.fixture(autouse=True)
def one_thread():
    """The toy's tensors are tiny: Square's 5,000 queries cost per-call overhead, which a second thread on a
    shared machine only adds to."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def correct(model, adversarial: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return predict(model, adversarial) == labels


def test_the_full_budget_ensemble_is_at_least_as_strong_as_each_member_and_pgd_100(toy):
    """Croce & Hein's standard budget: 100 iterations for APGD-CE, APGD-T (4 targets) and FAB-T, 5,000 Square
    queries; the ensemble beats each member run alone, and PGD at 100 steps, on the same examples."""
    data = eval_set(20)
    images, labels = data.images, data.labels
    target = AttackTarget(toy)
    ensemble = build_ensemble(target, EPS, STANDARD_STEPS, 1, 5, seed=0)
    members = dict(zip(("apgd-ce", "apgd-t", "fab-t", "square"), ensemble.attacks, strict=True))
    assert [m.steps for m in ensemble.attacks[:3]] == [100, 100, 100]
    assert members["square"].n_queries == 5000 and members["apgd-t"].n_target_classes == 4
    assert members["fab-t"].multi_targeted and members["fab-t"].n_target_classes == 4
    config = AttackConfig(attacks=("autoattack",), steps=10)  # --steps does not shrink AutoAttack
    adversarial = craft("autoattack", toy, images, labels, EPS, config)
    assert (adversarial - images).abs().max() <= EPS + 1e-6
    robust = correct(toy, adversarial, labels)
    assert 0 < robust.float().mean() < correct(toy, images, labels).float().mean()
    for name, member in members.items():
        alone = correct(toy, member(images, labels), labels)
        assert robust.float().mean() <= alone.float().mean(), name
    # APGD-CE runs first on every example with the same seed, so nothing it breaks survives the ensemble.
    assert not (robust & ~correct(toy, members["apgd-ce"](images, labels), labels)).any()
    pgd = craft("pgd", toy, images, labels, EPS, AttackConfig(attacks=("pgd",), steps=100))
    assert robust.float().mean() <= correct(toy, pgd, labels).float().mean()


def test_a_sweep_records_the_budget_and_the_worst_case_names_autoattack(toy, tmp_path):
    config = AttackConfig(
        attacks=("pgd", "autoattack"), eps=(0.0, LARGE_EPS), units="pixel", steps=10, checks=False
    )
    results = attack_model(Victim(toy, "toy"), eval_set(20), config, tmp_path, progress=False)
    summary = results.summary
    rows = summary[summary["attack"] == "autoattack"]
    assert set(rows["steps"]) == {100} and set(rows["restarts"]) == {1}
    assert set(rows["loss"]) == {attack_loss("autoattack", config)}
    worst = summary[summary["attack"] == "worst"].set_index("eps_pixel")
    assert worst.loc[LARGE_EPS, "worst_of"] == worst.loc[0.0, "worst_of"] == "pgd+autoattack"
    attacked = (accuracy(summary, "autoattack")[LARGE_EPS], accuracy(summary, "pgd")[LARGE_EPS])
    assert worst.loc[LARGE_EPS, "value"] <= min(attacked)
    assert (summary.loc[summary["attack"] != "worst", "worst_of"] == "").all()
    recorded = pd.read_json(tmp_path / "attack_config.json", typ="series")["ensembles"]["autoattack"]
    assert recorded["members"]["apgd-t"] == {
        "steps": 100,
        "restarts_per_target": 1,
        "targets": 4,
        "loss": "dlr-targeted",
        "rho": 0.75,
    }
    assert recorded["members"]["square"]["queries"] == 5000


def test_the_cheaper_variant_has_its_own_name_and_the_sweeps_steps(toy, tmp_path):
    assert "autoattack-fast" in ATTACKS and not any(
        a.startswith("autoattack") and "vote" in a for a in ATTACKS
    )
    config = AttackConfig(
        attacks=("autoattack-fast",), eps=(LARGE_EPS,), units="pixel", steps=5, checks=False
    )
    results = attack_model(Victim(toy, "toy"), eval_set(20), config, tmp_path, progress=False)
    rows = results.summary[results.summary["attack"].str.startswith("autoattack")]
    assert set(rows["attack"]) == {"autoattack-fast"} and set(rows["steps"]) == {5}


def per_example_rows(attack: str, role: str, predictions: list[int], steps: int = 10) -> pd.DataFrame:
    n = len(predictions)
    return pd.DataFrame(
        {
            "example": range(n),
            "label": [0] * n,
            "attack": attack,
            "targeted": False,
            "target": -1,
            "eps_pixel": 0.0 if attack == "clean" else 0.02,
            "eps_std": 0.0 if attack == "clean" else 0.1,
            "source": "self",
            "role": role,
            "steps": steps,
            "restarts": 1,
            "prediction": predictions,
        }
    )


def test_convergence_check_fails_when_doubling_the_budget_breaks_more_than_two_points():
    clean = per_example_rows("clean", "sweep", [0] * 20)
    pgd = per_example_rows("pgd", "sweep", [1] * 10 + [0] * 10)  # worst case 0.5
    same = per_example_rows("pgd", CONVERGE, [1] * 10 + [0] * 10, steps=20)
    one_more = per_example_rows("pgd", CONVERGE, [1] * 11 + [0] * 9, steps=20)  # 0.45: one example of 20
    three_more = per_example_rows("pgd", CONVERGE, [1] * 13 + [0] * 7, steps=20)  # 0.35
    assert check_converged(pd.concat([clean, pgd])) is None  # no doubled run, nothing to say
    passed, detail = check_converged(pd.concat([clean, pgd, same]))
    assert passed and "0.500, 0.500" in detail and "+0.000" in detail
    assert check_converged(pd.concat([clean, pgd, one_more]))[0]  # one example is within the slack
    passed, detail = check_converged(pd.concat([clean, pgd, three_more]))
    assert not passed and "-0.150" in detail


def test_convergence_doubles_the_strongest_attack_nearest_eps_0_1():
    rows = [
        ("fgsm", 0.1, 0.2, 1, 1),
        ("pgd", 0.1, 0.4, 10, 1),
        ("autoattack", 0.1, 0.3, 100, 1),
        ("pgd", 0.25, 0.1, 10, 1),
        ("fgsm", 0.1, 0.2, 1, 1),
    ]
    summary = pd.DataFrame(rows, columns=["attack", "eps_std", "value", "steps", "restarts"]).assign(
        eps_pixel=lambda t: t["eps_std"] / 10, role="sweep", source="self", targeted=False
    )
    config = AttackConfig(attacks=("fgsm", "pgd", "autoattack"), eps=(0.1, 0.25))
    cell = converge_cell(config, summary)  # FGSM (one step) has no budget to double
    # AutoAttack is strongest: its lead member APGD-CE reruns at twice the ensemble's 100 steps, 1 restart
    assert (cell.attack, cell.eps, cell.steps, cell.restarts, cell.role) == (
        "apgd-ce",
        0.1,
        200,
        2,
        CONVERGE,
    )
    tied = summary.assign(value=lambda t: t["value"].where(t["attack"] != "pgd", 0.3))
    assert converge_cell(config, tied).steps == 200  # a tie goes to the attack listed last: AutoAttack
    pgd_strongest = summary.assign(value=lambda t: t["value"].where(t["attack"] != "pgd", 0.25))
    assert (converge_cell(config, pgd_strongest).attack, converge_cell(config, pgd_strongest).steps) == (
        "pgd",
        20,
    )


def test_a_checked_sweep_reports_whether_its_worst_case_converged(toy, tmp_path):
    config = AttackConfig(attacks=("fgsm", "bim"), eps=(0.0, 0.05, EPS), units="pixel", steps=10)
    results = attack_model(Victim(toy, "toy"), eval_set(20), config, tmp_path, progress=False)
    doubled = results.summary[results.summary["role"] == CONVERGE]
    assert len(doubled) == 1 and doubled.iloc[0]["attack"] == "bim" and doubled.iloc[0]["steps"] == 20
    check = results.checks.set_index("check").loc["worst_case_converged"]
    assert "twice its budget" in check["detail"]
    worst = results.summary[results.summary["attack"] == "worst"].set_index("eps_pixel")
    assert "bim(20x2)" in worst.loc[doubled.iloc[0]["eps_pixel"], "worst_of"]


def test_autoattack_runs_only_at_the_ensemble_eps_when_they_are_given():
    from robustcaps.attacks.adapters import AttackConfig
    from robustcaps.attacks.sweep import Victim, sweep_cells
    from robustcaps.models import create_model

    victim = Victim(create_model("cnn-small"), "cnn-small")
    config = AttackConfig(attacks=("pgd", "autoattack"), eps=(0.0, 0.1, 0.5), ensemble_eps=(0.1,))
    cells = sweep_cells(config, victim, sigma_mean=0.2)
    assert sorted(c.eps for c in cells if c.attack == "pgd") == [0.0, 0.1, 0.5]
    assert [c.eps for c in cells if c.attack == "autoattack"] == [0.1]
    every = sweep_cells(AttackConfig(attacks=("autoattack",), eps=(0.0, 0.1)), victim, sigma_mean=0.2)
    assert len(every) == 2  # without ensemble_eps, at every ε as before
