"""How far a rate measured on n test examples can be trusted: 95% intervals for the report.

- One rate (an error, an accuracy, a success rate) measured as k of n: Wilson's score interval (scipy).
- Two models' rates, each on its own n: Newcombe's hybrid score interval for the difference (Newcombe 1998,
  "Interval estimation for the difference between independent proportions", method 10), built from the two
  Wilson intervals:

      d = p1 − p2
      lower = d − sqrt((p1 − l1)² + (u2 − p2)²),   upper = d + sqrt((u1 − p1)² + (p2 − l2)²)

  scipy has no interval for a difference of proportions (statsmodels does, but is not a dependency for
  two lines). When both models are scored on the same examples the rates are paired; treating them as
  independent gives a wider interval when their mistakes are positively correlated, so a difference it
  calls clear is clear.
- Two models scored on the same n examples, of which b only the first got wrong and c only the second: the
  difference of their error rates is (b − c)/n. Given the m = b + c examples where they disagree, b is
  Binomial(m, θ) and the difference is (m/n)(2θ − 1), so the exact (Clopper–Pearson) interval of θ gives
  one for the difference. It agrees with the exact McNemar test: it excludes 0 when that test rejects.
- Two models scored on the same n examples with a score in [0, 1] per example that is not a single right
  or wrong (a targeted success rate averages four targets per example): the mean per-example difference,
  with a seeded BCa bootstrap interval over examples (scipy.stats.bootstrap), which keeps each example's
  four targets together.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.stats import binomtest, bootstrap

LEVEL = 0.95


def wilson(rate: float, n: int) -> tuple[float, float]:
    """95% Wilson interval of a rate measured on n examples (rate·n is rounded to the count it came from)."""
    if n <= 0 or not math.isfinite(rate):
        return math.nan, math.nan
    interval = binomtest(round(rate * n), n).proportion_ci(confidence_level=LEVEL, method="wilson")
    return float(interval.low), float(interval.high)


def paired_difference(only_first: int, only_second: int, n: int) -> tuple[float, float]:
    """95% interval of (only_first − only_second)/n: on the same n examples, the first model's error rate
    minus the second's from the examples only the first / only the second got wrong (see the module
    docstring); the same for accuracies, from the examples only the first / only the second got right."""
    disagree = only_first + only_second
    if disagree == 0:
        return 0.0, 0.0
    theta = binomtest(only_first, disagree).proportion_ci(confidence_level=LEVEL, method="exact")
    return disagree / n * (2 * theta.low - 1), disagree / n * (2 * theta.high - 1)


def paired_mean_difference(first, second, seed: int = 0) -> tuple[float, float]:
    """95% interval of mean(first − second) for two per-example scores on the same examples (BCa bootstrap
    over examples, 9,999 resamples, seeded: the same data give the same interval)."""
    diff = np.asarray(first, dtype=float) - np.asarray(second, dtype=float)
    if len(diff) == 0:
        return math.nan, math.nan
    if np.all(diff == diff[0]):  # every resample has the same mean; BCa is undefined there
        return float(diff[0]), float(diff[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa's degenerate-data warning: handled by the fallback below
        result = bootstrap(
            (diff,), np.mean, confidence_level=LEVEL, method="BCa", rng=np.random.default_rng(seed)
        )
        low, high = result.confidence_interval
        if not (math.isfinite(low) and math.isfinite(high)):
            result = bootstrap((diff,), np.mean, confidence_level=LEVEL, method="percentile",
                               rng=np.random.default_rng(seed))  # fmt: skip
            low, high = result.confidence_interval
    return float(low), float(high)


def difference(rate1: float, n1: int, rate2: float, n2: int) -> tuple[float, float]:
    """95% interval of rate1 − rate2 (Newcombe's hybrid score interval, see the module docstring)."""
    (l1, u1), (l2, u2) = wilson(rate1, n1), wilson(rate2, n2)
    d = rate1 - rate2
    return d - math.hypot(rate1 - l1, u2 - rate2), d + math.hypot(u1 - rate1, rate2 - l2)
