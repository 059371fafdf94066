"""Clip-Cov and KL-Cov: entropy-preserving PPO variants that act on the few tokens whose
log-probability covaries most with their advantage (Cui et al., "The Entropy Mechanism of
Reinforcement Learning for Reasoning Language Models", arXiv:2505.22617).

Per valid token, cov_{i,t} = (A_{i,t} − Ā)·(log π_θ(y_{i,t}) − mean log π_θ) with both means over
the valid tokens of the batch. The token *selection* is a batch-level statistic, so it is not
invariant to micro-batching by itself: compute it once on the full batch with ``clip_cov_select`` /
``kl_cov_select`` (from detached log-probs, e.g. a no-grad forward pass, or ``old_logprobs`` on the
first epoch) and pass the (B, T) slice of it as ``selected=`` to each micro-batch call. Without it
the selection is made from the tensors of the call, as verl does per micro-batch.

No host synchronisation: k = max(1, ⌊ratio·N⌋) stays a tensor and "the k smallest keys" is
computed by ranking (one sort), not by ``topk(k)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import LOG_RATIO_CLAMP, clipped_surrogate, log_ratio, resolve_eps
from .registry import register_loss

__all__ = ["clip_cov", "kl_cov", "clip_cov_select", "kl_cov_select", "token_covariance"]


def token_covariance(logprobs: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """(A − Ā)·(log π − mean log π) per token, means over the valid tokens; detached; masked -> 0."""
    m = mask.to(torch.bool)
    lp = logprobs.detach()
    adv = advantages.detach().to(lp.dtype)
    zero = torch.zeros((), dtype=lp.dtype, device=lp.device)
    n = m.sum().clamp_min(1).to(lp.dtype)
    a_bar = torch.where(m, adv, zero).sum() / n
    l_bar = torch.where(m, lp, zero).sum() / n
    return torch.where(m, (adv - a_bar) * (lp - l_bar), zero)


def _rank(keys: Tensor, descending: bool) -> Tensor:
    """Rank (0 = first) of every entry of ``keys`` in the flattened sort order (stable)."""
    flat = keys.reshape(-1)
    order = torch.sort(flat, descending=descending, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=keys.device)
    return rank.view(keys.shape)


def _wide(device: torch.device) -> torch.dtype:
    """float64 where the device has it (MPS does not)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _budget(mask: Tensor, ratio: float) -> Tensor:
    """k = max(1, ⌊ratio · #valid tokens⌋) as a 0-d tensor (verl's count, without a Tensor.item sync)."""
    return torch.floor(mask.sum().to(_wide(mask.device)) * ratio).clamp_min(1.0)


def _generator(device: torch.device, generator: torch.Generator | None, seed: int | None):
    if generator is not None and seed is not None:
        raise ValueError("pass either generator= or seed=, not both")
    if seed is not None:
        return torch.Generator(device=device).manual_seed(int(seed))
    return generator


