"""Adapter for textarena's single-player games (GuessTheNumber, TowerOfHanoi, Minesweeper, ...).

``get_env("textarena", env_id="GuessTheNumber-v0")`` wraps one textarena game behind ``TextEnv``.
textarena is optional and imported only here, when such an environment is built; without it the
constructor raises ``ImportError`` with the install command. ``import textarena`` needs nltk and
websockets besides textarena itself (``pip install --no-deps textarena nltk websockets`` is enough
for the offline games; nltk's own requirements click, regex and tqdm are usually present already).
Games that look words up in nltk's corpora (Wordle, Hangman, WordLadder, ...) download data at run
time and do not work offline; board and number games (GuessTheNumber, TowerOfHanoi, Minesweeper,
FrozenLake, Mastermind, LightsOut, FifteenPuzzle, Sudoku, ...) do.

How textarena's interface maps onto ``TextEnv``:

* the game is made without textarena's observation wrappers (the ``-raw`` variant); the first
  message of kind PROMPT (the rules) becomes ``action_prompt`` (known after the first reset), and each turn's observation is the
  game's messages since the last action (the echo of the action itself left out);
* textarena parses the action text itself: ``parse_action`` passes the text on (the content of the
  last ``<action>…</action>`` tag when there is one), and ``valid_actions()`` is empty;
* a move textarena rejects (it calls ``state.set_invalid_move``) is flagged ``invalid_action``;
* the reward comes from textarena's ``close()`` when the game ends (0 before); ``success`` is a
  final reward >= 1 (textarena's win; some games give partial credit below 1);
* textarena seeds Python's global ``random`` in ``reset`` and draws from it during play; the adapter
  gives every environment its own saved ``random`` state and restores the caller's around each
  call, so environments stepped in lock-step stay deterministic under their seeds;
* ``state_key()`` is the transcript of the episode so far (actions and messages): textarena's
  messages are updates rather than full states, so the transcript is the canonical state that two
  episodes of the same seed share exactly when they have played the same moves.
"""

from __future__ import annotations

import contextlib
import random
import re
from typing import Any, Iterator

from .base import TextEnv, register_env

__all__ = ["TextArenaEnv"]

_TAG = re.compile(r"<action>\s*(.*?)\s*</action>", re.IGNORECASE | re.DOTALL)


def _textarena():
    try:
        import textarena
    except ImportError as exc:
        raise ImportError(
            "the textarena adapter needs textarena: pip install 'grouprl[textarena]', or offline-only "
            f"`pip install --no-deps textarena nltk websockets` (import failed: {exc})."
        ) from exc
    return textarena


@register_env("textarena")
class TextArenaEnv(TextEnv):
    """One single-player textarena game behind the ``TextEnv`` interface (see the module docstring).

    ``env_id`` is a textarena id such as ``"GuessTheNumber-v0"`` or ``"TowerOfHanoi-v0"``;
    ``make_kwargs`` go to ``textarena.make`` (e.g. ``max_turns``). ``max_steps`` caps the episode
    on our side too (textarena's own turn limit ends it earlier when it is smaller).
    """

    def __init__(self, env_id: str = "GuessTheNumber-v0", *, max_steps: int = 50, invalid_penalty: float = 0.0,
                 **make_kwargs: Any) -> None:
        super().__init__(max_steps=max_steps, invalid_penalty=invalid_penalty)
        ta = _textarena()
        registry = ta.envs.registration.ENV_REGISTRY
        raw = env_id if env_id.endswith("-raw") else f"{env_id}-raw"
        if env_id not in registry and raw not in registry:
            close = sorted(k for k in registry if k.split("-")[0].lower() == env_id.split("-")[0].lower())
            raise ValueError(f"textarena: unknown env_id {env_id!r}" + (f"; did you mean {close[0]!r}?" if close else
                             "; see textarena.envs.registration.ENV_REGISTRY for the ids."))
        with self._private_random(random.getstate()):
            self.env = ta.make(raw if raw in registry else env_id, **make_kwargs)
        self.env_id = env_id
        self.name = f"textarena:{env_id}"
        self._rng_state = random.Random(0).getstate()
        self._rules = ""
        self._obs = ""
        self._trace: list[str] = []
        self._invalid = False

    # ------------------------------------------------------------------ private random streams
    @contextlib.contextmanager
    def _private_random(self, state: Any) -> Iterator[None]:
        """Run textarena code on ``state`` of Python's global ``random``; keep the state it ends
        in (``self._rng_state``) and give the caller back its own."""
        outer = random.getstate()
        random.setstate(state)
        try:
            yield
        finally:
            self._rng_state = random.getstate()
            random.setstate(outer)

    # ------------------------------------------------------------------ messages
    def _messages(self) -> str:
        """The game's messages since the last action, as text; the rules go to ``action_prompt``."""
        _pid, obs = self.env.get_observation()
        if isinstance(obs, str):  # a wrapped env that formats its own observation
            return obs.strip()
        from textarena import ObservationType

        parts = []
        for _from, message, kind in obs:
            if kind == ObservationType.PROMPT:
                self._rules = str(message).strip()
            elif kind != ObservationType.PLAYER_ACTION:
                parts.append(str(message).strip())
        return "\n".join(p for p in parts if p)

    def _flag_invalid(self) -> None:
        """Wrap the game state's ``set_invalid_move`` so that a rejected move is seen here."""
        state = getattr(self.env, "state", None)
        original = getattr(state, "set_invalid_move", None)
        if original is None:
            return

        def flagged(*args: Any, **kwargs: Any) -> Any:
            self._invalid = True
            return original(*args, **kwargs)

        state.set_invalid_move = flagged

    # ------------------------------------------------------------------ TextEnv hooks
    def _reset(self, seed: int) -> None:
        with self._private_random(random.getstate()):
            try:
                self.env.reset(num_players=1, seed=seed)  # textarena calls random.seed(seed) here
            except AssertionError as exc:
                raise ValueError(f"textarena: {self.env_id} is not a single-player game ({exc}); "
                                 "the adapter supports single-player games only.") from None
            self._flag_invalid()
            self._obs = self._messages()
        self._trace = [self._obs]

    def _step(self, action: str) -> tuple[float, bool, dict]:
        self._invalid = False
        with self._private_random(self._rng_state):
            done, _info = self.env.step(action)
            self._obs = self._messages()
            reward = 0.0
            if done:
                rewards, _game_info = self.env.close()
                reward = float((rewards or {}).get(0, 0.0))
        self._trace.extend([action, self._obs])
        extra: dict[str, Any] = {"invalid_action": self._invalid, "success": bool(done and reward >= 1.0)}
        if self._invalid and not done:
            reward = self.invalid_penalty
        return reward, bool(done), extra

    def parse_action(self, text: str) -> str | None:
        """The action text textarena will parse: the last ``<action>`` tag's content if any, else the
        stripped text; ``None`` if empty."""
        tags = _TAG.findall(text)
        action = (tags[-1] if tags else text).strip()
        return action or None

    def valid_actions(self) -> list[str]:
        return []  # textarena does not enumerate its moves; it parses free text

    @property
    def action_prompt(self) -> str:
        return self._rules or f"Play textarena's {self.env_id}."

    def _observe(self) -> str:
        return self._obs or "(no new message)"

    def state_key(self) -> tuple:
        return ("textarena", self.env_id, tuple(self._trace))
