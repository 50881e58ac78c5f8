"""The report's headline numbers, each computed in one place, so the verdict, the families table and the
leaderboard cannot disagree:

- `accuracy`: a model's untargeted accuracy at the ε closest to the one asked for (no further than
  EPS_TOLERANCE) under the attacks named; with none named, the per-example worst case over every attack
  (`worst_case`), which is what "worst-case accuracy at ε ≈ 0.1" means everywhere in the report;
- `accuracy_difference`: two such accuracies' difference with its 95% interval, paired on the examples
  both models met when the per-example outcomes are there (Newcombe, robustcaps.uncertainty), else as
  independent samples;
- `novel_difference`: the novel-viewpoint error difference of a pair matched at familiar error, and
  `reverse_match`: which CNN row a capsule network is matched to (the closer in familiar error);
- `masking_failures`: the failed integrity checks that point to masked gradients, which turn a win on
  robustness into "not established".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from robustcaps.report import columns as col
from robustcaps.report.tables import csv_bool, family_of, matched_to
from robustcaps.uncertainty import difference, paired_difference, wilson

EPS = 0.1  # the ε (standardised units) of HSF18's Fig. 3 comparison, and of every headline number
EPS_TOLERANCE = 0.05  # a sweep without an ε this close to the one asked for has no number there
# familiar errors "match" when they differ by at most this (HSF18 compares at equal familiar error)
MATCH_TOLERANCE = 0.01
INTERVAL_GOAL = 0.06  # the half-width a paired interval needs to answer (issue 35: ±6 points)
# the integrity checks whose failure points to masked gradients (Carlini et al. 2019; Athalye et al. 2018)
MASKING_CHECKS = (
    "large_eps_to_chance",
    "targeted_large_eps_succeeds",
    "blackbox_weaker_than_whitebox",
    "more_steps_and_restarts",
)


@dataclass(frozen=True)
class Accuracy:
    """A model's untargeted accuracy at one ε (standardised units) and which attacks entered it."""

    model: str
    eps: float
    value: float
    n: int
    attacks: str
    correct: pd.Series | None = None  # per example id: withstood every attack; None: summary only

    def interval(self) -> tuple[float, float]:
        return wilson(self.value, self.n)


@dataclass(frozen=True)
class Difference:
    """first − second with its 95% interval; `paired`: the examples paired on (0: independent samples),
    of which `only_first` / `only_second` were counted by one model only."""

    gap: float
    low: float
    high: float
    paired: int = 0
    only_first: int = 0
    only_second: int = 0

    @property
    def clear(self) -> bool:
        """Whether the interval excludes zero: only then does the report name a better model."""
        return not self.low <= 0 <= self.high

    @property
    def too_wide(self) -> bool:
        return not self.clear and (self.high - self.low) / 2 > INTERVAL_GOAL


def _untargeted(frame: pd.DataFrame | None, model: str) -> pd.DataFrame:
    if frame is None or frame.empty:
        return pd.DataFrame()
    rows = frame[(frame[col.MODEL] == model) & ~frame[col.TARGETED].astype(bool) & (frame[col.EPS_STD] > 0)]
    if col.ROLE in rows:  # a summary: the sweep's accuracy rows (the outcomes hold nothing else)
        rows = rows[(rows[col.ROLE] == col.SWEEP) & (rows[col.METRIC] == col.ACCURACY)]
    return rows


def nearest_eps(values: pd.Series, eps: float) -> float | None:
    """The value closest to `eps`, none when it is further than EPS_TOLERANCE (a number at another budget)."""
    if values.empty:
        return None
    nearest = float(values.iloc[(values - eps).abs().argmin()])
    return nearest if abs(nearest - eps) <= EPS_TOLERANCE else None


def _at(rows: pd.DataFrame, eps: float) -> pd.DataFrame:
    return rows[(rows[col.EPS_STD] - eps).abs() < 1e-9] if not rows.empty else rows


def accuracy(
    results: dict, model: str, attacks: tuple[str, ...] | None = None, eps: float = EPS
) -> Accuracy | None:
    """`model`'s accuracy at the ε closest to `eps` under `attacks` (None: every attack, the worst case):
    per example from the outcomes where recorded, else the summary's `worst` row (or its lowest single
    attack, an upper bound on the worst case). None when nothing was measured near `eps`."""
    summary, outcomes = _untargeted(results["summary"], model), _untargeted(results.get("outcomes"), model)
    measured = [frame[col.EPS_STD] for frame in (summary, outcomes) if not frame.empty]
    at = nearest_eps(pd.concat(measured), eps) if measured else None
    if at is None:
        return None
    cell, per_example = _at(summary, at), _at(outcomes, at)
    if attacks is not None:
        # named attacks are the white-box ones (the outcomes hold no others)
        cell = cell[cell[col.ATTACK].isin(attacks) & (cell[col.SOURCE] == "")] if not cell.empty else cell
        per_example = (
            per_example[per_example[col.ATTACK].isin(attacks)] if not per_example.empty else per_example
        )
    entered = ", ".join(attacks) if attacks is not None else worst_of(results["summary"], model, at)
    if not per_example.empty:
        correct = per_example.groupby(col.EXAMPLE)[col.SCORE].min().astype(bool)
        return Accuracy(model, at, float(correct.mean()), len(correct), entered, correct)
    if cell.empty:
        return None
    worst = cell[cell[col.ATTACK] == col.WORST]
    row = (worst if len(worst) else cell).sort_values(col.VALUE).iloc[0]
    return Accuracy(model, at, float(row[col.VALUE]), int(row[col.N]), entered)


