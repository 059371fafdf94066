"""DAPO's advantage, arXiv:2503.14476: the GRPO advantage on ±1 rewards.

DAPO's other pieces: clip-higher (``grouprl.losses`` ``dapo_clip`` = ``ppo_clip`` with ε_low 0.2,
ε_high 0.28, aggregated with ``token-mean``), overlong reward shaping and filtering
(``grouprl.rewards.overlong``) and dynamic sampling (``grouprl.sampling``).
"""

from __future__ import annotations

from torch import Tensor

from ..core import Rollouts
from .grpo import grpo
from .registry import estimator

__all__ = ["dapo"]


@estimator(
    "dapo",
    paper="DAPO: An Open-Source LLM Reinforcement Learning System at Scale, arXiv:2503.14476",
    example={"rewards": [1, -1, -1, -1], "group": [0, 0, 0, 0]},
)
def dapo(batch: Rollouts, *, eps: float = 1e-6, ddof: int = 1, singleton: str = "zero") -> Tensor:
    """DAPO advantage: GRPO's group standardisation, kept with its std (unlike Dr. GRPO).

    R_i = +1 if the answer is equivalent to the ground truth, −1 otherwise;
    A_i = (R_i − mean_g R) / (std_g R + ε)  (ddof 1, as verl), e.g. [1,−1,−1,−1] → [1.5, −0.5, −0.5, −0.5].
    Dynamic sampling removes the constant groups (A = 0 here) before the update.
    """
    return grpo(batch, scale="group", eps=eps, ddof=ddof, singleton=singleton)
