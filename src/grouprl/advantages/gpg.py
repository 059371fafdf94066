"""GPG: group-centred rewards rescaled by the fraction of rows that carry a reward."""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import Rollouts, group_stats
from ._common import apply_singleton
from .registry import estimator


@estimator(
    "gpg",
    paper="GPG: A Simple and Strong Reinforcement Learning Baseline for Model Reasoning, "
    "arXiv:2504.02546 (verl implementation)",
    example={"rewards": [1, 0, 0, 0, 0, 0, 0, 0], "group": [0, 0, 0, 0, 1, 1, 1, 1]},
)
def gpg(batch: Rollouts, *, singleton: str = "zero") -> Tensor:
    """Group Policy Gradient advantage, as verl computes it.

    A_i = α · (r_i − mean_g(r)),  α = B / max(1, #{j : r_j ≠ 0}),

    B the number of rows in the batch: the gradient-estimation correction that rescales the
    batch by the share of rows with a non-zero reward (verl's ``gpg`` overwrites its ``alpha``
    argument with this value and uses f_norm = 1; the group std is not used). A constant group
    gives exactly 0. A group of one: 0 by default, α·r with ``singleton="raw"`` (verl: mean 0).
    """
    r = batch.rewards
    st = group_stats(r, batch.group, batch.num_groups)
    alpha = len(batch) / torch.count_nonzero(r).clamp_min(1).to(torch.float64)
    adv = st.centered(r) * alpha
    return apply_singleton(adv, st, r.to(torch.float64) * alpha, singleton, "gpg")