def worst_case(results: dict, model: str, eps: float = EPS) -> Accuracy | None:
    """The per-example worst case over every untargeted attack at ε ≈ `eps` (see `accuracy`)."""
    return accuracy(results, model, None, eps)


def worst_of(summary: pd.DataFrame, model: str, eps: float) -> str:
    """Which attacks the worst case at `eps` took: the summary's `worst_of` where the attacks wrote it, else
    every untargeted attack of `model` at that ε (robustcaps.attacks.run.worst_case takes them all)."""
    if summary.empty:
        return ""
    rows = _at(summary[(summary[col.MODEL] == model) & ~summary[col.TARGETED].astype(bool)], eps)
    worst = rows[rows[col.ATTACK] == col.WORST]
    if col.WORST_OF in rows and len(worst) and worst[col.WORST_OF].notna().any():
        return str(worst[col.WORST_OF].dropna().iloc[0])
    attacked = rows[~rows[col.ATTACK].isin((col.CLEAN, col.WORST))]
    source = attacked[col.SOURCE].fillna("").astype(str)
    names = attacked[col.ATTACK].where(source == "", attacked[col.ATTACK] + " from " + source)
    return ", ".join(dict.fromkeys(names))


def accuracy_difference(first: Accuracy, second: Accuracy) -> Difference:
    """first − second with its 95% interval: paired on the examples both met when both have per-example
    outcomes (Newcombe's interval for paired data), else as independent samples."""
    if first.correct is not None and second.correct is not None:
        both = pd.concat([first.correct, second.correct], axis=1, join="inner", keys=["a", "b"])
        if len(both):
            a, b = both["a"], both["b"]
            only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
            low, high = paired_difference(a.mean(), b.mean(), only_a, only_b, len(both))
            return Difference(first.value - second.value, low, high, len(both), only_a, only_b)
    low, high = difference(first.value, first.n, second.value, second.n)
    return Difference(first.value - second.value, low, high)


def worst_case_difference(
    results: dict, model: str, baseline: str, eps: float = EPS
) -> tuple[Accuracy, Accuracy, Difference] | None:
    """(the two worst cases, model − baseline) at the same ε ≈ `eps`; None when either was not measured
    there or the two were measured at different ε."""
    mine, theirs = worst_case(results, model, eps), worst_case(results, baseline, eps)
    if mine is None or theirs is None or abs(mine.eps - theirs.eps) > 1e-9:
        return None
    return mine, theirs, accuracy_difference(mine, theirs)


def novel_difference(capsules: Mapping, cnn: Mapping, counts: Mapping | None = None) -> Difference:
    """Novel-viewpoint error, capsules − CNN, of a pair matched at familiar error: paired on the same novel
    images when `counts` (by default the CNN's row) holds how many only one of the two got wrong
    (study.viewpoint), else as independent samples."""
    counts = cnn if counts is None else counts
    only = [counts.get(column, math.nan) for column in col.COUNT_COLUMNS]
    gap = capsules[col.NOVEL_ERROR] - cnn[col.NOVEL_ERROR]
    if any(pd.isna(x) for x in only):
        low, high = difference(
            capsules[col.NOVEL_ERROR], int(capsules[col.N_NOVEL]), cnn[col.NOVEL_ERROR], int(cnn[col.N_NOVEL])
        )
        return Difference(gap, low, high)
    only_caps, only_cnn, n = int(only[0]), int(only[1]), int(cnn[col.N_NOVEL])
    low, high = paired_difference(capsules[col.NOVEL_ERROR], cnn[col.NOVEL_ERROR], only_caps, only_cnn, n)
    return Difference(gap, low, high, n, only_caps, only_cnn)


def masking_failures(checks: pd.DataFrame, model: str) -> list[str]:
    """The checks in MASKING_CHECKS that `model` failed, sorted."""
    if checks.empty:
        return []
    rows = checks[(checks[col.MODEL] == model) & checks[col.CHECK].isin(MASKING_CHECKS)]
    return sorted(set(rows.loc[~csv_bool(rows[col.PASSED]), col.CHECK]))


def not_established(failures: list[str]) -> str:
    return f"not established: {', '.join(failures)} failed"


def reverse_match(viewpoint: pd.DataFrame, model: str) -> pd.Series | None:
    """On one split's rows: the CNN stopped at `model`'s familiar error (protocol "reverse"), when that
    match was made and lies closer in familiar error than the CNN `model` was stopped at; else None."""
    against = matched_to(viewpoint)
    # a reverse row written before the column existed belongs to the EM network
    mine = (against == model) | ((against == "") & (family_of(model) == "capsnet"))
    reverse = viewpoint[(viewpoint[col.PROTOCOL] == col.REVERSE) & mine]
    forward = viewpoint[(viewpoint[col.PROTOCOL] == col.PAPER) & (viewpoint[col.MODEL] == model)]
    if reverse.empty:
        return None
    if forward.empty or col.FAMILIAR_GAP not in viewpoint:
        return reverse.iloc[0]
    closer = abs(forward[col.FAMILIAR_GAP].iloc[0]) <= abs(reverse[col.FAMILIAR_GAP].iloc[0])
    return None if closer else reverse.iloc[0]
