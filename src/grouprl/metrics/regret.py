"""Groupwise regret (Acharya, Arunachaleswaran, Kannan, Roth, Ziani, "Oracle Efficient Algorithms
for Groupwise Regret", arXiv 2310.04652): regret measured separately on each group's rounds.

Over rounds t = 1..T with the learner's loss ℓ_t, the losses ℓ_{h,t} of H fixed hypotheses, and
groups g with rounds T_g = {t : x_t ∈ g} (groups may overlap):

    Regret_g = Σ_{t∈T_g} ℓ_t − min_h Σ_{t∈T_g} ℓ_{h,t}

A group without rounds has regret 0 (both sums are empty).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["groupwise_regret"]

_WHO = "groupwise_regret"


def _finite(name: str, t: Tensor) -> None:
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        where = f"row {idx[0]}" + (f", column {idx[1]}" if len(idx) > 1 else "")
        raise ValueError(f"{_WHO}: {name} {where} is {t[idx].item()}; drop or fix non-finite losses first.")


def groupwise_regret(learner_loss, hypothesis_loss, membership) -> Tensor:
    """Regret_g = Σ_{t∈T_g} ℓ_t − min_h Σ_{t∈T_g} ℓ_{h,t} for every group g, float64 (G,).

    ``learner_loss`` (T,): the learner's loss per round; ``hypothesis_loss`` (T, H): each fixed
    hypothesis's loss per round; ``membership`` (T, G) bool: round t belongs to group g (a round may
    belong to several groups or to none). Two matrix products, no loop over groups or rounds.
    """
    ll = torch.as_tensor(learner_loss)
    hl = torch.as_tensor(hypothesis_loss)
    mem = torch.as_tensor(membership)
    if ll.dim() != 1:
        raise ValueError(f"{_WHO}: learner_loss must be 1-D (T,) (one loss per round), got shape {tuple(ll.shape)}.")
    T = ll.shape[0]
    if hl.dim() != 2 or hl.shape[0] != T:
        raise ValueError(f"{_WHO}: hypothesis_loss must be (T, H) = ({T}, H) (one column per hypothesis), "
                         f"got shape {tuple(hl.shape)}.")
    if hl.shape[1] == 0:
        raise ValueError(f"{_WHO}: hypothesis_loss has no column; pass at least one hypothesis (T, H >= 1).")
    if mem.dim() != 2 or mem.shape[0] != T:
        raise ValueError(f"{_WHO}: membership must be (T, G) = ({T}, G) (one column per group), got shape {tuple(mem.shape)}.")
    if mem.dtype != torch.bool:
        raise ValueError(f"{_WHO}: membership has dtype {mem.dtype}; pass a bool (T, G) matrix, "
                         "e.g. group_id[:, None] == torch.arange(G) for disjoint groups.")
    for name, t in (("learner_loss", ll), ("hypothesis_loss", hl)):
        if not (t.dtype.is_floating_point or t.dtype in (torch.int32, torch.int64, torch.int16, torch.int8, torch.uint8)):
            raise ValueError(f"{_WHO}: {name} has dtype {t.dtype}; pass real-valued losses.")
    ll, hl = ll.to(torch.float64), hl.to(torch.float64)
    _finite("learner_loss", ll)
    _finite("hypothesis_loss", hl)
    m = mem.to(torch.float64).T  # (G, T)
    return m @ ll - (m @ hl).amin(dim=1)
