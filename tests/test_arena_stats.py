"""Arena statistics on synthetic data: bootstrap coverage, the exact sign-flip test, Holm, ranks."""

from __future__ import annotations

import numpy as np
import pytest

from grouprl.arena.stats import bootstrap_band, bootstrap_ci, holm, min_p_value, paired_test, ranks


def test_bootstrap_ci_covers_true_mean_at_nominal_rate():
    """Seeded simulation: 400 samples of n=30 from N(0.3, 1); the 95% percentile-bootstrap CI of the
    mean should cover 0.3 in about 95% of them (percentile bootstrap under-covers slightly at small n;
    the binomial SE of the rate at 400 draws is ~1.1%)."""
    rng = np.random.default_rng(123)
    hits = 0
    reps = 400
    for i in range(reps):
        x = rng.normal(0.3, 1.0, size=30)
        _, lo, hi = bootstrap_ci(x, n_boot=1000, seed=i)
        hits += lo <= 0.3 <= hi
    rate = hits / reps
    assert 0.91 <= rate <= 0.98, rate


def test_bootstrap_ci_90_covers_less_than_95():
    rng = np.random.default_rng(7)
    h90 = h95 = 0
    for i in range(300):
        x = rng.exponential(1.0, size=40)
        _, lo, hi = bootstrap_ci(x, level=0.90, n_boot=800, seed=i)
        h90 += lo <= 1.0 <= hi
        _, lo, hi = bootstrap_ci(x, level=0.95, n_boot=800, seed=i)
        h95 += lo <= 1.0 <= hi
    assert h90 < h95
    assert 0.83 <= h90 / 300 <= 0.95


def test_bootstrap_ci_values_and_errors():
    m, lo, hi = bootstrap_ci([1.0, 2.0, 3.0, 4.0], seed=0)
    assert m == pytest.approx(2.5)
    assert 1.0 <= lo < 2.5 < hi <= 4.0
    assert bootstrap_ci([0.7]) == (0.7, 0.7, 0.7)
    with pytest.raises(ValueError, match="row 1"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1.0, 2.0], level=1.5)


def test_bootstrap_band_shape_and_nan_steps():
    curves = np.array([[0.0, 1.0, 2.0], [2.0, 3.0, np.nan]])
    mean, lo, hi = bootstrap_band(curves, n_boot=500)
    np.testing.assert_allclose(mean, [1.0, 2.0, 2.0])
    assert (lo <= mean + 1e-12).all() and (hi >= mean - 1e-12).all()
    assert lo[2] == hi[2] == 2.0  # one seed only at the last step: a degenerate band


def test_paired_sign_flip_exact_p_values():
    # all three differences positive: only the all-plus and all-minus patterns are as extreme -> 2/8
    r = paired_test([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert r.n == 3 and r.mean_diff == pytest.approx(2.0)
    assert r.p_value == pytest.approx(0.25)
    assert min_p_value(3) == pytest.approx(0.25)
    # d = (1, -1): |mean| of every pattern >= 0 -> p = 1
    assert paired_test([1.0, 0.0], [0.0, 1.0]).p_value == pytest.approx(1.0)
    # d = (3, 1, 1, 1): patterns with |sum| >= 6: (+,+,+,+), (-,-,-,-) -> 2/16
    assert paired_test([3.0, 1.0, 1.0, 1.0], [0.0] * 4).p_value == pytest.approx(0.125)
    # d = (3, 1, 1, -1): |sum| >= 4 for sign patterns with the 3 and at most one of the ones flipped
    # against it: sums 6, 4, 4, 4 (and negatives) -> 8/16
    assert paired_test([3.0, 1.0, 1.0, -1.0], [0.0] * 4).p_value == pytest.approx(0.5)
    with pytest.raises(ValueError, match="pair them by seed"):
        paired_test([1.0, 2.0], [1.0])


def test_paired_test_rejects_at_nominal_rate_under_the_null_and_detects_large_effects():
    rng = np.random.default_rng(0)
    rejections = sum(paired_test(rng.normal(size=10), rng.normal(size=10), n_boot=200, seed=i).p_value < 0.05
                     for i in range(300))
    assert rejections / 300 <= 0.09
    strong = paired_test(rng.normal(2.0, 0.5, size=10), np.zeros(10), n_boot=200)
    assert strong.p_value < 0.01 and strong.low > 0


def test_holm_and_ranks():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(holm([0.5, 0.2]), [0.5, 0.4])
    np.testing.assert_allclose(ranks([0.2, 0.5, 0.2, 0.9]), [3.5, 2.0, 3.5, 1.0])
