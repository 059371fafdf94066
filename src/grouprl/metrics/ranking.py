"""Within-group ranking accuracy: does the policy rank a group's responses as the reward does?

In the spirit of "Preference Learning Algorithms Do Not Learn Preference Rankings" (Chen et al.,
arXiv 2405.19534), applied to the groups of group-relative RL: over all pairs (i, j) of responses
of the same group with different rewards, the fraction where the higher-reward response has the
higher sequence log-probability log π(o | q) = Σ_t log π(o_t | q, o_<t); a tie in log-probability
counts 0.5. Pairs are built with tensor ops (O(G²) pairs per group, no loop over groups).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..core import factorize
from ._check import as_vector, same_length

__all__ = ["within_group_pairs", "sequence_logprob", "ranking_accuracy", "RankingAccuracy"]


class RankingAccuracy(NamedTuple):
    accuracy: float  # NaN when no pair has different rewards
    pairs: int  # pairs with different rewards


def within_group_pairs(group_ids) -> tuple[Tensor, Tensor]:
    """All unordered pairs (i, j), i ≠ j, of rows in the same group, as two (P,) int64 row tensors.

    ``group_ids``: any labels ``grouprl.core.factorize`` accepts (int tensor, list, strings)."""
    ids, k, _ = factorize(group_ids)
    order = torch.argsort(ids, stable=True)
    g = ids[order]
    counts = torch.bincount(g, minlength=k)
    start = torch.cumsum(counts, 0) - counts
    pos = torch.arange(g.numel()) - start[g]
    partners = counts[g] - 1 - pos  # later members of the same group
    left = torch.repeat_interleave(torch.arange(g.numel()), partners)
    block = torch.cumsum(partners, 0) - partners
    right = left + 1 + (torch.arange(left.numel()) - torch.repeat_interleave(block, partners))
    return order[left], order[right]


def sequence_logprob(logprobs: Tensor, mask: Tensor) -> Tensor:
    """Σ_t log π(o_t) over the response tokens: (B, T) log-probs and mask -> (B,) float64."""
    if logprobs.shape != mask.shape or logprobs.dim() != 2:
        raise ValueError(
            f"sequence_logprob: logprobs {tuple(logprobs.shape)} and mask {tuple(mask.shape)} must both be (B, T)."
        )
    return (logprobs.to(torch.float64) * mask.to(torch.float64)).sum(dim=1)


def ranking_accuracy(rewards, seq_logprob, group_ids) -> RankingAccuracy:
    """Fraction of within-group pairs with different rewards that the log-probabilities order the
    same way (ties in log-probability count 0.5)."""
    r = as_vector("rewards", rewards, "ranking_accuracy")
    lp = as_vector("seq_logprob", seq_logprob, "ranking_accuracy")
    ids = factorize(group_ids)[0]
    same_length("ranking_accuracy", rewards=r, seq_logprob=lp, group_ids=ids)
    i, j = within_group_pairs(ids)
    dr = r[i] - r[j]
    valid = dr != 0
    n = int(valid.sum())
    if n == 0:
        return RankingAccuracy(float("nan"), 0)
    agree = torch.sign(dr[valid]) * torch.sign(lp[i][valid] - lp[j][valid])  # +1 right, 0 tie, −1 wrong
    return RankingAccuracy(float(((agree + 1) / 2).mean()), n)
