"""Per-data-group reports: who is left behind (Negotiative Alignment, arXiv:2503.12613).

From "Negotiative Alignment" (Mushkani et al., arXiv 2503.12613), over group utilities U_g:

* total Σ_g U_g, worst group min_g U_g;
* p20: the 20th percentile of the utilities after min-max normalisation (x − min)/(max − min);
* Gini G = Σ_i Σ_j |x_i − x_j| / (2 n² mean(x)).

**Proposed readings** (this library's): percentile interpolation is numpy "linear"; when max = min the
normalised values are all 1; the Gini is applied to raw, non-negative utilities (negative values
raise). A Gini of n equal values is 0; of a one-hot vector (n − 1)/n.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core import factorize, group_stats
from ._check import as_vector, same_length

__all__ = ["gini", "minmax_normalise", "percentile", "GroupTable", "group_table", "fairness_summary", "fairness_report"]


def gini(values) -> float:
    """Gini coefficient Σ_i Σ_j |x_i − x_j| / (2 n² mean), computed in O(n log n) from the sorted
    values as Σ_i (2i − n − 1) x_(i) / (n² mean) (i = 1..n). 0 when all values are 0."""
    x = as_vector("values", values, "gini")
    n = same_length("gini", values=x)
    if bool((x < 0).any()):
        row = int((x < 0).nonzero()[0, 0])
        raise ValueError(
            f"gini: values row {row} is {x[row].item()} < 0; the Gini needs non-negative utilities "
            "(shift or rescale scores such as ±1 rewards to [0, 1] first)."
        )
    total = x.sum()
    if total == 0:
        return 0.0
    xs = torch.sort(x).values
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(((2 * i - n - 1) * xs).sum() / (n * total))


def minmax_normalise(values) -> Tensor:
    """(x − min)/(max − min); all ones when max = min (proposed reading)."""
    x = as_vector("values", values, "minmax_normalise")
    same_length("minmax_normalise", values=x)
    lo, hi = x.min(), x.max()
    if hi == lo:
        return torch.ones_like(x)
    return (x - lo) / (hi - lo)


def percentile(values, q: float = 20.0, *, normalise: bool = True) -> float:
    """The q-th percentile (linear interpolation, as numpy's default) of the values, min-max
    normalised first when ``normalise`` (the p20 satisfaction of arXiv:2503.12613)."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile: q={q} must lie in [0, 100].")
    x = minmax_normalise(values) if normalise else as_vector("values", values, "percentile")
    return float(torch.quantile(x, q / 100.0, interpolation="linear"))


@dataclass(frozen=True)
class GroupTable:
    """Per data group: label, mean score and number of items (groups in order of first appearance
    for non-tensor labels, sorted ids for tensor labels)."""

    labels: list
    mean: Tensor  # float64
    n: Tensor  # int64

    def rows(self) -> list[dict]:
        return [{"group": g, "score": float(m), "n": int(c)} for g, m, c in zip(self.labels, self.mean, self.n)]

    def format(self, digits: int = 4) -> str:
        """A plain-text table for logs."""
        w = max([5] + [len(str(g)) for g in self.labels])
        lines = [f"{'group':<{w}}  {'score':>{digits + 3}}  {'n':>6}"]
        lines += [f"{str(g):<{w}}  {float(m):>{digits + 3}.{digits}f}  {int(c):>6d}" for g, m, c in zip(self.labels, self.mean, self.n)]
        return "\n".join(lines)


def group_table(scores, data_group) -> GroupTable:
    """Mean score and count per data group (vectorised with the core group kernel)."""
    s = as_vector("scores", scores, "group_table")
    ids, k, labels = factorize(data_group)
    same_length("group_table", scores=s, data_group=ids)
    if labels is None:
        labels = torch.unique(torch.as_tensor(data_group), sorted=True).tolist()
    st = group_stats(s, ids, k, ddof=0)
    return GroupTable(labels=list(labels), mean=st.mean, n=st.count)


def fairness_summary(group_scores, q: float = 20.0) -> dict[str, float]:
    """Across groups: total, mean, worst group, p{q} of the min-max normalised scores, Gini."""
    u = as_vector("group_scores", group_scores, "fairness_summary")
    same_length("fairness_summary", group_scores=u)
    return {
        "total": float(u.sum()),
        "mean": float(u.mean()),
        "worst": float(u.min()),
        f"p{q:g}": percentile(u, q),
        "gini": gini(u),
    }


def fairness_report(scores, data_group, q: float = 20.0) -> tuple[GroupTable, dict[str, float]]:
    """Per-item scores and data-group labels -> (per-group table, summary across group means)."""
    table = group_table(scores, data_group)
    return table, fairness_summary(table.mean, q)
