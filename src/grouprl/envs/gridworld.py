"""A text grid world (FrozenLake-style maze) with fixed layouts chosen by the seed."""

from __future__ import annotations

import random
from collections import deque
from functools import lru_cache

from .base import TextEnv, register_env

__all__ = ["GridWorld", "LAYOUTS"]

# S start, G goal, H hole (ends the episode, no reward), # wall (blocks), . floor.
LAYOUTS: tuple[tuple[str, ...], ...] = (
    (
        "S...",
        ".H.H",
        "...H",
        "H..G",
    ),
    (
        "S.#..",
        ".H#.H",
        "...#.",
        "#H...",
        "...HG",
    ),
    (
        "S....",
        "###.#",
        "..H..",
        ".#.#.",
        "...HG",
    ),
    (
        "..H..",
        "S.#.G",
        ".##.H",
        ".....",
    ),
)
MOVES = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
_LETTERS = "abcdefghijklmnopqrstuvwxyz"  # cell names of show_position, row by row (layouts have <= 25 cells)


@lru_cache(maxsize=None)
def _start_cells(layout_id: int) -> tuple[tuple[int, int], ...]:
    """The floor cells (S or .) of a layout from which G is reachable avoiding holes, row-major."""
    grid = LAYOUTS[layout_id]
    rows, cols = len(grid), len(grid[0])
    goal = next((r, row.index("G")) for r, row in enumerate(grid) if "G" in row)
    seen, queue = {goal}, deque([goal])
    while queue:  # moves are reversible on floor cells, so a search from G finds every cell that reaches it
        r, c = queue.popleft()
        for dr, dc in MOVES.values():
            n = (r + dr, c + dc)
            if 0 <= n[0] < rows and 0 <= n[1] < cols and n not in seen and grid[n[0]][n[1]] in "S.":
                seen.add(n)
                queue.append(n)
    return tuple(sorted(p for p in seen if grid[p[0]][p[1]] in "S."))


@register_env("gridworld")
class GridWorld(TextEnv):
    """Walk from S to G without falling into a hole H; walls # block. Reward 1 on reaching G.

    The layout is ``LAYOUTS[seed % len(LAYOUTS)]`` (or ``layout=i`` fixes it), so environments reset
    with the same seed share their states. ``slip`` > 0 makes a move go sideways with that
    probability, drawn from a generator seeded at reset (deterministic under seed and actions).
    Moving into a wall or the border is legal and leaves the agent in place.

    ``random_start=True`` starts each episode on a floor cell drawn by the seed among the cells from
    which G can be reached without crossing a hole (so a seed fixes layout and start, and environments
    reset with the same seed still share their states); many seeds then give many distinct episodes,
    which makes a greedy evaluation over a set of seeds graded rather than all-or-nothing.
    ``show_position=True`` adds a line ``"Cell x."`` naming the agent's cell by a letter, row by row
    (``a`` is row 0 column 0, ``b`` row 0 column 1, ...). A small character-level model reads its
    position from this one token far more easily than from the grid or from a (row, column) pair: in
    the measurement of docs/agents.md, the 1M model SFT-ed on noisy expert moves had a
    position-dependent policy after 150 steps with the letter and still none after 250 with
    ``"Row r, column c."``.
    """

    name = "gridworld"

    def __init__(
        self,
        *,
        layout: int | None = None,
        max_steps: int = 20,
        slip: float = 0.0,
        goal_reward: float = 1.0,
        hole_reward: float = 0.0,
        invalid_penalty: float = 0.0,
        random_start: bool = False,
        show_position: bool = False,
    ) -> None:
        super().__init__(max_steps=max_steps, invalid_penalty=invalid_penalty)
        if layout is not None and not 0 <= layout < len(LAYOUTS):
            raise ValueError(f"gridworld: layout={layout}; choose 0..{len(LAYOUTS) - 1} or None (by seed).")
        if not 0.0 <= slip < 1.0:
            raise ValueError(f"gridworld: slip={slip}; it must be in [0, 1).")
        self.fixed_layout = layout
        self.slip = slip
        self.goal_reward = goal_reward
        self.hole_reward = hole_reward
        self.random_start = bool(random_start)
        self.show_position = bool(show_position)
        self.layout_id = 0
        self.grid: tuple[str, ...] = LAYOUTS[0]
        self.pos = (0, 0)
        self._rng = random.Random(0)

    def _reset(self, seed: int) -> None:
        self.layout_id = self.fixed_layout if self.fixed_layout is not None else seed % len(LAYOUTS)
        self.grid = LAYOUTS[self.layout_id]
        self.pos = next((r, row.index("S")) for r, row in enumerate(self.grid) if "S" in row)
        self._rng = random.Random(seed)
        if self.random_start:
            self.pos = self._rng.choice(_start_cells(self.layout_id))

    def valid_actions(self) -> list[str]:
        return list(MOVES)

    @property
    def action_prompt(self) -> str:
        return (
            "You are A on a grid. Reach G; falling into a hole H ends the episode; walls # block. "
            "Answer with one move: <action>up</action>, <action>down</action>, <action>left</action> "
            "or <action>right</action>."
        )

    def _cell(self, r: int, c: int) -> str:
        if 0 <= r < len(self.grid) and 0 <= c < len(self.grid[0]):
            return self.grid[r][c]
        return "#"

    def _step(self, action: str) -> tuple[float, bool, dict]:
        dr, dc = MOVES[action]
        if self.slip > 0 and self._rng.random() < self.slip:
            dr, dc = (dc, dr) if self._rng.random() < 0.5 else (-dc, -dr)
        r, c = self.pos[0] + dr, self.pos[1] + dc
        if self._cell(r, c) != "#":
            self.pos = (r, c)
        cell = self._cell(*self.pos)
        if cell == "G":
            return self.goal_reward, True, {"success": True}
        if cell == "H":
            return self.hole_reward, True, {"success": False}
        return 0.0, False, {"success": False}

    def _observe(self) -> str:
        rows = []
        for r, row in enumerate(self.grid):
            cells = list(row)
            if r == self.pos[0]:
                cells[self.pos[1]] = "A"
            rows.append(" ".join(cells))
        if self.show_position:
            rows.append(f"Cell {_LETTERS[self.pos[0] * len(self.grid[0]) + self.pos[1]]}.")
        return "\n".join(rows)

    def state_key(self) -> tuple:
        return ("gridworld", self.layout_id, self.pos)
