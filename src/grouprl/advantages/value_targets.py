"""The critic's regression targets: which returns a value model is fitted to, on which tokens.

    R_t = Â_t + V(s_t)   (GAE(γ, λ) returns, before any whitening; λ = 1: Monte-Carlo returns)

GAE, arXiv:1506.02438 (Section 3 for Â, Section 5 for fitting V to such targets), as verl's
``compute_gae_advantage_return``. T-PPO (arXiv:2506.15050) trains the critic on finished responses
only, with Monte-Carlo targets, and bootstraps the truncated ones with EGAE: ``finished_only=True``
(the token filter is a **proposed reading**; the paper's equations are not public).
"""

from __future__ import annotations

from torch import Tensor

from ..core import Rollouts
from .egae import egae_value_mask, egae_with_returns
from .gae import gae_with_returns

__all__ = ["value_targets"]


def value_targets(batch: Rollouts, *, gamma: float = 1.0, lam: float = 1.0,
                  finished_only: bool = False) -> tuple[Tensor, Tensor]:
    """``(returns, value_mask)``: float32 (B, T) targets R_t = Â_t + V(s_t) and the bool (B, T)
    tokens to regress on, from ``batch.values`` (B, T) and the rewards.

    ``finished_only=False``: GAE returns on every trained token (``batch.mask``). ``finished_only=True``
    (T-PPO): EGAE returns, on the tokens of rows that are not ``batch.truncated`` only.
    """
    if batch.values is None:
        raise ValueError("value_targets: the batch has no values; pass the critic's V(s_t) (B, T) as values=...")
    if finished_only:
        if batch.truncated is None:
            raise ValueError("value_targets(finished_only=True): the batch has no truncated flags; pass truncated=... "
                             "(B,) bool, True for responses cut before EOS.")
        _, returns = egae_with_returns(batch, gamma=gamma, lam=lam)
        return returns, egae_value_mask(batch.mask, batch.truncated)
    _, returns = gae_with_returns(batch, gamma=gamma, lam=lam, whiten=False)
    return returns, batch.mask
