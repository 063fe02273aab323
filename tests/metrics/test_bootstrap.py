"""The bootstrap over users: known answers, coverage on a toy case, and why pairing matters."""

from __future__ import annotations

import numpy as np
import pytest

from mfstudy.metrics import (
    UserValues,
    bootstrap_interval,
    bootstrap_replicates,
    paired_bootstrap,
)


def test_constant_values_have_a_point_interval_and_no_difference() -> None:
    v = UserValues(np.full(50, 0.3))
    ci = bootstrap_interval(v, np.random.default_rng(0), n_boot=200)
    assert ci.estimate == ci.low == ci.high == pytest.approx(0.3)
    d = paired_bootstrap(v, v, np.random.default_rng(0), n_boot=200)
    assert d.difference.low == d.difference.high == d.difference.estimate == 0.0
    assert d.p_value == 1.0 and d.prob_a_higher == d.prob_a_lower == 0.0


def test_two_users_give_the_exact_resampling_distribution() -> None:
    # Resampling {0, 1} twice: mean 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4.
    reps = bootstrap_replicates(UserValues(np.array([0.0, 1.0])), 20_000, np.random.default_rng(1))
    shares = [np.mean(reps == x) for x in (0.0, 0.5, 1.0)]
    assert shares == pytest.approx([0.25, 0.5, 0.25], abs=0.015)
    ci = bootstrap_interval(UserValues(np.array([0.0, 1.0])), np.random.default_rng(1))
    assert (ci.low, ci.estimate, ci.high) == (0.0, 0.5, 1.0)


def test_interval_width_matches_the_standard_error_of_a_mean() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(1.0, 2.0, 2_000)
    ci = bootstrap_interval(UserValues(x), np.random.default_rng(3), n_boot=4_000)
    se = x.std(ddof=1) / np.sqrt(len(x))
    assert ci.high - ci.low == pytest.approx(2 * 1.96 * se, rel=0.08)
    assert ci.low < x.mean() < ci.high


def test_ratio_and_root_statistic() -> None:
    # RMSE's form: per-user squared-error sums and counts.
    sse, count = np.array([4.0, 0.0, 5.0]), np.array([1.0, 2.0, 1.0])
    v = UserValues(sse, count, root=True)
    assert v.value == pytest.approx(np.sqrt(9.0 / 4.0))
    idx = np.array([[0, 0, 0], [1, 1, 2]])
    np.testing.assert_allclose(v.on(idx), [2.0, np.sqrt(5.0 / 5.0)])


def test_coverage_of_the_95_percent_interval_on_a_skewed_toy_case() -> None:
    # Exponential per-user values (skewed, like per-user precision): the interval should
    # hold the true mean (1.0) in about 95% of repeated samples. The percentile bootstrap
    # under-covers a little at n = 80; far from 95% means a wrong quantile or resampling.
    rng = np.random.default_rng(4)
    boot = np.random.default_rng(5)
    covered = 0
    n_rep = 400
    for _ in range(n_rep):
        ci = bootstrap_interval(UserValues(rng.exponential(1.0, 80)), boot, n_boot=400)
        covered += ci.low <= 1.0 <= ci.high
    assert 0.89 <= covered / n_rep <= 0.98, covered / n_rep


def test_pairing_cancels_the_shared_user_variation() -> None:
    # Users differ a lot (some are easy for any model); model a is better than b by 0.02 on
    # almost every user. Paired, that is clear; resampled independently, it drowns.
    rng = np.random.default_rng(6)
    base = rng.uniform(0.0, 1.0, 300)
    a = UserValues(base + 0.02 + rng.normal(0, 0.01, 300))
    b = UserValues(base)
    paired = paired_bootstrap(a, b, np.random.default_rng(7), n_boot=2_000)
    unpaired = bootstrap_replicates(a, 2_000, np.random.default_rng(8)) - bootstrap_replicates(
        b, 2_000, np.random.default_rng(9)
    )
    lo, hi = np.quantile(unpaired, [0.025, 0.975])
    assert paired.difference.estimate == pytest.approx(a.value - b.value)
    assert 0 < paired.difference.low < 0.02 < paired.difference.high
    assert lo < 0 < hi, "independent resampling cannot tell them apart"
    assert (paired.difference.high - paired.difference.low) < (hi - lo) / 10
    assert paired.p_value < 0.01 and paired.prob_a_higher == 1.0 and paired.prob_a_lower == 0.0
    # Both marginal intervals come from the same replicates as the difference.
    assert paired.a.low < a.value < paired.a.high and paired.b.low < b.value < paired.b.high


def test_one_seed_one_answer() -> None:
    v, w = UserValues(np.arange(30.0)), UserValues(np.arange(30.0)[::-1].copy())
    one = paired_bootstrap(v, w, np.random.default_rng(10), n_boot=300)
    assert one == paired_bootstrap(v, w, np.random.default_rng(10), n_boot=300)
    assert one != paired_bootstrap(v, w, np.random.default_rng(11), n_boot=300)
    with pytest.raises(ValueError, match="same users"):
        paired_bootstrap(v, UserValues(np.arange(3.0)), np.random.default_rng(0))
