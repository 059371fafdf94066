"""COPO: Consistency-Aware Policy Optimization, arXiv:2508.04138.

Three pieces, all per batch and vectorised through the group kernel:

* the outcome-consistency entropy H_q of each prompt's extracted final answers (``batch.answer``,
  int64 ids; build them with ``grouprl.rewards.copo.answer_ids``);
* the prompt-level global reward R^glob_q = mean_i r_i · c_q, standardised **across prompts**
  into the global advantage A^glob_q;
* the entropy gate w = sigmoid(k·(H_q − b)) blending a local (GRPO) and a global clipped loss.

``copo_terms`` returns the three per-row tensors the loss needs (``grouprl.losses.copo``: the
local advantages, ``global_advantages=`` and ``blend_weight=``). The registered estimators are
``copo`` (the *effective* advantage (1 − w)·A^glob + w·A^loc, which equals the blended loss while
the ratio stays inside the clip range) and ``copo_global`` (A^glob alone).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core import Rollouts, group_stats
from ._common import apply_singleton
from .registry import estimator

__all__ = [
    "BLEND_MODES",
    "CopoTerms",
    "answer_entropy",
    "global_reward",
    "global_advantage",
    "blend_weight",
    "copo_terms",
    "copo",
    "copo_global",
]

BLEND_MODES = (
    "only-soft",
    "soft-with-zero",
    "soft-with-forced",
    "only-zero",
    "only-forced",
    "only-global",
    "no-global",
    "only-soft-with-coef",
)

_EXAMPLE = {
    "rewards": [1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 1],
    "group": [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2],
    "answer": [5, 5, 5, 5, 3, 4, 4, 7, 2, 3, 9, 2],
}


def answer_entropy(answer: Tensor, ids: Tensor, num_groups: int) -> Tensor:
    """H_q = −Σ_a p_a·log₂ p_a per group, float64 (num_groups,); p_a = share of the group's rows
    whose answer id is a. 0 when all answers agree, log₂ n when all differ."""
    a_uniq, a = torch.unique(answer.to(ids.device), return_inverse=True)  # dense answer ids
    key = ids * a_uniq.numel() + a  # one int64 per (group, answer) pair; < B² so no overflow
    uniq, pair = torch.unique(key, return_inverse=True)
    pair_count = torch.bincount(pair, minlength=uniq.numel()).to(torch.float64)
    pair_group = torch.div(uniq, a_uniq.numel(), rounding_mode="floor")
    n = torch.bincount(ids, minlength=num_groups).to(torch.float64)
    p = pair_count / n[pair_group]
    return torch.zeros(num_groups, dtype=torch.float64, device=ids.device).index_add_(
        0, pair_group, -p * torch.log2(p)
    )


def global_reward(
    rewards: Tensor, ids: Tensor, num_groups: int, entropy: Tensor | None = None, *, reward_coef: bool = False
) -> Tensor:
    """R^glob_q = mean_i(r_i)·c_q per group (float64).

    c_q = 1 − λ_n·H_q with λ_n = (1 − 1/n)/log₂ n when ``reward_coef`` (the code's
    ``reward_coef_flg``; c = 1 when all answers agree, 1/n when all differ), else 1 (the default).
    """
    st = group_stats(rewards, ids, num_groups)
    if not reward_coef:
        return st.mean
    if entropy is None:
        raise ValueError("copo: reward_coef=True needs the answer entropy (the batch field 'answer').")
    n = st.count.to(torch.float64)
    lam = torch.where(n > 1, (1.0 - 1.0 / n.clamp_min(1.0)) / torch.log2(n.clamp_min(2.0)), torch.zeros_like(n))
    return st.mean * (1.0 - lam * entropy)


def global_advantage(per_prompt: Tensor, *, eps: float = 1e-6, ddof: int = 1) -> Tensor:
    """Standardise a per-prompt value across the prompts of the batch: (R − mean)/(std + ε).

    Exactly 0 when every prompt has the same value, and for a batch of one prompt (the reference
    code's unbiased std of one value is NaN there; 0 is this library's proposed reading).
    """
    one = torch.zeros(per_prompt.shape[0], dtype=torch.int64, device=per_prompt.device)
    st = group_stats(per_prompt, one, 1, ddof=ddof)
    return st.zscore(per_prompt, eps)


def blend_weight(
    entropy_rows: Tensor,
    rewards: Tensor,
    local: Tensor,
    *,
    mode: str = "only-soft",
    k: float = 5.0,
    b: float = 1.0,
) -> Tensor:
    """Per-row weight w of the local loss (the global loss gets 1 − w), float64 (B,).

    w_q = sigmoid(k·(H_q − b)); the mode multiplies it by a row mask: ``soft-with-zero``
    1[r_i ≠ 0] (wrong responses use the global loss only; the release default),
    ``soft-with-forced`` 1[A^loc_i ≠ 0] (homogeneous groups use the global loss only); the
    ``only-zero`` / ``only-forced`` modes use the masks alone; ``only-global`` w = 0;
    ``no-global`` w = 1; ``only-soft`` and ``only-soft-with-coef`` w_q. The masks test r ≠ 0
    literally, as the code does (0/1 rewards); with ±1 rewards every row counts as "right".
    """
    if mode not in BLEND_MODES:
        raise ValueError(f"copo: mode={mode!r}; choose one of {BLEND_MODES}")
    soft = torch.sigmoid(k * (entropy_rows - b))
    right = (rewards != 0).to(torch.float64)
    forced = (local != 0).to(torch.float64)
    if mode in ("only-soft", "only-soft-with-coef"):
        return soft
    if mode == "soft-with-zero":
        return soft * right
    if mode == "soft-with-forced":
        return soft * forced
    if mode == "only-zero":
        return right
    if mode == "only-forced":
        return forced
    if mode == "only-global":
        return torch.zeros_like(soft)
    return torch.ones_like(soft)  # no-global


@dataclass(frozen=True)
class CopoTerms:
    """Per-row COPO quantities (float64, (B,)): the local and global advantages, the local-loss
    weight w, the answer entropy H of the row's prompt, and the global-loss coefficient."""

    local: Tensor
    global_: Tensor
    weight: Tensor
    entropy: Tensor
    global_coef: float

    @property
    def effective(self) -> Tensor:
        """(1 − w)·coef·A^glob + w·A^loc: the advantage the blended loss uses inside the clip range."""
        return (1.0 - self.weight) * self.global_coef * self.global_ + self.weight * self.local


