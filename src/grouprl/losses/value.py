"""The clipped value-function loss of PPO (for critic-based estimators such as GAE or T-PPO)."""

from __future__ import annotations

import torch
from torch import Tensor

from .aggregation import Number, aggregate, check_agg

__all__ = ["value_loss"]


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    clip_range: float | None = 0.2,
    agg: str = "token-mean",
    num_tokens: Number | None = None,
    num_seqs: Number | None = None,
    norm_const: Number | None = None,
    dp_size: int = 1,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss: ½·agg(max((V − R)², (clip(V, V_old − c, V_old + c) − R)²)), as verl.

    ``values`` (B, T) carries the gradient, ``old_values`` are the critic's values at rollout time,
    ``returns`` the targets; ``clip_range=None`` gives the plain ½·agg((V − R)²). Aggregation and
    the global normalisers are those of ``aggregate``. Metrics (0-d, detached): ``vf_loss``,
    ``vf_clipfrac`` (tokens where the clipped error is the larger one), ``vpred_mean``.
    """
    check_agg(agg)
    m = torch.as_tensor(mask, device=values.device).to(torch.bool)
    for name, t in (("old_values", old_values), ("returns", returns), ("mask", m)):
        if tuple(t.shape) != tuple(values.shape):
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(values.shape)} like values")
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    v = torch.where(m, values, zero)
    v_old = torch.where(m, old_values.detach().to(values.dtype), zero)
    ret = torch.where(m, returns.detach().to(values.dtype), zero)
    err = (v - ret).square()
    if clip_range is None:
        per_token = err
        clipped = torch.zeros_like(m)
    else:
        v_clip = v_old + (v - v_old).clamp(-clip_range, clip_range)
        err_clip = (v_clip - ret).square()
        per_token = torch.maximum(err, err_clip)
        clipped = m & (err_clip > err)
    norms = dict(num_tokens=num_tokens, num_seqs=num_seqs, norm_const=norm_const, dp_size=dp_size)
    loss = 0.5 * aggregate(per_token, m, agg, **norms)
    metrics = {
        "vf_loss": loss.detach(),
        "vf_clipfrac": aggregate(clipped.to(values.dtype), m, "token-mean", num_tokens=num_tokens),
        "vpred_mean": aggregate(v.detach(), m, "token-mean", num_tokens=num_tokens),
    }
    return loss, metrics
