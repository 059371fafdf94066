"""OPO: the length-weighted group baseline ("optimal" reward baseline for sequence rewards)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import Rollouts, group_stats
from ._common import apply_singleton
from ._masks import row_lengths
from .registry import estimator


@estimator(
    "opo",
    paper="On-Policy RL with Optimal Reward Baseline (OPO), arXiv:2505.23585",
    example={
        "rewards": [1, 0, 1],
        "group": [0, 0, 0],
        "mask": [[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]],
    },
)
def opo(batch: Rollouts, *, singleton: str = "zero") -> Tensor:
    """On-Policy Optimization's baseline: the group's rewards weighted by response length.

    b_g = Σ_j |o_j| r_j / Σ_j |o_j|,  A_i = r_i − b_g,  |o_j| = the number of trained tokens of j.

    A constant group gives exactly 0; a group whose rows have no trained tokens at all gets b = 0.
    A group of one: 0 by default, the raw reward with ``singleton="raw"`` (verl: b = 0).
    """
    ids, G = batch.group, batch.num_groups
    lengths = row_lengths(batch.mask).to(torch.float64)
    r = batch.rewards.to(torch.float64)
    st = group_stats(batch.rewards, ids, G)
    num = torch.zeros(G, dtype=torch.float64, device=r.device).index_add_(0, ids, lengths * r)
    den = torch.zeros(G, dtype=torch.float64, device=r.device).index_add_(0, ids, lengths)
    base = torch.where(den > 0, num / den.clamp_min(1.0), torch.zeros_like(num))
    adv = (r - st.rows(base)).masked_fill_(st.rows(st.constant), 0.0)
    return apply_singleton(adv, st, batch.rewards, singleton, "opo")
