"""Statistics for the arena report: bootstrap intervals, paired tests across seeds, ranks.

All resampling is vectorised numpy with a seeded ``numpy.random.Generator`` (reports are
reproducible). The unit of replication is the seed: cells with the same seed share the warm start
and the evaluation set, so method-vs-baseline comparisons are paired by seed.

* ``bootstrap_ci``: percentile bootstrap (Efron) interval of the mean.
* ``bootstrap_band``: the same per step of learning curves (seeds x steps).
* ``paired_test``: paired differences d_s = x_s − baseline_s; the mean difference, its percentile
  bootstrap interval, and the two-sided **exact sign-flip permutation test** p-value of mean(d) = 0
  (all 2^n sign patterns when n ≤ 16, else ``n_perm`` random ones). With n seeds the smallest
  attainable p is 2 / 2^n (0.25 for 3 seeds), which the report states.
* ``holm``: Holm–Bonferroni adjustment of several p-values (methods vs one baseline).
* ``ranks``: 1 = best mean, ties share the average rank.

Per-prompt statistics (rliable practice: Agarwal et al. 2021, arXiv:2108.13264, "Deep RL at the
edge of the statistical precipice": IQM, stratified bootstrap CIs, probability of improvement):

* ``hierarchical_bootstrap``: the mean over (seed, prompt) of a (seeds, prompts) matrix of paired
  score differences, with a two-stage percentile bootstrap interval: each replicate draws S seeds
  with replacement, then, independently for every drawn seed, I prompts with replacement from that
  seed's row (the "hierarchical bootstrap" of Saravanan et al. 2020, NBDT 3; Davison & Hinkley 1997,
  Bootstrap Methods, section 3.8). Written here in numpy because ``scipy.stats.bootstrap`` resamples
  the observations of each sample independently (one level, or independent strata) and has no nested
  seed-then-prompt scheme; rliable's stratified bootstrap resamples runs within tasks, also one
  level. Replicates are drawn in chunks of at most ``chunk_elems`` gathered values; there is no
  Python loop over seeds or prompts.

  What its interval covers (model D[s, i] = delta + a_s + e[s, i], var(a) = sa2, var(e) = se2): the
  bootstrap variance is about (1 - 1/S) (sa2 + se2 / I) / S + se2 / (S I), the true one
  sa2 / S + se2 / (S I). So it is near nominal when sa2 is comparable to se2 / I, conservative
  (wider) when the per-prompt noise dominates (se2 counted twice), and, like any percentile interval
  over few units, a little narrow when seed-to-seed variation dominates and S is small (the
  (S - 1) / S factor and z in place of t). Measured (400 seeded replications of 95% intervals, a
  rate's binomial SE there is 0.011): 0.935 at S = 10, I = 20, sa2 = 2.2 se2 / I; 0.9625 at S = 30,
  sa2 = 10 se2 / I; 0.975 with sa2 = 0 (conservative); 0.9275 at S = 10, sa2 = 20 se2 / I (narrow).
  The interval is descriptive; significance comes from the exact sign-flip test.
* ``sign_flip_p``: the exact sign-flip p-value of ``paired_test`` for many rows of seed-level
  differences at once. It equals ``scipy.stats.permutation_test((d,), mean, permutation_type=
  "samples", n_resamples=inf)`` (tested); kept because it scores thousands of rows in one matrix
  product (the simulations of its size and power), where permutation_test takes one sample a call.
* ``probability_of_improvement``: rliable's P(X > Y) over seeds, the Mann-Whitney U statistic of X
  against Y divided by n_x n_y (``scipy.stats.mannwhitneyu``; ties count 1/2; identical samples
  give 0.5, as in rliable), with a percentile bootstrap interval that resamples the seeds of X and
  of Y independently (``scipy.stats.bootstrap``, ``paired=False``: rliable's stratified bootstrap
  with one task).
* ``iqm_ci``: the interquartile mean over seeds (``scipy.stats.trim_mean(x, 0.25)``: the mean of
  the middle 50% after cutting ``int(0.25 n)`` values at each end) with a percentile bootstrap
  interval (``scipy.stats.bootstrap``).
* ``mde``: the minimum detectable effect at 80% power of the paired design that ran, by the paired
  t approximation with the observed seed-level SD of the differences:
  (t_{1-alpha/2, S-1} + t_{power, S-1}) * sd / sqrt(S) (e.g. Cohen 1988, ch. 2). The exact
  t-test power at this effect (noncentral t) is 0.799 at S = 10 and 0.791 at S = 5; the exact
  sign-flip test's, simulated (4,000 designs of 10 normal seed differences), is 0.79.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

__all__ = ["bootstrap_ci", "bootstrap_band", "paired_test", "PairedResult", "holm", "ranks", "min_p_value",
           "hierarchical_bootstrap", "hierarchical_replicates", "sign_flip_p", "probability_of_improvement", "iqm_ci", "mde"]


def _vector(name: str, x, fn: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{fn}: {name} must be a non-empty 1-D sequence of numbers (got shape {a.shape})")
    if not np.isfinite(a).all():
        bad = int(np.flatnonzero(~np.isfinite(a))[0])
        raise ValueError(f"{fn}: {name} row {bad} is {a[bad]}; drop non-finite values first")
    return a


def bootstrap_ci(values, *, level: float = 0.95, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the percentile bootstrap interval of the mean at ``level``.

    One value gives a degenerate interval (mean, mean, mean)."""
    x = _vector("values", values, "bootstrap_ci")
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_ci: level={level} must lie in (0, 1)")
    m = float(x.mean())
    if x.size == 1:
        return m, m, m
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    a = (1 - level) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return m, float(lo), float(hi)


