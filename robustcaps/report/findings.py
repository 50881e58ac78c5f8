"""The README's plain-words paragraph, generated from the numbers (no conclusion is written in advance).

Thresholds that turn numbers into words are stated here, once:
- familiar errors "match" when they differ by at most MATCH_TOLERANCE (HSF18 compares at equal
  familiar error);
- two models' errors (or accuracies) differ when the 95% interval of the difference excludes 0
  (robustcaps.uncertainty: Newcombe's interval for paired data where both met the same images, else his
  interval for independent samples on the two test sets' sizes), and are "not distinguishable" otherwise;
- a model with clean test error above USABLE_ERROR is called too weak for the comparisons to mean much;
- the capsules have an apparent robustness advantage when their FGSM/BIM accuracy is higher than the CNN's by
  a difference whose 95% interval excludes 0, and it "survives" when every integrity check on the capsule
  model passes and their accuracy under the worst attack we ran is still clearly (same sense) higher.
"""

from __future__ import annotations

import math

import pandas as pd

from robustcaps.paper_results import CLEAN_ERROR, FIG3, TABLE2
from robustcaps.report.families import families_sentence
from robustcaps.report.tables import (
    PAPER_ATTACKS,
    csv_bool,
    em_pair,
    family_of,
    full_test_rows,
    step_of,
    with_protocol,
)
from robustcaps.uncertainty import difference, paired_difference, paired_mean_difference

MATCH_TOLERANCE = 0.01
USABLE_ERROR = 0.5  # chance is 80% on 5 classes; above this a model is too weak to compare robustness
EPS_TOLERANCE = 0.05  # compare with the paper's ε only where our sweep has an ε this close to it
CLEAN_GAP = 0.05  # clean accuracies on the attacked examples further apart than this are said first


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _compare(ours: float, n_ours: int, theirs: float, n_theirs: int, lower_is_better: bool) -> str:
    """The capsules' rate against the CNN's in words, with the 95% interval of the difference."""
    return _words(ours - theirs, difference(ours, n_ours, theirs, n_theirs), lower_is_better,
                  f"on {n_ours} / {n_theirs} images")  # fmt: skip


def _compare_novel(caps, cnn) -> str:
    """Novel-viewpoint errors of the capsules and a CNN row; paired when the row counts the images only
    one of the two got wrong (both models see the same novel images), else as independent samples."""
    only_caps, only_cnn = (
        getattr(cnn, c, math.nan) for c in ("novel_only_capsules_wrong", "novel_only_cnn_wrong")
    )
    if math.isnan(only_caps) or math.isnan(only_cnn):
        return _compare(caps.novel_error, caps.n_novel, cnn.novel_error, cnn.n_novel, lower_is_better=True)
    interval = paired_difference(
        caps.novel_error, cnn.novel_error, int(only_caps), int(only_cnn), int(cnn.n_novel)
    )
    return _words(caps.novel_error - cnn.novel_error, interval, True,
                  f"on the same {cnn.n_novel} images, {int(only_caps)} of which only the capsules and "
                  f"{int(only_cnn)} only the CNN got wrong")  # fmt: skip


def _words(gap: float, interval: tuple[float, float], lower_is_better: bool, where: str) -> str:
    low, high = interval
    if low <= 0 <= high:
        return (
            f"not distinguishable from the CNN's {where} (difference {100 * gap:+.1f} points, 95% interval "
            f"{100 * low:+.1f} to {100 * high:+.1f})"
        )
    better = (gap < 0) == lower_is_better
    near, far = sorted((abs(low), abs(high)))
    return (
        f"{'better' if better else 'worse'} than the CNN by {100 * abs(gap):.1f} points (95% interval "
        f"{100 * near:.1f} to {100 * far:.1f}, {where})"
    )


def demo_sentence(provenance: dict, dataset_kind: str) -> str:
    preset = provenance.get("preset", "?")
    if provenance.get("demo"):
        where = "CPU " if "cpu" in str(provenance.get("device", "")).lower() else ""
        return (
            f"**These numbers are a {where}demo (preset `{preset}`) on the rendered "
            "stand-in dataset, not the paper's setting** (real smallNORB, full-size models trained to "
            "convergence); read them as a test that the pipeline works and as a small-scale indication, "
            "not as a replication."
        )
    if dataset_kind == "rendered":
        steps = capsnet_setting(provenance, "steps", "capsnet_steps") or "?"
        return (
            f"**These numbers come from preset `{preset}` on the rendered stand-in dataset, not the paper's "
            f"setting** (real smallNORB, models trained to convergence): the full-size models and the whole "
            f"protocol, but short training (at most {steps} capsule steps), so they are an indication at "
            "this budget, not a replication."
        )
    return f"These numbers come from preset `{preset}` on {dataset_kind} data."


