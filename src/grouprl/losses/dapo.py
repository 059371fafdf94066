"""DAPO's clip-higher, arXiv:2503.14476 §3.1: the registered preset ``dapo_clip``, an alias of
``ppo_clip`` with DAPO's clip ranges (recipe ``dapo`` in ``grouprl.recipes`` sets the same values)."""

from __future__ import annotations

import math

from . import clipping  # noqa: F401  (registers ppo_clip, the loss this preset aliases)
from .registry import register_preset

__all__ = ["dapo_clip"]

_L = math.log

dapo_clip = register_preset(
    "dapo_clip",
    "ppo_clip",
    paper="DAPO: An Open-Source LLM Reinforcement Learning System at Scale, arXiv:2503.14476",
    doc="""DAPO clip-higher: ``ppo_clip`` with decoupled ranges ε_low = 0.2, ε_high = 0.28 (§3.1).

    ℓ = −min(ρ·A, clip(ρ, 1 − 0.2, 1 + 0.28)·A); the looser upper bound lets low-probability
    tokens with A > 0 grow (against entropy collapse). Use ``agg="token-mean"`` (DAPO's token-level
    loss) and no KL, or ``method=dapo``. verl adds a dual clip (``clip_ratio_c=3.0``), off here as
    in the paper. Every ``ppo_clip`` keyword overrides these defaults.
    """,
    example={
        # ratios 1.5 and 0.7: A = +1 is capped at 1.28, A = −1 floored at 0.8
        "logprobs": [[_L(1.5), _L(0.7)], [_L(1.5), _L(0.7)]],
        "old_logprobs": [[0.0, 0.0], [0.0, 0.0]],
        "advantages": [[1.0, 1.0], [-1.0, -1.0]],
        "mask": [[1, 1], [1, 1]],
        "kwargs": {},
    },
    module=__name__,
    eps_low=0.2,
    eps_high=0.28,
    clip_ratio_c=None,
)
