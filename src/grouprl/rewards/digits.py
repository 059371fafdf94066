"""A second user group's reward for MaxMin-RLHF on the arithmetic tasks (arXiv:2402.08925).

MaxMin needs K ≥ 2 reward components, and a built-in task has one verifier. ``low_digit_share`` is
the utility of group A of examples/maxmin_population.py: the share of the answer's characters that
are the digits 0–4 (0 for an empty answer). The arena's ``maxmin`` preset trains on
``reward_components=[task, grouprl.rewards.digits:low_digit_share]``: each step, MaxMin follows the
worse-off of "correct answers" and "answers in low digits".
"""

from __future__ import annotations

from typing import Any

__all__ = ["low_digit_share"]

_LOW = frozenset("01234")


def low_digit_share(example: Any, completion: str) -> float:
    """Share of ``completion``'s characters in 0–4 (0.0 when empty); a verifier ``(example, text) -> float``."""
    if not completion:
        return 0.0
    return sum(c in _LOW for c in completion) / len(completion)
