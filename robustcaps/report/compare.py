"""Two models attacked on the same examples, side by side: each one's accuracy with its 95 % interval, and
the paired difference (the terminal table of `robustcaps attack` without RUN_DIR)."""

from __future__ import annotations

import pandas as pd

from robustcaps.report import columns as col
from robustcaps.report.headline import EPS, masking_failures, not_established, reverse_match, worst_case
from robustcaps.report.tables import family_of, full_test_rows, percent, percent_interval, shown_rows
from robustcaps.uncertainty import paired_difference, wilson


def _robust(per_example: pd.DataFrame) -> pd.Series:
    """Whether each example withstood each untargeted white-box cell, keyed (attack, ε_std, example)."""
    rows = per_example[
        (per_example[col.ROLE] == "sweep")
        & ~per_example[col.TARGETED].astype(bool)
        & (per_example[col.SOURCE].fillna("self") == "self")
    ]
    right = (rows[col.PREDICTION] == rows[col.LABEL]).to_numpy()
    index = pd.MultiIndex.from_arrays([rows[col.ATTACK], rows[col.EPS_STD].round(6), rows[col.EXAMPLE]])
    return pd.Series(right, index=index)


def side_by_side(first: pd.DataFrame, second: pd.DataFrame, names: tuple[str, str]) -> pd.DataFrame:
    """Per attack and ε (standardised units): accuracy of each model on the examples both met, its Wilson
    interval, and first − second with Newcombe's interval for paired data."""
    both = pd.concat({"first": _robust(first), "second": _robust(second)}, axis=1, join="inner")
    rows = []
    for (attack, eps), group in both.groupby(level=[0, 1], sort=True):
        a, b, n = group["first"].astype(bool), group["second"].astype(bool), len(group)
        rate_a, rate_b = float(a.mean()), float(b.mean())
        low, high = paired_difference(rate_a, rate_b, int((a & ~b).sum()), int((~a & b).sum()), n)
        row = {"attack": attack, "eps_std": eps, "n": n}
        for name, rate in zip(names, (rate_a, rate_b), strict=True):
            lo, hi = wilson(rate, n)
            row[name] = f"{rate:.2f} ({lo:.2f}–{hi:.2f})"
        row["difference"] = f"{rate_a - rate_b:+.2f} ({low:+.2f} to {high:+.2f})"
        rows.append(row)
    table = pd.DataFrame(rows)
    rank = table[col.ATTACK].map({"clean": 0, "worst": 2}).fillna(1)  # clean first, the worst case last
    return table.assign(rank=rank).sort_values(["eps_std", "rank", "attack"]).drop(columns="rank")


def leaderboard(results: dict, eps: float = EPS) -> pd.DataFrame:
    """One row per model: clean test error (full split, centre crop), novel-viewpoint error per split at
    the matched familiar error (the CNN stopped at the EM network's familiar error where that match was
    made), and the worst-case accuracy at ε ≈ `eps` (headline.worst_case) with its 95% interval and the
    attacks it took, marked where a check that points to masked gradients failed. Empty cells: not
    measured."""
    clean, viewpoint = results["clean"], shown_rows(results["viewpoint"])
    if clean.empty:
        return pd.DataFrame()
    rows, tested = [], full_test_rows(clean)
    # the CNN's novel error is the one matched to the EM network's familiar error (the headline pair)
    em = next((m for m in tested[col.MODEL] if family_of(m) == "capsnet"), None)
    for row in tested.itertuples():
        entry = {"model": row.model, "clean error": percent_interval(row.error, row.n)}
        for split, frame in viewpoint.groupby(col.SPLIT) if not viewpoint.empty else ():
            reverse = reverse_match(frame, em) if em and family_of(row.model) == "cnn" else None
            paper = frame[(frame[col.MODEL] == row.model) & (frame[col.PROTOCOL] == col.PAPER)]
            if reverse is not None:
                cell = f"{percent(reverse[col.NOVEL_ERROR])} (stopped at {em}'s familiar error)"
            else:
                cell = percent(paper[col.NOVEL_ERROR].iloc[0]) if len(paper) else ""
            entry[f"novel {split} error"] = cell
        entry |= _worst_case_cells(results, row.model, eps)
        rows.append(entry)
    return pd.DataFrame(rows).fillna("")


def _worst_case_cells(results: dict, model: str, eps: float) -> dict[str, str]:
    worst = worst_case(results, model, eps)
    if worst is None:
        return {}
    low, high = worst.interval()
    failures = masking_failures(results["checks"], model)
    mark = f"; {not_established(failures)}" if failures else ""
    return {
        f"worst-case accuracy at ε {worst.eps:.2g}": (
            f"{worst.value:.2f} ({low:.2f}–{high:.2f}, n {worst.n}{mark})"
        ),
        "worst case over": worst.attacks,
    }
