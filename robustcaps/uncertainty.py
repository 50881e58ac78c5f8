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
"""

from __future__ import annotations

import math

from scipy.stats import binomtest

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


def difference(rate1: float, n1: int, rate2: float, n2: int) -> tuple[float, float]:
    """95% interval of rate1 − rate2 (Newcombe's hybrid score interval, see the module docstring)."""
    (l1, u1), (l2, u2) = wilson(rate1, n1), wilson(rate2, n2)
    d = rate1 - rate2
    return d - math.hypot(rate1 - l1, u2 - rate2), d + math.hypot(u1 - rate1, rate2 - l2)
