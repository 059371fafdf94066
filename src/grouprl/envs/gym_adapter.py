"""Adapter for gymnasium's toy-text environments (FrozenLake, Taxi, CliffWalking, Blackjack).

gymnasium is optional and imported only when an adapted environment is built; without it the
constructor raises ``ImportError`` with the install command. The observation text is rendered here
from the discrete state (gymnasium's ANSI rendering marks the agent only with colour codes).
textarena's single-player games have their own adapter (``textarena_env``).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Hashable

from .base import TextEnv, register_env

__all__ = ["GymTextEnv", "GYM_ACTIONS"]

# Action names in the order of each environment's discrete action ids.
GYM_ACTIONS: dict[str, tuple[str, ...]] = {
    "FrozenLake": ("left", "down", "right", "up"),
    "CliffWalking": ("up", "right", "down", "left"),
    "Taxi": ("south", "north", "east", "west", "pickup", "dropoff"),
    "Blackjack": ("stick", "hit"),
}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _gym():
    try:
        import gymnasium
    except ImportError as exc:
        raise ImportError(
            "the gymnasium adapter needs gymnasium: pip install gymnasium (pure Python; it needs "
            "numpy, cloudpickle, farama-notifications and typing-extensions)."
        ) from exc
    return gymnasium


def _family(env_id: str) -> str:
    return next((k for k in GYM_ACTIONS if env_id.startswith(k)), "")


def _frozenlake_text(env, obs: int) -> str:
    desc = env.unwrapped.desc
    ncol = desc.shape[1]
    r, c = divmod(int(obs), ncol)
    rows = []
    for i, row in enumerate(desc):
        cells = [b.decode() for b in row]
        if i == r:
            cells[c] = "A"
        rows.append(" ".join(cells))
    return "\n".join(rows)


def _cliff_text(env, obs: int) -> str:
    nrow, ncol = env.unwrapped.shape
    r, c = divmod(int(obs), ncol)
    rows = []
    for i in range(nrow):
        cells = []
        for j in range(ncol):
            if (i, j) == (r, c):
                cells.append("A")
            elif i == nrow - 1 and j == ncol - 1:
                cells.append("G")
            elif i == nrow - 1 and j > 0:
                cells.append("C")
            else:
                cells.append(".")
        rows.append(" ".join(cells))
    return "\n".join(rows)


_TAXI_LOCS = ("R", "G", "Y", "B")


def _taxi_text(env, obs: int) -> str:
    row, col, pas, dest = env.unwrapped.decode(int(obs))
    grid = [list(line) for line in env.unwrapped.desc.astype(str).tolist()]
    grid[1 + row][2 * col + 1] = "T"
    text = "\n".join("".join(line) for line in grid)
    where = "in the taxi" if pas == 4 else f"at {_TAXI_LOCS[pas]}"
    return f"{text}\nTaxi (T) at row {row}, column {col}. Passenger {where}. Destination {_TAXI_LOCS[dest]}."


def _blackjack_text(env, obs) -> str:
    total, dealer, ace = obs
    return f"Your hand totals {int(total)}{' (usable ace)' if ace else ''}; the dealer shows {int(dealer)}."


_TEXT: dict[str, Callable[[Any, Any], str]] = {
    "FrozenLake": _frozenlake_text,
    "CliffWalking": _cliff_text,
    "Taxi": _taxi_text,
    "Blackjack": _blackjack_text,
}
_PROMPTS = {
    "FrozenLake": "Walk from S to G on the frozen lake (A is you, H are holes; the ice may be slippery).",
    "CliffWalking": "Walk from the bottom-left to G without stepping on the cliff C (A is you).",
    "Taxi": "Drive the taxi to the passenger, pick them up, and drop them off at the destination.",
    "Blackjack": "Play blackjack against the dealer: hit to draw a card, stick to stop.",
}


class GymTextEnv(TextEnv):
    """A gymnasium toy-text environment behind the ``TextEnv`` interface.

    ``state_key()`` is gymnasium's discrete observation (exact). Unknown environment ids work too:
    the observation is gymnasium's ANSI rendering without colour codes plus the raw observation,
    and the actions are the integers 0..n−1. ``make_kwargs`` go to ``gymnasium.make``.
    """

    def __init__(self, env_id: str, *, max_steps: int = 100, invalid_penalty: float = 0.0, **make_kwargs: Any) -> None:
        super().__init__(max_steps=max_steps, invalid_penalty=invalid_penalty)
        gym = _gym()
        self.env_id = env_id
        self.family = _family(env_id)
        if self.family and self.family != "Blackjack":
            make_kwargs.setdefault("render_mode", "ansi")
        self.env = gym.make(env_id, **make_kwargs)
        n = int(self.env.action_space.n)
        self.actions = GYM_ACTIONS.get(self.family, tuple(str(i) for i in range(n)))
        self.name = f"gym:{env_id}"
        self._obs: Any = None

    def _reset(self, seed: int) -> None:
        self._obs, _ = self.env.reset(seed=seed)

    def _step(self, action: str) -> tuple[float, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(self.actions.index(action))
        self._obs = obs
        if truncated:  # gymnasium's own time limit
            self.steps = self.max_steps
        return float(reward), bool(terminated), {"gym_info": info}

    def valid_actions(self) -> list[str]:
        return list(self.actions)

    @property
    def action_prompt(self) -> str:
        acts = ", ".join(f"<action>{a}</action>" for a in self.actions)
        return f"{_PROMPTS.get(self.family, self.env_id)} Answer with one action: {acts}."

    def _observe(self) -> str:
        if self.family:
            return _TEXT[self.family](self.env, self._obs)
        rendered = self.env.render() if self.env.render_mode == "ansi" else ""
        return f"{_ANSI.sub('', rendered or '').strip()}\nObservation: {self._obs}".strip()

    def state_key(self) -> Hashable:
        return (self.env_id, _hashable(self._obs))


def _hashable(obs: Any) -> Hashable:
    if isinstance(obs, (tuple, list)):
        return tuple(_hashable(x) for x in obs)
    if hasattr(obs, "tolist"):  # numpy arrays and scalars
        return _hashable(obs.tolist()) if getattr(obs, "ndim", 0) else obs.item()
    if isinstance(obs, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in obs.items()))
    return obs


def _factory(*env_ids: str):
    """A factory for the first of ``env_ids`` that the installed gymnasium registers (newest first)."""

    def make(**kwargs: Any) -> GymTextEnv:
        registered = _gym().registry
        env_id = next((i for i in env_ids if i in registered), env_ids[0])
        return GymTextEnv(env_id, **kwargs)

    make.__doc__ = f"gymnasium {env_ids[0]} as a text environment (needs gymnasium)."
    return make


register_env("gym")(GymTextEnv)  # any gymnasium id: get_env("gym", env_id="FrozenLake8x8-v1")
register_env("frozenlake")(_factory("FrozenLake-v1"))
register_env("taxi")(_factory("Taxi-v4", "Taxi-v3"))
register_env("cliffwalking")(_factory("CliffWalking-v1", "CliffWalking-v0"))
register_env("blackjack")(_factory("Blackjack-v1"))
