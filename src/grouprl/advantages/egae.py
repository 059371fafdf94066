"""T-PPO's Extended GAE (EGAE) for incomplete responses, arXiv:2506.15050.

The EGAE equations are a **proposed reading** (the paper's equations are not public; this library
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

__all__ = ["egae", "egae_with_returns", "egae_value_mask", "length_adaptive_lam"]


def length_adaptive_lam(lengths: Tensor, alpha: float) -> Tensor:
    """λ_policy = 1 − 1/(α·L) per row (float64 (B,)), the length-adaptive λ that T-PPO takes from
    VAPO (arXiv:2504.05118, "Length-Adaptive GAE"; α = 0.05), L = the row's number of response
    tokens so far (for an in-flight row, the tokens generated up to this window: a proposed reading).

    The formula is below 0 when α·L < 1 (L < 20 tokens at α = 0.05) and GAE needs λ in [0, 1]:
    such rows get λ = 0 (one-step TD) — a proposed reading, the paper's responses being thousands of
    tokens long. A row without tokens gets 0 (its λ is never used).
    """
    alpha = float(alpha)
    if not alpha > 0:
        raise ValueError(f"egae: lam_alpha={alpha}; the length-adaptive λ = 1 − 1/(α·L) needs α > 0 (T-PPO: 0.05).")
    L = lengths.to(torch.float64)
    return torch.where(L > 0, (1.0 - 1.0 / (alpha * L.clamp_min(1.0))).clamp(0.0, 1.0), torch.zeros((), dtype=torch.float64))


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


def _egae(batch: Rollouts, gamma: float, lam: float, whiten: bool, with_returns: bool, lam_alpha: float | None = None):
    for name in ("values", "truncated"):
        if not batch.has(name):
            raise ValueError(
                f"egae: the batch has no {name}; build Rollouts with {name}=... "
                + ("(B, T) from the critic." if name == "values" else "(B,) bool: True where the response has no EOS yet.")
            )
    gamma = check_discount("gamma", gamma, "egae")
    lam_rows: float | Tensor = check_discount("lam", lam, "egae")
    if lam_alpha is not None:
        lam_rows = length_adaptive_lam(batch.mask.sum(dim=1), lam_alpha).to(batch.mask.device)
    return discounted_advantages(
        batch.mask, gamma=gamma, lam=lam_rows, values=batch.values, token_rewards=_stream(batch, gamma),
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
    traits=("bootstraps_truncated",),
)
def egae(batch: Rollouts, *, gamma: float = 1.0, lam: float = 0.95, whiten: bool = False,
         lam_alpha: float | None = None) -> Tensor:
    """Extended GAE: GAE truncated at the current generation point (proposed reading).

    For a response cut after l tokens without EOS (``truncated``):
    δ_t = r_t + γ V(s_{t+1}) − V(s_t) for t < l − 1, and at the boundary V(s_l) := V(s_{l−1}), so
    with γ = 1 and no intermediate reward δ_{l−1} = 0;  Â_t = Σ_{k=0}^{l−1−t} (γλ)^k δ_{t+k}.
    Its (unknown) outcome reward is not used. Finished responses get ordinary GAE with the reward
    at EOS and terminal value 0, so on complete responses EGAE equals ``gae``. γ = 1, λ = 0.95
    (T-PPO's fixed λ_policy, unverified). ``lam_alpha`` = α switches to the length-adaptive
    λ_policy = 1 − 1/(α·L) per row (``length_adaptive_lam``; T-PPO, arXiv:2506.15050, via VAPO, arXiv:2504.05118, α = 0.05), in
    place of ``lam``. ``whiten`` batch-whitens as ``gae`` (off by default).
    """
    return _egae(batch, gamma, lam, whiten, with_returns=False, lam_alpha=lam_alpha)[0]


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