def copo_terms(
    batch: Rollouts,
    *,
    mode: str = "only-soft",
    k: float = 5.0,
    b: float = 1.0,
    reward_coef: bool = False,
    global_loss_coef: float = 1.0,
    eps: float = 1e-6,
    ddof: int = 1,
    singleton: str = "zero",
) -> CopoTerms:
    """The local advantage, global advantage and blend weight of every row (see the module doc)."""
    if batch.answer is None:
        raise ValueError(
            "copo: needs the batch field 'answer' (one int64 id per extracted final answer); build it "
            "with grouprl.rewards.copo.answer_ids(texts) and pass Rollouts(answer=...)."
        )
    if not (math.isfinite(k) and math.isfinite(b)):
        raise ValueError(f"copo: the gate needs finite k and b, got k={k!r}, b={b!r}.")
    ids, ng = batch.group, batch.num_groups
    st = group_stats(batch.rewards, ids, ng, ddof=ddof)
    local = apply_singleton(st.zscore(batch.rewards, eps), st, batch.rewards, singleton, "copo")
    ent = answer_entropy(batch.answer, ids, ng)
    glob = global_advantage(global_reward(batch.rewards, ids, ng, ent, reward_coef=reward_coef), eps=eps, ddof=ddof)
    w = blend_weight(ent[ids], batch.rewards.to(torch.float64), local, mode=mode, k=k, b=b)
    coef = float(global_loss_coef) if mode == "only-soft-with-coef" else 1.0
    return CopoTerms(local=local, global_=glob[ids], weight=w, entropy=ent[ids], global_coef=coef)


@estimator(
    "copo",
    needs=("rewards", "group", "mask", "answer"),
    paper="COPO: Consistency-Aware Policy Optimization, arXiv:2508.04138",
    example=_EXAMPLE,
)
def copo(
    batch: Rollouts,
    *,
    mode: str = "only-soft",
    k: float = 5.0,
    b: float = 1.0,
    reward_coef: bool = False,
    global_loss_coef: float = 1.0,
    eps: float = 1e-6,
    ddof: int = 1,
    singleton: str = "zero",
) -> Tensor:
    """COPO effective advantage: (1 − w)·A^glob_q + w·A^loc_i.

    A^loc_i = (r_i − mean r)/(std r + ε) within the group (ddof 1);
    H_q = −Σ_a p_a log₂ p_a over the group's extracted answers (exact id equality);
    R^glob_q = mean(r)·c_q, c_q = 1 − λ_n H_q (λ_n = (1 − 1/n)/log₂ n) if ``reward_coef``, else 1;
    A^glob_q = (R^glob_q − mean_q' R^glob)/(std_q' R^glob + ε) across the batch's prompts;
    w = sigmoid(k·(H_q − b)), times the ``mode``'s row mask (``blend_weight``).

    The paper's loss blends two clipped surrogates, ℓ = (1 − w)·ℓ^glob + w·ℓ^loc (see
    ``grouprl.losses.copo``); this effective advantage equals it while ρ is inside the clip range.
    Defaults: ``mode="only-soft"`` (*proposed reading*: the clean form of the paper's mechanism;
    the release script uses ``"soft-with-zero"``), k = 5, b = 1 (release script; the yaml has
    k = 1, b = 1, the function signature k = 1, b = 0.5). A single-prompt batch gets A^glob = 0
    (the code gives NaN). A group of one: A^loc = 0 by default, ``singleton="raw"`` gives the
    code's A^loc = r; its H = 0, so w = sigmoid(−k·b).
    """
    return copo_terms(
        batch, mode=mode, k=k, b=b, reward_coef=reward_coef, global_loss_coef=global_loss_coef,
        eps=eps, ddof=ddof, singleton=singleton,
    ).effective


@estimator(
    "copo_global",
    needs=("rewards", "group", "mask"),
    paper="COPO (global advantage), arXiv:2508.04138",
    example={k: v for k, v in _EXAMPLE.items() if k != "answer"},
)
def copo_global(batch: Rollouts, *, reward_coef: bool = False, eps: float = 1e-6, ddof: int = 1) -> Tensor:
    """COPO's global advantage alone: A^glob_q = (R^glob_q − mean R^glob)/(std R^glob + ε) across
    the prompts of the batch, R^glob_q = group accuracy (× c_q with ``reward_coef``, which needs
    the batch field ``answer``). The same for every response of prompt q; 0 for a one-prompt batch.
    """
    ids, ng = batch.group, batch.num_groups
    ent = None
    if reward_coef:
        if batch.answer is None:
            raise ValueError("copo_global: reward_coef=True needs the batch field 'answer'; pass Rollouts(answer=...).")
        ent = answer_entropy(batch.answer, ids, ng)
    return global_advantage(global_reward(batch.rewards, ids, ng, ent, reward_coef=reward_coef), eps=eps, ddof=ddof)[ids]

