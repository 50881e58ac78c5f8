"""95% intervals for the report: Wilson for one rate, Newcombe's hybrid score interval for a difference, the
paired intervals (Newcombe's for paired data; a bootstrap for per-example scores)."""

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


def test_the_paired_interval_matches_a_published_example_and_pairing_helps():
    # Fagerland, Lydersen & Laake (2017), "Statistical Analysis of Contingency Tables", ch. 8: complete
    # response before and after consolidation therapy (Cavo et al. 2012), table [[59, 6], [16, 80]];
    # Newcombe's square-and-add interval for paired data: -0.0621 (-0.1186 to -0.0046).
    low, high = paired_difference(65 / 161, 75 / 161, 6, 16, 161)
    assert (low, high) == pytest.approx((-0.1186, -0.0046), abs=5e-5)
    # the same rates, paired, can be clear where independent samples are not: 20 vs 44 of 400 disagreeing
    assert paired_difference(0.30, 0.36, 20, 44, 400)[1] < 0 < difference(0.30, 400, 0.36, 400)[1]
    # the demo's azimuth comparison: 45.8% vs 39.8% of 400, 70 only the capsules and 46 only the CNN got wrong
    low, high = paired_difference(0.4575, 0.3975, 70, 46, 400)
    assert 0 < low < 0.06 < high
    # every disagreement one way (7 vs 0 of 50): the interval still reaches past the point estimate,
    # where the conditional interval of b / (b + c) scaled by (b + c) / n would stop at 0.14
    low, high = paired_difference(0.58, 0.44, 7, 0, 50)
    assert 0 < low and high > 0.14 + 0.05
    # the two models right and wrong on the same examples: a narrow interval around 0
    low, high = paired_difference(0.25, 0.25, 0, 0, 400)
    assert -0.02 < low < 0 < high < 0.02
    with pytest.raises(ValueError, match="do not fit"):
        paired_difference(0.25, 0.30, 0, 0, 400)  # different rates need examples only one model counted


def test_the_paired_interval_agrees_with_mcnemars_test_away_from_the_boundary():
    from scipy.stats import binomtest

    for only_first, only_second in ((20, 78), (30, 45), (12, 30), (40, 40), (0, 15), (25, 25)):
        both = 100
        rate1, rate2 = (both + only_first) / 400, (both + only_second) / 400
        low, high = paired_difference(rate1, rate2, only_first, only_second, 400)
        assert low <= rate1 - rate2 <= high
        p = binomtest(only_first, only_first + only_second).pvalue if only_first + only_second else 1.0
        assert (p < 0.05) == (not low <= 0 <= high), (only_first, only_second, p, low, high)


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
