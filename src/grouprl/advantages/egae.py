"""T-PPO's Extended GAE (EGAE) for incomplete responses (tppo-egae.md), arXiv:2506.15050.

The EGAE equations are a **proposed reading** (the paper's equations are not public; the spec
reconstructs them from the abstract and public reviews): GAE whose sum stops at the current
generation point, with the bootstrap V(s_l) := V(s_{l−1}) at the truncation boundary.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import Rollouts
from ._masks import float_mask
from ._returns import check_discount, discounted_advantages
from .registry import estimator

__all__ = ["egae", "egae_with_returns", "egae_value_mask"]


def _stream(batch: Rollouts, gamma: float) -> Tensor:
    """Token rewards of EGAE (B, T): the outcome reward on the last token of finished rows (or the
    given ``token_rewards``), plus γ·V(s_{l−1}) on the last token of truncated rows (the bootstrap
    V(s_l) := V(s_{l−1}): δ_{l−1} = r_{l−1} + γ V_{l−1} − V_{l−1})."""
    mask = batch.mask
    B, T = mask.shape
    w = float_mask(mask)
    has = mask.any(dim=1)
    last = ((T - 1) - mask.flip(1).to(torch.uint8).argmax(dim=1)).unsqueeze(1)
    truncated = batch.truncated.to(torch.bool) & has
    assert batch.values is not None
    v_last = batch.values.to(torch.float32).gather(1, last).squeeze(1)
    if batch.token_rewards is not None:
        out = batch.token_rewards.to(torch.float32) * w
    else:
        out = torch.zeros(B, T, dtype=torch.float32, device=mask.device)
        r = batch.rewards.to(torch.float32) * (has & ~truncated)
        out.scatter_add_(1, last, r.unsqueeze(1))
    boot = gamma * v_last * truncated
    return out.scatter_add_(1, last, boot.unsqueeze(1))


def _egae(batch: Rollouts, gamma: float, lam: float, whiten: bool, with_returns: bool):
    for name in ("values", "truncated"):
        if not batch.has(name):
            raise ValueError(
                f"egae: the batch has no {name}; build Rollouts with {name}=... "
                + ("(B, T) from the critic." if name == "values" else "(B,) bool: True where the response has no EOS yet.")
            )
    gamma = check_discount("gamma", gamma, "egae")
    lam = check_discount("lam", lam, "egae")
    return discounted_advantages(
        batch.mask, gamma=gamma, lam=lam, values=batch.values, token_rewards=_stream(batch, gamma),
        whiten=whiten, with_returns=with_returns,
    )


@estimator(
    "egae",
    needs=("rewards", "group", "mask", "values", "truncated"),
    paper="Truncated Proximal Policy Optimization (T-PPO), arXiv:2506.15050",
    level="token",
    example={
        "rewards": [0.0, 1.0],
        "group": [0, 1],
        "mask": [[1, 1, 1, 1], [1, 1, 1, 1]],
        "values": [[0.2, 0.3, 0.5, 0.4], [0.2, 0.3, 0.5, 0.4]],
        "truncated": [True, False],
        "kwargs": {"gamma": 1.0, "lam": 0.95, "whiten": False},
    },
)
def egae(batch: Rollouts, *, gamma: float = 1.0, lam: float = 0.95, whiten: bool = False) -> Tensor:
    """Extended GAE: GAE truncated at the current generation point (proposed reading).

    For a response cut after l tokens without EOS (``truncated``):
    δ_t = r_t + γ V(s_{t+1}) − V(s_t) for t < l − 1, and at the boundary V(s_l) := V(s_{l−1}), so
    with γ = 1 and no intermediate reward δ_{l−1} = 0;  Â_t = Σ_{k=0}^{l−1−t} (γλ)^k δ_{t+k}.
    Its (unknown) outcome reward is not used. Finished responses get ordinary GAE with the reward
    at EOS and terminal value 0, so on complete responses EGAE equals ``gae``. γ = 1, λ = 0.95
    (the spec's fixed λ_policy; the length-adaptive λ = 1 − 1/(αL) is not implemented).
    ``whiten`` batch-whitens as ``gae`` (off by default).
    """
    return _egae(batch, gamma, lam, whiten, with_returns=False)[0]


def egae_with_returns(
    batch: Rollouts, *, gamma: float = 1.0, lam: float = 0.95, whiten: bool = False
) -> tuple[Tensor, Tensor]:
    """EGAE advantages and the critic targets A + V (before whitening), float32 (B, T)."""
    adv, ret = _egae(batch, gamma, lam, whiten, with_returns=True)
    assert ret is not None
    return adv, ret


def egae_value_mask(mask: Tensor, truncated: Tensor) -> Tensor:
    """T-PPO's value-update token filter (proposed reading): the tokens of finished responses only
    (truncated responses have no ground-truth return yet)."""
    return mask.to(torch.bool) & ~truncated.to(torch.bool).unsqueeze(1)
