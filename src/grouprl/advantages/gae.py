"""Critic-based GAE and critic-free REINFORCE++: token-level discounted estimators.

Both run the backward recurrence over each row's trained tokens without a Python loop over time
(see ``_returns``): masked positions inside a response are skipped (the next value and the running
advantage are carried through them), as verl does for observation spans of agent turns.
"""

from __future__ import annotations

from torch import Tensor

from ..core import Rollouts
from ._returns import check_discount, discounted_advantages
from .registry import estimator

__all__ = ["gae", "gae_with_returns", "reinforce_pp"]


def gae_with_returns(
    batch: Rollouts, *, gamma: float = 1.0, lam: float = 1.0, whiten: bool = True
) -> tuple[Tensor, Tensor]:
    """GAE advantages and the critic's regression targets, float32 (B, T), 0 on masked tokens.

    Returns ``(advantages, returns)`` with returns = A + V computed *before* whitening (verl's
    ``compute_gae_advantage_return``); ``advantages`` are whitened unless ``whiten=False``.
    """
    adv, ret = _gae(batch, gamma, lam, whiten, with_returns=True)
    assert ret is not None
    return adv, ret


def _rewards(batch: Rollouts) -> dict:
    if batch.token_rewards is not None:
        return {"token_rewards": batch.token_rewards}
    return {"rewards": batch.rewards}


def _gae(batch: Rollouts, gamma: float, lam: float, whiten: bool, with_returns: bool):
    if batch.values is None:
        raise ValueError(
            "gae: the batch has no values; build Rollouts with values=... (B, T) from the critic."
        )
    gamma = check_discount("gamma", gamma, "gae")
    lam = check_discount("lam", lam, "gae")
    return discounted_advantages(
        batch.mask,
        gamma=gamma,
        lam=lam,
        values=batch.values,
        whiten=whiten,
        with_returns=with_returns,
        **_rewards(batch),
    )


@estimator(
    "gae",
    needs=("rewards", "group", "mask", "values"),
    paper="High-Dimensional Continuous Control Using Generalized Advantage Estimation, "
    "arXiv:1506.02438",
    level="token",
    masks_output=True,  # tests/test_properties.py::test_masked_tokens_are_exactly_zero
    example={
        "rewards": [1.0, 0.0],
        "group": [0, 1],
        "mask": [[1, 1, 1], [1, 0, 1]],
        "values": [[0.5, 0.6, 0.8], [0.3, 0.0, 0.2]],
        "kwargs": {"gamma": 0.99, "lam": 0.95, "whiten": False},
    },
)
def gae(batch: Rollouts, *, gamma: float = 1.0, lam: float = 1.0, whiten: bool = True) -> Tensor:
    """Generalised Advantage Estimation over the response tokens.

    δ_t = r_t + γ V_{t+1} − V_t,  A_t = Σ_{l≥0} (γλ)^l δ_{t+l} = δ_t + γλ A_{t+1},

    over each row's trained tokens (t+1 = the next trained token; V = 0 after the last). Token
    rewards r_t are ``token_rewards`` if the batch has them, else the scalar reward on the row's
    last trained token (rewards on masked tokens are ignored). Then batch whitening over all
    trained tokens, (A − mean)/sqrt(var + 1e-8) with the unbiased variance (``whiten=False`` to
    skip). Defaults γ = λ = 1 as verl's ``AlgoConfig``. The critic targets (A + V before whitening)
    come from ``gae_with_returns``. The group labels are not used.
    """
    return _gae(batch, gamma, lam, whiten, with_returns=False)[0]


@estimator(
    "reinforce_pp",
    paper="REINFORCE++: Stabilizing Critic-Free Policy Optimization with Global Advantage "
    "Normalization, arXiv:2501.03262",
    level="token",
    masks_output=True,  # tests/test_properties.py::test_masked_tokens_are_exactly_zero
    example={
        "rewards": [1.0, 0.0, 1.0],
        "group": [0, 0, 1],
        "mask": [[1, 1, 1], [1, 1, 0], [1, 0, 1]],
        "kwargs": {"gamma": 0.9},
    },
)
def reinforce_pp(batch: Rollouts, *, gamma: float = 1.0, whiten: bool = True) -> Tensor:
    """REINFORCE++: the token's discounted reward-to-go, normalised over the whole batch.

    G_t = r_t + γ G_{t+1} over each row's trained tokens (masked tokens carry G through),
    A_t = (G_t − mean_B(G)) / sqrt(var_B(G) + 1e-8) over all trained tokens of the batch
    (verl's ``reinforce_plus_plus``; ``whiten=False`` returns G). Token rewards as in ``gae``; in
    verl they include the in-reward KL penalty, which the caller adds to ``token_rewards``.
    """
    gamma = check_discount("gamma", gamma, "reinforce_pp")
    return discounted_advantages(batch.mask, gamma=gamma, whiten=whiten, **_rewards(batch))[0]
