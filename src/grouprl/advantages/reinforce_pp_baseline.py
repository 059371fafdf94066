"""REINFORCE++-baseline: group-mean baseline, then batch whitening over tokens."""

from __future__ import annotations

from torch import Tensor

from ..core import Rollouts, group_stats
from ._common import apply_singleton
from ._masks import row_lengths
from ._returns import row_whiten
from .registry import estimator


@estimator(
    "reinforce_pp_baseline",
    paper="REINFORCE++: Stabilizing Critic-Free Policy Optimization with Global Advantage "
    "Normalization, arXiv:2501.03262",
    example={
        "rewards": [1, 0, 0, 1, 1, 1],
        "group": [0, 0, 0, 0, 1, 1],
        "mask": [[1, 1], [1, 1], [1, 0], [1, 1], [1, 1], [1, 0]],
    },
)
def reinforce_pp_baseline(batch: Rollouts, *, whiten: bool = True, singleton: str = "zero") -> Tensor:
    """REINFORCE++ with a group baseline: subtract the group mean, then normalise globally.

    A_i = r_i − mean_g(r), tiled over response i's tokens, then A ← (A − μ_B)/sqrt(σ²_B + 1e-8)
    with μ_B, σ²_B (unbiased) over all trained tokens of the batch (token-weighted: long responses
    weigh more), as verl's ``reinforce_plus_plus_baseline``. Computed on per-row values (no (B, T)
    pass). ``whiten=False`` keeps the centred reward.

    A group of one: 0 by default (it still counts in the whitening statistics), the raw reward
    with ``singleton="raw"`` (verl: mean = 0), or an error with ``"raise"``.
    """
    st = group_stats(batch.rewards, batch.group, batch.num_groups)
    adv = apply_singleton(st.centered(batch.rewards), st, batch.rewards, singleton, "reinforce_pp_baseline")
    return row_whiten(adv, row_lengths(batch.mask)) if whiten else adv
