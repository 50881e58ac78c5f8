"""95% intervals for the report: Wilson for one rate, Newcombe's hybrid score interval for a difference, the
paired intervals (Newcombe's for paired data; Student's t for per-example scores)."""

from __future__ import annotations

import math

import pytest

from robustcaps.report.tables import percent_interval
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
    # where the conditional interval of f / (f + g) scaled by (f + g) / n would stop at 0.14
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


@pytest.mark.parametrize(
    "n, cells",  # (both counted, first only, second only, neither) probabilities of a paired 2x2 table
    [(400, (0.3, 0.1, 0.05, 0.55)), (50, (0.4, 0.1, 0.01, 0.49)), (40, (0.05, 0.05, 0.2, 0.7))],
)
def test_the_paired_interval_covers_the_true_difference_95_percent_of_the_time(n, cells):
    # the small, lopsided tables are the attack comparisons' regime (40 examples, most disagreements one
    # way); there the older interval (exact on f / (f + g), scaled) covered 63% and 86% of the time
    import numpy as np

    rng, truth, runs = np.random.default_rng(0), cells[1] - cells[2], 1000
    covered = 0
    for both, first, second, _ in rng.multinomial(n, cells, size=runs):
        low, high = paired_difference((both + first) / n, (both + second) / n, first, second, n)
        covered += low <= truth <= high
    assert 0.93 <= covered / runs <= 0.98


def test_the_per_example_interval_covers_the_true_difference_of_targeted_success():
    import numpy as np

    # 40 attacked examples, 4 targets each: the demo's targeted cells. Per example, the CNN reaches each
    # target with probability p ~ Beta(2, 2) and the capsules with p + 0.15 (at most 1).
    rng = np.random.default_rng(7)
    population = rng.beta(2, 2, 1_000_000)
    truth = float((np.minimum(population + 0.15, 1) - population).mean())
    covered, widths = 0, []
    for _ in range(1000):
        p = rng.beta(2, 2, 40)
        capsules, cnn = rng.binomial(4, np.minimum(p + 0.15, 1)) / 4, rng.binomial(4, p) / 4
        low, high = paired_mean_difference(capsules, cnn)
        covered += low <= truth <= high
        widths.append(high - low)
    assert 0.93 <= covered / 1000 <= 0.97
    # four times the examples: about half as wide
    p = rng.beta(2, 2, 160)
    low, high = paired_mean_difference(rng.binomial(4, np.minimum(p + 0.15, 1)) / 4, rng.binomial(4, p) / 4)
    assert 0.4 < (high - low) / np.median(widths) < 0.6
    # identical differences everywhere: no spread, the interval is the point
    assert paired_mean_difference([1.0, 0.5], [0.75, 0.25]) == (0.25, 0.25)
    assert all(math.isnan(x) for x in paired_mean_difference([], []))
