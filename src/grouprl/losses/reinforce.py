"""Ratio-free policy-gradient losses: GPG (plain REINFORCE on group advantages) and DRO
(REINFORCE with a quadratic log-ratio penalty)."""

from __future__ import annotations

from torch import Tensor

from .registry import register_loss

__all__ = ["gpg", "dro"]


@register_loss(
    "gpg",
    paper="GPG: A Simple and Strong Reinforcement Learning Baseline for Model Reasoning, arXiv:2504.02546",
    example={
        "logprobs": [[-0.5, -2.0], [-1.0, -0.1]],
        "old_logprobs": [[-0.5, -2.0], [-1.0, -0.1]],
        "advantages": [[1.0, 1.0], [-0.5, -0.5]],
        "mask": [[1, 1], [1, 0]],
        "kwargs": {},
    },
)
def gpg(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """GPG: the plain policy-gradient surrogate, no ratio and no clip.

    ℓ = −A·log π_θ, so ∂ℓ/∂log π_θ = −A. GPG's other change — the advantage rescaled by
    α = B / #(rows with a non-zero reward) — belongs to the advantage estimator, not to this loss.
    ``old_logprobs`` is unused (only the ``ppo_kl`` metric reads it).
    """
    return -advantages * logprobs, {}


@register_loss(
    "dro",
    paper="Offline Regularised RL for LLM Alignment (DRO), arXiv:2405.19107",
    example={
        "logprobs": [[-0.8, -1.5]],
        "old_logprobs": [[-1.0, -1.0]],
        "advantages": [[1.0, -1.0]],
        "mask": [[1, 1]],
        "kwargs": {"beta": 0.1},
    },
)
def dro(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    beta: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """DRO (Direct Reward Optimization): policy gradient with a squared log-ratio regulariser.

    ℓ = −(A·log π_θ − ½·β·(log π_θ − log π_old)²), as verl's ``dro`` policy loss: the
    policy-gradient term plus a squared log-ratio penalty that keeps π_θ near the sampling policy.
    The paper's full offline objective (a squared regression loss with a learned value function)
    is not implemented here. ``beta`` has no default, as in verl (``dro_beta`` must be set > 0).
    """
    if beta is None or beta <= 0:
        raise ValueError(
            f"dro needs beta > 0 (the strength of the squared log-ratio penalty, e.g. beta=0.1); got beta={beta}"
        )
    d = logprobs - old_logprobs
    return -(advantages * logprobs - 0.5 * beta * d.square()), {}
