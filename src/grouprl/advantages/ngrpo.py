"""NGRPO: Negative-enhanced Group Relative Policy Optimization, arXiv:2509.18851.

Advantage Calibration: every group gets ``k`` virtual responses with the maximum reward ``r_max``,
used for the group statistics only (they are never trained on). The loss half of the method,
asymmetric clipping (ε_low 0.16 / ε_high 0.24, no dual clip), lives in ``grouprl.losses.ngrpo``;
the sampler half (drop all-correct groups, carry leftovers over) belongs to ``grouprl.sampling``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import GroupStats, Rollouts, group_stats
from ._common import apply_singleton
from .registry import estimator

__all__ = ["ngrpo", "calibrated_stats"]


def calibrated_stats(
    st: GroupStats, rewards: Tensor, *, r_max: float, k: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-group (mean', std', constant') of the rewards plus ``k`` virtual copies of ``r_max``.

    μ' = (Σ r + k·r_max)/(G + k); σ'² = (Σ (r − μ')² + k·(r_max − μ')²)/(G + k − ddof).
    ``st`` holds the real rewards' statistics (its ddof is used). ``constant'`` is True when every
    real reward equals r_max (for k = 0: when all are equal), so the caller can return an exact 0
    there. Float64, one entry per group.
    """
    ids, ddof = st.ids, st.ddof
    r = rewards.to(torch.float64)
    n = st.count.to(torch.float64) + k
    mean = (st.sum + k * r_max) / n.clamp_min(1.0)
    dev = r - mean[ids]
    ss = torch.zeros_like(mean).index_add_(0, ids, dev * dev) + k * (r_max - mean) ** 2
    var = torch.where(n > ddof, ss / (n - ddof).clamp_min(1.0), torch.zeros_like(ss))
    constant = st.constant if k == 0 else st.constant & (st.max == r_max)
    var = var.masked_fill(constant, 0.0)
    return mean, var.sqrt(), constant


@estimator(
    "ngrpo",
    paper="NGRPO: Negative-enhanced Group Relative Policy Optimization, arXiv:2509.18851",
    example={"rewards": [1, 0, 0, 1, 0, 0, 0, 0], "group": [0, 0, 0, 0, 1, 1, 1, 1]},
)
def ngrpo(
    batch: Rollouts,
    *,
    r_max: float = 1.0,
    k: int = 1,
    eps: float = 1e-6,
    ddof: int = 1,
    singleton: str = "zero",
) -> Tensor:
    """NGRPO Advantage Calibration: GRPO statistics over the group plus k virtual r_max samples.

    R' = {r_1..r_G, r_max × k};  μ' = mean(R');  σ' = std(R') (ddof 1, divisor G + k − 1);
    A_i = (r_i − μ') / (σ' + ε), the same for every token of o_i.

    An all-wrong group now gets a uniform negative advantage (e.g. [0,0,0,0] → −0.4472 each); an
    all-correct group still gets exactly 0 (σ' = 0); mixed groups get shrunk positive and enlarged
    negative advantages. ``k = 0`` is GRPO. ``r_max`` is the task's maximum reward (1.0 for a 0/1
    verifier; +1 for ±1 rewards is a *proposed reading*); a reward above it raises.
    A group of one: 0 by default;
    ``singleton="raw"`` gives A = r, the reference code's behaviour (it skips the virtual sample
    for size-1 groups, so verl's mean 0 / std 1 quirk applies).
    """
    if k < 0 or int(k) != k:
        raise ValueError(f"ngrpo: k={k!r}; pass a non-negative integer number of virtual samples.")
    k = int(k)
    if k > 0:
        over = batch.rewards.to(torch.float64) > r_max + 1e-6 * max(1.0, abs(r_max))
        if bool(over.any()):
            i = int(over.nonzero()[0, 0])
            raise ValueError(
                f"ngrpo: row {i} has reward {batch.rewards[i].item():g} > r_max={r_max:g}; pass "
                "r_max= the task's maximum reward (the virtual samples must be the best possible)."
            )
    st = group_stats(batch.rewards, batch.group, batch.num_groups, ddof=ddof)
    mean, std, constant = calibrated_stats(st, batch.rewards, r_max=float(r_max), k=k)
    adv = (batch.rewards.to(torch.float64) - st.rows(mean)) / (st.rows(std) + eps)
    adv = adv.masked_fill(st.rows(constant), 0.0)
    return apply_singleton(adv, st, batch.rewards, singleton, "ngrpo")
