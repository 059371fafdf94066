"""NGRPO's asymmetric clipping (ngrpo.md §2.2), arXiv:2509.18851: the registered preset ``ngrpo_clip``."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._common import LOG_RATIO_CLAMP, clipped_surrogate, log_ratio, resolve_eps
from .registry import register_loss

__all__ = ["ngrpo_clip"]

_L = math.log


@register_loss(
    "ngrpo_clip",
    paper="NGRPO: Negative-enhanced Group Relative Policy Optimization, arXiv:2509.18851",
    example={
        # ratios 1.3 and 0.8; A = +1 is capped at 1.24, A = −1 floored at 0.84
        "logprobs": [[_L(1.3), _L(0.8)], [_L(1.3), _L(0.8)]],
        "old_logprobs": [[0.0, 0.0], [0.0, 0.0]],
        "advantages": [[1.0, 1.0], [-1.0, -1.0]],
        "mask": [[1, 1], [1, 1]],
        "kwargs": {},
    },
)
def ngrpo_clip(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float = 0.16,
    eps_high: float = 0.24,
    clip_ratio_c: float | None = None,
    log_ratio_clamp: float = LOG_RATIO_CLAMP,
) -> tuple[Tensor, dict[str, Tensor]]:
    """NGRPO asymmetric clipping: PPO-clip with ε_low = 0.16, ε_high = 0.24 and no dual clip.

    ℓ = −min(ρ·A, clip(ρ, 1 − 0.16, 1 + 0.24)·A): positive samples (A > 0) may move up to
    ρ = 1.24 (looser), negative ones (A < 0) only down to ρ = 0.84 (stricter). The reference code
    has no dual clip (``clip_ratio_c=None``) and aggregates with ``token-mean``. Equivalent to
    ``ppo_clip`` with ``eps_low=0.16, eps_high=0.24``.
    """
    el, eh = resolve_eps(eps_low, eps_high)
    ratio = torch.exp(log_ratio(logprobs, old_logprobs, log_ratio_clamp))
    return clipped_surrogate(ratio, advantages, el, eh, clip_ratio_c=clip_ratio_c)
