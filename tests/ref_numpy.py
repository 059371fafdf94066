"""Numpy float64 helpers shared by the tests that recompute advantages from the papers' formulas."""

from __future__ import annotations

import numpy as np


def zscore(x, ddof=1, eps=1e-6):
    """(x - mean) / (std + eps) of one group; 0 for a group of one or of equal values."""
    if len(x) < 2 or np.all(x == x[0]):
        return np.zeros_like(x)
    return (x - x.mean()) / (x.std(ddof=ddof) + eps)


def per_group(r, g, f):
    """``f`` applied to each group's rewards (``g``: labels), scattered back to the rows."""
    out = np.zeros_like(r)
    for k in np.unique(g):
        out[g == k] = f(r[g == k])
    return out
