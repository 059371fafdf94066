"""NGRPO's asymmetric clipping, arXiv:2509.18851 (settings of the reference code): the registered
preset ``ngrpo_clip``, an alias of ``ppo_clip`` (recipe ``ngrpo`` in ``grouprl.recipes`` sets the same values)."""

from __future__ import annotations

import math

from . import clipping  # noqa: F401  (registers ppo_clip, the loss this preset aliases)
from .registry import register_preset

__all__ = ["ngrpo_clip"]

_L = math.log

ngrpo_clip = register_preset(
    "ngrpo_clip",
    "ppo_clip",
    paper="NGRPO: Negative-enhanced Group Relative Policy Optimization, arXiv:2509.18851",
    doc="""NGRPO asymmetric clipping: ``ppo_clip`` with ε_low = 0.16, ε_high = 0.24 and no dual clip.

    ℓ = −min(ρ·A, clip(ρ, 1 − 0.16, 1 + 0.24)·A): positive samples (A > 0) may move up to
    ρ = 1.24 (looser), negative ones (A < 0) only down to ρ = 0.84 (stricter). The reference code
    has no dual clip (``clip_ratio_c=None``) and aggregates with ``token-mean``; ``method=ngrpo``
    sets all of it. Every ``ppo_clip`` keyword overrides these defaults.
    """,
    example={
        # ratios 1.3 and 0.8; A = +1 is capped at 1.24, A = −1 floored at 0.84
        "logprobs": [[_L(1.3), _L(0.8)], [_L(1.3), _L(0.8)]],
        "old_logprobs": [[0.0, 0.0], [0.0, 0.0]],
        "advantages": [[1.0, 1.0], [-1.0, -1.0]],
        "mask": [[1, 1], [1, 1]],
        "kwargs": {},
    },
    module=__name__,
    eps_low=0.16,
    eps_high=0.24,
    clip_ratio_c=None,
)
