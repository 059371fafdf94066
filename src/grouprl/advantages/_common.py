"""Helpers shared by the group estimators: the group-of-one policy."""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import GroupStats

SINGLETON_CHOICES = ("zero", "raw", "raise")


def apply_singleton(adv: Tensor, stats: GroupStats, raw: Tensor, policy: str, who: str) -> Tensor:
    """Set the advantage of rows in groups of one: ``zero`` (default, no relative signal),
    ``raw`` (the reference code's behaviour: mean 0 and std 1, so A = the raw value) or ``raise``."""
    if policy not in SINGLETON_CHOICES:
        raise ValueError(f"{who}: singleton={policy!r}; choose one of {SINGLETON_CHOICES}")
    single = stats.rows(stats.singleton)
    if policy == "zero":
        return adv.masked_fill(single, 0.0)
    if policy == "raise":
        if bool(single.any()):
            r = int(single.nonzero()[0, 0])
            raise ValueError(
                f"{who}: row {r} is the only response of its group; sample >= 2 responses per "
                "prompt, or pass singleton='zero' or 'raw'."
            )
        return adv
    return torch.where(single, raw.to(adv.dtype), adv)
