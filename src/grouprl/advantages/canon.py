"""CANON: Conditional Advantage Estimation, arXiv:2509.23962 (μ of Eq. 5, α of Eq. 8).

Each prompt's group is split by a per-response metric (old-policy mean token entropy, or length)
into a low half C⁻ (the first ⌊G/2⌋ responses after a stable ascending sort) and a high half C⁺
(the rest). An *inter* term compares a response with the other half's mean reward, an *intra* term
with its own half's mean; λ mixes them. Registered estimators:

* ``canon``: fixed λ, α, β (``condition="entropy"`` or ``"length"``);
* ``canon_anneal``: the inter weight is the batch-mean reward (code: ``..._annel``);
* ``canon_cosine`` / ``canon_cosine_r``: the inter weight follows cosine annealing with restarts,
  intra first / inter first (code: ``..._cosine_restart`` / ``..._cosine_restart_r``);
* ``canon_random``: the control, a split by rollout position (or a seeded random permutation)
  with the pure inter term.

Everything is vectorised: one stable sort per batch and the group kernel over 2·(#groups) halves.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core import GroupStats, Rollouts, group_stats, masked_mean
from ._common import apply_singleton
from .registry import estimator

__all__ = [
    "canon",
    "canon_anneal",
    "canon_cosine",
    "canon_cosine_r",
    "canon_random",
    "canon_metric",
    "rank_split",
    "cosine_with_restarts",
]

CONDITIONS = ("entropy", "length")

_EX2 = {
    "rewards": [1, 1, 0, 0, 1, 0],
    "group": [0] * 6,
    "metric": [0.2, 0.9, 0.8, 0.1, 0.3, 0.7],
}


# --------------------------------------------------------------------------------- helpers
def canon_metric(batch: Rollouts, condition: str) -> Tensor:
    """The per-response conditioning metric, float64 (B,).

    ``batch.metric`` when the batch has one; otherwise, for ``condition="entropy"``, the masked
    mean of ``batch.entropy`` over the response tokens (0 for an all-masked row, as verl's
    masked mean with +1e-8), and for ``"length"`` the number of unmasked tokens.
    """
    if condition not in CONDITIONS:
        raise ValueError(f"canon: condition={condition!r}; choose one of {CONDITIONS}")
    if batch.metric is not None:
        m = batch.metric.to(torch.float64)
    elif condition == "length":
        m = batch.lengths.to(torch.float64)
    elif batch.entropy is not None:
        m = masked_mean(batch.entropy.to(torch.float64), batch.mask, dim=1)
    else:
        raise ValueError(
            "canon: condition='entropy' needs the batch field 'metric' (old-policy mean token "
            "entropy per response) or 'entropy' (per-token entropies of the old policy); build "
            "Rollouts with entropy=... or metric=..., or pass condition='length'."
        )
    bad = ~torch.isfinite(m)
    if bool(bad.any()):
        r = int(bad.nonzero()[0, 0])
        raise ValueError(f"canon: the metric of row {r} is not finite; pass finite metric/entropy values.")
    return m


def rank_split(key: Tensor, ids: Tensor, num_groups: int) -> Tensor:
    """Rank split of every group by ``key``: True for rows in the high half C⁺ (bool (B,)).

    Rows are stable-sorted by (group, key), ties kept in row order; the first ⌊G/2⌋ of each group
    form C⁻, the other G − ⌊G/2⌋ (one more for odd G) form C⁺.
    """
    order = torch.sort(key, stable=True).indices
    order = order[torch.sort(ids[order], stable=True).indices]
    counts = torch.bincount(ids, minlength=num_groups)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(ids)
    rank[order] = torch.arange(ids.numel(), device=ids.device) - starts[ids[order]]
    return rank >= torch.div(counts, 2, rounding_mode="floor")[ids]


def _half_means(batch: Rollouts, high: Tensor) -> tuple[Tensor, Tensor, GroupStats]:
    """Per-row μ⁺ and μ⁻ (mean reward of the group's high / low half; 0 for an empty half) and the
    group statistics of the rewards. On a constant group μ⁺ = μ⁻ = r exactly, so α = 1, β = 0
    gives an exact 0 there whatever rounding the half means carry."""
    ids, ng = batch.group, batch.num_groups
    half = 2 * ids + high.to(torch.int64)
    hs = group_stats(batch.rewards, half, 2 * ng)
    st = group_stats(batch.rewards, ids, ng)
    r = batch.rewards.to(torch.float64)
    const = st.rows(st.constant)
    mu_high = torch.where(const, r, hs.mean[1::2][ids])
    mu_low = torch.where(const, r, hs.mean[0::2][ids])
    return mu_high, mu_low, st


def _canon_core(
    batch: Rollouts,
    *,
    condition: str,
    lam: float,
    alpha: float,
    beta: float,
    norm: float,
    singleton: str,
    who: str,
) -> Tensor:
    if norm <= 0:
        raise ValueError(f"{who}: norm={norm!r}; pass a positive normaliser Z (1, or max_response_length).")
    metric = canon_metric(batch, condition)
    high = rank_split(metric, batch.group, batch.num_groups)
    mu_high, mu_low, st = _half_means(batch, high)
    r = batch.rewards.to(torch.float64)
    if condition == "entropy":  # α > 1 favours high entropy
        inter = torch.where(high, r - alpha * mu_low + beta, alpha * r - mu_high - beta)
    else:  # length: α placement mirrored, α > 1 favours short responses
        inter = torch.where(high, alpha * r - mu_low + beta, r - alpha * mu_high - beta)
    intra = r - torch.where(high, mu_high, mu_low)
    adv = (lam * inter + (1.0 - lam) * intra) / norm
    return apply_singleton(adv, st, r / norm, singleton, who)


# ------------------------------------------------------------------------------ estimators
@estimator(
    "canon",
    optional=("entropy", "metric"),  # the split metric: the batch's, else mean old-policy token entropy
    paper="CANON: Conditional Advantage Estimation for RL in Large Reasoning Models, arXiv:2509.23962",
    example={**_EX2, "kwargs": {"lam": 1.0, "alpha": 1.2}},
)
def canon(
    batch: Rollouts,
    *,
    condition: str = "entropy",
    lam: float = 1.0,
    alpha: float = 1.0,
    beta: float = 0.0,
    norm: float = 1.0,
    singleton: str = "zero",
) -> Tensor:
    """CANON advantage: inter-group and intra-group comparison after a rank split by a metric.

    Entropy version (code: dr_entropy_token_budget), C⁺ = high-entropy half, C⁻ = low:
        i ∈ C⁺:  A_i = [ λ·(r_i − α·μ⁻ + β) + (1−λ)·(r_i − μ⁺) ] / Z
        i ∈ C⁻:  A_i = [ λ·(α·r_i − μ⁺ − β) + (1−λ)·(r_i − μ⁻) ] / Z
    Length version (code: dr_length_on_mean), α mirrored so α > 1 favours short responses:
        i ∈ C⁺:  A_i = [ λ·(α·r_i − μ⁻ + β) + (1−λ)·(r_i − μ⁺) ] / Z
        i ∈ C⁻:  A_i = [ λ·(r_i − α·μ⁺ − β) + (1−λ)·(r_i − μ⁻) ] / Z

    μ^± are the mean rewards of the halves. λ (``lam``) is the code's ``_lambda`` (the paper's μ of
    Eq. 5), α its Eq. 8 α, β an extra offset. Defaults are the released script's: λ = 1 (pure
    inter), α = 1, β = 0. ``norm`` is Z: pass ``max_response_length`` (8192 in the release) when
    the loss uses ``seq-mean-token-sum``, as the code does; 1 otherwise. With α = 1, β = 0,
    λ = 0.5 and even G this is Dr. GRPO divided by Z.

    The metric is ``batch.metric`` if present, else computed per ``condition`` (see
    ``canon_metric``). The length split is the code's rank split, not a split at the mean length
    (*proposed reading*: follow the code despite the name ``dr_length_on_mean``). With α ≠ 1
    identical rewards give a non-zero advantage (the intended directional prior). A group of one:
    0 by default; ``singleton="raw"`` gives the code's r/Z (μ⁺ = μ⁻ = 0).
    """
    return _canon_core(
        batch, condition=condition, lam=lam, alpha=alpha, beta=beta, norm=norm, singleton=singleton, who="canon"
    )


@estimator(
    "canon_anneal",
    optional=("entropy", "metric"),  # the split metric: the batch's, else mean old-policy token entropy
    paper="CANON (annealed by batch accuracy), arXiv:2509.23962",
    example=_EX2,
)
def canon_anneal(
    batch: Rollouts, *, condition: str = "entropy", norm: float = 1.0, singleton: str = "zero"
) -> Tensor:
    """CANON with the inter weight annealed by accuracy (code: dr_entropy_token_budget_annel).

    A = [ w·(inter term, α = 1, β = 0) + (1 − w)·(intra term) ] / Z, w = mean reward of the whole
    batch (the batch accuracy for 0/1 rewards): mostly intra early, mostly inter as accuracy rises.
    The weight is used as computed (no clamp), as in the code.
    """
    w = float(batch.rewards.to(torch.float64).mean())
    return _canon_core(
        batch, condition=condition, lam=w, alpha=1.0, beta=0.0, norm=norm, singleton=singleton, who="canon_anneal"
    )


def cosine_with_restarts(
    step: int,
    *,
    total_steps: int = 150,
    warmup_steps: int = 30,
    num_cycles: int = 3,
    max_value: float = 0.6,
    min_value: float = 0.0,
) -> float:
    """The CANON schedule value s(t), pure in the global step ``step`` (0-based).

    Warm-up: s = (t + 1)/warmup · max. Then ``num_cycles`` cosine cycles of length
    (total − warmup)/num_cycles, each going max → min: s = min + (max − min)·(1 + cos(π·p))/2 with
    p the position inside the current cycle. Past ``total_steps`` s stays at ``min_value``
    (*proposed reading*: the schedule ends there; the released runs stop at 150 steps).
    """
    if step < 0:
        raise ValueError(f"cosine_with_restarts: step={step}; pass the 0-based global step.")
    if total_steps <= warmup_steps or num_cycles < 1:
        raise ValueError("cosine_with_restarts: need total_steps > warmup_steps and num_cycles >= 1.")
    if step < warmup_steps:
        return (step + 1) / warmup_steps * max_value
    if step >= total_steps:
        return min_value
    cycle = (total_steps - warmup_steps) / num_cycles
    p = ((step - warmup_steps) % cycle) / cycle
    return min_value + (max_value - min_value) * 0.5 * (1.0 + math.cos(math.pi * p))


@estimator(
    "canon_cosine",
    optional=("entropy", "metric"),  # the split metric: the batch's, else mean old-policy token entropy
    paper="CANON (Cos-First-Intra-Later-Inter), arXiv:2509.23962",
    example={**_EX2, "kwargs": {"step": 50}},
)
def canon_cosine(
    batch: Rollouts,
    *,
    step: int = 0,
    total_steps: int = 150,
    warmup_steps: int = 30,
    num_cycles: int = 3,
    condition: str = "entropy",
    norm: float = 1.0,
    singleton: str = "zero",
) -> Tensor:
    """CANON, intra first then inter (code: dr_entropy_token_budget_cosine_restart).

    A = [ w_t·(inter, α = 1, β = 0) + (1 − w_t)·(intra) ] / Z with w_t = 1 − s(t), s the cosine
    schedule with restarts (max 0.6, min 0, warm-up 30, 3 cycles of 40 in 150 steps): per cycle
    w_t goes 0.4 → 1.0 (w_0 = 0.98, w_50 = 0.7). ``step`` is the 0-based global training step.
    """
    s = cosine_with_restarts(
        step, total_steps=total_steps, warmup_steps=warmup_steps, num_cycles=num_cycles, max_value=0.6, min_value=0.0
    )
    return _canon_core(
        batch, condition=condition, lam=1.0 - s, alpha=1.0, beta=0.0, norm=norm, singleton=singleton, who="canon_cosine"
    )


@estimator(
    "canon_cosine_r",
    optional=("entropy", "metric"),  # the split metric: the batch's, else mean old-policy token entropy
    paper="CANON (Cos-First-Inter-Later-Intra), arXiv:2509.23962",
    example={**_EX2, "kwargs": {"step": 50}},
)
def canon_cosine_r(
    batch: Rollouts,
    *,
    step: int = 0,
    total_steps: int = 150,
    warmup_steps: int = 30,
    num_cycles: int = 3,
    condition: str = "entropy",
    norm: float = 1.0,
    singleton: str = "zero",
) -> Tensor:
    """CANON, inter first then intra (code: dr_entropy_token_budget_cosine_restart_r).

    w_t = s(t), the cosine schedule with restarts with max 1 and min 0.4 (warm-up 30 from
    1/30 ≈ 0.033): per cycle w_t goes 1.0 → 0.4. A as in ``canon_cosine``.
    """
    w = cosine_with_restarts(
        step, total_steps=total_steps, warmup_steps=warmup_steps, num_cycles=num_cycles, max_value=1.0, min_value=0.4
    )
    return _canon_core(
        batch, condition=condition, lam=w, alpha=1.0, beta=0.0, norm=norm, singleton=singleton, who="canon_cosine_r"
    )


@estimator(
    "canon_random",
    optional=("entropy", "metric"),  # the split metric: the batch's, else mean old-policy token entropy
    paper="CANON (random-regrouping control), arXiv:2509.23962",
    example={"rewards": [1, 0, 0, 1], "group": [0, 0, 0, 0]},
)
def canon_random(
    batch: Rollouts, *, seed: int | None = None, norm: float = 1.0, singleton: str = "zero"
) -> Tensor:
    """CANON's control (code: dr_random): a metric-free split and the pure inter-group term.

    A_i = (r_i − mean reward of the other half) / Z. ``seed=None`` splits each group by rollout
    position (the first ⌊G/2⌋ rows in batch order form one half), as the code does; rollout order
    is already random. An integer ``seed`` splits by a seeded random permutation instead (pure:
    the same seed gives the same split).
    """
    if norm <= 0:
        raise ValueError(f"canon_random: norm={norm!r}; pass a positive normaliser Z.")
    B = len(batch)
    if seed is None:
        key = torch.arange(B, dtype=torch.float64, device=batch.device)
    else:
        g = torch.Generator().manual_seed(int(seed))
        key = torch.rand(B, generator=g, dtype=torch.float64).to(batch.device)
    high = rank_split(key, batch.group, batch.num_groups)
    mu_high, mu_low, st = _half_means(batch, high)
    r = batch.rewards.to(torch.float64)
    adv = (r - torch.where(high, mu_low, mu_high)) / norm
    return apply_singleton(adv, st, r / norm, singleton, "canon_random")
