"""SAPO's policy loss: a soft sigmoid gate on the importance ratio instead of a hard clip
(Soft Adaptive Policy Optimization, arXiv:2511.20347)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._common import LOG_RATIO_CLAMP, log_ratio
from .registry import register_loss

__all__ = ["sapo"]

_L = math.log


@register_loss(
    "sapo",
    paper="Soft Adaptive Policy Optimization (SAPO), arXiv:2511.20347",
    agg="seq-mean-token-mean",
    example={
        "logprobs": [[_L(1.5), 0.0], [_L(0.5), 0.0]],
        "old_logprobs": [[0.0, 0.0], [0.0, 0.0]],
        "advantages": [[1.0, 1.0], [-1.0, -1.0]],
        "mask": [[1, 1], [1, 0]],
        "kwargs": {},
    },
)
def sapo(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
    log_ratio_clamp: float = LOG_RATIO_CLAMP,
) -> tuple[Tensor, dict[str, Tensor]]:
    """SAPO: a smooth, temperature-controlled gate instead of a hard clip.

    ℓ = −f(ρ)·A with f(ρ) = σ(τ·(ρ − 1))·4/τ, τ = τ_pos if A > 0 else τ_neg (defaults 1.0 / 1.05,
    as verl and TRL). f(1) = 2/τ and f'(1) = 1: at ρ = 1 the gradient equals the PPO/REINFORCE
    gradient, and it decays smoothly (never to exactly 0) as ρ moves away from 1.

    Aggregation: ``seq-mean-token-mean`` always, as the paper's objective and verl 0.9.1 (which
    ignores ``loss_agg_mode`` for SAPO); ``respect_agg=True`` uses the caller's ``agg`` instead.
    """
    if tau_pos <= 0 or tau_neg <= 0:
        raise ValueError(f"sapo: temperatures must be > 0, got tau_pos={tau_pos}, tau_neg={tau_neg}")
    ratio = torch.exp(log_ratio(logprobs, old_logprobs, log_ratio_clamp))
    tau = torch.where(advantages > 0, tau_pos, tau_neg).to(ratio.dtype)
    gate = torch.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau)
    return -gate * advantages, {}