def clip_cov_select(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float | None = None,
    clip_cov_ratio: float = 2e-4,
    clip_cov_lb: float = 1.0,
    clip_cov_ub: float = 5.0,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> Tensor:
    """Clip-Cov's token selection (B, T) bool: a uniformly random subset of at most
    k = max(1, ⌊clip_cov_ratio·N⌋) of the valid tokens that PPO does not already clip and whose
    covariance lies strictly inside (clip_cov_lb, clip_cov_ub). Deterministic given ``generator``
    or ``seed`` (otherwise torch's global RNG)."""
    m = mask.to(torch.bool)
    el, eh = resolve_eps(eps_low, eps_high)
    with torch.no_grad():
        cov = token_covariance(logprobs, advantages, m)
        ratio = torch.exp(log_ratio(logprobs.detach(), old_logprobs.detach(), LOG_RATIO_CLAMP))
        adv = advantages.detach().to(ratio.dtype)
        clipped = ((adv < 0) & (ratio < 1.0 - el)) | ((adv > 0) & (ratio > 1.0 + eh))
        cand = m & ~clipped & (cov > clip_cov_lb) & (cov < clip_cov_ub)
        gen = _generator(logprobs.device, generator, seed)
        u = torch.rand(m.shape, generator=gen, device=logprobs.device, dtype=_wide(logprobs.device))
        keys = torch.where(cand, u, torch.full_like(u, 2.0))
        return cand & (_rank(keys, descending=False) < _budget(m, clip_cov_ratio))


def kl_cov_select(
    logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    kl_cov_ratio: float = 2e-4,
) -> Tensor:
    """KL-Cov's token selection (B, T) bool: the k = max(1, ⌊kl_cov_ratio·N⌋) valid tokens with the
    largest covariance (ties broken by position, first wins)."""
    m = mask.to(torch.bool)
    with torch.no_grad():
        cov = token_covariance(logprobs, advantages, m)
        keys = torch.where(m, cov, torch.full_like(cov, -float("inf")))
        return m & (_rank(keys, descending=True) < _budget(m, kl_cov_ratio))


def _check_selected(selected: Tensor, mask: Tensor) -> Tensor:
    if tuple(selected.shape) != tuple(mask.shape):
        raise ValueError(f"selected has shape {tuple(selected.shape)}, expected {tuple(mask.shape)} like mask")
    return selected.to(device=mask.device, dtype=torch.bool) & mask


@register_loss(
    "clip_cov",
    paper="The Entropy Mechanism of RL for Reasoning LMs (Clip-Cov), arXiv:2505.22617",
    example={
        "logprobs": [[-0.1, -3.0, -0.2], [-2.5, -0.3, -0.1]],
        "old_logprobs": [[-0.1, -3.0, -0.2], [-2.5, -0.3, -0.1]],
        "advantages": [[2.0, 2.0, 2.0], [-2.0, -2.0, -2.0]],
        "mask": [[1, 1, 1], [1, 1, 1]],
        "kwargs": {"clip_cov_ratio": 0.2, "seed": 0},
    },
)
def clip_cov(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float | None = None,
    clip_cov_ratio: float = 2e-4,
    clip_cov_lb: float = 1.0,
    clip_cov_ub: float = 5.0,
    selected: Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clip-Cov: the PPO clipped loss, with the selected high-covariance tokens detached.

    ℓ = max(−A·ρ, −A·clip(ρ, 1−ε_low, 1+ε_high)) on every token, and ℓ = 0 (no gradient) on the
    ``clip_cov_select`` tokens (verl defaults ratio 2e-4, bounds (1, 5)). Pass
    ``selected`` (computed on the full batch) for micro-batch invariance. Extra metric ``covfrac``:
    the fraction of valid tokens selected.
    """
    el, eh = resolve_eps(eps_low, eps_high)
    ratio = torch.exp(log_ratio(logprobs, old_logprobs, LOG_RATIO_CLAMP))
    loss, metrics = clipped_surrogate(ratio, advantages, el, eh)
    if selected is None:
        selected = clip_cov_select(
            logprobs, old_logprobs, advantages, mask, eps_low=el, eps_high=eh, clip_cov_ratio=clip_cov_ratio,
            clip_cov_lb=clip_cov_lb, clip_cov_ub=clip_cov_ub, generator=generator, seed=seed,
        )
    sel = _check_selected(selected, mask)
    loss = torch.where(sel, torch.zeros((), dtype=loss.dtype, device=loss.device), loss)
    metrics["covfrac"] = sel
    return loss, metrics


@register_loss(
    "kl_cov",
    paper="The Entropy Mechanism of RL for Reasoning LMs (KL-Cov), arXiv:2505.22617",
    example={
        "logprobs": [[-0.2, -2.8, -0.3], [-2.4, -0.3, -0.1]],
        "old_logprobs": [[-0.1, -3.0, -0.2], [-2.5, -0.3, -0.1]],
        "advantages": [[2.0, 2.0, 2.0], [-2.0, -2.0, -2.0]],
        "mask": [[1, 1, 1], [1, 1, 1]],
        "kwargs": {"kl_cov_ratio": 0.2, "ppo_kl_coef": 1.0},
    },
)
def kl_cov(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    kl_cov_ratio: float = 2e-4,
    ppo_kl_coef: float = 0.1,
    selected: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """KL-Cov: the unclipped surrogate plus a |log ratio| penalty on the top-covariance tokens.

    ℓ = −A·ρ + β·|log ρ|·[token selected], β = ``ppo_kl_coef`` (verl 0.1), selection
    by ``kl_cov_select`` (top ``kl_cov_ratio`` of the valid tokens by covariance). No clipping.
    Pass ``selected`` (computed on the full batch) for micro-batch invariance. Extra metric
    ``covfrac``: the fraction of valid tokens selected.
    """
    lr = log_ratio(logprobs, old_logprobs, LOG_RATIO_CLAMP)
    loss = -advantages * torch.exp(lr)
    if selected is None:
        selected = kl_cov_select(logprobs, advantages, mask, kl_cov_ratio=kl_cov_ratio)
    sel = _check_selected(selected, mask)
    loss = loss + torch.where(sel, ppo_kl_coef * lr.abs(), torch.zeros((), dtype=loss.dtype, device=loss.device))
    return loss, {"covfrac": sel}