# Capsule settings that HSF18 fixes, and the words for a preset that changes them
PAPER_CAPSNET = {
    "iterations": (3, "EM routing iterations"),
    "estep_temperature": (1.0, "as the E-step temperature T (R ∝ a p^T)"),
}


def capsnet_setting(provenance: dict, name: str, legacy_key: str) -> object:
    """One training setting of the preset's EM capsule network: from its TrainConfig (preset_settings
    ["capsnet"]), or from the flat key provenance.json held before presets held configs."""
    settings = provenance.get("preset_settings", {})
    capsnet = settings.get("capsnet")
    return capsnet.get(name) if isinstance(capsnet, dict) else settings.get(legacy_key)


def capsnet_model_settings(provenance: dict) -> dict:
    """The capsule network's model settings that its recipe and model options change."""
    capsnet = provenance.get("preset_settings", {}).get("capsnet")
    if isinstance(capsnet, dict):
        from robustcaps.training.config import TrainConfig  # imports torch: only for new provenance

        return TrainConfig.from_dict(capsnet).model_settings
    return dict(provenance.get("preset_settings", {}).get("capsnet_overrides", ()))


def deviation_sentences(provenance: dict) -> list[str]:
    """Where the preset's capsule network is not the paper's (its recipe and model options), said up front."""
    overrides = capsnet_model_settings(provenance)
    sentences = []
    for field, (paper, words) in PAPER_CAPSNET.items():
        if field in overrides and overrides[field] != paper:
            sentences.append(
                f"The capsule networks here use {overrides[field]} {words}, not the paper's {paper} (set by "
                f"the preset: at this training budget they learned much faster that way); their results "
                f"describe that variant."
            )
    schedule = capsnet_setting(provenance, "lr_schedule", "lr_schedule") or "exponential"
    if schedule != "exponential":
        sentences.append(
            f"Both families here anneal the learning rate on a {schedule} schedule over each run, not the "
            "paper's exponential decay (set by the preset: it trained better at this budget)."
        )
    return sentences


def weak_model_sentences(clean: pd.DataFrame) -> list[str]:
    """A warning for each model whose clean error on the full split's test part is near chance."""
    if clean.empty:
        return []
    rows = full_test_rows(clean)
    return [
        f"Caution: {row.model} has {_pct(row.error)} clean test error (chance: 80%), so it is too weak for "
        "the comparisons below to say much about its family; train longer (presets `gpu`, `paper`)."
        for row in rows.itertuples()
        if row.error > USABLE_ERROR
    ]


def viewpoint_sentences(viewpoint: pd.DataFrame) -> list[str]:
    out = []
    viewpoint = em_pair(with_protocol(viewpoint))
    for split, rows in viewpoint.groupby("split"):
        paper = rows[rows["protocol"] == "paper"]
        by_family = {family_of(m): r for m, r in zip(paper["model"], paper.itertuples(), strict=True)}
        if not {"capsnet", "cnn"} <= by_family.keys():
            continue
        caps, cnn = by_family["capsnet"], by_family["cnn"]
        gap = caps.familiar_error - cnn.familiar_error
        matched = (
            "matched" if abs(gap) <= MATCH_TOLERANCE else "not matched, so this comparison is confounded"
        )
        paper_gap = TABLE2[(split, "cnn")]["novel_error"] - TABLE2[(split, "capsnet")]["novel_error"]
        out.append(
            f"On the {split} split the familiar-viewpoint errors were {matched} "
            f"(capsules {_pct(caps.familiar_error)}, CNN {_pct(cnn.familiar_error)}, "
            f"gap {100 * gap:+.1f} points); "
            f"on novel viewpoints the capsules erred {_pct(caps.novel_error)} "
            f"against the CNN's {_pct(cnn.novel_error)}, "
            f"{_compare_novel(caps, cnn)}; "
            f"the paper found the capsules better by {100 * paper_gap:.1f} points."
        )
        out += [_reverse_sentence(caps, row) for row in rows[rows["protocol"] == "reverse"].itertuples()]
    return out


