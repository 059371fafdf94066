"""Helpers shared by the policy losses: importance ratios and PPO clipping."""

from __future__ import annotations

import torch
from torch import Tensor

#: log-ratio clamp of the token importance ratio (verl and OpenRLHF use ±20)
LOG_RATIO_CLAMP = 20.0


def log_ratio(logprobs: Tensor, old_logprobs: Tensor, clamp: float | None = LOG_RATIO_CLAMP) -> Tensor:
    """log ρ = log π_θ − log π_old, clamped to ±``clamp`` (exp stays finite; no gradient beyond)."""
    d = logprobs - old_logprobs
    return d if clamp is None else d.clamp(-clamp, clamp)


def resolve_eps(eps_low: float, eps_high: float | None) -> tuple[float, float]:
    """``eps_high=None`` means symmetric clipping (ε_high = ε_low); both must be >= 0."""
    eh = eps_low if eps_high is None else eps_high
    if eps_low < 0 or eh < 0:
        raise ValueError(f"clip ranges must be >= 0, got eps_low={eps_low}, eps_high={eh}")
    return float(eps_low), float(eh)


def clipped_surrogate(
    ratio: Tensor,
    advantages: Tensor,
    eps_low: float,
    eps_high: float,
    *,
    clip_ratio_c: float | None = None,
    delta: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate as a per-token loss, with the optional dual clip and TRL's ``delta``.

    ℓ = max(−A·min(ρ, δ), −A·clip(ρ, 1−ε_low, 1+ε_high)); for A < 0 with dual clip c:
    ℓ = min(ℓ, −c·A). Returns ℓ and the bool indicator maps ``clipfrac`` (a bound binds),
    ``clipfrac_low`` (A < 0 and ρ < 1−ε_low), ``clipfrac_high`` (A > 0 and ρ > 1+ε_high) and, with
    dual clip, ``clipfrac_dual`` (the −c·A cap binds).
    """
    unclipped_ratio = ratio if delta is None else ratio.clamp(max=delta)
    pg1 = -advantages * unclipped_ratio
    pg2 = -advantages * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    loss = torch.maximum(pg1, pg2)
    low = (advantages < 0) & (ratio < 1.0 - eps_low)
    high = (advantages > 0) & (ratio > 1.0 + eps_high)
    metrics = {"clipfrac": low | high, "clipfrac_low": low, "clipfrac_high": high}
    if clip_ratio_c is not None:
        if clip_ratio_c <= 1.0:
            raise ValueError(f"clip_ratio_c must be > 1 (verl uses 3.0), got {clip_ratio_c}")
        pg3 = -advantages * clip_ratio_c
        dual = (advantages < 0) & (pg3 < loss)
        loss = torch.where(dual, pg3, loss)
        metrics["clipfrac_dual"] = dual
    return loss, metrics
