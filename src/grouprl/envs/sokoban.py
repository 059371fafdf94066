"""A small text Sokoban with a few hand-made tiny levels chosen by the seed."""

from __future__ import annotations

from .base import TextEnv, register_env

__all__ = ["Sokoban", "LEVELS"]

# '#' wall, '_' floor, '.' target, '$' box, '*' box on a target, '@' player, '+' player on a target.
LEVELS: tuple[tuple[str, ...], ...] = (
    (
        "######",
        "#@_$.#",
        "#____#",
        "######",
    ),
    (
        "#####",
        "#.__#",
        "#_$_#",
        "#__@#",
        "#####",
    ),
    (
        "######",
        "#@___#",
        "#_$$_#",
        "#_.._#",
        "######",
    ),
    (
        "#######",
        "#@____#",
        "#_#$#_#",
        "#___._#",
        "#######",
    ),
)
MOVES = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}


def _parse(level: tuple[str, ...]):
    walls, targets, boxes, player = set(), set(), set(), (0, 0)
    for r, row in enumerate(level):
        for c, ch in enumerate(row):
            if ch == "#":
                walls.add((r, c))
            if ch in ".*+":
                targets.add((r, c))
            if ch in "$*":
                boxes.add((r, c))
            if ch in "@+":
                player = (r, c)
    return frozenset(walls), frozenset(targets), boxes, player


@register_env("sokoban")
class Sokoban(TextEnv):
    """Push every box ($) onto a target (.). Reward ``solve_reward`` (1) when all boxes are placed.

    Level ``LEVELS[seed % len(LEVELS)]`` (or ``level=i``). Optional shaping: ``box_reward`` per box
    pushed onto (minus per box pushed off) a target, and ``step_penalty`` per step. Moving into a wall
    or pushing a box into a wall or another box is legal and does nothing; deadlocks are not
    detected (the episode is truncated at ``max_steps``).
    """

    name = "sokoban"

    def __init__(
        self,
        *,
        level: int | None = None,
        max_steps: int = 20,
        solve_reward: float = 1.0,
        box_reward: float = 0.0,
        step_penalty: float = 0.0,
        invalid_penalty: float = 0.0,
    ) -> None:
        super().__init__(max_steps=max_steps, invalid_penalty=invalid_penalty)
        if level is not None and not 0 <= level < len(LEVELS):
            raise ValueError(f"sokoban: level={level}; choose 0..{len(LEVELS) - 1} or None (by seed).")
        self.fixed_level = level
        self.solve_reward = solve_reward
        self.box_reward = box_reward
        self.step_penalty = step_penalty
        self.level_id = 0
        self.shape = (0, 0)
        self.walls: frozenset = frozenset()
        self.targets: frozenset = frozenset()
        self.boxes: set = set()
        self.player = (0, 0)

    def _reset(self, seed: int) -> None:
        self.level_id = self.fixed_level if self.fixed_level is not None else seed % len(LEVELS)
        lvl = LEVELS[self.level_id]
        self.shape = (len(lvl), len(lvl[0]))
        self.walls, self.targets, self.boxes, self.player = _parse(lvl)

    def valid_actions(self) -> list[str]:
        return list(MOVES)

    @property
    def action_prompt(self) -> str:
        return (
            "Sokoban: you are @ ('+' on a target). Push every box $ onto a target '.'; a box on a "
            "target is '*'; walls are '#', floor '_'. You can push one box, never pull. Answer with one "
            "move: <action>up</action>, <action>down</action>, <action>left</action> or <action>right</action>."
        )

    def solved(self) -> bool:
        return self.boxes <= self.targets

    def _step(self, action: str) -> tuple[float, bool, dict]:
        dr, dc = MOVES[action]
        nxt = (self.player[0] + dr, self.player[1] + dc)
        reward = -self.step_penalty
        if nxt in self.walls:
            pass
        elif nxt in self.boxes:
            beyond = (nxt[0] + dr, nxt[1] + dc)
            if beyond not in self.walls and beyond not in self.boxes:
                self.boxes.remove(nxt)
                self.boxes.add(beyond)
                self.player = nxt
                reward += self.box_reward * ((beyond in self.targets) - (nxt in self.targets))
        else:
            self.player = nxt
        if self.solved():
            return reward + self.solve_reward, True, {"success": True}
        return reward, False, {"success": False}

    def _observe(self) -> str:
        rows = []
        for r in range(self.shape[0]):
            line = []
            for c in range(self.shape[1]):
                p = (r, c)
                if p in self.walls:
                    ch = "#"
                elif p == self.player:
                    ch = "+" if p in self.targets else "@"
                elif p in self.boxes:
                    ch = "*" if p in self.targets else "$"
                else:
                    ch = "." if p in self.targets else "_"
                line.append(ch)
            rows.append("".join(line))
        return "\n".join(rows)

    def state_key(self) -> tuple:
        return ("sokoban", self.level_id, self.player, tuple(sorted(self.boxes)))
