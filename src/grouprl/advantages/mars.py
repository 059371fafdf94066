"""MARS / MARSHAL: turn-level returns with agent-specific normalisation, arXiv:2510.15414.

Rows are turns: one row per turn of one player. A player's sequence is the rows with the same
(``group``, ``trajectory``, player), ordered by ``step``; ``step_rewards`` holds the turn's reward;
the player id comes from ``agent`` (or ``role`` with ``by="role"``); ``group`` is the env/game tag
grouping.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import Rollouts, broadcast, group_stats, masked_whiten
from .gigpo import combine_ids, discounted_returns, order_in_sequence
from .registry import estimator

__all__ = ["mars", "mars_returns"]

ORDERS = ("paper", "code")
NORMS = ("mean_std", "mean")
ADV_NORMS = ("mean", "mean_std", "none")


def _player(batch: Rollouts, by: str) -> Tensor:
    if by not in ("agent", "role"):
        raise ValueError(f"mars: by={by!r}; choose 'agent' or 'role'")
    if not batch.has(by):
        raise ValueError(f"mars: the batch has no {by!r}; pass the player id of each turn row in {by}=...")
    return batch.get(by)


def mars_returns(batch: Rollouts, values: Tensor, player: Tensor, gamma: float) -> Tensor:
    """Return-to-go over each player's turns: R_t = Σ_{t'>=t} γ^{t'−t} v_{t'} (float64)."""
    seq, _ = combine_ids(batch.group, batch.trajectory, player)
    _, pos = order_in_sequence(seq, batch.step, "mars")
    return discounted_returns(values, seq, pos, gamma)


def _unique_value_norm(x: Tensor, player: Tensor, mode: str, include_zero: bool) -> Tensor:
    """Per player, centre (and scale) by the mean (std) of the *distinct* values of x (reference code's
    ``normalize_unique_values_by_player``); one distinct value gives 0. Values are compared after
    rounding to 1e-9 (the reference compares exact floats, so two mathematically equal returns
    summed in different orders may count twice there)."""
    pid, n_p = combine_ids(player)
    # Values equal up to rounding (the same return summed along different turns) count once.
    p_col, v_col = pid.to(torch.float64), torch.round(x.to(torch.float64) * 1e9) / 1e9
    if include_zero:
        p_col = torch.cat([p_col, torch.arange(n_p, dtype=torch.float64, device=x.device)])
        v_col = torch.cat([v_col, torch.zeros(n_p, dtype=torch.float64, device=x.device)])
    # one representative row per distinct (player, value) pair
    pair, n_pair = combine_ids(p_col, v_col)
    first = torch.full((n_pair,), len(pair), dtype=torch.int64, device=x.device).scatter_reduce_(
        0, pair, torch.arange(len(pair), device=x.device), reduce="amin"
    )
    st = group_stats(v_col[first], p_col[first].to(torch.int64), n_p, ddof=1)
    out = x.to(torch.float64) - st.mean[pid]
    if mode == "mean_std":
        out = out / (st.std[pid] + 1e-6)
    return torch.where(st.count[pid] > 1, out, torch.zeros_like(out))


@estimator(
    "mars",
    needs=("group", "mask", "trajectory", "step", "step_rewards"),
    optional=("agent", "role"),  # the player id: ``agent``, or ``role`` with by="role"
    paper="MARS: Reinforcing Multi-Agent Reasoning of LLMs through Self-Play in Strategic Games, arXiv:2510.15414",
    level="step",
    example={
        "rewards": [1, 1, 1, -1, -1, -1, -1, -1, 1, 1, 1],
        "group": [0] * 11,
        "trajectory": [1, 1, 1, 2, 2, 2, 1, 1, 2, 2, 2],
        "step": [0, 1, 2, 0, 1, 2, 0, 1, 0, 1, 2],
        "agent": [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1],
        "step_rewards": [0, 0, 1, -0.5, 0, -1, 0, -1, 0, 0, 1],
    },
)
def mars(
    batch: Rollouts,
    *,
    order: str = "paper",
    by: str = "agent",
    gamma: float = 1.0,
    norm: str = "mean_std",
    eps: float = 1e-6,
    ddof: int = 1,
    reward_norm: str = "mean",
    whiten_rewards: bool = True,
    advantage_norm: str = "mean",
    include_zero: bool = False,
    whiten_advantages: bool = True,
) -> Tensor:
    """MARS (Yuan, Xu et al., arXiv:2510.15414): turn-level advantage, agent-specific normalisation.

    ``order="paper"`` (default): sum first, then normalise per agent role k:
        R_{i,t} = Σ_{t'>=t} γ^{t'−t} r_{i,t'},   Â = (R − μ_k) / (σ_k + ε)   (``norm="mean_std"``)
    or Â = R − μ_k (``norm="mean"``), with μ_k, σ_k over all turns of role k in the group (tag).
    Sample std (``ddof=1``) and γ = 1 are proposed readings (the paper states neither); a role with
    one turn gets 0.

    ``order="code"``: the reference code's (thu-nics/MARS, ROLL) pipeline, normalise first:
    (1) per (group, player) centre the turn rewards (``reward_norm="mean"``) or z-score them
    (``"mean_std"``; 0 when std <= 1e-6); (2) ``whiten_rewards``: divide by the token-level std over
    all response tokens, the reward sitting on each turn's last response token (its token mean is 0
    after (1)); (3) REINFORCE return over the player's turns with γ (the code discounts per token;
    identical for its γ = 1); (4) ``advantage_norm``: per player over the whole batch, subtract the
    mean (``"mean_std"``: also divide by the std) of the player's *distinct* values, 0 if only one;
    ``include_zero=True`` adds the 0 that the reference's padded token tensor usually contributes
    (proposed reading: by default only the turn values count); (5) ``whiten_advantages``: a global
    masked whiten over response tokens. Returns (B, T) in this order.
    """
    if order not in ORDERS:
        raise ValueError(f"mars: order={order!r}; choose one of {ORDERS}")
    player = _player(batch, by)
    rewards = batch.step_rewards.to(torch.float64)
    if order == "paper":
        if norm not in NORMS:
            raise ValueError(f"mars: norm={norm!r}; choose one of {NORMS}")
        R = mars_returns(batch, rewards, player, gamma)
        rid, n = combine_ids(batch.group, player)
        st = group_stats(R, rid, n, ddof=ddof)
        return st.centered(R) if norm == "mean" else st.zscore(R, eps)

    if reward_norm not in NORMS:
        raise ValueError(f"mars: reward_norm={reward_norm!r}; choose one of {NORMS}")
    if advantage_norm not in ADV_NORMS:
        raise ValueError(f"mars: advantage_norm={advantage_norm!r}; choose one of {ADV_NORMS}")
    rid, n = combine_ids(batch.group, player)
    st = group_stats(rewards, rid, n, ddof=1)
    r = st.centered(rewards)
    if reward_norm == "mean_std":
        std = st.rows(st.std)
        r = torch.where(std > 1e-6, r / (std + 1e-6), torch.zeros_like(r))
    if whiten_rewards:
        has_tok = batch.mask.any(dim=1)
        n_tok = batch.mask.sum().to(torch.float64)
        r_tok = torch.where(has_tok, r, torch.zeros_like(r))
        m = r_tok.sum() / n_tok.clamp_min(1.0)
        ss = ((r_tok - m) ** 2 * has_tok).sum() + (n_tok - has_tok.sum()) * m * m
        var = ss / (n_tok - 1).clamp_min(1.0)
        r = (r - m) * torch.rsqrt(var + 1e-8)
    G = mars_returns(batch, r, player, gamma)
    if advantage_norm != "none":
        G = _unique_value_norm(G, player, advantage_norm, include_zero)
    out = broadcast(G, batch.mask)
    if whiten_advantages:
        out = masked_whiten(out, batch.mask)
    return out
