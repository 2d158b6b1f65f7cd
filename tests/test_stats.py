"""Exact binomial intervals against closed forms, Rümke's table and an independent tail inversion."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, stats

from bmengine.engine.outputs.stats import clopper_pearson, per_base_interval


def _inverted_tails(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson from its definition: the p where each binomial tail equals alpha/2."""
    tail = (1 - confidence) / 2
    low = 0.0 if k == 0 else optimize.brentq(lambda p: stats.binom.sf(k - 1, n, p) - tail, 1e-12, 1 - 1e-12,
                                              xtol=1e-14)
    high = 1.0 if k == n else optimize.brentq(lambda p: stats.binom.cdf(k, n, p) - tail, 1e-12, 1 - 1e-12,
                                               xtol=1e-14)
    return low, high


def test_zero_count_has_closed_form_upper_bound():
    low, high = clopper_pearson(0, 100)
    assert low == 0.0
    assert high == pytest.approx(1 - 0.025 ** (1 / 100), abs=1e-12)
    assert high == pytest.approx(0.03621669, abs=1e-8)


def test_all_counted_has_closed_form_lower_bound():
    low, high = clopper_pearson(10, 10)
    assert low == pytest.approx(0.025 ** (1 / 10), abs=1e-12)
    assert high == 1.0


def test_half_of_hundred():
    low, high = clopper_pearson(50, 100)
    assert (round(low, 4), round(high, 4)) == (0.3983, 0.6017)


def test_rumke_table_200_cells_at_ten_percent():
    """Rümke 1975: a 10% class in a 200-cell count lies roughly between 6% and 15%."""
    low, high = clopper_pearson(20, 200)
    assert 0.060 < low < 0.065 and 0.148 < high < 0.152


@pytest.mark.parametrize("confidence", [0.95, 0.99])
def test_matches_binomial_tail_inversion_on_a_grid(confidence):
    grid = [(k, n) for n in (1, 7, 30, 100, 200, 500) for k in sorted({0, 1, 2, n // 3, n // 2, n - 1, n})]
    ks, ns = zip(*[(k, n) for k, n in grid if k <= n])
    low, high = clopper_pearson(np.array(ks), np.array(ns), confidence)
    for k, n, lo, hi in zip(ks, ns, low, high):
        ref_lo, ref_hi = _inverted_tails(k, n, confidence)
        assert lo == pytest.approx(ref_lo, abs=1e-9), (k, n)
        assert hi == pytest.approx(ref_hi, abs=1e-9), (k, n)


def test_vectorised_broadcasts_and_scalars_give_floats():
    low, high = clopper_pearson(np.array([[0, 5], [10, 3]]), 10)
    assert low.shape == high.shape == (2, 2)
    assert low[0, 0] == 0.0 and high[1, 0] == 1.0
    assert np.all(low <= np.array([[0, 5], [10, 3]]) / 10) and np.all(high >= np.array([[0, 5], [10, 3]]) / 10)
    scalar = clopper_pearson(3, 10)
    assert all(isinstance(v, float) for v in scalar)


def test_empty_sample_gives_nan_and_bad_counts_raise():
    assert all(math.isnan(v) for v in clopper_pearson(0, 0))
    low, high = clopper_pearson(np.array([0, 1]), np.array([0, 2]))
    assert math.isnan(low[0]) and math.isnan(high[0]) and not math.isnan(low[1])
    with pytest.raises(ValueError):
        clopper_pearson(5, 4)
    with pytest.raises(ValueError):
        clopper_pearson(-1, 4)
    with pytest.raises(ValueError):
        clopper_pearson(1, 4, confidence=1.0)


def test_per_base_interval_is_the_transformed_proportion_interval():
    """8 NRBC beside 100 leukocytes: p = 8/108 in [lo, hi], r = p/(1-p) per leukocyte."""
    low, high = per_base_interval(8, 100)
    p_low, p_high = clopper_pearson(8, 108)
    assert low == pytest.approx(p_low / (1 - p_low)) and high == pytest.approx(p_high / (1 - p_high))
    assert low < 8 / 100 < high
    assert (round(100 * low, 2), round(100 * high, 2)) == (3.36, 16.38)


def test_per_base_interval_edges():
    assert per_base_interval(0, 100)[0] == 0.0
    h = 1 - 0.025 ** (1 / 100)
    assert per_base_interval(0, 100)[1] == pytest.approx(h / (1 - h), rel=1e-9)
    low, high = per_base_interval(3, 0)  # excluded cells but no base cell: unbounded above
    assert low > 0 and math.isinf(high)
    assert all(math.isnan(v) for v in per_base_interval(0, 0))
    low, high = per_base_interval(np.array([0, 8, 50]), np.array([100, 100, 100]))
    assert low.shape == (3,) and np.all(np.diff(low) > 0) and np.all(np.diff(high) > 0)
