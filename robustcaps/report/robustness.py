"""The attack findings in plain words: the robustness verdict on the EM pair and one sentence per paper
attack, every number from robustcaps.report.headline.

Words for numbers, stated once:
- the capsules have an apparent robustness advantage when their FGSM/BIM accuracy (each model at its
  lower of the two) is higher than the CNN's by a difference whose 95% interval excludes 0;
- it "survives" when every integrity check on the capsule model passes and their worst-case accuracy
  is still clearly (same sense) higher; it is "not established" when it is clearly higher but a check
  that points to masked gradients failed (headline.MASKING_CHECKS);
- an interval that includes 0 names no winner, and one wider than ±INTERVAL_GOAL is said to be too wide
  to conclude.
"""

from __future__ import annotations

import pandas as pd

from robustcaps.paper_results import CLEAN_ERROR, FIG3
from robustcaps.report import columns as col
from robustcaps.report.headline import (
    EPS,
    INTERVAL_GOAL,
    Difference,
    accuracy,
    accuracy_difference,
    masking_failures,
    nearest_eps,
    not_established,
    worst_case_difference,
)
from robustcaps.report.tables import PAPER_ATTACKS, csv_bool, family_of, percent
from robustcaps.uncertainty import difference, paired_mean_difference

CLEAN_GAP = 0.05  # clean accuracies on the attacked examples further apart than this are said first
TARGETED_EPS = 0.25  # HSF18 Fig. 3 compares targeted success rates here


def em_models(summary: pd.DataFrame) -> tuple[str, str] | None:
    """(the EM capsule model, the CNN) among the attacked models; None unless both were attacked."""
    if summary.empty:
        return None
    models = list(dict.fromkeys(summary[col.MODEL]))
    first = [next((m for m in models if family_of(m) == family), None) for family in ("capsnet", "cnn")]
    return tuple(first) if None not in first else None


def _points(d: Difference) -> str:
    paired = f", paired on the same {d.paired} examples" if d.paired else ""
    return f"{100 * d.gap:+.1f} points, 95% interval {100 * d.low:+.1f} to {100 * d.high:+.1f}{paired}"


def too_wide_sentence(d: Difference, n: int) -> str:
    return (
        f"That interval is too wide to conclude either way: ±{50 * (d.high - d.low):.1f} points on {n} "
        f"examples, where a comparison that answers needs at most ±{100 * INTERVAL_GOAL:.0f}."
    )


def apparent_advantage(results: dict, pair: tuple[str, str], eps: float = EPS) -> Difference | None:
    """Capsules' minus the CNN's accuracy under the paper's attacks (FGSM, BIM) at ε ≈ `eps`, each model at
    its lower of the two, with the 95% interval of the difference (headline.accuracy_difference)."""
    lowest = []
    for model in pair:
        measured = [a for a in (accuracy(results, model, (attack,), eps) for attack in PAPER_ATTACKS) if a]
        if not measured:
            return None
        lowest.append(min(measured, key=lambda a: a.value))
    caps, cnn = lowest
    return accuracy_difference(caps, cnn) if abs(caps.eps - cnn.eps) < 1e-9 else None


def failed_checks(checks: pd.DataFrame, family: str) -> list[str]:
    if checks.empty:
        return []
    failed = checks[~csv_bool(checks[col.PASSED])]
    return sorted(set(failed.loc[failed[col.MODEL].map(family_of) == family, col.CHECK]))


def _checks_sentences(checks: pd.DataFrame) -> list[str]:
    caps_failed, cnn_failed = failed_checks(checks, "capsnet"), failed_checks(checks, "cnn")
    # with other capsule families in the run, the sentences are about the EM one (families.py: the rest)
    others = not checks.empty and checks[col.MODEL].map(family_of).isin(("dynamic", "self-routing")).any()
    em = "EM capsule" if others else "capsule"
    parts = [
        "No integrity checks were run, so robustness claims are unverified."
        if checks.empty
        else f"Integrity checks failed on the {em} model: {', '.join(caps_failed)}."
        if caps_failed
        else f"Every integrity check passed on the {em} model."
    ]
    return parts + ([f"On the CNN these failed: {', '.join(cnn_failed)}."] if cnn_failed else [])


