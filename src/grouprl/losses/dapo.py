"""DAPO's clip-higher (grpo-family.md §2.3), arXiv:2503.14476: the registered preset ``dapo_clip``."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._common import LOG_RATIO_CLAMP, clipped_surrogate, log_ratio, resolve_eps
from .registry import register_loss

__all__ = ["dapo_clip"]

_L = math.log


@register_loss(
    "dapo_clip",
    paper="DAPO: An Open-Source LLM Reinforcement Learning System at Scale, arXiv:2503.14476",
    example={
        # ratios 1.5 and 0.7: A = +1 is capped at 1.28, A = −1 floored at 0.8
        "logprobs": [[_L(1.5), _L(0.7)], [_L(1.5), _L(0.7)]],
        "old_logprobs": [[0.0, 0.0], [0.0, 0.0]],
        "advantages": [[1.0, 1.0], [-1.0, -1.0]],
        "mask": [[1, 1], [1, 1]],
        "kwargs": {},
    },
)
def dapo_clip(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    clip_ratio_c: float | None = None,
    log_ratio_clamp: float = LOG_RATIO_CLAMP,
) -> tuple[Tensor, dict[str, Tensor]]:
    """DAPO clip-higher: PPO-clip with decoupled ranges ε_low = 0.2, ε_high = 0.28.

    ℓ = −min(ρ·A, clip(ρ, 1 − 0.2, 1 + 0.28)·A); the looser upper bound lets low-probability
    tokens with A > 0 grow (against entropy collapse). Use ``agg="token-mean"`` (DAPO's token-level
    loss) and no KL. Equivalent to ``ppo_clip`` with ``eps_low=0.2, eps_high=0.28``; verl adds a
    dual clip (``clip_ratio_c=3.0``), off here as in the paper.
    """
    el, eh = resolve_eps(eps_low, eps_high)
    ratio = torch.exp(log_ratio(logprobs, old_logprobs, log_ratio_clamp))
    return clipped_surrogate(ratio, advantages, el, eh, clip_ratio_c=clip_ratio_c)
