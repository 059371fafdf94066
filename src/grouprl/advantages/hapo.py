"""HAPO's Token-Level Group Average advantage (TLGA), arXiv:2509.16591.

HAPO's other parts: Differential Advantage Redistribution and Asymmetric Adaptive Clipping are the
policy loss ``hapo`` (``grouprl.losses.hapo``); Adaptive Temperature Sampling is the logits
processor ``grouprl.rollout.hapo_temperature.AdaptiveTemperature``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import Rollouts, group_stats
from ._masks import row_lengths
from .grpo import grpo
from .registry import estimator

__all__ = ["hapo_tlga"]

#: the reference code's hard-coded fallback threshold on |A|
FALLBACK = 5.0


@estimator(
    "hapo_tlga",
    paper="From Uniform to Heterogeneous: Tailoring Policy Optimization to Every Token's Nature "
    "(HAPO), arXiv:2509.16591",
    example={
        "rewards": [1, 0, 0, 1],
        "group": [0, 0, 0, 0],
        "mask": [[1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 1, 0]],  # L = 1, 3, 2, 2
    },
)
def hapo_tlga(
    batch: Rollouts,
    *,
    norm_by_std: bool = True,
    eps: float = 1e-6,
    fallback: float | None = FALLBACK,
) -> Tensor:
    """HAPO Token-Level Group Average (TLGA): group statistics over *tokens*, not responses.

    Every valid token of response i carries r_i; per group, with L_i the response's valid tokens:

        μ_tok = Σ_i L_i r_i / Σ_i L_i,   σ_tok = sqrt(Σ_i L_i (r_i − μ_tok)² / Σ_i L_i),
        A_i = (r_i − μ_tok) / (σ_tok + ε)        (``norm_by_std=False``: A_i = r_i − μ_tok)

    Safety fallback (reference code): a group with any |A_i| ≥ ``fallback`` (5) on a valid row uses
    the ordinary GRPO advantage (ddof 1; with ``norm_by_std=False`` the un-normalised r − mean, as
    the reference code, which checks the threshold in both modes) instead; ``fallback=None``
    disables it. A group of one, a constant group and a fully masked group give exactly 0;
    an all-masked response is excluded from its group's statistics. With equal lengths TLGA is
    GRPO with the population std (ddof 0).
    """
    r = batch.rewards.to(torch.float64)
    ids, G = batch.group, batch.num_groups
    w = row_lengths(batch.mask).to(torch.float64)
    zeros = torch.zeros(G, dtype=torch.float64, device=r.device)
    W = zeros.index_add(0, ids, w)
    mu = zeros.index_add(0, ids, w * r) / W.clamp_min(1.0)
    dev = r - mu[ids]
    var = zeros.index_add(0, ids, w * dev * dev) / W.clamp_min(1.0)
    st = group_stats(r, ids, G, ddof=1)
    degenerate = st.rows(st.constant | (W == 0))
    dev = dev.masked_fill(degenerate, 0.0)
    adv = dev / (var.sqrt()[ids] + eps) if norm_by_std else dev
    if fallback is not None:
        big = zeros.index_add(0, ids, ((adv.abs() >= fallback) & (w > 0)).to(torch.float64)) > 0
        if bool(big.any()):
            plain = grpo(batch, scale="group" if norm_by_std else "none", eps=eps, ddof=1)
            adv = torch.where(big[ids], plain, adv)
    return adv