def robustness_verdict(results: dict) -> str:
    """The integrity checks, the worst-case comparison of the EM pair at ε ≈ 0.1, and whether the capsules'
    FGSM/BIM advantage (if any) survives, is not established, or does not survive."""
    checks = results["checks"]
    parts = _checks_sentences(checks)
    pair = em_models(results["summary"])
    apparent = apparent_advantage(results, pair) if pair else None
    worst = worst_case_difference(results, *pair) if pair else None
    if apparent is None or worst is None:
        return " ".join(parts)
    caps, cnn, survived = worst
    parts.append(
        f"Under the worst attack at ε={caps.eps:g}, accuracy is {caps.value:.2f} (capsules) vs "
        f"{cnn.value:.2f} (CNN): {_points(survived)}."
    )
    parts += [too_wide_sentence(survived, survived.paired or min(caps.n, cnn.n))] if survived.too_wide else []
    seen, masking = f"{_points(apparent)}, at ε≈{EPS:g}", masking_failures(checks, pair[0])
    if apparent.low <= 0 and survived.low > 0:  # an advantage, but not under the paper's attacks
        parts.append(
            f"That advantage is not the paper's: under FGSM/BIM alone it is not clear ({seen})"
            + (f"; and it is {not_established(masking)}." if masking else ".")
        )
    elif apparent.low <= 0:
        parts.append(
            f"The capsules show no clear robustness advantage under FGSM/BIM to begin with ({seen}), so "
            "there is nothing for the checks to confirm."
        )
    elif masking and survived.low > 0:
        parts.append(
            f"So the capsules' robustness advantage (FGSM/BIM {seen}) is {not_established(masking)}: a "
            "sign of masked gradients, not of robustness."
        )
    elif failed_checks(checks, "capsnet") or checks.empty or survived.low <= 0:
        reason = (
            "failed checks point to masked gradients"
            if failed_checks(checks, "capsnet")
            else ("the advantage is no longer clear")
        )
        parts.append(
            f"So the capsules' apparent FGSM/BIM advantage ({seen}) does not survive the integrity checks "
            f"and the stronger attacks ({reason})."
        )
    else:
        parts.append(
            f"So the capsules' FGSM/BIM advantage ({seen}) survives the integrity checks and the stronger "
            "attacks."
        )
    return " ".join(parts)


def clean_start_sentences(summary: pd.DataFrame) -> list[str]:
    """The attacked examples' clean accuracy per family, when the two differ by CLEAN_GAP or more: every
    untargeted accuracy under attack starts from there, and the paper compared models that were both
    accurate (paper_results.CLEAN_ERROR)."""
    rows = summary[(summary[col.ATTACK] == col.CLEAN) & (summary[col.SOURCE] == "") & ~summary[col.TARGETED]]
    value = rows.groupby(col.FAMILY)[col.VALUE].mean()
    if not {"capsnet", "cnn"} <= set(value.index) or abs(value["capsnet"] - value["cnn"]) < CLEAN_GAP:
        return []
    paper = f"{percent(CLEAN_ERROR[('capsnet', 1)])} and {percent(CLEAN_ERROR[('cnn', 1)])}"
    return [
        f"On the attacked examples the clean accuracy (ε=0) was {value['capsnet']:.2f} for the capsules and "
        f"{value['cnn']:.2f} for the CNN: the untargeted comparisons below start from that gap of "
        f"{value['capsnet'] - value['cnn']:+.2f} (the paper's models had {paper} clean test error)."
    ]


def _paper(attack: str, targeted: bool, eps: float) -> str:
    caps, cnn = (FIG3[(family, attack, targeted, eps)] for family in ("capsnet", "cnn"))
    return f"paper at ε={eps}: {caps:.2f} vs {cnn:.2f}"


