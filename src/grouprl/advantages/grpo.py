"""GRPO (DeepSeekMath, arXiv:2402.03300) and Dr. GRPO (arXiv:2503.20783) outcome advantages."""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import Rollouts, group_stats
from ..core.groups import check_eps
from ._common import apply_singleton
from .registry import estimator

SCALES = ("group", "batch", "none")


@estimator(
    "grpo",
    paper="DeepSeekMath, arXiv:2402.03300",
    example={"rewards": [1, 0, 0, 1], "group": [0, 0, 0, 0]},
)
def grpo(
    batch: Rollouts,
    *,
    scale: str = "group",
    eps: float = 1e-6,
    ddof: int = 1,
    singleton: str = "zero",
) -> Tensor:
    """Group Relative Policy Optimization: the reward standardised within its group.

    A_i = (r_i − mean_g(r)) / (std_g(r) + ε), the same for every token of response i.

    ``scale``: ``group`` (the paper), ``batch`` (centre by the group mean, divide by the std of the
    whole batch, TRL's ``scale_rewards="batch"``), ``none`` (Dr. GRPO, centre only). Std with
    ``ddof`` (1 = unbiased, as verl); a constant group gives exactly 0. A group of one gives 0, or
    the raw reward with ``singleton="raw"`` (verl's behaviour).
    """
    if scale not in SCALES:
        raise ValueError(f"grpo: scale={scale!r}; choose one of {SCALES}")
    check_eps(eps)
    st = group_stats(batch.rewards, batch.group, batch.num_groups, ddof=ddof)
    if scale == "group":
        adv = st.zscore(batch.rewards, eps)
    else:
        adv = st.centered(batch.rewards)
    if scale == "batch":
        r = batch.rewards.double()
        std = r.std(correction=ddof) if len(batch) > ddof else r.new_zeros(())
        if not bool(torch.isfinite(std)):  # rewards near the float64 limit: scale by max |r| first
            s = r.abs().max()
            adv, std, eps = adv / s, (r / s).std(correction=ddof), eps / s
        adv = adv / (std + eps) if float(std + eps) > 0 else adv
    return apply_singleton(adv, st, batch.rewards, singleton, "grpo")


@estimator(
    "dr_grpo",
    paper="Understanding R1-Zero-Like Training (Dr. GRPO), arXiv:2503.20783",
    example={"rewards": [1, 0, 0, 1], "group": [0, 0, 0, 0]},
)
def dr_grpo(batch: Rollouts, *, singleton: str = "zero") -> Tensor:
    """Dr. GRPO ("GRPO done right"): no division by the group std.

    A_i = r_i − mean_g(r). Pair it with a constant-normaliser loss aggregation
    (``seq-mean-token-sum-norm``) to also drop GRPO's 1/|o_i| length normalisation.
    """
    return grpo(batch, scale="none", singleton=singleton)
