"""HAPO's policy loss, arXiv:2509.16591: Differential Advantage Redistribution
and Asymmetric Adaptive Clipping, driven by the current policy's token entropies.

``policy_loss("hapo", lp, old, adv, mask, token_entropy=H, agg="token-mean", ...)``: ``H`` (B, T)
are the *current* policy's per-token entropies (``response_logprobs(..., return_entropy=True)``),
normalised to ĥ per call, i.e. per micro-batch as the reference code does (``grouprl.core.entropy``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.entropy import EntropyStats
from ._common import LOG_RATIO_CLAMP, clipped_surrogate, log_ratio, resolve_eps
from .registry import register_loss

__all__ = ["hapo", "hapo_clip_ranges", "hapo_redistribute"]


def hapo_clip_ranges(h_hat: Tensor, eps_low: float, eps_high: float, alpha: float) -> tuple[Tensor, Tensor]:
    """Asymmetric Adaptive Clipping: per-token (ε_low*, ε_high*).

    ĥ > 0: ε_high* = ε_high·(1 + α ĥ), ε_low unchanged; ĥ ≤ 0: ε_low* = ε_low·(1 − α ĥ), ε_high
    unchanged (with the defaults 0.2 and α = 1 both stay within [0.2, 0.4]).
    """
    pos = h_hat > 0
    el = torch.where(pos, torch.full_like(h_hat, eps_low), eps_low * (1.0 - alpha * h_hat))
    eh = torch.where(pos, eps_high * (1.0 + alpha * h_hat), torch.full_like(h_hat, eps_high))
    return el, eh


def hapo_redistribute(adv: Tensor, ratio: Tensor, h_hat: Tensor, eps_low: Tensor, eps_high: Tensor, beta: float) -> Tensor:
    """Differential Advantage Redistribution (no gradient): A' = A·(1 + β ĥ) when

    * ĥ > 0 (high entropy) and ρ is *outside* the neutral zone (1 − ε_low*/2, 1 + ε_high*/2), or
    * ĥ ≤ 0 (low entropy) and ρ is *inside* it;

    else A' = A. The zone uses the already-adapted clip ranges.
    """
    with torch.no_grad():
        inside = (ratio > 1.0 - eps_low / 2) & (ratio < 1.0 + eps_high / 2)
        modulate = torch.where(h_hat > 0, ~inside, inside)
        return torch.where(modulate, adv * (1.0 + beta * h_hat), adv)


@register_loss(
    "hapo",
    paper="From Uniform to Heterogeneous: Tailoring Policy Optimization to Every Token's Nature "
    "(HAPO), arXiv:2509.16591",
    example={
        # worked example: H = [0.05, 0.2, 0.4, 1.0, 2.5] -> signed ĥ [−1, −.537, −.306, 0, 1];
        # A = 1 and ρ = [1.0, 1.2, 1.0, 1.0, 1.3] -> A' = [0, 1, 0.694, 1, 2]
        "logprobs": [[0.0, 0.18232155679395462, 0.0, 0.0, 0.26236426446749106]],
        "old_logprobs": [[0.0, 0.0, 0.0, 0.0, 0.0]],
        "advantages": [[1.0, 1.0, 1.0, 1.0, 1.0]],
        "mask": [[1, 1, 1, 1, 1]],
        "kwargs": {"token_entropy": [[0.05, 0.2, 0.4, 1.0, 2.5]]},
    },
)
def hapo(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    token_entropy: Tensor | None = None,
    entropy_stats: EntropyStats | None = None,
    eps_low: float = 0.2,
    eps_high: float | None = 0.2,
    adv_beta: float = 1.0,
    clip_alpha: float = 1.0,
    entropy_pivot: float = 0.8,
    clip_ratio_c: float | None = 10.0,
    code_compat: bool = False,
    log_ratio_clamp: float = LOG_RATIO_CLAMP,
) -> tuple[Tensor, dict[str, Tensor]]:
    """HAPO loss: entropy-adapted clip ranges and redistributed advantages in the PPO-clip surrogate.

    With ĥ from the current policy's ``token_entropy`` (``grouprl.core.entropy``; signed by default — the
    paper's reading — or the reference code's unsigned ĥ with ``code_compat=True``):

        ε_low*, ε_high* = hapo_clip_ranges(ĥ)                        (Asymmetric Adaptive Clipping)
        A' = hapo_redistribute(A, ρ, ĥ, ε_low*, ε_high*, β)          (Differential Advantage Redistribution, no gradient)
        ℓ = −min(ρ A', clip(ρ, 1 − ε_low*, 1 + ε_high*) A'), dual clip c = 10 for A' < 0

    The statistics of ĥ come from this call's valid tokens (per micro-batch, as the reference
    code) unless ``entropy_stats`` (``EntropyStats.fit`` over the whole mini-batch) is given, which
    makes the loss micro-batch invariant. Aggregate with ``token-mean`` (the recipe). ``adv_beta=0, clip_alpha=0`` is exactly
    ``ppo_clip`` with ε = 0.2/0.2 and ``clip_ratio_c=10``. Metrics: ``hapo_h_mean`` (mean ĥ),
    ``hapo_redistributed`` (fraction of tokens whose advantage was modulated).
    """
    if token_entropy is None:
        raise ValueError(
            "policy loss 'hapo' needs token_entropy=... (B, T): the current policy's per-token "
            "entropies (response_logprobs(..., return_entropy=True))."
        )
    ent = torch.as_tensor(token_entropy, device=logprobs.device)
    if tuple(ent.shape) != tuple(logprobs.shape):
        raise ValueError(f"token_entropy has shape {tuple(ent.shape)}, expected {tuple(logprobs.shape)} like logprobs")
    el, eh = resolve_eps(eps_low, eps_high)
    ent = torch.where(mask, ent.detach().to(torch.float32), torch.ones((), device=ent.device))
    stats = entropy_stats if entropy_stats is not None else EntropyStats.fit(ent, mask, pivot=entropy_pivot)
    h_hat = stats.normalize(ent, code_compat=code_compat).to(logprobs.dtype)
    eps_l, eps_h = hapo_clip_ranges(h_hat, el, eh, clip_alpha)
    ratio = torch.exp(log_ratio(logprobs, old_logprobs, log_ratio_clamp))
    adv = hapo_redistribute(advantages, ratio.detach(), h_hat, eps_l, eps_h, adv_beta)
    loss, metrics = clipped_surrogate(ratio, adv, eps_l, eps_h, clip_ratio_c=clip_ratio_c)  # type: ignore[arg-type]
    metrics["hapo_h_mean"] = h_hat
    metrics["hapo_redistributed"] = adv != advantages
    return loss, metrics
