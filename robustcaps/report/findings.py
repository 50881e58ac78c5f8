"""The README's plain-words paragraph, generated from the numbers (no conclusion is written in advance).

Thresholds that turn numbers into words are stated here, once:
- familiar errors "match" when they differ by at most headline.MATCH_TOLERANCE;
- two models' errors (or accuracies) differ when the 95% interval of the difference excludes 0
  (robustcaps.uncertainty: Newcombe's interval for paired data where both met the same images, else his
  interval for independent samples on the two test sets' sizes), and are "not distinguishable" otherwise;
- a model with clean test error above USABLE_ERROR is called too weak for the comparisons to mean much;
- the attack findings' words: robustcaps.report.robustness.
"""

from __future__ import annotations

import pandas as pd

from robustcaps.paper_results import TABLE2
from robustcaps.report import columns as col
from robustcaps.report.families import families_sentence
from robustcaps.report.headline import MATCH_TOLERANCE, Difference, novel_difference
from robustcaps.report.robustness import attack_sentences, clean_start_sentences, robustness_verdict
from robustcaps.report.tables import em_pair, family_of, full_test_rows, step_of, with_protocol

USABLE_ERROR = 0.5  # chance is 80% on 5 classes; above this a model is too weak to compare robustness


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _compare_novel(caps, cnn) -> str:
    """Novel-viewpoint errors of the capsules and a CNN row (headline.novel_difference), in words."""
    d = novel_difference(caps._asdict(), cnn._asdict())
    where = f"on {caps.n_novel} / {cnn.n_novel} images"
    if d.paired:
        where = (
            f"on the same {d.paired} images, {d.only_first} of which only the capsules and {d.only_second} "
            "only the CNN got wrong"
        )
    return _words(d, lower_is_better=True, where=where)


def _words(d: Difference, lower_is_better: bool, where: str) -> str:
    """A difference with its interval in words; a better or worse only when the interval excludes 0."""
    gap, low, high = d.gap, d.low, d.high
    if not d.clear:
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
            "not as a replication. The suite's converged comparison is in `results/converged/`."
        )
    patience = capsnet_setting(provenance, "patience", "")
    if dataset_kind == "rendered" and patience:
        kept = (
            "the full-split models then trained again on all five instances for the epoch count validation "
            "chose, `clean/held_out.csv`"
            if provenance.get("preset_settings", {}).get("refit")
            else "the val-chosen checkpoint kept"
        )
        return (
            f"**These numbers come from preset `{preset}` on the rendered stand-in dataset, not the paper's "
            f"setting** (real smallNORB, full-size models): every model trained to its plateau (stopped "
            f"after {patience} epochs without a lower error on a held-out instance per category, {kept}), "
            "so they answer the question for these models on this data, not as a replication of the "
            "paper's numbers."
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
    for split, rows in viewpoint.groupby(col.SPLIT):
        paper = rows[rows[col.PROTOCOL] == "paper"]
        by_family = {family_of(m): r for m, r in zip(paper[col.MODEL], paper.itertuples(), strict=True)}
        if not {"capsnet", "cnn"} <= by_family.keys():
            continue
        caps, cnn = by_family["capsnet"], by_family["cnn"]
        gap = caps.familiar_error - cnn.familiar_error
        matched = (
            "matched" if abs(gap) <= MATCH_TOLERANCE else "not matched, so this comparison is confounded"
        )
        paper_gap = TABLE2[(split, "cnn")][col.NOVEL_ERROR] - TABLE2[(split, "capsnet")][col.NOVEL_ERROR]
        out.append(
            f"On the {split} split the familiar-viewpoint errors were {matched} "
            f"(capsules {_pct(caps.familiar_error)}, CNN {_pct(cnn.familiar_error)}, "
            f"gap {100 * gap:+.1f} points); "
            f"on novel viewpoints the capsules erred {_pct(caps.novel_error)} "
            f"against the CNN's {_pct(cnn.novel_error)}, "
            f"{_compare_novel(caps, cnn)}; "
            f"the paper found the capsules better by {100 * paper_gap:.1f} points."
        )
        out += [_reverse_sentence(caps, row) for row in rows[rows[col.PROTOCOL] == "reverse"].itertuples()]
    return out


def _reverse_sentence(caps, cnn) -> str:
    """The CNN stopped where its familiar error first reached the capsules' (study.viewpoint, step 4)."""
    return (
        f"Stopping the CNN instead at its first checkpoint whose familiar error reached the capsules' "
        f"({step_of(cnn.checkpoint)}: familiar {_pct(cnn.familiar_error)}, gap {100 * cnn.familiar_gap:+.1f} "
        f"points), its novel error was {_pct(cnn.novel_error)}: the capsules' "
        f"{_pct(caps.novel_error)} is {_compare_novel(caps, cnn)}."
    )


def verdict(results: dict) -> str:
    """The robustness verdict on the EM pair (when anything was attacked or checked), then which capsule
    families beat the CNN (when the run has more than one); empty when there is neither."""
    attacked = not results["summary"].empty or not results["checks"].empty
    robustness = robustness_verdict(results) if attacked else ""
    return " ".join(filter(None, (robustness, families_sentence(results))))


def findings_sections(results: dict, dataset_kind: str) -> str:
    """The same findings as Markdown a reader can scan: the verdict first, then what the numbers are, then
    one bullet per comparison under Viewpoints, Attacks and Checks."""
    provenance, summary = results["provenance"], results["summary"]
    blocks = []
    said = verdict(results)
    if said:
        blocks.append(f"**Verdict.** {said}")
    setting = [demo_sentence(provenance, dataset_kind), *deviation_sentences(provenance)]
    blocks.append(" ".join(setting + weak_model_sentences(results["clean"])))
    sections = {
        "Viewpoints": viewpoint_sentences(results["viewpoint"]) if not results["viewpoint"].empty else [],
        "Attacks": [*clean_start_sentences(summary), *attack_sentences(results)] if not summary.empty else [],
    }
    for title, sentences in sections.items():
        if sentences:
            blocks.append(f"### {title}\n\n" + "\n".join(f"- {sentence}" for sentence in sentences))
    return "\n\n".join(blocks)
