"""Confucius3-Math: Policy-Specific Hardness Weighting, PSHW, arXiv:2506.18330.

The other two Confucius3-Math techniques live elsewhere: Targeted Entropy Regularization is a
loss term (``grouprl.losses.ter``), Recent Sample Recovery a sampler buffer
(``grouprl.sampling``).
"""

from __future__ import annotations

from torch import Tensor

from ..core import Rollouts, group_stats
from .registry import estimator

__all__ = ["pshw"]


@estimator(
    "pshw",
    paper="Confucius3-Math (Policy-Specific Hardness Weighting), arXiv:2506.18330",
    example={"rewards": [1, -1, -1, -1, 1, 1, 1, -1], "group": [0, 0, 0, 0, 1, 1, 1, 1]},
)
def pshw(batch: Rollouts, *, alpha: float = -0.256, offset: float = 1.256) -> Tensor:
    """Policy-Specific Hardness Weighting: the centred group advantage scaled by a hardness weight.

    R_i = ±1 (equivalent answer or not);  μ = mean_i R_i over the group;
    D(q) = α·μ + 1.256 with α = −0.256 (1.0 for an easy group, μ = 1; 1.512 for a hard one, μ = −1);
    Â_{i,t} = (R_i − μ)·D(q), no std division.

    Pair it with a constant-normaliser loss (no 1/|o_i|; *proposed reading*: a constant token
    budget as in Dr. GRPO, the tech report does not state the constant). A homogeneous group and
    a group of one give exactly 0.
    """
    st = group_stats(batch.rewards, batch.group, batch.num_groups)
    d = alpha * st.mean + offset
    return st.centered(batch.rewards) * st.rows(d)
