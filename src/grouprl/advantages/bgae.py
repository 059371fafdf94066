"""GREAM's SRPO advantage: Bonus-Calibrated Group Advantage Estimation, BGAE, arXiv:2510.20815. The reward half (RSVR) is ``grouprl.rewards.rsvr``."""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import Rollouts, group_stats
from ._common import apply_singleton
from .registry import estimator

__all__ = ["bgae", "passk_bonus", "exact_flags"]

SMALL_GROUP = ("zero", "clamp")


def exact_flags(batch: Rollouts, success_reward: float = 1.0) -> Tensor:
    """Exact-match flags (bool (B,)): ``batch.extras["exact_match"]`` when present (bool or 0/1),
    else ``rewards == success_reward`` (the reference code's r_i == 1.0 on RSVR rewards)."""
    if "exact_match" in batch.extras:
        e = batch.extras["exact_match"]
        if e.shape != (len(batch),):
            raise ValueError(f"bgae: extras['exact_match'] must have shape ({len(batch)},), got {tuple(e.shape)}.")
        if e.dtype != torch.bool:
            bad = (e != 0) & (e != 1)
            if bool(bad.any()):
                r = int(bad.nonzero()[0, 0])
                raise ValueError(f"bgae: extras['exact_match'] row {r} is not 0/1; pass bool exact-match flags.")
        return e.to(torch.bool)
    return batch.rewards == success_reward


def _ratio(top: Tensor, bottom: Tensor, K: Tensor, kmax: int) -> Tensor:
    """C(top, K)/C(bottom, K) = Π_{j<K} (top − j)/(bottom − j) per group, float64, no factorials.

    0 when top < K (a factor is 0). Columns j ≥ K are 1."""
    j = torch.arange(kmax, dtype=torch.float64, device=top.device)
    num = top.unsqueeze(1) - j
    den = (bottom.unsqueeze(1) - j).clamp_min(1.0)
    use = j < K.unsqueeze(1)
    f = torch.where(use, num.clamp_min(0.0) / den, torch.ones_like(num))
    return f.prod(dim=1)


def passk_bonus(
    exact: Tensor, ids: Tensor, num_groups: int, *, K: int = 4, eps: float = 1e-6, small_group: str = "zero"
) -> Tensor:
    """The analytic pass@k bonus of every row, float64 (B,), on exact successes only.

    n = group size, c = exact successes, ρ = 1 − C(n−c, K)/C(n, K), σ = sqrt(ρ(1 − ρ));
    successes: (1 − ρ)/(σ + ε); the others: (1 − ρ − C(n−c−1, K−1)/C(n−1, K−1))/(σ + ε).
    0 where ρ ∈ {0, 1} (no success, or all). n < K (where the code divides 0 by 0):
    ``small_group="zero"`` (default) gives a bonus of 0, ``"clamp"`` uses K_eff = min(K, n).
    """
    if small_group not in SMALL_GROUP:
        raise ValueError(f"bgae: small_group={small_group!r}; choose one of {SMALL_GROUP}")
    if K < 1:
        raise ValueError(f"bgae: K={K}; pass K >= 1.")
    st = group_stats(exact.to(torch.float64), ids, num_groups)
    n = st.count.to(torch.float64)
    c = st.sum
    Kg = torch.full_like(n, float(K))
    if small_group == "clamp":
        Kg = torch.minimum(Kg, n)
    rho = 1.0 - _ratio(n - c, n, Kg, K)
    sigma = (rho * (1.0 - rho)).clamp_min(0.0).sqrt()
    pos = (1.0 - rho) / (sigma + eps)
    neg = (1.0 - rho - _ratio(n - c - 1.0, n - 1.0, Kg - 1.0, K)) / (sigma + eps)
    live = (sigma > 0) & (n >= Kg) & (Kg >= 1)
    pos, neg = pos.masked_fill(~live, 0.0), neg.masked_fill(~live, 0.0)
    return torch.where(exact, st.rows(pos), st.rows(neg))


@estimator(
    "bgae",
    paper="GREAM: Generative Reasoning Recommendation via LLMs (SRPO's BGAE), arXiv:2510.20815",
    example={"rewards": [1, 0.707, 0.5, 0, 0, 0, 0, 0, 0, 0], "group": [0] * 10},
)
def bgae(
    batch: Rollouts,
    *,
    K: int = 4,
    success_reward: float = 1.0,
    eps: float = 1e-6,
    ddof: int = 1,
    small_group: str = "zero",
    singleton: str = "zero",
) -> Tensor:
    """Bonus-Calibrated Group Advantage Estimation: A_i = A^rs_i + Ã_i.

    A^rs_i = (r_i − mean r)/(std r + ε) (ddof 1) on the graded RSVR rewards;
    Ã_i = the pass@K bonus on exact matches (see ``passk_bonus``): with n the group size, c the
    exact matches, ρ = 1 − C(n−c, K)/C(n, K), σ = sqrt(ρ(1−ρ)):
    Ã_pos = (1 − ρ)/(σ + ε) for exact matches, Ã_neg = (1 − ρ − C(n−c−1, K−1)/C(n−1, K−1))/(σ + ε)
    for every other response (partial matches included). K = 4 as hard-coded in the code.

    Exact-match flags come from ``batch.extras["exact_match"]`` when present, else
    ``rewards == success_reward``. A group of one: A^rs = 0 by default (``singleton="raw"``: the
    code's r) and its bonus is 0 (the code's 0/0 is guarded).
    """
    exact = exact_flags(batch, success_reward)
    st = group_stats(batch.rewards, batch.group, batch.num_groups, ddof=ddof)
    a_rs = apply_singleton(st.zscore(batch.rewards, eps), st, batch.rewards, singleton, "bgae")
    bonus = passk_bonus(exact, batch.group, batch.num_groups, K=K, eps=eps, small_group=small_group)
    return a_rs + bonus
