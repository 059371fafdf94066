"""MaxMin-RLHF's egalitarian policy step (the worst-off group's reward, Algorithm 1), arXiv:2402.08925.

With K reward functions (one per user group; ``batch.reward_components`` (B, K) holds every
response's reward under each), each step trains on the reward of the group whose mean reward on the
batch is lowest: u_min = argmin_u mean_b r_u(b). ``worst_group`` is that selection;
``maxmin`` is an estimator that selects the column and then runs any base estimator on it. The EM
mixture that learns the K reward models is ``grouprl.rewards.maxmin``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..core import Rollouts
from .registry import ESTIMATORS, _check_kwargs, _check_needs, estimator

__all__ = ["worst_group", "maxmin"]

NORMALIZE = ("none", "zscore")


def worst_group(
    rewards: Tensor | Sequence[Tensor],
    *,
    normalize: str = "none",
    ref_mean: Sequence[float] | Tensor | None = None,
    ref_std: Sequence[float] | Tensor | None = None,
    eps: float = 1e-6,
) -> tuple[Tensor, int, Tensor]:
    """The egalitarian selection: (reward vector (B,) of the worst-off group, its index, means (K,)).

    ``rewards``: (B, K), column u = the batch's rewards under group u's reward model (or a list
    of K reward vectors (B,), one per reward function). Ties go to
    the lowest index. ``normalize="zscore"`` (*proposed reading*, the paper's scale handling is
    not available) compares means after z-scoring each column with ``ref_mean``/``ref_std``
    (statistics of each reward model on a reference batch, required: z-scoring with this batch's
    own statistics would make every mean 0 and the pick arbitrary; ``grouprl fit-rewards`` stores
    them in its manifest). The returned vector is the *raw* column.
    """
    if isinstance(rewards, (list, tuple)):
        if not rewards:
            raise ValueError("maxmin: got no reward vectors; pass one (B,) reward vector per user group.")
        rewards = torch.stack([torch.as_tensor(x) for x in rewards], dim=1)
    if rewards.dim() != 2 or rewards.shape[1] < 1:
        raise ValueError(f"maxmin: rewards must be (B, K) with K >= 1, got {tuple(rewards.shape)}.")
    _validate({"normalize": normalize, "ref_mean": ref_mean, "ref_std": ref_std})
    r = rewards.to(torch.float64)
    if normalize == "zscore":
        mu = torch.as_tensor(ref_mean, dtype=torch.float64, device=r.device)
        sd = torch.as_tensor(ref_std, dtype=torch.float64, device=r.device)
        if mu.shape != (r.shape[1],) or sd.shape != (r.shape[1],):
            raise ValueError(f"maxmin: ref_mean/ref_std must have one entry per reward model ({r.shape[1]}).")
        r = (r - mu) / (sd + eps)
    means = r.mean(0)
    u = int(torch.argmin(means))  # first minimum: lowest index on ties
    return rewards[:, u], u, means


def _validate(kw: dict) -> None:
    """``normalize`` is known, and ``zscore`` comes with reference statistics (see ``worst_group``)."""
    normalize = kw.get("normalize", "none")
    if normalize not in NORMALIZE:
        raise ValueError(f"maxmin: normalize={normalize!r}; choose one of {NORMALIZE}")
    if normalize == "zscore" and (kw.get("ref_mean") is None or kw.get("ref_std") is None):
        raise ValueError(
            "maxmin: normalize='zscore' needs reference statistics ref_mean and ref_std (one entry per reward "
            "model); z-scoring with the batch's own statistics makes every group's mean 0 and the pick arbitrary. "
            "Pass estimator_kwargs.ref_mean=[...] and ref_std=[...], or train with reward_models=DIR "
            "(its manifest holds them), or use normalize='none'."
        )


def _view(batch: Rollouts, *, normalize: str = "none", ref_mean=None, ref_std=None, **_: object):
    """The reward MaxMin trains on (the worst-off group's raw column) and what a trainer logs: each
    group's batch mean F_u = mean_b r_u(b) (``F_u``; the compared z-scored mean ``Fz_u`` when
    ``normalize="zscore"``) and the chosen index ``worst_group``."""
    rc = batch.reward_components
    r, u, means = worst_group(rc, normalize=normalize, ref_mean=ref_mean, ref_std=ref_std)
    raw = rc.to(torch.float64).mean(0).tolist()
    out = {f"F_{k}": float(m) for k, m in enumerate(raw)}
    if normalize == "zscore":
        out.update({f"Fz_{k}": float(m) for k, m in enumerate(means.tolist())})
    out["worst_group"] = float(u)
    return r, out


@estimator(
    "maxmin",
    needs=("rewards", "group", "mask", "reward_components"),
    paper="MaxMin-RLHF: Alignment with Diverse Human Preferences, arXiv:2402.08925",
    example={
        "rewards": [0, 0, 0, 0],
        "group": [0, 0, 0, 0],
        "reward_components": [[1.0, 0.5], [0.5, 0.0], [1.0, 0.5], [0.5, 0.0]],
    },
    reward_view=_view,
    validate=_validate,
)
def maxmin(
    batch: Rollouts,
    *,
    base: str = "grpo",
    base_kwargs: dict | None = None,
    normalize: str = "none",
    ref_mean: Sequence[float] | None = None,
    ref_std: Sequence[float] | None = None,
) -> Tensor:
    """MaxMin-RLHF step: train on the reward of the worst-off user group.

    π* ∈ argmax_π min_u F_u(π), F_u = E[r_u(x, y)] − β·KL(π‖π_ref). Per step: evaluate every
    group's reward model on the batch (``batch.reward_components`` (B, K)), pick
    u_min = argmin_u mean_b r_u, and compute the ``base`` estimator's advantage (default GRPO) on
    r_{u_min} (``batch.rewards`` is ignored). The KL term belongs to the loss. With K = 1 this is
    the plain ``base`` step. See ``worst_group`` for ``normalize`` (a *proposed reading*).
    """
    if base == "maxmin":
        raise ValueError("maxmin: base='maxmin' would recurse; pick a plain estimator such as 'grpo'.")
    info = ESTIMATORS[base]
    kw = dict(base_kwargs or {})
    _check_kwargs(f"estimator {base!r}", info.defaults, kw)
    r, _, _ = worst_group(batch.reward_components, normalize=normalize, ref_mean=ref_mean, ref_std=ref_std)
    chosen = batch.replace(rewards=r.to(batch.rewards.dtype))
    _check_needs(info, chosen)
    return info.fn(chosen, **kw)
