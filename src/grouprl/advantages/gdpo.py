"""GDPO: multi-reward advantages with per-component (decoupled) group normalisation."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..core import Rollouts, group_stats
from ._common import apply_singleton
from ._masks import row_lengths
from ._returns import row_whiten
from .registry import estimator

MODES = ("normalize_then_sum", "sum_then_normalize")


def _weights(weights: Sequence[float] | Tensor | None, K: int, device) -> Tensor:
    if weights is None:
        return torch.ones(K, dtype=torch.float64, device=device)
    w = torch.as_tensor(weights, dtype=torch.float64, device=device).reshape(-1)
    if w.numel() != K:
        raise ValueError(
            f"gdpo: weights has {w.numel()} entries but reward_components has K = {K} columns; "
            "pass one weight per reward component."
        )
    if not bool(torch.isfinite(w).all()):
        raise ValueError("gdpo: weights must be finite.")
    return w


@estimator(
    "gdpo",
    needs=("rewards", "group", "mask", "reward_components"),
    paper="GDPO: Group reward-Decoupled Normalization Policy Optimization for Multi-reward RL "
    "Optimization, arXiv:2601.05242",
    example={
        "rewards": [2, 1, 1, 0],
        "group": [0, 0, 0, 0],
        "reward_components": [[1, 1], [1, 0], [0, 1], [0, 0]],
    },
)
def gdpo(
    batch: Rollouts,
    *,
    mode: str = "normalize_then_sum",
    weights: Sequence[float] | None = None,
    scale: bool = True,
    eps: float = 1e-6,
    ddof: int = 1,
    whiten: bool | None = None,
    singleton: str = "zero",
) -> Tensor:
    """Group reward-Decoupled normalisation for K reward components r_{i,k} (``reward_components``).

    ``normalize_then_sum`` (GDPO): Â_{i,k} = (r_{i,k} − mean_g(r_k)) / (std_g(r_k) + ε) within the
    group, A_i = Σ_k w_k Â_{i,k}, then batch whitening over all trained tokens (verl's
    ``masked_whiten``; token-weighted, computed on per-row values).
    ``sum_then_normalize`` (GRPO on the weighted sum): R_i = Σ_k w_k r_{i,k},
    A_i = (R_i − mean_g(R)) / (std_g(R) + ε), no whitening.

    ``whiten``: None = on for ``normalize_then_sum`` (verl, and the paper's batch-wise
    normalisation), off for ``sum_then_normalize``; True/False forces it. ``scale=False`` drops the
    division by the group std. Constant groups (per component) give exactly 0. A group of one: 0 by
    default, the raw values with ``singleton="raw"`` (verl's GRPO convention), or ``"raise"``.
    ``batch.rewards`` is not used.
    """
    if mode not in MODES:
        raise ValueError(f"gdpo: mode={mode!r}; choose one of {MODES}")
    rc = batch.reward_components.to(torch.float64)
    K = rc.shape[1]
    if K == 0:
        raise ValueError("gdpo: reward_components has 0 columns; pass at least one reward component.")
    w = _weights(weights, K, rc.device)
    ids, G = batch.group, batch.num_groups

    def normalise(x: Tensor) -> Tensor:
        st = group_stats(x, ids, G, ddof=ddof)
        a = st.zscore(x, eps) if scale else st.centered(x)
        return apply_singleton(a, st, x, singleton, "gdpo")

    if mode == "normalize_then_sum":
        adv = sum(w[k] * normalise(rc[:, k]) for k in range(K))  # K is small
    else:
        adv = normalise(rc @ w)
    if whiten is None:
        whiten = mode == "normalize_then_sum"
    return row_whiten(adv, row_lengths(batch.mask)) if whiten else adv
