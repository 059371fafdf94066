"""AdvEvo-MARL's public baseline: one mean-return baseline per functional group, arXiv:2510.01586.

Confidence in this reading is **low**: only the abstract states the idea ("agents within the same functional
group share a group-level mean-return baseline"); the formula below is a proposed reading.
"""

from __future__ import annotations

from torch import Tensor

from ..core import Rollouts, group_stats
from .gigpo import combine_ids
from .registry import estimator

__all__ = ["advevo_public"]

BASELINES = ("public", "agent")
SCOPES = ("group", "batch")


@estimator(
    "advevo_public",
    needs=("rewards", "group", "mask", "role"),
    paper="AdvEvo-MARL: Shaping Internalized Safety through Adversarial Co-Evolution in "
    "Multi-Agent Reinforcement Learning, arXiv:2510.01586",
    level="outcome",
    example={
        "rewards": [1, 0, 1, 1],
        "group": [0, 0, 0, 0],
        "role": [0, 0, 0, 0],
        "agent": [1, 1, 2, 2],
    },
)
def advevo_public(
    batch: Rollouts,
    *,
    baseline: str = "public",
    scope: str = "group",
    scale: bool = False,
    eps: float = 1e-6,
    ddof: int = 1,
) -> Tensor:
    """AdvEvo-MARL public baseline (Pan et al., arXiv:2510.01586); the formula is a proposed reading.

    b_G = (1/(K·|G|)) Σ_k Σ_{j∈G} R_j^k,   A_i^k = R_i^k − b_G   for each agent i of functional group G

    Rows are per-agent returns (``rewards``) of the K rollouts of one input (``group``); ``role`` is
    the functional group (e.g. attacker / defender). ``scope="group"`` pools within the rollout
    group (proposed reading), ``"batch"`` pools a role over the whole batch. ``scale=True`` also
    divides by the pool's std + ε (off by default, proposed reading). ``baseline="agent"`` is the
    contrast of the paper: each agent's own mean over the K rollouts (needs ``agent``). A pool of
    one row gives 0.
    """
    if baseline not in BASELINES:
        raise ValueError(f"advevo_public: baseline={baseline!r}; choose one of {BASELINES}")
    if scope not in SCOPES:
        raise ValueError(f"advevo_public: scope={scope!r}; choose one of {SCOPES}")
    cols = [batch.role]
    if scope == "group":
        cols.insert(0, batch.group)
    if baseline == "agent":
        if not batch.has("agent"):
            raise ValueError("advevo_public: baseline='agent' needs the batch field 'agent' (agent id per row).")
        cols.append(batch.agent)
    pool, n = combine_ids(*cols)
    st = group_stats(batch.rewards, pool, n, ddof=ddof)
    return st.zscore(batch.rewards, eps) if scale else st.centered(batch.rewards)
