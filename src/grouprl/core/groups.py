"""The group kernel: per-group statistics of a per-row value, vectorised.

Every group estimator in grouprl derives its advantage from these statistics. They are computed
with ``index_add_`` / ``scatter_reduce_`` over dense int64 group ids (no Python loop over rows or
groups) and accumulated in float64, with a two-pass (centred) variance.

Exactness: a group whose values are all equal (``max == min``) is *constant*; ``centered`` returns
exactly 0.0 for its rows, whatever the values are (verl 0.9.1 returns |A| up to 0.056 for eight
rewards of 0.7, because the float32 mean differs from 0.7 by an ulp and 1/(0 + 1e-6) amplifies it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["GroupStats", "group_stats", "factorize", "check_eps", "cap_per_group"]


def factorize(labels) -> tuple[Tensor, int, list | None]:
    """Map group labels (ints, strings, numpy arrays, tensors, in any order) to dense int64 ids.

    Returns ``(ids, num_groups, uniques)``: ``ids[i]`` in ``[0, num_groups)``; ``uniques[k]`` is the
    label of group ``k`` when the labels were not a tensor (``None`` otherwise, the tensor's sorted
    unique values define the order). Integer labels may be negative or sparse.

    Strings are hashed in one pass with a dict (the only per-row Python work in grouprl; pass int64
    ids to skip it), in order of first appearance.
    """
    if isinstance(labels, Tensor):
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
            raise ValueError(
                f"Rollouts.group: dtype {labels.dtype} is not a valid group label; "
                "pass integer ids, strings or a numpy/object array of labels."
            )
        if labels.dim() != 1:
            raise ValueError(
                f"Rollouts.group: expected shape (B,), got {tuple(labels.shape)}; "
                "pass one group label per row."
            )
        uniq, inv = torch.unique(labels, sorted=True, return_inverse=True)
        return inv.to(torch.int64), int(uniq.numel()), None
    if isinstance(labels, np.ndarray):
        arr = labels
    else:
        labels = list(labels)
        try:
            arr = np.asarray(labels)
        except ValueError:  # ragged nested labels: treat each as one hashable object
            arr = None
        if arr is None or arr.ndim != 1:
            arr = np.empty(len(labels), dtype=object)
            arr[:] = [tuple(x) if isinstance(x, list) else x for x in labels]
    if arr.ndim != 1:
        raise ValueError(
            f"Rollouts.group: expected shape (B,), got {arr.shape}; pass one group label per row."
        )
    if arr.dtype.kind in "iu":
        return factorize(torch.from_numpy(arr.astype(np.int64, copy=False)))
    if arr.dtype.kind in "fcb":
        raise ValueError(
            f"Rollouts.group: dtype {arr.dtype} is not a valid group label; "
            "pass integer ids, strings or an object array of labels."
        )
    table: dict = {}
    try:
        ids = np.fromiter((table.setdefault(x, len(table)) for x in arr.tolist()), np.int64, len(arr))
    except TypeError as exc:  # unhashable label
        raise ValueError(
            f"Rollouts.group: labels must be hashable ({exc}); pass ints or strings."
        ) from exc
    return torch.from_numpy(ids), len(table), list(table)


@dataclass(frozen=True)
class GroupStats:
    """Per-group statistics (each tensor has one entry per group, float64).

    ``ids`` maps rows to groups; ``stats.rows(x)`` gathers a per-group tensor back to rows.
    """

    ids: Tensor
    count: Tensor  # int64
    sum: Tensor
    mean: Tensor
    var: Tensor  # with the ddof given to group_stats; 0 where count <= ddof
    max: Tensor
    min: Tensor
    ddof: int

    @property
    def num_groups(self) -> int:
        return int(self.count.numel())

    @property
    def std(self) -> Tensor:
        return self.var.sqrt()

    @property
    def constant(self) -> Tensor:
        """Bool per group: all values equal (includes groups of one)."""
        return self.max == self.min

    @property
    def singleton(self) -> Tensor:
        return self.count == 1

    def rows(self, per_group: Tensor) -> Tensor:
        """Gather a per-group tensor back to rows."""
        return per_group[self.ids]

    def centered(self, values: Tensor) -> Tensor:
        """values − group mean, exactly 0.0 on rows of constant groups (float64)."""
        out = values.to(torch.float64) - self.rows(self.mean)
        return out.masked_fill_(self.rows(self.constant), 0.0)

    def zscore(self, values: Tensor, eps: float = 1e-6) -> Tensor:
        """(values − mean) / (std + eps), exactly 0.0 on constant groups (float64), also for eps = 0.

        ``eps`` >= 0 (a negative eps shrinks the denominator: eps = −0.4 with std 0.5 scales the
        advantages tenfold). Rewards so large that the float64 sum or variance overflows (e.g.
        ±1e308) are standardised in a scaled form, (x/s − mean/s) / (std/s + eps/s) with s the
        group's largest |x|, which is the same quantity without the overflow.
        """
        check_eps(eps)
        if not bool(torch.isfinite(self.std).all()):  # one check per call, on per-group values
            return _zscore_scaled(values, self.ids, self.num_groups, self.ddof, eps)
        std = self.rows(self.std) + eps
        return self.centered(values) / torch.where(std > 0, std, torch.ones_like(std))

    def loo_mean(self, values: Tensor) -> Tensor:
        """Leave-one-out mean: mean of the *other* rows of the group; 0 for a group of one."""
        n = self.rows(self.count).to(torch.float64)
        others = self.rows(self.sum) - values.to(torch.float64)
        return torch.where(n > 1, others / (n - 1).clamp_min(1.0), torch.zeros_like(others))


def check_eps(eps: object, name: str = "eps") -> None:
    """``eps`` of a standardisation: a finite real number >= 0, else an error naming it."""
    if isinstance(eps, Tensor) and eps.numel() == 1:
        eps = eps.item()
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}={eps!r}: expected a number >= 0 (the default is 1e-6)")
    if not (eps >= 0 and np.isfinite(eps)):
        raise ValueError(
            f"{name}={eps!r}: the denominator is std + {name}, so {name} must be a finite number >= 0 "
            "(a negative one shrinks it and inflates the advantages); the default is 1e-6"
        )


def _zscore_scaled(values: Tensor, ids: Tensor, num_groups: int, ddof: int, eps: float) -> Tensor:
    x = values.to(torch.float64)
    s = _scatter("amax", x.abs(), ids, num_groups, 0.0)
    s = torch.where(s > 0, s, torch.ones_like(s))[ids]
    st = group_stats(x / s, ids, num_groups, ddof=ddof)  # |x/s| <= 1: nothing overflows
    std = st.rows(st.std) + eps / s
    return st.centered(x / s) / torch.where(std > 0, std, torch.ones_like(std))


def _scatter(op: str, src: Tensor, ids: Tensor, num_groups: int, init: float) -> Tensor:
    out = torch.full((num_groups,), init, dtype=src.dtype, device=src.device)
    return out.scatter_reduce_(0, ids, src, reduce=op, include_self=False)


def group_stats(values: Tensor, ids: Tensor, num_groups: int | None = None, *, ddof: int = 1) -> GroupStats:
    """Count / sum / mean / variance (two-pass, ``ddof``) / max / min of ``values`` per group, float64.

    Groups without rows get count 0 and zeros. A group with ``count <= ddof`` gets variance 0.
    """
    if num_groups is None:
        num_groups = int(ids.max().item()) + 1 if ids.numel() else 0
    x = values.to(torch.float64)
    count = torch.bincount(ids, minlength=num_groups)
    denom = count.to(torch.float64)
    total = torch.zeros(num_groups, dtype=torch.float64, device=x.device).index_add_(0, ids, x)
    mean = total / denom.clamp_min(1.0)
    dev = x - mean[ids]
    ss = torch.zeros_like(total).index_add_(0, ids, dev * dev)
    var = torch.where(denom > ddof, ss / (denom - ddof).clamp_min(1.0), torch.zeros_like(ss))
    empty = count == 0
    mx = _scatter("amax", x, ids, num_groups, float("-inf")).masked_fill_(empty, 0.0)
    mn = _scatter("amin", x, ids, num_groups, float("inf")).masked_fill_(empty, 0.0)
    # A constant group has zero spread by definition: make it explicit so no rounding leaks.
    var = var.masked_fill_(mx == mn, 0.0)
    return GroupStats(ids=ids, count=count, sum=total, mean=mean, var=var, max=mx, min=mn, ddof=ddof)


def cap_per_group(keep: Tensor, group: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """A uniformly random subset of at most ``k`` of the ``keep`` rows of each group: bool (N,).

    ``keep`` bool (N,) marks the candidate rows, ``group`` int64 (N,) dense group ids in [0, G).
    Every row draws u ~ U[0, 1) from ``generator`` (N draws, whatever ``keep`` holds); rows are sorted
    by (group, not kept, u), and a kept row survives when its rank inside its group is below ``k``:
    a uniform draw without replacement of min(k, kept) rows per group, with no loop over groups.
    SPO-tree samples at most 32 edges per question and iteration this way (SPO, arXiv:2505.23564,
    the reference code's on-policy replay buffer; ``credit: spo_tree``'s ``max_edges``).
    """
    if keep.dim() != 1 or group.shape != keep.shape:
        raise ValueError(f"cap_per_group: keep {tuple(keep.shape)} and group {tuple(group.shape)} must both be (N,).")
    if int(k) < 0:
        raise ValueError(f"cap_per_group: k={k}; pass the most rows to keep per group (k >= 0).")
    N = keep.shape[0]
    if N == 0:
        return keep
    keep = keep.to(torch.bool)
    n_groups = int(group.max()) + 1
    key = torch.rand(N, generator=generator, dtype=torch.float64) + (~keep).to(torch.float64) * 2.0
    order = torch.argsort(group.to(torch.float64) * 4.0 + key)  # by group, kept rows first, in random order
    first = torch.zeros(n_groups, dtype=torch.int64).scatter_reduce_(
        0, group[order], torch.arange(N), reduce="amin", include_self=False)
    rank = torch.empty(N, dtype=torch.int64)
    rank[order] = torch.arange(N) - first[group[order]]
    return keep & (rank < k)
