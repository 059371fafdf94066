"""Arena statistics on synthetic data: bootstrap coverage, the exact sign-flip test, Holm, ranks."""

from __future__ import annotations

import numpy as np
import pytest

from grouprl.arena.stats import (bootstrap_band, bootstrap_ci, hierarchical_bootstrap,
                                  hierarchical_replicates, holm, iqm_ci, mde, min_p_value,
                                  paired_test, probability_of_improvement, ranks, sign_flip_p)


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


# ---------------------------------------------------------------------------- per-prompt statistics
# Monte Carlo checks: a simulated rate r over R independent replications has binomial standard error
# sqrt(r0 (1 - r0) / R) around its expectation r0; each check allows K = 3 of them.
K = 3.0


def _mc_tol(r0: float, reps: int) -> float:
    return K * np.sqrt(r0 * (1 - r0) / reps)


def test_hierarchical_bootstrap_exact_small_cases():
    # one seed, two prompts (0, 1): a replicate averages 2 draws -> 0, .5, 1 with prob 1/4, 1/2, 1/4
    m, lo, hi = hierarchical_bootstrap([[0.0, 1.0]], n_boot=4000, seed=1)
    assert (m, lo, hi) == (0.5, 0.0, 1.0)
    # two seeds with constant rows (0, 0) and (1, 1): prompts do not matter, seeds do -> the same law
    m, lo, hi = hierarchical_bootstrap([[0.0, 0.0], [1.0, 1.0]], n_boot=4000, seed=1)
    assert (m, lo, hi) == (0.5, 0.0, 1.0)
    assert hierarchical_bootstrap([[0.3]]) == (0.3, 0.3, 0.3)
    assert hierarchical_bootstrap(np.full((3, 4), -0.25)) == (-0.25, -0.25, -0.25)
    # mean over (seed, prompt) pairs of [[1, 0, 0], [1, 1, -1]] = 2/6
    assert hierarchical_bootstrap([[1.0, 0.0, 0.0], [1.0, 1.0, -1.0]], n_boot=10)[0] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match=r"diffs\[1, 0\] is nan"):
        hierarchical_bootstrap([[0.0, 1.0], [np.nan, 1.0]])
    with pytest.raises(ValueError, match="matrix"):
        hierarchical_bootstrap([0.0, 1.0])


def test_hierarchical_bootstrap_variance_matches_its_two_stage_formula():
    """A replicate is the mean of S iid draws M_j = mean of I prompts drawn from a uniformly drawn
    row s, so Var* = (var(m_s) + mean(v_s) / I) / S with m_s, v_s the row means and (population)
    row variances. 20,000 replicates estimate a variance to about sqrt(2 / 20000) = 1%; allow 5%."""
    rng = np.random.default_rng(3)
    d = rng.normal(size=(5, 8)) + rng.normal(size=(5, 1))
    boot_var = hierarchical_replicates(d, n_boot=20_000, chunk_elems=1000).var()  # many chunks
    want = (d.mean(axis=1).var() + d.var(axis=1).mean() / d.shape[1]) / d.shape[0]
    assert boot_var == pytest.approx(want, rel=0.05)


