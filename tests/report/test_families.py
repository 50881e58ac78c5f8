"""Every capsule family against the CNN: the paired intervals and the verdict line, on made-up numbers."""

from __future__ import annotations

import math

import pandas as pd

from robustcaps.report.families import families_sentence, family_rows

MODELS = {
    "cnn-small": "cnn",
    "capsnet-small": "capsnet",
    "dynamic-capsnet-small": "dynamic",
    "sr-capsnet-small": "self-routing",
}


def _results(dynamic_novel_only_wrong: int, dynamic_robust: int) -> dict:
    n = 1000
    errors = {
        "cnn-small": 0.10,
        "capsnet-small": 0.30,
        "dynamic-capsnet-small": 0.02,
        "sr-capsnet-small": 0.10,
    }
    clean = pd.DataFrame(
        [
            {"model": m, "family": f, "split": "full", "part": "test", "crops": 1, "error": errors[m], "n": n}
            for m, f in MODELS.items()
        ]
    )
    nan = math.nan
    rows = [  # the EM network's paired counts on the CNN's row, the others' on their own (study.viewpoint)
        ("cnn-small", "", 0.30, 50, 50),
        ("capsnet-small", "cnn-small", 0.30, nan, nan),
        (
            "dynamic-capsnet-small",
            "cnn-small",
            0.30 + (dynamic_novel_only_wrong - 100) / n,
            dynamic_novel_only_wrong,
            100,
        ),
        ("sr-capsnet-small", "cnn-small", 0.30, 40, 40),
    ]
    viewpoint = pd.DataFrame(
        [
            {
                "split": "azimuth",
                "protocol": "paper",
                "model": m,
                "family": MODELS[m],
                "matched_to": to,
                "familiar_error": 0.1,
                "novel_error": e,
                "n_familiar": n,
                "n_novel": n,
                "novel_only_capsules_wrong": a,
                "novel_only_cnn_wrong": b,
            }
            for m, to, e, a, b in rows
        ]
    )
    outcomes = []
    for model in MODELS:  # 100 examples; the CNN withstands 50, dynamic routing `dynamic_robust`
        kept = dynamic_robust if model == "dynamic-capsnet-small" else 50
        outcomes += [
            {
                "model": model,
                "family": MODELS[model],
                "attack": attack,
                "targeted": False,
                "eps_std": 0.1,
                "example": i,
                "score": float(i < kept),
            }
            for attack in ("fgsm", "pgd")
            for i in range(100)
        ]
    checks = pd.DataFrame(
        [{"model": m, "check": "gradients_finite", "passed": m != "sr-capsnet-small"} for m in MODELS]
    )
    return {
        "clean": clean,
        "viewpoint": viewpoint,
        "outcomes": pd.DataFrame(outcomes),
        "checks": checks,
        "summary": pd.DataFrame(),
    }


def test_a_family_that_is_better_everywhere_is_named_with_every_measure():
    table, wins, _ = family_rows(_results(dynamic_novel_only_wrong=20, dynamic_robust=90))
    assert list(table["model"]) == ["capsnet-small", "dynamic-capsnet-small", "sr-capsnet-small"]
    assert wins["dynamic-capsnet-small"] == [
        "clean error",
        "novel azimuth error",
        "worst-case accuracy at ε=0.1",
    ]
    assert wins["capsnet-small"] == [] and wins["sr-capsnet-small"] == []
    dynamic = table.set_index("model").loc["dynamic-capsnet-small"]
    assert dynamic["clean error vs CNN, points (95% CI)"].startswith("-8.0")
    assert dynamic["worst-case accuracy vs CNN at ε≈0.1"].startswith("+40.0")
    assert table.set_index("model").loc["sr-capsnet-small", "failed checks"] == "gradients_finite"
    sentence = families_sentence(_results(20, 90))
    assert "dynamic (dynamic-capsnet-small) on clean error, novel azimuth error" in sentence
    assert sentence.endswith("capsnet, self-routing on none.")


