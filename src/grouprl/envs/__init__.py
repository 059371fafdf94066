"""Floor 3: multi-turn text environments for LLM agents (gymnasium-style, text in, text out).

``get_env(name, **kw)`` builds one; ``ENVS`` lists them. Built in: ``gridworld`` (FrozenLake-style
maze, layouts by seed), ``sokoban`` (tiny levels by seed), ``tictactoe`` (two-player self-play or a
built-in opponent). With gymnasium installed: ``frozenlake``, ``taxi``, ``cliffwalking``,
``blackjack``. With textarena installed: ``textarena`` (its single-player games, by ``env_id``).
"""

from .base import ENVS, TextEnv, get_env, register_env
from .gridworld import GridWorld
from .gym_adapter import GymTextEnv
from .sokoban import Sokoban
from .textarena_env import TextArenaEnv
from .tictactoe import TicTacToe

__all__ = ["ENVS", "TextEnv", "get_env", "register_env", "GridWorld", "Sokoban", "TicTacToe", "GymTextEnv", "TextArenaEnv"]
