"""Optimal token baseline (verl): a per-token, variance-weighted group baseline."""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import Rollouts, reverse_discounted_cumsum
from ._masks import row_lengths
from ._returns import place_token_rewards
from .registry import estimator


@estimator(
    "optimal_token_baseline",
    needs=("rewards", "group", "mask", "old_logprobs", "sum_pi_squared"),
    paper="Optimal Token Baseline (verl implementation, verl 0.9.1 optimal_token_baseline)",
    level="token",
    example={
        "rewards": [1.0, 0.0, 1.0],
        "group": [0, 0, 0],
        "mask": [[1, 1, 1], [1, 1, 0], [1, 0, 0]],
        "old_logprobs": [[-0.1, -0.5, -1.0], [-0.2, -2.0, 0.0], [-0.7, 0.0, 0.0]],
        "extras": {"sum_pi_squared": [[0.8, 0.4, 0.3], [0.7, 0.2, 0.0], [0.4, 0.0, 0.0]]},
    },
)
def optimal_token_baseline(
    batch: Rollouts, *, handle_zero_tail: bool = True, eps: float = 1e-8
) -> Tensor:
    """Per-token baseline that weights each response by its accumulated score-function variance.

    G_{i,t} = Σ_{s≥t} r_{i,s} (return-to-go),  w_{i,t} = 1 − 2 π_{i,t} + Σ_v π_v²  (π_{i,t} =
    exp(old log-prob), Σ_v π_v² = ``extras["sum_pi_squared"]``), times ρ_{i,t}² if the batch has
    ``extras["rollout_is_weights"]``;  W_{i,t} = Σ_{s≤t} w_{i,s} (trained tokens only);
    B_{g,t} = Σ_{j∈g} G_{j,t} W_{j,t} / (Σ_{j∈g} W_{j,t} + ε) over the rows of the group that
    have a trained token at position t;  A_{i,t} = G_{i,t} − B_{g(i),t}.

    A group of one gets no baseline (A = G). ``handle_zero_tail``: if a group's longest response
    is unique, its baseline is 0 from the second-longest length on (no other row to compare with).
    As in verl's non-multi-turn ``optimal_token_baseline``, positions are absolute token indices
    (right-padded masks); statistics are summed per group with ``index_add_`` (no group loop).
    """
    m = batch.mask
    mf = m.to(torch.float64)
    ids, G = batch.group, batch.num_groups
    T = m.shape[1]
    ret = reverse_discounted_cumsum(place_token_rewards(batch).to(torch.float64), 1.0) * mf
    w = 1.0 - 2.0 * batch.old_logprobs.to(torch.float64).exp() + batch.get("sum_pi_squared").to(torch.float64)
    if batch.has("rollout_is_weights"):
        w = w * batch.get("rollout_is_weights").to(torch.float64) ** 2
    W = (w * mf).cumsum(1) * mf
    num = torch.zeros(G, T, dtype=torch.float64, device=m.device).index_add_(0, ids, ret * W)
    den = torch.zeros(G, T, dtype=torch.float64, device=m.device).index_add_(0, ids, W)
    base = (num / (den + eps))[ids]
    count = torch.bincount(ids, minlength=G)
    keep = (count > 1)[ids].unsqueeze(1)  # singleton groups: no baseline
    if handle_zero_tail:
        lengths = row_lengths(m)
        longest = torch.zeros(G, dtype=lengths.dtype, device=m.device).scatter_reduce_(
            0, ids, lengths, reduce="amax", include_self=False
        )
        is_longest = lengths == longest[ids]
        n_longest = torch.bincount(ids, weights=is_longest.to(torch.float64), minlength=G)
        others = torch.where(is_longest, torch.zeros_like(lengths), lengths)
        second = torch.zeros(G, dtype=lengths.dtype, device=m.device).scatter_reduce_(
            0, ids, others, reduce="amax", include_self=True
        )
        unique_long = is_longest & (n_longest[ids] == 1)
        tail = torch.arange(T, device=m.device).unsqueeze(0) >= second[ids].unsqueeze(1)
        keep = keep & ~(unique_long.unsqueeze(1) & tail)
    return (ret - base * keep) * mf
