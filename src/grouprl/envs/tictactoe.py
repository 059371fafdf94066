"""Two-player tic-tac-toe for self-play (MARS-style), with an optional built-in opponent."""

from __future__ import annotations

import random
from functools import lru_cache

from .base import TextEnv, register_env

__all__ = ["TicTacToe", "winner"]

LINES = ((0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6))
MARKS = ("X", "O")


def winner(board: str) -> str | None:
    """'X' or 'O' if that mark holds a line, 'draw' if the board is full, else None."""
    for a, b, c in LINES:
        if board[a] != "." and board[a] == board[b] == board[c]:
            return board[a]
    return "draw" if "." not in board else None


@lru_cache(maxsize=None)
def _minimax(board: str, mark: str) -> tuple[int, int]:
    """(value for ``mark`` to move, best cell): +1 win, 0 draw, −1 loss under perfect play."""
    other = "O" if mark == "X" else "X"
    best = (-2, -1)
    for i, ch in enumerate(board):
        if ch != ".":
            continue
        nb = board[:i] + mark + board[i + 1 :]
        w = winner(nb)
        value = 1 if w == mark else 0 if w == "draw" else -_minimax(nb, other)[0]
        if value > best[0]:
            best = (value, i)
    return best


@register_env("tictactoe")
class TicTacToe(TextEnv):
    """Tic-tac-toe on cells 1-9. Agent 0 plays X and moves first, agent 1 plays O.

    Self-play (``opponent=None``, default): two agents alternate; ``current_agent`` says who acts,
    and ``info["agent_rewards"]`` gives (+1, −1) to (winner, loser) on the winning move, (0, 0) on a
    draw. An illegal or unparsable move is flagged ``invalid_action`` and the same agent moves again.
    With ``opponent="random"`` or ``"minimax"`` the environment is single-agent: the model plays
    ``model_plays`` (X or O) and the built-in opponent answers inside ``step`` (random moves are
    drawn from a generator seeded at reset); ``info["success"]`` is then True when the model wins. ``opening_moves`` > 0 starts from that many random
    moves chosen by the seed; by default every seed starts from the empty board.
    """

    name = "tictactoe"

    def __init__(
        self,
        *,
        opponent: str | None = None,
        model_plays: str = "X",
        opening_moves: int = 0,
        max_steps: int = 20,
        win_reward: float = 1.0,
        invalid_penalty: float = 0.0,
    ) -> None:
        super().__init__(max_steps=max_steps, invalid_penalty=invalid_penalty)
        if opponent not in (None, "random", "minimax"):
            raise ValueError(f"tictactoe: opponent={opponent!r}; choose None (self-play), 'random' or 'minimax'.")
        if model_plays not in MARKS:
            raise ValueError(f"tictactoe: model_plays={model_plays!r}; choose 'X' or 'O'.")
        if not 0 <= opening_moves <= 4:
            raise ValueError(f"tictactoe: opening_moves={opening_moves}; choose 0..4.")
        self.opponent = opponent
        self.model_mark = model_plays
        self.opening_moves = opening_moves
        self.win_reward = win_reward
        self.num_agents = 1 if opponent else 2
        self.board = "." * 9
        self.to_move = "X"
        self.result: str | None = None
        self._rng = random.Random(0)

    @property
    def current_agent(self) -> int:
        return 0 if self.opponent else MARKS.index(self.to_move)

    def _place(self, cell: int) -> str | None:
        self.board = self.board[:cell] + self.to_move + self.board[cell + 1 :]
        self.to_move = "O" if self.to_move == "X" else "X"
        self.result = winner(self.board)
        return self.result

    def _opponent_move(self) -> None:
        empty = [i for i, ch in enumerate(self.board) if ch == "."]
        if self.opponent == "random":
            cell = self._rng.choice(empty)
        else:
            cell = _minimax(self.board, self.to_move)[1]
        self._place(cell)

    def _reset(self, seed: int) -> None:
        self.board, self.to_move, self.result = "." * 9, "X", None
        self._rng = random.Random(seed)
        for _ in range(self.opening_moves):
            empty = [i for i, ch in enumerate(self.board) if ch == "."]
            self._place(self._rng.choice(empty))
            if self.result is not None:  # pragma: no cover - 4 random moves cannot finish a game
                break
        if self.opponent and self.to_move != self.model_mark:
            self._opponent_move()

    def valid_actions(self) -> list[str]:
        if self.result is not None:
            return []
        return [str(i + 1) for i, ch in enumerate(self.board) if ch == "."]

    @property
    def action_prompt(self) -> str:
        return (
            "Tic-tac-toe on cells numbered 1-9 (row by row). Three marks in a row, column or diagonal "
            "win. Answer with the number of an empty cell, e.g. <action>5</action>."
        )

    def _step(self, action: str) -> tuple[float, bool, dict]:
        mover = self.to_move
        agent = self.current_agent
        result = self._place(int(action) - 1)
        if result is None and self.opponent:
            self._opponent_move()
            result = self.result
        if result is None:
            return 0.0, False, {}
        if self.opponent:
            r = 0.0 if result == "draw" else (self.win_reward if result == self.model_mark else -self.win_reward)
            return r, True, {"winner": result, "agent_rewards": [r], "success": result == self.model_mark}
        if result == "draw":
            return 0.0, True, {"winner": "draw", "agent_rewards": [0.0, 0.0]}
        rewards = [-self.win_reward, -self.win_reward]
        rewards[agent] = self.win_reward
        assert result == mover
        return self.win_reward, True, {"winner": result, "agent_rewards": rewards}

    def _observe(self) -> str:
        cells = [ch if ch != "." else str(i + 1) for i, ch in enumerate(self.board)]
        grid = "\n".join(" ".join(cells[r * 3 : r * 3 + 3]) for r in range(3))
        if self.result is not None:
            status = "Game over: draw." if self.result == "draw" else f"Game over: {self.result} wins."
        else:
            status = f"You play {self.to_move}; {self.to_move} to move."
        return f"{grid}\n{status}"

    def state_key(self) -> tuple:
        return ("tictactoe", self.board, self.to_move)
