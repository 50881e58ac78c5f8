"""Every capsule family against the same CNN: one row per capsule model, and the verdict in one sentence.

Each difference is capsules − CNN with its 95% interval: clean test error (independent samples, Newcombe),
novel-viewpoint error at matched familiar error (paired on the same novel images: the viewpoint CSV counts
the images only one of the two got wrong) and the per-example worst-case accuracy over every untargeted
white-box attack at ε ≈ 0.1 (paired on the attacked examples when both models met the same ones). A
family "beats the CNN" on a measure when the whole interval lies on its better side.
"""

from __future__ import annotations

import math

import pandas as pd

from robustcaps.models import PAPERS
from robustcaps.report.tables import (
    CAPSULE_FAMILIES,
    COUNT_COLUMNS,
    csv_bool,
    family_of,
    full_test_rows,
    matched_to,
    with_protocol,
)
from robustcaps.uncertainty import difference, paired_difference

EPS = 0.1


def _clean(results: dict) -> dict[str, tuple[float, int]]:
    clean = results["clean"]
    if clean.empty:
        return {}
    return {row.model: (row.error, int(row.n)) for row in full_test_rows(clean).itertuples()}


def _novel(viewpoint: pd.DataFrame, model: str, cnn: str) -> tuple[float, float, float] | None:
    """(capsules − CNN novel error, low, high) on one split's rows, paired when the counts exist. Against
    the CNN stopped at the capsules' familiar error when they stayed above the CNN's (the reverse match,
    study.viewpoint), else against the CNN the capsules were stopped at."""
    paper = viewpoint[viewpoint["protocol"] == "paper"].set_index("model")
    if model not in paper.index or cnn not in paper.index:
        return None
    caps, base = paper.loc[model], paper.loc[cnn]
    against = matched_to(viewpoint)
    # a reverse row written before the column existed belongs to the EM network
    mine = (against == model) | ((against == "") & (family_of(model) == "capsnet"))
    reverse = viewpoint[(viewpoint["protocol"] == "reverse") & mine]
    if not reverse.empty:
        base = reverse.iloc[0]
    # the counts sit on the CNN's row (study.viewpoint.table2_rows), except for the other families' match
    # to the CNN's own stopping point, where they moved onto the capsules' row (study.viewpoint.split_rows)
    holder = caps if family_of(model) != "capsnet" and reverse.empty else base
    counts = pd.Series([holder.get(column, math.nan) for column in COUNT_COLUMNS], dtype=float)
    gap = caps["novel_error"] - base["novel_error"]
    if counts.isna().any():
        low, high = difference(
            caps["novel_error"], int(caps["n_novel"]), base["novel_error"], int(base["n_novel"])
        )
    else:
        only_caps, only_cnn = (int(c) for c in counts)
        low, high = paired_difference(
            caps["novel_error"], base["novel_error"], only_caps, only_cnn, int(base["n_novel"])
        )
    return gap, low, high


def _worst_scores(outcomes: pd.DataFrame | None, model: str) -> tuple[float, pd.Series] | None:
    """(ε, per-example worst-case correctness) of one model under its untargeted white-box attacks."""
    if outcomes is None or outcomes.empty:
        return None
    rows = outcomes[(outcomes["model"] == model) & ~outcomes["targeted"].astype(bool)]
    if rows.empty:
        return None
    at = rows["eps_std"].iloc[(rows["eps_std"] - EPS).abs().argsort().iloc[0]]
    cell = rows[(rows["eps_std"] - at).abs() < 1e-9]
    return at, cell.groupby("example")["score"].min().astype(bool)


def _robust(outcomes: pd.DataFrame | None, model: str, cnn: str) -> tuple[float, float, float, float] | None:
    """(ε, capsules − CNN worst-case accuracy, low, high), paired on the examples both were attacked on."""
    mine, theirs = _worst_scores(outcomes, model), _worst_scores(outcomes, cnn)
    if mine is None or theirs is None or abs(mine[0] - theirs[0]) > 1e-9:
        return None
    both = pd.concat([mine[1], theirs[1]], axis=1, join="inner", keys=["caps", "cnn"])
    if both.empty:
        return None
    caps, base = both["caps"], both["cnn"]
    low, high = paired_difference(
        caps.mean(), base.mean(), int((caps & ~base).sum()), int((~caps & base).sum()), len(both)
    )
    return mine[0], caps.mean() - base.mean(), low, high


def _failed(checks: pd.DataFrame, model: str) -> str:
    if checks.empty:
        return "not run"
    rows = checks[checks["model"] == model]
    if rows.empty:
        return "not run"
    failed = sorted(set(rows.loc[~csv_bool(rows["passed"]), "check"]))
    return ", ".join(failed) or "none"


def _points(gap: float, low: float, high: float) -> str:
    return f"{100 * gap:+.1f} ({100 * low:+.1f} to {100 * high:+.1f})"


def family_rows(results: dict) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """The table (one row per capsule model) and, per model, the measures on which it beat the CNN."""
    clean, viewpoint = _clean(results), with_protocol(results["viewpoint"])
    cnns = [m for m in clean if family_of(m) == "cnn"]
    capsules = [m for m in clean if family_of(m) in CAPSULE_FAMILIES]
    if len(cnns) != 1 or not capsules:
        return pd.DataFrame(), {}
    (cnn,) = cnns
    rows, wins = [], {}
    for model in capsules:
        family, won = family_of(model), []
        (error, n), (base, n_base) = clean[model], clean[cnn]
        low, high = difference(error, n, base, n_base)
        row = {"family": family, "paper": PAPERS[family], "model": model,
               "clean error vs CNN, points (95% CI)": _points(error - base, low, high)}  # fmt: skip
        won += ["clean error"] if high < 0 else []
        for split, frame in viewpoint.groupby("split") if not viewpoint.empty else ():
            novel = _novel(frame, model, cnn)
            row[f"novel {split} error vs CNN"] = _points(*novel) if novel else ""
            won += [f"novel {split} error"] if novel and novel[2] < 0 else []
        robust = _robust(results.get("outcomes"), model, cnn)
        row[f"worst-case accuracy vs CNN at ε≈{EPS:g}"] = _points(*robust[1:]) if robust else ""
        won += [f"worst-case accuracy at ε={robust[0]:g}"] if robust and robust[2] > 0 else []
        row["failed checks"] = _failed(results["checks"], model)
        rows.append(row)
        wins[model] = won
    return pd.DataFrame(rows), wins


def families_sentence(results: dict) -> str:
    """Which capsule families beat the CNN, and on what; empty when the run holds one capsule family."""
    table, wins = family_rows(results)
    if table.empty or table["family"].nunique() < 2:
        return ""
    said, losers = [], []
    for family, model, failed in zip(table["family"], table["model"], table["failed checks"], strict=True):
        if not wins[model]:
            losers.append(family)
            continue
        caveat = "" if failed in ("none", "not run") else f" (failed checks: {failed})"
        said.append(f"{family} ({model}) on {', '.join(wins[model])}{caveat}")
    if not said:
        return "No capsule family beat the CNN on any measure: every 95% interval reaches zero or beyond."
    rest = f"; {', '.join(losers)} on none" if losers else ""
    return f"Capsule families that beat the CNN (95% interval clear of zero): {'; '.join(said)}{rest}."