def _reverse_sentence(caps, cnn) -> str:
    """The CNN stopped where its familiar error first reached the capsules' (study.viewpoint, step 4)."""
    return (
        f"Stopping the CNN instead at its first checkpoint whose familiar error reached the capsules' "
        f"({step_of(cnn.checkpoint)}: familiar {_pct(cnn.familiar_error)}, gap {100 * cnn.familiar_gap:+.1f} "
        f"points), its novel error was {_pct(cnn.novel_error)}: the capsules' "
        f"{_pct(caps.novel_error)} is {_compare_novel(caps, cnn)}."
    )


def _at_eps(rows: pd.DataFrame, eps: float) -> tuple[float, pd.DataFrame]:
    """The rows at our ε > 0 closest to `eps` (sweeps need not contain the paper's exact ε); none when
    the closest is further than EPS_TOLERANCE, so a sentence never compares different budgets."""
    rows = rows[rows["eps_std"] > 0]
    if rows.empty:
        return eps, rows
    nearest = rows["eps_std"].iloc[(rows["eps_std"] - eps).abs().argmin()]
    if abs(nearest - eps) > EPS_TOLERANCE:
        return eps, rows.iloc[:0]
    return float(nearest), rows[(rows["eps_std"] - nearest).abs() < 1e-9]


def _paired_accuracy(
    outcomes: pd.DataFrame | None, attack: str, eps: float, cnn_attack: str | None = None
) -> tuple[float, float, int, int, int] | None:
    """(capsules' accuracy, CNN's accuracy, examples only the capsules withstood, only the CNN withstood,
    n): paired_difference's arguments for one untargeted white-box cell (`attack` on the capsules,
    `cnn_attack`, by default the same, on the CNN), when both families were attacked on the same
    examples; None otherwise."""
    scores = _paired_scores(outcomes, False, attack, eps, cnn_attack)
    if scores is None:
        return None
    caps, cnn = scores["capsnet"].astype(bool), scores["cnn"].astype(bool)
    return caps.mean(), cnn.mean(), int((caps & ~cnn).sum()), int((~caps & cnn).sum()), len(scores)


def _paired_scores(
    outcomes: pd.DataFrame | None, targeted: bool, attack: str, eps: float, cnn_attack: str | None = None
) -> pd.DataFrame | None:
    """Per example (rows), the two families' scores (columns capsnet, cnn; report_tables.white_box_outcomes)
    in one sweep cell, when both met the same examples; None otherwise."""
    if outcomes is None or outcomes.empty:
        return None
    attacks = {"capsnet": attack, "cnn": cnn_attack or attack}
    in_cell = (outcomes["attack"] == outcomes["family"].map(attacks)) & (outcomes["targeted"] == targeted)
    cell = outcomes[in_cell & ((outcomes["eps_std"] - eps).abs() < 1e-9)]
    scores = cell.pivot_table(index="example", columns="family", values="score", aggfunc="first")
    if not {"capsnet", "cnn"} <= set(scores.columns) or scores[["capsnet", "cnn"]].isna().any().any():
        return None
    return scores


def clean_start_sentences(summary: pd.DataFrame) -> list[str]:
    """The attacked examples' clean accuracy per family, when the two differ by CLEAN_GAP or more: every
    untargeted accuracy under attack starts from there, and the paper compared models that were both
    accurate (1.8% and 5.2% clean test error)."""
    rows = summary[(summary["attack"] == "clean") & (summary["source"] == "") & ~summary["targeted"]]
    value = rows.groupby("family")["value"].mean()
    if not {"capsnet", "cnn"} <= set(value.index) or abs(value["capsnet"] - value["cnn"]) < CLEAN_GAP:
        return []
    paper = f"{_pct(CLEAN_ERROR[('capsnet', 1)])} and {_pct(CLEAN_ERROR[('cnn', 1)])}"
    return [
        f"On the attacked examples the clean accuracy (ε=0) was {value['capsnet']:.2f} for the capsules and "
        f"{value['cnn']:.2f} for the CNN: the untargeted comparisons below start from that gap of "
        f"{value['capsnet'] - value['cnn']:+.2f} (the paper's models had {paper} clean test error)."
    ]


