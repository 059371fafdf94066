"""Pass@k-style GRPO: only each group's best response is credited, by its margin over the runner-up."""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import Rollouts, group_stats
from .registry import estimator

_CHOICES = ("zero", "raise")


@estimator(
    "grpo_passk",
    paper="Pass@k outcome advantage as in verl's grpo_passk (which cites arXiv:2503.19595)",
    example={"rewards": [1.0, 0.5, 0.0, 0.5], "group": [0, 0, 0, 0]},
)
def grpo_passk(
    batch: Rollouts,
    *,
    scale: bool = True,
    eps: float = 1e-6,
    ddof: int = 1,
    singleton: str = "zero",
) -> Tensor:
    """Pass@k advantage: the group's best response gets its margin over the second best.

    A_i = (r_max − r_second) / (std_g(r) + ε) if i is the unique best of its group, else 0.

    ``scale=False`` drops the division (verl's ``norm_adv_by_std_in_grpo=False``). If the maximum
    is shared, r_max = r_second and every row gets 0 (so ties need no tie-breaking). A group of one
    has no runner-up: verl raises; here it gets 0 by default (``singleton="zero"``, the library's
    convention for groups without relative signal) and ``singleton="raise"`` reproduces verl.
    """
    if singleton not in _CHOICES:
        raise ValueError(f"grpo_passk: singleton={singleton!r}; choose one of {_CHOICES}")
    ids, G = batch.group, batch.num_groups
    r = batch.rewards.to(torch.float64)
    st = group_stats(r, ids, G, ddof=ddof)
    if singleton == "raise" and bool(st.singleton.any()):
        row = int(st.rows(st.singleton).nonzero()[0, 0])
        raise ValueError(
            f"grpo_passk: row {row} is the only response of its group; pass@k needs >= 2 responses "
            "per prompt (sample more, or pass singleton='zero' to give such rows 0)."
        )
    is_max = r == st.rows(st.max)
    n_max = torch.bincount(ids, weights=is_max.to(torch.float64), minlength=G)
    below = torch.where(is_max, torch.full_like(r, float("-inf")), r)
    second = torch.full((G,), float("-inf"), dtype=torch.float64, device=r.device)
    second = second.scatter_reduce_(0, ids, below, reduce="amax", include_self=True)
    winner = is_max & (st.rows(n_max) == 1) & ~st.rows(st.singleton)
    # (a non-winner's "second" may be -inf: the where discards it)
    margin = torch.where(winner, r - st.rows(second), torch.zeros_like(r))
    if scale:  # non-winners stay exactly 0 (also with eps = 0 on groups without spread)
        margin = torch.where(winner, margin / (st.rows(st.std) + eps), margin)
    return margin
