"""95% intervals for the report: Wilson for one rate, Newcombe's hybrid score interval for a difference, the
paired intervals (exact on discordant examples; bootstrap for per-example scores)."""

from __future__ import annotations

import math

import pytest

from robustcaps.report_tables import percent_interval
from robustcaps.uncertainty import difference, paired_difference, paired_mean_difference, wilson


def test_newcombes_published_example():
    # Newcombe (1998), Table II, example (a): 56/70 vs 48/80, method 10 gives 0.0524 to 0.3339.
    low, high = difference(56 / 70, 70, 48 / 80, 80)
    assert (low, high) == pytest.approx((0.0524, 0.3339), abs=5e-5)


def test_wilson_stays_inside_zero_and_one_and_narrows_with_n():
    assert wilson(0.0, 10) == pytest.approx((0.0, 0.2775), abs=5e-5)  # Wald would give (0, 0)
    low, high = wilson(1.0, 10)
    assert high == pytest.approx(1.0) and low == pytest.approx(0.7225, abs=5e-5)
    widths = [high - low for low, high in (wilson(0.3, n) for n in (40, 400, 4000))]
    assert widths == sorted(widths, reverse=True) and widths[-1] < 0.03
    assert all(math.isnan(x) for x in wilson(0.5, 0))


def test_a_difference_is_clear_only_when_n_allows_it():
    assert difference(0.458, 400, 0.188, 400)[0] > 0  # 27 points on 400 images each
    low, high = difference(0.458, 400, 0.398, 400)  # 6 points on 400 each: chance could give it
    assert low < 0 < high
    assert percent_interval(0.345, 400) == "34.5% (30.0–39.3)"


def test_the_paired_interval_agrees_with_the_exact_mcnemar_test():
    from scipy.stats import binomtest

    for only_first, only_second in ((20, 78), (30, 45), (12, 24), (11, 24), (40, 40), (0, 9)):
        low, high = paired_difference(only_first, only_second, 400)
        assert low <= (only_first - only_second) / 400 <= high
        rejects = binomtest(only_first, only_first + only_second).pvalue < 0.05
        assert rejects == (not low <= 0 <= high), (only_first, only_second)
    assert paired_difference(0, 0, 400) == (0.0, 0.0)  # the two models erred on the same images
    # the same rates, paired, can be clear where independent samples are not: 20 vs 44 of 400 disagreeing
    assert paired_difference(20, 44, 400)[1] < 0 < difference(0.30, 400, 0.36, 400)[1]


def test_the_paired_bootstrap_follows_the_per_example_differences():
    import numpy as np

    rng = np.random.default_rng(3)
    # targeted success over 4 targets: per-example scores in quarters, the second model 0.1 lower on average
    first = rng.integers(0, 5, 400) / 4
    second = np.clip(first - rng.choice([-0.25, 0, 0.25, 0.5], 400, p=[0.2, 0.4, 0.3, 0.1]), 0, 1)
    d = first - second
    low, high = paired_mean_difference(first, second)
    assert low < d.mean() < high
    half = 1.96 * d.std(ddof=1) / math.sqrt(len(d))  # the normal-theory interval: close at n = 400
    assert (low, high) == pytest.approx((d.mean() - half, d.mean() + half), abs=0.006)
    assert paired_mean_difference(first, second) == (low, high)  # seeded: a rerun writes the same report
    # a tenth of the examples: about sqrt(10) times wider
    small_low, small_high = paired_mean_difference(first[:40], second[:40])
    assert 2 < (small_high - small_low) / (high - low) < 4.5
    # identical differences everywhere: no spread to resample, the interval is the point
    assert paired_mean_difference([1.0, 0.5], [0.75, 0.25]) == (0.25, 0.25)
    assert all(math.isnan(x) for x in paired_mean_difference([], []))