def attack_sentences(summary: pd.DataFrame, outcomes: pd.DataFrame | None = None) -> list[str]:
    out = []
    for targeted, eps in ((False, 0.1), (True, 0.25)):
        for attack in PAPER_ATTACKS:
            rows = summary[
                (summary["attack"] == attack)
                & (summary["targeted"] == targeted)
                & (summary["source"] == "")
                & (summary["role"] == "sweep")
            ]
            at, rows = _at_eps(rows, eps)
            value = rows.groupby("family")["value"].mean()
            if not {"capsnet", "cnn"} <= set(value.index):
                continue
            n = rows.groupby("family")["n"].min()
            paired = None if targeted else _paired_accuracy(outcomes, attack, at)
            scores = _paired_scores(outcomes, True, attack, at) if targeted else None
            if paired is not None:  # the same examples for both: only where the two differ counts
                low, high = paired_difference(*paired)
                on = f"paired on the same {paired[4]} examples, {paired[2]} of which only the capsules and "
                on += f"{paired[3]} only the CNN withstood"
            elif scores is not None:  # each example's success over its 4 targets, paired by example
                low, high = paired_mean_difference(scores["capsnet"], scores["cnn"])
                on = f"paired on the same {len(scores)} examples, t interval over examples"
            else:
                low, high = difference(value["capsnet"], n["capsnet"], value["cnn"], n["cnn"])
                on = f"on {n['capsnet']} / {n['cnn']} examples"
            what = "targeted success rate" if targeted else "accuracy"
            caps_paper, cnn_paper = (FIG3[(f, attack, targeted, eps)] for f in ("capsnet", "cnn"))
            paper = f"paper at ε={eps}: {caps_paper:.2f} vs {cnn_paper:.2f}"
            out.append(
                f"{'Targeted' if targeted else 'Untargeted'} {attack.upper()} at ε={at:g}: {what} "
                f"{value['capsnet']:.2f} for the capsules vs {value['cnn']:.2f} for the CNN, difference "
                f"{value['capsnet'] - value['cnn']:+.2f} (95% interval {low:+.2f} to {high:+.2f}, {on}; "
                f"{paper})."
            )
    return out


def _lowest(rows: pd.DataFrame) -> pd.DataFrame:
    """Per family, the row of lowest value (its `value` and `n`)."""
    return rows.loc[rows.groupby("family")["value"].idxmin()].set_index("family")


def _capsules_minus_cnn(
    lowest: pd.DataFrame, at: float, outcomes: pd.DataFrame | None = None
) -> tuple[float, float, float, int] | None:
    """The capsules' accuracy minus the CNN's (each family's row of `lowest`, at ε `at`), with the 95%
    interval of that difference: paired when both met the same examples (their per-example outcomes
    under each family's own attack), else as independent samples. The last item: the examples paired on,
    0 when unpaired."""
    if not {"capsnet", "cnn"} <= set(lowest.index):
        return None
    caps, cnn = lowest.loc["capsnet"], lowest.loc["cnn"]
    paired = _paired_accuracy(outcomes, caps["attack"], at, cnn["attack"])
    if paired is not None:
        return caps["value"] - cnn["value"], *paired_difference(*paired), paired[4]
    return (
        caps["value"] - cnn["value"],
        *difference(caps["value"], int(caps["n"]), cnn["value"], int(cnn["n"])),
        0,
    )


def worst_attack(summary: pd.DataFrame, eps: float) -> tuple[float, pd.DataFrame] | None:
    """Per family, the untargeted accuracy (and its n) under the worst attack at the ε closest to `eps`.

    the attacks' per-example worst case ("worst" rows) when present, else the lowest accuracy of
    any single attack (an upper bound on the per-example worst case)."""
    rows = summary[(~summary["targeted"]) & (summary["metric"] == "accuracy") & (summary["role"] == "sweep")]
    at, rows = _at_eps(rows, eps)
    if rows.empty:
        return None
    worst = rows[rows["attack"] == "worst"]
    return at, _lowest(worst if not worst.empty else rows)


def failed_checks(checks: pd.DataFrame, family: str) -> list[str]:
    if checks.empty:
        return []
    failed = checks[~csv_bool(checks["passed"])]
    return sorted(set(failed.loc[failed["model"].map(family_of) == family, "check"]))


