"""ReAd: sequential (HAPPO-style) multi-agent advantage from a critic's prefix values, arXiv:2405.14314.

Confidence in this reading is medium: the formulas are recalled from the paper and not verified against its
full text; the refinement threshold ε and the exact Monte Carlo target are not specified.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import Rollouts
from .gigpo import combine_ids, order_in_sequence
from .registry import estimator

__all__ = ["read", "needs_refinement"]

MODES = ("sequential", "joint")


def _extra(batch: Rollouts, name: str) -> Tensor:
    if name not in batch.extras:
        raise ValueError(
            f"read: the batch has no extras[{name!r}]; pass the critic's values per row, e.g. "
            f"Rollouts(..., extras={{{name!r}: tensor_of_shape_B}})."
        )
    v = batch.extras[name]
    if v.dim() != 1:
        raise ValueError(f"read: extras[{name!r}] must have shape (B,), got {tuple(v.shape)}.")
    bad = ~torch.isfinite(v)
    if bool(bad.any()):
        raise ValueError(f"read: extras[{name!r}] row {int(bad.nonzero()[0, 0])} is not finite.")
    return v.to(torch.float64)


@estimator(
    "read",
    # the critic's scores under their default field names (q_field, v_field): declared, so that a
    # trainer without a critic refuses the estimator at config load rather than at its first step
    needs=("rewards", "group", "mask", "trajectory", "step", "agent", "q_values", "state_values"),
    paper="Towards Efficient LLM Grounding for Embodied Multi-Agent Collaboration (ReAd), arXiv:2405.14314",
    level="step",
)
def read(
    batch: Rollouts,
    *,
    mode: str = "sequential",
    q_field: str = "q_values",
    v_field: str = "state_values",
    order_field: str = "",
) -> Tensor:
    """ReAd (Zhang et al., arXiv:2405.14314): critic-based sequential multi-agent advantage.

    For the agent order i_1..i_n of one decision (one step of one trajectory):
        A^{i_k}(s, a^{i_{1:k−1}}, a^{i_k}) = Q^{i_{1:k}}(s, a^{i_{1:k}}) − Q^{i_{1:k−1}}(s, a^{i_{1:k−1}}),
        Q^{∅}(s) = V(s);   the joint advantage Σ_k A^{i_k} = Q(s, a) − V(s).

    One row per agent action. ``extras[q_field]``: the critic's Q of the action prefix ending with
    this row's agent; ``extras[v_field]``: V(s) of the decision's state (read from the first agent's
    row). The order is ``agent`` ascending, or ``extras[order_field]`` when given. ``mode="joint"``
    (ReAd-J) gives every agent of the decision Q(s, a) − V(s). The critic itself (regressed on Monte
    Carlo returns; single network over padded prefixes is a proposed reading) is trained elsewhere;
    in the paper these scores drive plan refinement (``needs_refinement``), here they are also usable
    as advantages.
    """
    if mode not in MODES:
        raise ValueError(f"read: mode={mode!r}; choose one of {MODES}")
    q = _extra(batch, q_field)
    v = _extra(batch, v_field)
    order = batch.agent if not order_field else _extra(batch, order_field).to(torch.int64)
    dec, _ = combine_ids(batch.group, batch.trajectory, batch.step)
    perm, pos = order_in_sequence(dec, order, "read", ("decision (group, trajectory, step)", "agent"))
    qs, ds = q[perm], dec[perm]
    first = pos[perm] == 0
    prev = torch.empty_like(qs)
    prev[1:] = qs[:-1]
    prev = torch.where(first, v[perm], prev)
    if mode == "sequential":
        adv_sorted = qs - prev
    else:
        n_dec = int(dec.max()) + 1
        is_last = torch.ones_like(first)
        is_last[:-1] = ds[1:] != ds[:-1]
        last = qs.new_zeros(n_dec).index_put_((ds[is_last],), qs[is_last])
        base = qs.new_zeros(n_dec).index_put_((ds[first],), v[perm][first])
        adv_sorted = (last - base)[ds]
    out = torch.empty_like(adv_sorted)
    out[perm] = adv_sorted
    return out


def needs_refinement(scores: Tensor, eps: float = 0.0) -> Tensor:
    """ReAd's refinement rule: a plan whose score S < ε goes back to the LLM with its score.

    ε is not specified in the sources; 0 is a proposed reading.
    """
    return scores < eps
