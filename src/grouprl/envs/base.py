"""The text-environment interface (gymnasium style) and the environment registry.

A text environment is reset with a seed and stepped with the model's raw action text:

    obs, info = env.reset(seed=3)
    obs, reward, terminated, truncated, info = env.step("I move <action>left</action>")

* ``info["invalid_action"]`` is True when the text did not parse to a legal action; the state is
  then unchanged, the step still counts toward ``max_steps`` and the reward is ``invalid_penalty``
  (0 by default: estimators such as GiGPO apply their own penalty from the flag).
* ``state_key()`` returns a hashable, canonical description of the current state (default: the
  observation text). Pass these through ``grouprl.advantages.gigpo.state_keys`` once per batch to
  get int64 anchor-state keys. Trajectories reset with the same seed revisit the same states.
* ``action_prompt`` describes the action format; ``valid_actions()`` lists the legal actions now;
  ``parse_action(text)`` extracts one (``None`` if none).
* Multi-agent turn-based games set ``num_agents > 1``; ``current_agent`` is the agent to act, and
  ``info["agent_rewards"]`` holds every agent's reward for the step (the loser of a game learns its
  −1 on the winner's move).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Any, Callable, Hashable

from ..core import Registry

__all__ = ["TextEnv", "ENVS", "register_env", "get_env", "StepResult"]

StepResult = tuple[str, float, bool, bool, dict]
_TAG = re.compile(r"<action>\s*(.*?)\s*</action>", re.IGNORECASE | re.DOTALL)


class TextEnv(ABC):
    """Base class of text environments; subclasses implement ``_reset``, ``_step`` and ``_observe``."""

    name: str = "text-env"
    num_agents: int = 1

    def __init__(self, *, max_steps: int = 20, invalid_penalty: float = 0.0) -> None:
        if max_steps < 1:
            raise ValueError(f"{type(self).__name__}: max_steps={max_steps}; it must be >= 1.")
        self.max_steps = int(max_steps)
        self.invalid_penalty = float(invalid_penalty)
        self.steps = 0
        self.done = True
        self.seed: int | None = None

    # ----------------------------------------------------------------- subclass hooks
    @abstractmethod
    def _reset(self, seed: int) -> None:
        """Set the initial state for ``seed`` (deterministic)."""

    @abstractmethod
    def _step(self, action: str) -> tuple[float, bool, dict]:
        """Apply a legal, canonical ``action``; return (reward, terminated, extra info)."""

    @abstractmethod
    def _observe(self) -> str:
        """The current observation text (no history, no instructions)."""

    @abstractmethod
    def valid_actions(self) -> list[str]:
        """The canonical legal actions in the current state."""

    @property
    @abstractmethod
    def action_prompt(self) -> str:
        """Instructions: what the actions are and how to write one."""

    # ----------------------------------------------------------------- the interface
    @property
    def current_agent(self) -> int:
        return 0

    def reset(self, seed: int | None = None) -> tuple[str, dict]:
        """Start an episode; the same seed gives the same initial state."""
        self.seed = 0 if seed is None else int(seed)
        self.steps = 0
        self.done = False
        self._reset(self.seed)
        return self._observe(), {"seed": self.seed, "agent": self.current_agent}

    def parse_action(self, text: str) -> str | None:
        """The canonical action in ``text``: the content of the last ``<action>…</action>`` tag if
        any, else the last legal action word in the text (case-insensitive); ``None`` if none."""
        legal = {a.lower(): a for a in self.valid_actions()}
        tags = _TAG.findall(text)
        if tags:
            return legal.get(tags[-1].strip().lower())
        best, best_pos = None, -1
        low = text.lower()
        for key, canon in legal.items():
            for m in re.finditer(r"(?<![\w])" + re.escape(key) + r"(?![\w])", low):
                if m.start() > best_pos:
                    best, best_pos = canon, m.start()
        return best

    def step(self, action_text: str) -> StepResult:
        """Act with the model's text; returns (observation, reward, terminated, truncated, info)."""
        if self.done:
            raise RuntimeError(f"{type(self).__name__}.step called on a finished episode; call reset(seed) first.")
        agent = self.current_agent
        action = self.parse_action(action_text)
        self.steps += 1
        if action is None:
            reward, terminated = self.invalid_penalty, False
            info: dict[str, Any] = {"invalid_action": True, "action": None}
            rewards = [0.0] * self.num_agents
            rewards[agent] = reward
            info["agent_rewards"] = rewards
        else:
            reward, terminated, extra = self._step(action)
            info = {"invalid_action": False, "action": action, **extra}
            if "agent_rewards" not in info:
                rewards = [0.0] * self.num_agents
                rewards[agent] = reward
                info["agent_rewards"] = rewards
        info["agent"] = agent
        truncated = not terminated and self.steps >= self.max_steps
        self.done = terminated or truncated
        return self._observe(), float(reward), bool(terminated), bool(truncated), info

    def state_key(self) -> Hashable:
        """A hashable canonical description of the current state (default: the observation text)."""
        return self._observe()

    def render(self) -> str:
        return self._observe()


ENVS: Registry[Callable[..., TextEnv]] = Registry("environment")


def register_env(name: str):
    """Register an environment factory (a class or a function returning a ``TextEnv``)."""

    def deco(factory):
        ENVS.add(name, factory)
        return factory

    return deco


def get_env(name: str, **kwargs: Any) -> TextEnv:
    """A new environment by registered name, e.g. ``get_env("gridworld", max_steps=15)``."""
    return ENVS[name](**kwargs)
