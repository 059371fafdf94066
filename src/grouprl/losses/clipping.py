"""Ratio-clipping policy losses: PPO-clip (with DAPO's clip-higher, dual clip and TRL's ``delta``),
GSPO's sequence ratio, and CISPO's clipped importance-sampling weight.

All take (B, T) tensors ``logprobs`` (with gradient), ``old_logprobs``, ``advantages``, ``mask`` and
return a per-token loss plus metric maps; ``policy_loss`` aggregates them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._common import LOG_RATIO_CLAMP, clipped_surrogate, log_ratio, resolve_eps
from .registry import register_loss

__all__ = ["ppo_clip", "gspo", "cispo"]

_L = math.log


@register_loss(
    "ppo_clip",
    paper="PPO, arXiv:1707.06347; clip-higher: DAPO, arXiv:2503.14476; dual clip: arXiv:1912.09729",
    example={
        # old = 0, so the ratios are 1.5, 0.7, 1.0 (A = +1) and 0.5, 1.1, 4.0 (A = −1)
        "logprobs": [[_L(1.5), _L(0.7), 0.0], [_L(0.5), _L(1.1), _L(4.0)]],
        "old_logprobs": [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
        "advantages": [[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]],
        "mask": [[1, 1, 1], [1, 1, 1]],
        "kwargs": {"eps_low": 0.2, "eps_high": 0.28, "clip_ratio_c": 3.0},
    },
)
def ppo_clip(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float | None = None,
    clip_ratio_c: float | None = None,
    delta: float | None = None,
    log_ratio_clamp: float = LOG_RATIO_CLAMP,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate with decoupled clip ranges (DAPO "clip-higher") and optional dual clip.

    ρ = exp(clamp(log π_θ − log π_old, ±20));
    ℓ = −min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A)   (PPO, Schulman et al. 2017, eq. 7);
    dual clip (Ye et al. 2020) for A < 0: ℓ = min(ℓ, −c·A) with c = ``clip_ratio_c`` (verl: 3.0;
    ``None`` = off). ``delta`` (TRL / INTELLECT-2 two-sided clipping): the unclipped ratio is
    capped at δ first, ρ·A -> min(ρ, δ)·A. ``eps_high=None`` means ε_high = ε_low; DAPO uses
    ε_low = 0.2, ε_high = 0.28. A token whose bound (or dual cap) binds gets zero gradient.
    """
    el, eh = resolve_eps(eps_low, eps_high)
    ratio = torch.exp(log_ratio(logprobs, old_logprobs, log_ratio_clamp))
    return clipped_surrogate(ratio, advantages, el, eh, clip_ratio_c=clip_ratio_c, delta=delta)


@register_loss(
    "gspo",
    paper="Group Sequence Policy Optimization (GSPO), arXiv:2507.18071",
    agg="seq-mean-token-mean",
    example={
        # row 0: token log-ratios 0.1, −0.1 -> s = 1 (inside);
        # row 1: mean log-ratio 0.2 -> s = e^0.2 (clipped, A > 0)
        "logprobs": [[-0.9, -1.1, 0.0], [-0.8, -1.0, -1.2]],
        "old_logprobs": [[-1.0, -1.0, 0.0], [-1.0, -1.2, -1.4]],
        "advantages": [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]],
        "mask": [[1, 1, 0], [1, 1, 1]],
        "kwargs": {},
    },
)
def gspo(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float = 3e-4,
    eps_high: float | None = 4e-4,
    log_ratio_clamp: float = 10.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO: PPO clipping on the length-normalised sequence likelihood ratio.

    s_i = (π_θ(y_i|x)/π_old(y_i|x))^{1/|y_i|} = exp((1/|y_i|) Σ_t log ρ_{i,t}), and
    J = (1/G) Σ_i min(s_i·A_i, clip(s_i, 1−ε_low, 1+ε_high)·A_i). The ratio is injected per token as
    s_{i,t} = sg(s_i)·π_θ(y_{i,t})/sg(π_θ(y_{i,t})) (the paper's GSPO-token form): its value is s_i and
    ∂s_{i,t}/∂log π_θ(y_{i,t}) = s_i, so with ``seq-mean-token-mean`` aggregation the gradient is
    exactly the paper's −(1/G) Σ_i A_i s_i (1/|y_i|) Σ_t ∇log π_θ(y_{i,t}). The log of s is
    clamped at 10 as in verl; no dual clip.

    Defaults are the paper's ε_low = 3e-4, ε_high = 4e-4. Aggregation: the paper's
    ``seq-mean-token-mean`` by default (registered ``agg``); verl 0.9.1 applies the trainer's
    ``loss_agg_mode`` instead (default token-mean) — pass ``respect_agg=True`` for that.
    """
    el, eh = resolve_eps(eps_low, eps_high)
    lengths = mask.sum(dim=1).clamp_min(1).to(logprobs.dtype)
    seq_log_ratio = ((logprobs - old_logprobs) * mask).sum(dim=1) / lengths
    log_s = logprobs - logprobs.detach() + seq_log_ratio.detach().unsqueeze(1)
    ratio = torch.exp(log_s.clamp(max=log_ratio_clamp))
    return clipped_surrogate(ratio, advantages, el, eh)


@register_loss(
    "cispo",
    paper="MiniMax-M1 (CISPO), arXiv:2506.13585",
    example={
        # ratios 0.5, 1.0, 6.0: only the last weight is capped, at 1 + ε_high = 5
        "logprobs": [[_L(0.5) - 1.0, -1.0, _L(6.0) - 1.0]],
        "old_logprobs": [[-1.0, -1.0, -1.0]],
        "advantages": [[1.0, -1.0, 1.0]],
        "mask": [[1, 1, 1]],
        "kwargs": {"eps_high": 4.0},
    },
)
def cispo(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float | None = None,
    eps_high: float = 4.0,
    log_ratio_clamp: float = LOG_RATIO_CLAMP,
) -> tuple[Tensor, dict[str, Tensor]]:
    """CISPO: REINFORCE with a clipped, stop-gradient importance-sampling weight.

    ℓ = −sg(clip(ρ, 1 − ε_low, 1 + ε_high))·A·log π_θ (MiniMax-M1). Unlike PPO no token
    loses its gradient: clipping only bounds the weight. The paper imposes no lower bound
    (``eps_low=None``, the default) and tunes the upper one; the default ε_high = 4.0 is the weight
    cap 5.0 that TRL recommends (TRL's ``epsilon_high`` is the cap itself, ours is 1 + ε_high).
    verl's ``cispo`` clips at [1 − clip_ratio_low, 1 + clip_ratio_high] (0.2/0.2 by default):
    pass ``eps_low=0.2, eps_high=0.2`` for that.
    """
    if eps_high < 0 or (eps_low is not None and eps_low < 0):
        raise ValueError(f"cispo: clip ranges must be >= 0, got eps_low={eps_low}, eps_high={eps_high}")
    ratio = torch.exp(log_ratio(logprobs, old_logprobs, log_ratio_clamp)).detach()
    lo = 0.0 if eps_low is None else 1.0 - eps_low
    weight = ratio.clamp(lo, 1.0 + eps_high)
    low = ratio < lo
    high = ratio > 1.0 + eps_high
    loss = -weight * advantages * logprobs
    return loss, {"clipfrac": low | high, "clipfrac_low": low, "clipfrac_high": high}