def bootstrap_band(curves, *, level: float = 0.95, n_boot: int = 2_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per step: mean over seeds and the percentile bootstrap band of that mean.

    ``curves``: (seeds, steps); NaN entries (a seed without that step) are left out of the step."""
    c = np.asarray(curves, dtype=np.float64)
    if c.ndim != 2 or c.size == 0:
        raise ValueError(f"bootstrap_band: curves must be a non-empty (seeds, steps) array (got shape {c.shape})")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, c.shape[0], size=(n_boot, c.shape[0]))
    a = (1 - level) / 2
    with warnings.catch_warnings():  # a resample that drew only seeds without a step: NaN there
        warnings.simplefilter("ignore", RuntimeWarning)
        boot = np.nanmean(c[idx], axis=1) if np.isnan(c).any() else c[idx].mean(axis=1)  # (n_boot, steps)
        mean = np.nanmean(c, axis=0)
        lo, hi = np.nanquantile(boot, [a, 1 - a], axis=0)
    return mean, lo, hi


def min_p_value(n: int) -> float:
    """The smallest two-sided p-value the exact sign-flip test can give with n pairs: 2 / 2^n."""
    return min(1.0, 2.0 / 2**n)


@dataclass(frozen=True)
class PairedResult:
    """Method minus baseline over paired seeds."""

    n: int
    mean_diff: float
    low: float
    high: float
    p_value: float
    test: str = "two-sided exact sign-flip permutation test on paired seed differences"


def paired_test(x, baseline, *, level: float = 0.95, n_boot: int = 10_000, n_perm: int = 20_000,
                seed: int = 0) -> PairedResult:
    """Paired comparison of ``x`` with ``baseline`` (same seeds, same order); see the module doc."""
    a = _vector("x", x, "paired_test")
    b = _vector("baseline", baseline, "paired_test")
    if a.size != b.size:
        raise ValueError(f"paired_test: x has {a.size} seeds, baseline {b.size}; pair them by seed first")
    d = a - b
    m, lo, hi = bootstrap_ci(d, level=level, n_boot=n_boot, seed=seed)
    return PairedResult(n=d.size, mean_diff=m, low=lo, high=hi, p_value=float(sign_flip_p(d, n_perm=n_perm, seed=seed)))


def sign_flip_p(d, *, n_perm: int = 20_000, seed: int = 0, chunk_elems: int = 4_000_000) -> np.ndarray | float:
    """Two-sided sign-flip p-value of mean(d) = 0 for the last axis of ``d`` (one row: a float;
    (rows, n): one p per row): the fraction of sign patterns whose |mean| reaches the observed one,
    over all 2^n patterns when n <= 16 (exact), else ``n_perm`` random ones."""
    x = np.asarray(d, dtype=np.float64)
    if x.ndim not in (1, 2) or x.shape[-1] == 0:
        raise ValueError(f"sign_flip_p: d must be (n,) or (rows, n) with n >= 1 (got shape {x.shape})")
    rows = x.reshape(-1, x.shape[-1])
    n = rows.shape[1]
    if n <= 16:
        signs = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2.0 - 1  # every sign pattern
    else:
        signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n_perm, n))
    observed = np.abs(rows.mean(axis=1))
    p = np.empty(rows.shape[0])
    step = max(1, chunk_elems // signs.shape[0])
    for s in range(0, rows.shape[0], step):  # chunks of rows, bounded memory
        stats = np.abs(rows[s:s + step] @ signs.T) / n
        p[s:s + step] = (stats >= observed[s:s + step, None] - 1e-12).mean(axis=1)
    return float(p[0]) if x.ndim == 1 else p


def holm(p_values) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (same order as given), capped at 1."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.size == 0:
        return p
    order = np.argsort(p)
    k = p.size
    adj = np.maximum.accumulate(np.minimum(1.0, (k - np.arange(k)) * p[order]))
    out = np.empty_like(adj)
    out[order] = adj
    return out


def ranks(means) -> np.ndarray:
    """Rank of each mean (1 = highest), ties share the average rank."""
    m = np.asarray(means, dtype=np.float64)
    order = np.argsort(-m, kind="stable")
    r = np.empty(m.size)
    r[order] = np.arange(1, m.size + 1)
    for v in np.unique(m):
        tie = m == v
        if tie.sum() > 1:
            r[tie] = r[tie].mean()
    return r


def _matrix(name: str, x, fn: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"{fn}: {name} must be a non-empty (seeds, prompts) matrix (got shape {a.shape})")
    if not np.isfinite(a).all():
        s, i = np.argwhere(~np.isfinite(a))[0]
        raise ValueError(f"{fn}: {name}[{s}, {i}] is {a[s, i]}; keep only prompts scored in every cell")
    return a


def _level(level: float, fn: str) -> float:
    if not 0 < level < 1:
        raise ValueError(f"{fn}: level={level} must lie in (0, 1)")
    return (1 - level) / 2


def hierarchical_replicates(diffs, *, n_boot: int = 2_000, seed: int = 0, chunk_elems: int = 4_000_000) -> np.ndarray:
    """``n_boot`` two-stage bootstrap replicates of the grand mean of a (seeds, prompts) matrix:
    S seeds drawn with replacement, then, for every drawn seed, I prompts with replacement from its
    row. Vectorised in chunks of at most ``chunk_elems`` gathered values."""
    d = _matrix("diffs", diffs, "hierarchical_bootstrap")
    n_seeds, n_items = d.shape
    rng = np.random.default_rng(seed)
    flat = d.ravel()
    per = max(1, chunk_elems // d.size)  # replicates per chunk
    boot = np.empty(n_boot)
    for s in range(0, n_boot, per):
        r = min(per, n_boot - s)
        rows = rng.integers(0, n_seeds, size=(r, n_seeds, 1)) * n_items
        cols = rng.integers(0, n_items, size=(r, n_seeds, n_items))
        boot[s:s + r] = flat[rows + cols].mean(axis=(1, 2))
    return boot


def hierarchical_bootstrap(diffs, *, level: float = 0.95, n_boot: int = 2_000, seed: int = 0,
                           chunk_elems: int = 4_000_000) -> tuple[float, float, float]:
    """(mean, low, high) of a (seeds, prompts) matrix: the grand mean and the percentile interval of
    ``hierarchical_replicates``; see the module docstring for what it covers."""
    d = _matrix("diffs", diffs, "hierarchical_bootstrap")
    a = _level(level, "hierarchical_bootstrap")
    m = float(d.mean())
    if d.size == 1:
        return m, m, m
    boot = hierarchical_replicates(d, n_boot=n_boot, seed=seed, chunk_elems=chunk_elems)
    lo, hi = np.quantile(boot, [a, 1 - a])
    return m, float(lo), float(hi)


def _rng(seed: int) -> dict[str, np.random.Generator]:
    """The seeded generator for ``scipy.stats.bootstrap`` (``rng`` since scipy 1.15, ``random_state`` before)."""
    import inspect

    from scipy import stats

    name = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"
    return {name: np.random.default_rng(seed)}


def _poi_statistic(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(X > Y) + P(X = Y) / 2 over all pairs, vectorised over leading axes (for scipy's bootstrap)."""
    x, y = np.moveaxis(x, axis, -1), np.moveaxis(y, axis, -1)
    gt = x[..., :, None] > y[..., None, :]
    eq = x[..., :, None] == y[..., None, :]
    return (gt + 0.5 * eq).mean(axis=(-2, -1))


def probability_of_improvement(x, y, *, level: float = 0.95, n_boot: int = 2_000,
                               seed: int = 0) -> tuple[float, float, float]:
    """(P(X > Y), low, high): rliable's probability of improvement of the seeds ``x`` of a method
    over the seeds ``y`` of the baseline (unpaired, ties count 1/2), with a percentile bootstrap
    interval resampling ``x`` and ``y`` independently. A sample of one seed gives a degenerate
    interval."""
    from scipy import stats

    a = _vector("x", x, "probability_of_improvement")
    b = _vector("y", y, "probability_of_improvement")
    alpha = _level(level, "probability_of_improvement")
    if a.size == b.size and np.array_equal(a, b):
        p = 0.5  # rliable: identical score lists
    else:
        p = float(stats.mannwhitneyu(a, b, alternative="greater").statistic / (a.size * b.size))
    if min(a.size, b.size) < 2:
        return p, p, p
    res = stats.bootstrap((a, b), _poi_statistic, paired=False, vectorized=True, n_resamples=n_boot,
                          confidence_level=1 - 2 * alpha, method="percentile", **_rng(seed))
    return p, float(res.confidence_interval.low), float(res.confidence_interval.high)


def _trim_mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    from scipy import stats

    return stats.trim_mean(x, 0.25, axis=axis)


def iqm_ci(values, *, level: float = 0.95, n_boot: int = 2_000, seed: int = 0) -> tuple[float, float, float]:
    """(IQM, low, high): the interquartile mean (``scipy.stats.trim_mean(x, 0.25)``) and its
    percentile bootstrap interval over the values (seeds); one value gives a degenerate interval."""
    from scipy import stats

    x = _vector("values", values, "iqm_ci")
    alpha = _level(level, "iqm_ci")
    m = float(_trim_mean(x))
    if x.size < 2 or np.ptp(x) == 0:
        return m, m, m
    res = stats.bootstrap((x,), _trim_mean, vectorized=True, n_resamples=n_boot, confidence_level=1 - 2 * alpha,
                          method="percentile", **_rng(seed))
    return m, float(res.confidence_interval.low), float(res.confidence_interval.high)


def mde(sd: float, n: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable effect of a two-sided paired test on ``n`` seeds with seed-level SD ``sd``
    of the differences: (t_{1-alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n); NaN when n < 2."""
    from scipy import stats

    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError(f"mde: alpha={alpha} and power={power} must lie in (0, 1)")
    if not np.isfinite(sd) or sd < 0:
        raise ValueError(f"mde: sd={sd} must be a finite number >= 0")
    if n < 2:
        return float("nan")
    return float((stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)) * sd / np.sqrt(n))
