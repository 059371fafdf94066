"""Masked reductions over (B, T) tensors, and broadcasting per-row values to tokens."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["broadcast", "masked_sum", "masked_mean", "masked_whiten"]


def broadcast(per_row: Tensor, mask: Tensor) -> Tensor:
    """(B,) -> float32 (B, T): ``per_row[i]`` on row i's unmasked tokens, exactly 0 elsewhere.

    One write of the output: this is the memory floor of every outcome-level estimator.
    """
    # torch.where avoids the bool -> float conversion of the mask that ``x * mask`` pays on CPU
    return torch.where(mask, per_row.to(torch.float32).unsqueeze(1), 0.0)


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    return (x * mask).sum() if dim is None else (x * mask).sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None, eps: float = 1e-8) -> Tensor:
    """Σ x·m / (Σ m + eps): 0 (not NaN) when nothing is unmasked, as in verl >= 0.4."""
    return masked_sum(x, mask, dim) / (mask.sum() if dim is None else mask.sum(dim=dim)).add(eps)


def masked_whiten(x: Tensor, mask: Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Whiten over the unmasked entries: (x − mean)/sqrt(var + eps), unbiased variance, as verl.

    The statistics are accumulated in float64; masked entries of the result are 0.
    """
    m = mask.to(torch.float64)
    x64 = x.to(torch.float64)
    n = m.sum()
    mean = (x64 * m).sum() / n.clamp_min(1.0)
    var = ((x64 - mean) ** 2 * m).sum() / (n - 1).clamp_min(1.0)
    out = (x64 - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return (out * m).to(x.dtype if x.dtype.is_floating_point else torch.float32)
