"""Every capsule family against the same CNN: one row per capsule model, and the verdict in one sentence.

Each difference is capsules − CNN with its 95% interval: clean test error (independent samples, Newcombe),
novel-viewpoint error at matched familiar error (paired on the same novel images: the viewpoint CSV counts
the images only one of the two got wrong) and the per-example worst-case accuracy over every untargeted
white-box attack at ε ≈ 0.1 (paired on the attacked examples when both models met the same ones). A
family "beats the CNN" on a measure when the whole interval lies on its better side.
"""

from __future__ import annotations

import pandas as pd

from robustcaps.models import PAPERS
from robustcaps.report import columns as col
from robustcaps.report.headline import (
    EPS,
    Difference,
    masking_failures,
    not_established,
    novel_difference,
    reverse_match,
    worst_case_difference,
)
from robustcaps.report.tables import (
    CAPSULE_FAMILIES,
    csv_bool,
    family_of,
    full_test_rows,
    with_protocol,
)
from robustcaps.uncertainty import difference


def _clean(results: dict) -> dict[str, tuple[float, int]]:
    clean = results["clean"]
    if clean.empty:
        return {}
    return {row.model: (row.error, int(row.n)) for row in full_test_rows(clean).itertuples()}


def _novel(viewpoint: pd.DataFrame, model: str, cnn: str) -> Difference | None:
    """Capsules − CNN novel error on one split's rows (headline.novel_difference). Against the CNN stopped
    at the capsules' familiar error when they stayed above the CNN's (the reverse match, study.viewpoint),
    else against the CNN the capsules were stopped at."""
    paper = viewpoint[viewpoint[col.PROTOCOL] == col.PAPER].set_index(col.MODEL)
    if model not in paper.index or cnn not in paper.index:
        return None
    caps, base = paper.loc[model], paper.loc[cnn]
    reverse = reverse_match(viewpoint, model)
    if reverse is not None:
        base = reverse
    # the counts sit on the CNN's row (study.viewpoint.table2_rows), except for the other families' match
    # to the CNN's own stopping point, where they moved onto the capsules' row (study.viewpoint.split_rows)
    holder = caps if family_of(model) != "capsnet" and reverse is None else base
    return novel_difference(caps, base, holder)


def _failed(checks: pd.DataFrame, model: str) -> str:
    if checks.empty:
        return "not run"
    rows = checks[checks[col.MODEL] == model]
    if rows.empty:
        return "not run"
    failed = sorted(set(rows.loc[~csv_bool(rows[col.PASSED]), col.CHECK]))
    return ", ".join(failed) or "none"


def _points(d: Difference) -> str:
    return f"{100 * d.gap:+.1f} ({100 * d.low:+.1f} to {100 * d.high:+.1f})"


def family_rows(results: dict) -> tuple[pd.DataFrame, dict[str, list[str]], dict[str, str]]:
    """The table (one row per capsule model) and, per model, the measures on which it beat the CNN and
    those on which its win is not established (a masking check failed)."""
    clean, viewpoint = _clean(results), with_protocol(results["viewpoint"])
    cnns = [m for m in clean if family_of(m) == "cnn"]
    capsules = [m for m in clean if family_of(m) in CAPSULE_FAMILIES]
    if len(cnns) != 1 or not capsules:
        return pd.DataFrame(), {}, {}
    (cnn,) = cnns
    rows, wins, unproven = [], {}, {}
    for model in capsules:
        family, won = family_of(model), []
        (error, n), (base, n_base) = clean[model], clean[cnn]
        gap = Difference(error - base, *difference(error, n, base, n_base))
        row = {
            "family": family,
            "paper": PAPERS[family],
            "model": model,
            "clean error vs CNN, points (95% CI)": _points(gap),
        }
        won += ["clean error"] if gap.high < 0 else []
        for split, frame in viewpoint.groupby(col.SPLIT) if not viewpoint.empty else ():
            novel = _novel(frame, model, cnn)
            row[f"novel {split} error vs CNN"] = _points(novel) if novel else ""
            won += [f"novel {split} error"] if novel and novel.high < 0 else []
        robust = worst_case_difference(results, model, cnn)
        row[f"worst-case accuracy vs CNN at ε≈{EPS:g}"] = _points(robust[2]) if robust else ""
        if robust and robust[2].low > 0:
            failures = masking_failures(results["checks"], model)
            what = f"worst-case accuracy at ε={robust[0].eps:g}"
            won += [] if failures else [what]
            unproven[model] = f"on {what} is {not_established(failures)}" if failures else ""
        row["failed checks"] = _failed(results["checks"], model)
        rows.append(row)
        wins[model] = won
    return pd.DataFrame(rows), wins, unproven


def families_sentence(results: dict) -> str:
    """Which capsule families beat the CNN, and on what; empty when the run holds one capsule family."""
    table, wins, unproven = family_rows(results)
    if table.empty or table[col.FAMILY].nunique() < 2:
        return ""
    said, losers = [], []
    for family, model, failed in zip(
        table[col.FAMILY], table[col.MODEL], table["failed checks"], strict=True
    ):
        if not wins[model]:
            losers.append(family)
            continue
        caveat = "" if failed in ("none", "not run") else f" (failed checks: {failed})"
        said.append(f"{family} ({model}) on {', '.join(wins[model])}{caveat}")
    doubt = "".join(
        f" The win of {family_of(m)} ({m}) {what}, a sign of masked gradients."
        for m, what in unproven.items()
        if what
    )
    if not said:
        reason = "every 95% interval reaches zero or beyond" + (
            ", or the win is not established" if doubt else ""
        )
        return f"No capsule family beat the CNN on any measure: {reason}.{doubt}"
    rest = f"; {', '.join(losers)} on none" if losers else ""
    return f"Capsule families that beat the CNN (95% interval clear of zero): {'; '.join(said)}{rest}.{doubt}"