def apparent_advantage(
    summary: pd.DataFrame, eps: float = 0.1, outcomes: pd.DataFrame | None = None
) -> tuple[float, float, float, int] | None:
    """Capsules' minus the CNN's accuracy under the paper's attacks (FGSM, BIM) at ε ≈ 0.1, each family at
    its lower of the two, with the 95% interval of the difference (see _capsules_minus_cnn)."""
    paper = summary[summary["attack"].isin(PAPER_ATTACKS) & ~summary["targeted"] & (summary["source"] == "")
                    & (summary["role"] == "sweep")]  # fmt: skip
    at, rows = _at_eps(paper, eps)
    return _capsules_minus_cnn(_lowest(rows), at, outcomes) if not rows.empty else None


def _points(difference: tuple[float, float, float, int]) -> str:
    gap, low, high = (100 * x for x in difference[:3])
    paired = f", paired on the same {difference[3]} examples" if difference[3] else ""
    return f"{gap:+.1f} points, 95% interval {low:+.1f} to {high:+.1f}{paired}"


def robustness_verdict(
    summary: pd.DataFrame, checks: pd.DataFrame, outcomes: pd.DataFrame | None = None
) -> str:
    caps_failed, cnn_failed = failed_checks(checks, "capsnet"), failed_checks(checks, "cnn")
    # with other capsule families in the run, the sentences below are about the EM one (families.py: the rest)
    others = not checks.empty and (checks["model"].map(family_of).isin(("dynamic", "self-routing"))).any()
    em = "EM capsule" if others else "capsule"
    parts = ["No integrity checks were run, so robustness claims are unverified." if checks.empty else
             f"Integrity checks failed on the {em} model: {', '.join(caps_failed)}." if caps_failed else
             f"Every integrity check passed on the {em} model."]  # fmt: skip
    if cnn_failed:
        parts.append(f"On the CNN these failed: {', '.join(cnn_failed)}.")
    apparent = apparent_advantage(summary, outcomes=outcomes) if not summary.empty else None
    worst = worst_attack(summary, 0.1) if not summary.empty else None
    survived = _capsules_minus_cnn(worst[1], worst[0], outcomes) if worst is not None else None
    if apparent is None or survived is None:
        return " ".join(parts)
    at, value = worst[0], worst[1]["value"]
    parts.append(f"Under the worst attack at ε={at:g}, accuracy is {value['capsnet']:.2f} (capsules) vs "
                 f"{value['cnn']:.2f} (CNN): {_points(survived)}.")  # fmt: skip
    seen = f"{_points(apparent)}, at ε≈0.1"
    if apparent[1] <= 0:
        parts.append(
            f"The capsules show no clear robustness advantage under FGSM/BIM to begin with ({seen}), so "
            "there is nothing for the checks to confirm."
        )
    elif caps_failed or checks.empty or survived[1] <= 0:
        reason = (
            "failed checks point to masked gradients" if caps_failed else "the advantage is no longer clear"
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


def verdict(results: dict) -> str:
    """The robustness verdict on the EM pair (when anything was attacked or checked), then which capsule
    families beat the CNN (when the run has more than one); empty when there is neither."""
    summary, checks = results["summary"], results["checks"]
    attacked = not summary.empty or not checks.empty
    robustness = robustness_verdict(summary, checks, results.get("outcomes")) if attacked else ""
    return " ".join(filter(None, (robustness, families_sentence(results))))


def findings_sections(results: dict, dataset_kind: str) -> str:
    """The same findings as Markdown a reader can scan: the verdict first, then what the numbers are, then
    one bullet per comparison under Viewpoints, Attacks and Checks."""
    provenance, summary = results["provenance"], results["summary"]
    outcomes = results.get("outcomes")
    blocks = []
    said = verdict(results)
    if said:
        blocks.append(f"**Verdict.** {said}")
    setting = [demo_sentence(provenance, dataset_kind), *deviation_sentences(provenance)]
    blocks.append(" ".join(setting + weak_model_sentences(results["clean"])))
    sections = {
        "Viewpoints": viewpoint_sentences(results["viewpoint"]) if not results["viewpoint"].empty else [],
        "Attacks": [*clean_start_sentences(summary), *attack_sentences(summary, outcomes)]
        if not summary.empty
        else [],
    }
    for title, sentences in sections.items():
        if sentences:
            blocks.append(f"### {title}\n\n" + "\n".join(f"- {sentence}" for sentence in sentences))
    return "\n\n".join(blocks)
