"""Tests for rlvr.evaluation.passk: the unbiased pass@k estimator and its interval."""

from __future__ import annotations

import math

import pytest

from rlvr.evaluation import pass_at_k, pass_at_k_interval


@pytest.mark.parametrize(("n", "c", "k", "expected"), [
    (5, 2, 1, 0.4),  # c / n
    (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (5, 2, 5, 1.0),  # k = n with a correct sample
    (5, 0, 5, 0.0),  # k = n without one
    (5, 0, 1, 0.0),  # c = 0
    (5, 5, 1, 1.0),  # c = n
    (5, 5, 3, 1.0),
    (5, 3, 3, 1.0),  # only 2 wrong samples: any 3 hold a correct one
    (1, 1, 1, 1.0),
    (1, 0, 1, 0.0),
])
def test_hand_computed_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_matches_binomial_formula_and_stays_finite_for_large_n():
    for n, c, k in [(20, 3, 5), (200, 3, 10), (100, 50, 7)]:
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12)
    # C(5000, 100) overflows a float; the product form does not.
    value = pass_at_k(5000, 10, 100)
    assert 0.0 < value < 1.0 and math.isfinite(value)


@pytest.mark.parametrize(("n", "c", "k"), [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_interval_normal_approximation():
    values = [0.0, 0.5, 1.0, 0.5]
    mean, std = 0.5, math.sqrt(sum((v - 0.5) ** 2 for v in values) / 3)
    half = 1.959963984540054 * std / 2
    low, high = pass_at_k_interval(values)
    assert (low, high) == pytest.approx((mean - half, mean + half))


def test_interval_is_clipped_and_degenerate_cases():
    assert pass_at_k_interval([0.0, 1.0, 1.0, 0.0]) == (0.0, 1.0)
    assert pass_at_k_interval([0.9, 1.0, 1.0])[1] == 1.0
    assert pass_at_k_interval([0.25, 0.25]) == (0.25, 0.25)
    assert pass_at_k_interval([0.3]) == (0.0, 1.0)  # one problem: no spread to measure
    with pytest.raises(ValueError):
        pass_at_k_interval([])
