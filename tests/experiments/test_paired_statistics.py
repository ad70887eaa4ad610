"""The paired statistics and the matched-loss selection, on closed-form cases."""

import math

import pytest

from experiments.paired_statistics import bootstrap_ci, sign_test, spearman
from experiments.toy_training import reached_levels


def test_bootstrap_interval_of_constant_differences_is_that_constant():
    assert bootstrap_ci([-0.2] * 7) == pytest.approx((-0.2, -0.2, -0.2))


def test_bootstrap_interval_brackets_the_mean_and_ignores_nan():
    interval = bootstrap_ci([-1.0, 0.0, 1.0, 2.0, float("nan")])
    assert interval.mean == pytest.approx(0.5)
    assert -1.0 <= interval.low < 0.5 < interval.high <= 2.0


def test_bootstrap_interval_is_seeded():
    values = [0.3, -0.1, 0.7, 0.2]
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)


def test_sign_test_matches_the_binomial_tail():
    # 9 of 10 positive: 2 * (C(10,0) + C(10,1)) / 2^10
    assert sign_test([1.0] * 9 + [-1.0]) == pytest.approx(2 * 11 / 1024)
    assert sign_test([0.0, 0.0]) == 1.0


def test_spearman_of_ties_and_constants():
    assert spearman([1, 1, 2], [5, 5, 9]) == 1.0
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_matched_loss_takes_every_level_crossed_at_once_in_order():
    assert reached_levels(0.02, [0.3, 0.1, 0.03, 0.01]) == [0.3, 0.1, 0.03]
    assert reached_levels(0.5, [0.3, 0.1]) == []
    assert reached_levels(0.1, [0.1, 0.03]) == [0.1]  # "at or below" the level
