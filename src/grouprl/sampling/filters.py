"""Group filters of dynamic sampling: which groups carry a learning signal.

* DAPO (arXiv 2503.14476) keeps groups with ``0 < #correct < G``; verl tests ``std(metric) > 0``.
  Here a group is *informative* when ``max − min > tol`` in float64: exact for binary rewards and
  immune to the float32 rounding that makes ``std == 0`` miss constant groups of e.g. 0.7.
* NGRPO (arXiv 2509.18851, reference code ``strategy = all_correct``) drops only all-correct groups
  (``min >= r_max − tol``): all-wrong groups get a negative advantage from its virtual r_max sample.
"""

from __future__ import annotations

from torch import Tensor

from ..core import group_stats

__all__ = ["informative_groups", "all_correct_groups", "keep_groups", "FILTERS"]

FILTERS = ("mixed", "all_correct")


def _stats(rewards: Tensor, group_ids: Tensor, num_groups: int | None):
    if rewards.shape != group_ids.shape or rewards.dim() != 1:
        raise ValueError(
            f"rewards {tuple(rewards.shape)} and group_ids {tuple(group_ids.shape)} must both be (R,); "
            "pass one reward and one group id per row."
        )
    return group_stats(rewards, group_ids.long(), num_groups, ddof=0)


def informative_groups(rewards: Tensor, group_ids: Tensor, tol: float = 1e-6, num_groups: int | None = None) -> Tensor:
    """Bool per group: the rewards spread, ``max − min > tol`` (float64). Empty groups are False.

    DAPO dynamic sampling keeps exactly these groups (``filter="mixed"``).
    """
    s = _stats(rewards, group_ids, num_groups)
    return ((s.max - s.min) > tol) & (s.count > 0)


def all_correct_groups(
    rewards: Tensor, group_ids: Tensor, r_max: float = 1.0, tol: float = 1e-6, num_groups: int | None = None
) -> Tensor:
    """Bool per group: every reward reaches the maximum, ``min >= r_max − tol`` (NGRPO's filter)."""
    s = _stats(rewards, group_ids, num_groups)
    return (s.min >= r_max - tol) & (s.count > 0)


def keep_groups(
    rewards: Tensor, group_ids: Tensor, filter: str = "mixed", *, tol: float = 1e-6, r_max: float = 1.0,
    num_groups: int | None = None,
) -> Tensor:
    """Bool per group: kept by ``filter`` — ``"mixed"`` (DAPO: drop constant groups) or
    ``"all_correct"`` (NGRPO: drop only all-correct groups)."""
    if filter == "mixed":
        return informative_groups(rewards, group_ids, tol, num_groups)
    if filter == "all_correct":
        s = _stats(rewards, group_ids, num_groups)
        return ~(s.min >= r_max - tol) & (s.count > 0)
    raise ValueError(f"filter: unknown {filter!r}; choose one of {FILTERS}.")