def test_no_family_is_named_when_every_interval_reaches_zero():
    results = _results(dynamic_novel_only_wrong=100, dynamic_robust=50)
    results["clean"].loc[results["clean"]["model"] == "dynamic-capsnet-small", "error"] = 0.10
    assert families_sentence(results).startswith("No capsule family beat the CNN")


def test_the_em_networks_novel_error_is_paired_from_the_cnns_row():
    table, _, _ = family_rows(_results(20, 90))
    # 50 only-capsules-wrong against 50 only-CNN-wrong of 1,000: no difference, a symmetric paired interval
    em = table.set_index("model").loc["capsnet-small", "novel azimuth error vs CNN"]
    low, high = (float(x) for x in em.split("(")[1].rstrip(")").split(" to "))
    assert em.startswith("+0.0") and math.isclose(low, -high, abs_tol=0.11) and high < 5


def test_a_family_that_stayed_above_the_cnns_familiar_error_is_compared_with_the_cnn_stopped_there():
    results = _results(dynamic_novel_only_wrong=20, dynamic_robust=90)
    reverse = {
        "split": "azimuth",
        "protocol": "reverse",
        "model": "cnn-small",
        "family": "cnn",
        "matched_to": "dynamic-capsnet-small",
        "familiar_error": 0.2,
        "novel_error": 0.5,
        "n_familiar": 1000,
        "n_novel": 1000,
        "novel_only_capsules_wrong": 10,
        "novel_only_cnn_wrong": 290,
    }
    results["viewpoint"] = pd.concat([results["viewpoint"], pd.DataFrame([reverse])], ignore_index=True)
    table, _, _ = family_rows(results)
    dynamic = table.set_index("model").loc["dynamic-capsnet-small", "novel azimuth error vs CNN"]
    assert dynamic.startswith("-28.0")  # 0.22 against the stopped CNN's 0.50, not the final CNN's 0.30


def test_a_win_on_worst_case_accuracy_with_a_failed_masking_check_is_not_established():
    results = _results(dynamic_novel_only_wrong=100, dynamic_robust=90)  # wins on robustness only
    results["clean"].loc[results["clean"]["model"] == "dynamic-capsnet-small", "error"] = 0.10
    failed = {"model": "dynamic-capsnet-small", "check": "targeted_large_eps_succeeds", "passed": False}
    results["checks"] = pd.concat([results["checks"], pd.DataFrame([failed])], ignore_index=True)
    _, wins, unproven = family_rows(results)
    assert wins["dynamic-capsnet-small"] == []
    sentence = families_sentence(results)
    assert sentence.startswith("No capsule family beat the CNN")
    assert (
        "The win of dynamic (dynamic-capsnet-small) on worst-case accuracy at ε=0.1 is not established: "
        "targeted_large_eps_succeeds failed" in sentence
    )
    # a failed check that says nothing about masked gradients leaves the win standing, named with it
    results["checks"].loc[results["checks"]["check"] == "targeted_large_eps_succeeds", "check"] = (
        "monotone_in_eps"
    )
    _, wins, _ = family_rows(results)
    assert wins["dynamic-capsnet-small"] == ["worst-case accuracy at ε=0.1"]


def test_the_reverse_match_counts_only_where_it_lands_closer_in_familiar_error():
    import pandas as pd

    from robustcaps.report.headline import reverse_match

    def split(forward_gap, reverse_gap):
        rows = [
            ("paper", "cnn", "", 0.0),
            ("paper", "capsnet-small", "cnn", forward_gap),
            ("reverse", "cnn", "capsnet-small", reverse_gap),
        ]
        return pd.DataFrame(rows, columns=["protocol", "model", "matched_to", "familiar_gap"])

    assert reverse_match(split(0.03, 0.002), "capsnet-small")["familiar_gap"] == 0.002  # closer
    assert reverse_match(split(-0.015, 0.02), "capsnet-small") is None  # the forward match was closer
    assert reverse_match(split(0.03, 0.002).iloc[:2], "capsnet-small") is None  # no reverse match made
