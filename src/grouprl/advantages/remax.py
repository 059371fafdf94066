"""ReMax: REINFORCE with the greedy response's reward as baseline."""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import Rollouts, reverse_discounted_cumsum
from .registry import estimator


@estimator(
    "remax",
    needs=("rewards", "group", "mask", "reward_baselines"),
    paper="ReMax: A Simple, Effective, and Efficient Reinforcement Learning Method for Aligning "
    "Large Language Models, arXiv:2310.10505",
    level="token",
    example={"rewards": [1.0, 0.0, 0.5], "group": [0, 0, 0], "reward_baselines": [0.5, 0.5, 0.5]},
)
def remax(batch: Rollouts) -> Tensor:
    """ReMax: the sampled response's return minus the reward of the greedy response to the prompt.

    A_{i,t} = Σ_{s≥t} r_{i,s} − b_i,  b_i = r(greedy response to prompt i) (``reward_baselines``).

    Token rewards are ``token_rewards`` when the batch has them (the return-to-go is the plain
    suffix sum over trained tokens, γ = 1, as verl), else the scalar reward, for which the
    return-to-go is r_i on every token and A_i = r_i − b_i.
    """
    b = batch.reward_baselines.to(torch.float64)
    if batch.token_rewards is None:
        return batch.rewards.to(torch.float64) - b
    m = batch.mask
    ret = reverse_discounted_cumsum(batch.token_rewards.to(torch.float64) * m, 1.0)
    return ret - b.unsqueeze(1)
