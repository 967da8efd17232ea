"""posweep.metrics: win rates with ties, bootstrap intervals."""

from __future__ import annotations

import math

import numpy as np

from posweep.metrics import bootstrap_ci, win_rate


def test_win_rate_hand_computed():
    a = [3.0, 1.0, 2.0, 5.0, np.nan]
    b = [1.0, 1.0, 4.0, np.nan, 0.0]
    np.testing.assert_array_equal(win_rate(a, b), [1.0, 0.5, 0.0, np.nan, np.nan])


def test_bootstrap_ci_contains_mean_ignores_nan_and_is_seeded():
    values = np.random.default_rng(1).normal(2.0, 1.0, size=50)
    low, high = bootstrap_ci(values)
    assert low < values.mean() < high
    assert high - low < 1.0  # ≈ 4 standard errors of 1/√50
    with_nans = np.concatenate([values, [np.nan, np.nan]])
    assert bootstrap_ci(with_nans) == (low, high)
    assert bootstrap_ci(values, seed=1) != (low, high)
    assert bootstrap_ci([7.0, 7.0]) == (7.0, 7.0)
    assert all(math.isnan(x) for x in bootstrap_ci([np.nan]))
