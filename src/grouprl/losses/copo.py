"""COPO's soft blend of a local and a global clipped surrogate, arXiv:2508.04138: the registered loss ``copo``. The advantages and the weight come from
``grouprl.advantages.copo.copo_terms``."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._common import LOG_RATIO_CLAMP, clipped_surrogate, log_ratio, resolve_eps
from .registry import LossInputs, register_loss

__all__ = ["copo_loss", "copo_loss_inputs"]


def _per_token(x, like: Tensor, mask: Tensor, name: str) -> Tensor:
    t = torch.as_tensor(x, device=like.device)
    if not t.dtype.is_floating_point:
        t = t.to(like.dtype)
    if t.dim() == 1 and t.shape[0] == like.shape[0]:
        t = t.unsqueeze(1).expand(like.shape)
    if tuple(t.shape) != tuple(like.shape):
        raise ValueError(f"copo: {name} has shape {tuple(t.shape)}, expected (B,) or (B, T) = {tuple(like.shape)}.")
    t = torch.where(mask, t.to(like.dtype), torch.zeros((), dtype=like.dtype, device=like.device)).detach()
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        r = int(bad.any(dim=1).nonzero()[0, 0])
        raise ValueError(f"copo: {name} is not finite at row {r}; fix the estimator output for that row.")
    return t


def copo_loss_inputs(batch: Any, **hparams: Any) -> LossInputs:
    """The step's inputs of the ``copo`` loss from ``grouprl.advantages.copo.copo_terms`` (answer
    ids in ``batch.answer``; ``hparams``: mode, k, b, ... of the ``copo`` estimator): the local
    advantages as ``advantages``, the global advantages and blend weight per row, the global
    coefficient, and the mean blend weight and answer entropy to log."""
    from ..advantages.copo import copo_terms

    t = copo_terms(batch, **hparams)
    local = (t.local.to(torch.float32).unsqueeze(1) * batch.mask).to(torch.float32)  # (B, T)
    return LossInputs(
        advantages=local,
        row_kwargs={"global_advantages": t.global_.to(torch.float32), "blend_weight": t.weight.to(torch.float32)},
        kwargs={"global_loss_coef": t.global_coef},
        metrics={"copo/blend_weight": float(t.weight.mean()), "copo/answer_entropy": float(t.entropy.mean())},
    )


@register_loss(
    "copo",
    needs=("answer",),
    inputs=copo_loss_inputs,
    inputs_hparams_from="copo",
    paper="COPO: Consistency-Aware Policy Optimization, arXiv:2508.04138",
    example={
        # ρ = 1: ℓ = −[(1 − w)·A^glob + w·A^loc]; prompts A and C of the worked example's batch (k = 5, b = 1)
        "logprobs": [[0.0, 0.0], [0.0, 0.0]],
        "old_logprobs": [[0.0, 0.0], [0.0, 0.0]],
        "advantages": [[0.0, 0.0], [0.866, 0.866]],
        "mask": [[1, 1], [1, 1]],
        "kwargs": {
            "global_advantages": [1.0, 0.0],
            "blend_weight": [1 / (1 + math.exp(5.0)), 1 / (1 + math.exp(-2.5))],
        },
    },
)
def copo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    global_advantages: Tensor,
    blend_weight: Tensor,
    eps_low: float = 0.2,
    eps_high: float | None = 0.2,
    clip_ratio_c: float | None = 3.0,
    global_loss_coef: float = 1.0,
    log_ratio_clamp: float = LOG_RATIO_CLAMP,
) -> tuple[Tensor, dict[str, Tensor]]:
    """COPO loss: ℓ = (1 − w)·coef·ℓ^glob + w·ℓ^loc per token.

    ℓ^loc and ℓ^glob are the same clipped surrogate (same ratio, ε_low = ε_high = 0.2, dual clip
    c = 3 as the reference code) on the local advantages (``advantages``, GRPO within the group)
    and the global ones (``global_advantages``, standardised across prompts), (B,) or (B, T).
    ``blend_weight`` w, (B,) or (B, T) in [0, 1], is ``copo_terms(...).weight`` (the entropy gate
    sigmoid(k·(H_q − b)) times the blend mode's row mask). ``global_loss_coef`` is the
    ``only-soft-with-coef`` mode's scale (1 otherwise). Metrics: the local clip fractions, the
    global ``clipfrac_global`` and the mean ``blend_weight``.
    """
    el, eh = resolve_eps(eps_low, eps_high)
    g = _per_token(global_advantages, logprobs, mask, "global_advantages")
    w = _per_token(blend_weight, logprobs, mask, "blend_weight")
    if bool(((w < 0) | (w > 1)).any()):
        r = int(((w < 0) | (w > 1)).any(dim=1).nonzero()[0, 0])
        raise ValueError(f"copo: blend_weight row {r} is outside [0, 1]; pass copo_terms(...).weight.")
    ratio = torch.exp(log_ratio(logprobs, old_logprobs, log_ratio_clamp))
    loc, m_loc = clipped_surrogate(ratio, advantages, el, eh, clip_ratio_c=clip_ratio_c)
    glob, m_glob = clipped_surrogate(ratio, g, el, eh, clip_ratio_c=clip_ratio_c)
    loss = (1.0 - w) * global_loss_coef * glob + w * loc
    metrics = dict(m_loc)
    metrics["clipfrac_global"] = m_glob["clipfrac"]
    metrics["blend_weight"] = w
    return loss, metrics
