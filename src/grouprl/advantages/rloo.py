"""RLOO: REINFORCE with the leave-one-out group mean as baseline."""

from __future__ import annotations

from torch import Tensor

from ..core import Rollouts, group_stats
from ._common import apply_singleton
from .registry import estimator


@estimator(
    "rloo",
    paper="Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human "
    "Feedback in LLMs (RLOO), arXiv:2402.14740",
    example={"rewards": [1, 0, 0, 1], "group": [0, 0, 0, 0]},
)
def rloo(batch: Rollouts, *, singleton: str = "zero") -> Tensor:
    """REINFORCE Leave-One-Out: each response is baselined by the mean reward of the *other*
    responses to the same prompt.

    A_i = r_i − 1/(n−1) Σ_{j≠i} r_j = n/(n−1) · (r_i − mean_g(r)), the same for every token.

    Computed as the group-centred reward times n/(n−1), so a constant group gives exactly 0. A group
    of one has no other rows: 0 by default, the raw reward with ``singleton="raw"`` (verl ``rloo``;
    verl ``rloo_vectorized`` gives 0), or an error with ``"raise"``.
    """
    st = group_stats(batch.rewards, batch.group, batch.num_groups)
    n = st.rows(st.count).to(st.mean.dtype)
    adv = st.centered(batch.rewards) * (n / (n - 1).clamp_min(1.0))
    return apply_singleton(adv, st, batch.rewards, singleton, "rloo")