def _untargeted_sentence(results: dict, pair: tuple[str, str], attack: str) -> str | None:
    caps, cnn = (accuracy(results, model, (attack,), EPS) for model in pair)
    if caps is None or cnn is None or abs(caps.eps - cnn.eps) > 1e-9:
        return None
    d = accuracy_difference(caps, cnn)
    on = f"on {caps.n} / {cnn.n} examples"
    if d.paired:
        on = (
            f"paired on the same {d.paired} examples, {d.only_first} of which only the capsules and "
            f"{d.only_second} only the CNN withstood"
        )
    return (
        f"Untargeted {attack.upper()} at ε={caps.eps:g}: accuracy {caps.value:.2f} for the capsules vs "
        f"{cnn.value:.2f} for the CNN, difference {d.gap:+.2f} (95% interval {d.low:+.2f} to {d.high:+.2f}, "
        f"{on}; {_paper(attack, False, EPS)})."
    )


def _targeted_sentence(results: dict, attack: str) -> str | None:
    """Success rates averaged over the wrong target classes: each example's success over its targets is
    paired by example (a t interval) where the per-example outcomes are there."""
    summary = results["summary"]
    rows = summary[
        (summary[col.ATTACK] == attack)
        & summary[col.TARGETED]
        & (summary[col.SOURCE] == "")
        & (summary[col.ROLE] == col.SWEEP)
        & (summary[col.EPS_STD] > 0)
    ]
    at = nearest_eps(rows[col.EPS_STD], TARGETED_EPS)
    if at is None:
        return None
    rows = rows[(rows[col.EPS_STD] - at).abs() < 1e-9]
    value, n = rows.groupby(col.FAMILY)[col.VALUE].mean(), rows.groupby(col.FAMILY)[col.N].min()
    if not {"capsnet", "cnn"} <= set(value.index):
        return None
    scores = _paired_scores(results.get("outcomes"), attack, at)
    if scores is not None:
        low, high = paired_mean_difference(scores["capsnet"], scores["cnn"])
        on = f"paired on the same {len(scores)} examples, t interval over examples"
    else:
        low, high = difference(value["capsnet"], n["capsnet"], value["cnn"], n["cnn"])
        on = f"on {n['capsnet']} / {n['cnn']} examples"
    return (
        f"Targeted {attack.upper()} at ε={at:g}: targeted success rate {value['capsnet']:.2f} for the "
        f"capsules vs {value['cnn']:.2f} for the CNN, difference {value['capsnet'] - value['cnn']:+.2f} "
        f"(95% interval {low:+.2f} to {high:+.2f}, {on}; {_paper(attack, True, TARGETED_EPS)})."
    )


def _paired_scores(outcomes: pd.DataFrame | None, attack: str, eps: float) -> pd.DataFrame | None:
    """Per example (rows), the two families' targeted scores (columns capsnet, cnn; tables.white_box_outcomes)
    in one sweep cell, when both met the same examples; None otherwise."""
    if outcomes is None or outcomes.empty:
        return None
    in_cell = (outcomes[col.ATTACK] == attack) & outcomes[col.TARGETED]
    cell = outcomes[in_cell & ((outcomes[col.EPS_STD] - eps).abs() < 1e-9)]
    scores = cell.pivot_table(index=col.EXAMPLE, columns=col.FAMILY, values=col.SCORE, aggfunc="first")
    if not {"capsnet", "cnn"} <= set(scores.columns) or scores[["capsnet", "cnn"]].isna().any().any():
        return None
    return scores


def attack_sentences(results: dict) -> list[str]:
    """One sentence per paper attack: untargeted at ε ≈ 0.1, targeted at ε ≈ 0.25, as HSF18 Fig. 3."""
    pair = em_models(results["summary"])
    untargeted = [_untargeted_sentence(results, pair, attack) for attack in PAPER_ATTACKS] if pair else []
    targeted = [_targeted_sentence(results, attack) for attack in PAPER_ATTACKS]
    return [sentence for sentence in untargeted + targeted if sentence]