def _coverage(n_seeds: int, n_items: int, sd_seed: float, sd_item: float, reps: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for r in range(reps):
        d = 0.1 + rng.normal(0, sd_seed, size=(n_seeds, 1)) + rng.normal(0, sd_item, size=(n_seeds, n_items))
        _, lo, hi = hierarchical_bootstrap(d, n_boot=400, seed=r)
        hits += lo <= 0.1 <= hi
    return hits / reps


@pytest.mark.parametrize("n_seeds, n_items, sd_seed, sd_item", [
    (10, 20, 0.10, 0.30),  # seed variance about twice the per-seed prompt noise: sa2 = .01, se2 / I = .0045
    (30, 10, 0.30, 0.30),  # seed variance dominates (sa2 / (se2 / I) = 10) with enough seeds
])
def test_hierarchical_bootstrap_covers_at_the_nominal_rate(n_seeds, n_items, sd_seed, sd_item):
    """Known truth delta = 0.1 in D = delta + a_s + e_si (a ~ N(0, sd_seed^2), e ~ N(0, sd_item^2)):
    the 95% interval covers it in 95% of 400 replications, within K binomial standard errors."""
    reps = 400
    rate = _coverage(n_seeds, n_items, sd_seed, sd_item, reps, seed=11)
    assert abs(rate - 0.95) <= _mc_tol(0.95, reps), rate


def test_hierarchical_bootstrap_is_conservative_when_prompt_noise_dominates():
    """No seed effect (sa2 = 0): the prompt noise enters twice (module docstring), so the interval is
    wider than needed: coverage at least the nominal rate minus K standard errors (about 0.99 here)."""
    reps = 400
    rate = _coverage(10, 20, 0.0, 0.3, reps, seed=12)
    assert rate >= 0.95 - _mc_tol(0.95, reps), rate


def test_sign_flip_type_one_error_at_the_nominal_size():
    """Under a symmetric null the sign-flip p-value of n = 10 seeds is uniform on the 512 attainable
    levels k / 512, so P(p <= 0.05) is exactly 25 / 512 = 0.0488 (normal and t3 differences alike).
    4,000 null rows each; allowed: K binomial standard errors."""
    rng = np.random.default_rng(5)
    size = 25 / 512
    for d in (rng.normal(size=(4000, 10)), rng.standard_t(3, size=(4000, 10))):
        rate = float((sign_flip_p(d) <= 0.05).mean())
        assert abs(rate - size) <= _mc_tol(size, 4000), rate
    # the batched p-values equal paired_test's one row at a time
    d = rng.normal(size=(5, 6))
    np.testing.assert_allclose(sign_flip_p(d), [paired_test(r, np.zeros(6), n_boot=10).p_value for r in d])
    # and scipy's exact paired permutation test (sign flips of one sample), ties included
    from scipy import stats

    for row in np.round(rng.normal(0.2, 1.0, size=(4, 7)), 1):
        want = stats.permutation_test((row,), lambda x, axis=-1: x.mean(axis=axis), permutation_type="samples",
                                      n_resamples=np.inf, vectorized=True).pvalue
        assert sign_flip_p(row) == pytest.approx(want)


def test_power_at_the_computed_mde_is_80_percent():
    """A true mean difference equal to mde(sd, 10) (sd = the true seed-level SD) is detected by the
    exact sign-flip test at p <= 0.05 in 80% of 4,000 simulated designs, within K binomial standard
    errors (the paired-t approximation's exact t-test power there is 0.799)."""
    rng = np.random.default_rng(6)
    sd, n, reps = 0.03, 10, 4000
    effect = mde(sd, n)
    rate = float((sign_flip_p(rng.normal(effect, sd, size=(reps, n))) <= 0.05).mean())
    assert abs(rate - 0.8) <= _mc_tol(0.8, reps), rate


def test_mde_exact_values():
    # (t_{.975, 9} + t_{.8, 9}) / sqrt(10) = (2.2621572 + 0.8834039) / 3.1622777 = 0.9947137
    assert mde(1.0, 10) == pytest.approx(0.9947137, abs=1e-6)
    assert mde(0.3, 10) == pytest.approx(0.2984141, abs=1e-6)
    assert mde(0.0, 5) == 0.0
    assert np.isnan(mde(1.0, 1))
    with pytest.raises(ValueError, match="sd"):
        mde(float("nan"), 4)


def test_probability_of_improvement_exact_values():
    # x = (1, 2, 3) vs y = (2, 2, 0): pairs x > y: 1 (1>0) + 1 (2>0) + 3 (3>all) = 5, ties 2 (2 = 2, 2 = 2)
    # -> (5 + 2 / 2) / 9 = 2 / 3
    p, lo, hi = probability_of_improvement([1.0, 2.0, 3.0], [2.0, 2.0, 0.0], n_boot=500)
    assert p == pytest.approx(2 / 3)
    assert 0.0 <= lo <= p <= hi <= 1.0
    assert probability_of_improvement([0.4, 0.5], [0.4, 0.5])[0] == 0.5  # identical lists (rliable)
    assert probability_of_improvement([0.9, 0.8], [0.1, 0.2], n_boot=200)[:2] == (1.0, 1.0)
    assert probability_of_improvement([0.1], [0.2, 0.0]) == (0.5, 0.5, 0.5)  # one seed: degenerate interval


def test_iqm_exact_values():
    # n = 8: cut int(0.25 * 8) = 2 at each end of 1..7, 100 -> mean(3, 4, 5, 6) = 4.5
    m, lo, hi = iqm_ci([7.0, 1.0, 100.0, 3.0, 2.0, 5.0, 4.0, 6.0], n_boot=500)
    assert m == pytest.approx(4.5)
    assert lo <= m <= hi
    assert iqm_ci([0.2, 0.4, 0.9])[0] == pytest.approx(0.5)  # n = 3: nothing cut, the mean
    assert iqm_ci([0.3]) == (0.3, 0.3, 0.3)
    with pytest.raises(ValueError, match="level"):
        iqm_ci([0.1, 0.2], level=0.0)
