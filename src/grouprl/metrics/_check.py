"""Input checks shared by the metric functions (named field, first bad row, fix)."""

from __future__ import annotations

import torch
from torch import Tensor


def as_vector(name: str, x, who: str) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.as_tensor(x, dtype=torch.float64)  # lists: no float32 detour
    if t.dim() != 1:
        raise ValueError(f"{who}: {name} must be 1-D (one value per item), got shape {tuple(t.shape)}.")
    t = t.to(torch.float64)
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"{who}: {name} row {row} is {t[row].item()}; drop or fix non-finite values first.")
    return t


def same_length(who: str, **named: Tensor) -> int:
    lengths = {k: int(v.numel()) for k, v in named.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{who}: lengths differ {lengths}; pass one value per item in each.")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError(f"{who}: empty input; pass at least one item.")
    return n


def in_unit_interval(name: str, t: Tensor, who: str) -> None:
    bad = (t < 0) | (t > 1)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{who}: {name} row {row} is {t[row].item()}, outside [0, 1]; pass probabilities / success rates."
        )
