"""Floor 1: the batch type, the group kernel, masked reductions, the discounted scan, the registry
(torch + numpy only)."""

from .batch import Rollouts
from .groups import GroupStats, cap_per_group, factorize, group_stats
from .masked import broadcast, masked_mean, masked_sum, masked_whiten
from .registry import Registry, UnknownName, suggest
from .scan import reverse_discounted_cumsum

__all__ = [
    "Rollouts",
    "GroupStats",
    "factorize",
    "group_stats",
    "cap_per_group",
    "broadcast",
    "masked_mean",
    "masked_sum",
    "masked_whiten",
    "reverse_discounted_cumsum",
    "Registry",
    "UnknownName",
    "suggest",
]
