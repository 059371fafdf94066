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
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

__all__ = ["bootstrap_ci", "bootstrap_band", "paired_test", "PairedResult", "holm", "ranks", "min_p_value"]


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
    n = d.size
    if n <= 16:
        signs = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2 - 1  # every sign pattern
    else:
        signs = np.random.default_rng(seed).choice([-1, 1], size=(n_perm, n))
    stats = np.abs((signs * d).mean(axis=1))
    observed = abs(d.mean())
    p = float((stats >= observed - 1e-12).mean())
    return PairedResult(n=n, mean_diff=m, low=lo, high=hi, p_value=p)


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
