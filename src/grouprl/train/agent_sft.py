"""Warm start for agents: SFT on a scripted expert's trajectories, with noise.

A tiny model cannot act in a grid world from scratch (it does not even write a legal move). ``agent_sft``
plays episodes with a noisy expert — the expert's move with probability ``1 - noise``, a uniformly
random legal move otherwise — records each turn's prompt (built exactly as the multi-turn rollout
builds it) and the move taken, and minimises the cross-entropy of ``move + EOS`` given the prompt.
The noise and the small number of steps keep the warm start partial, so RL has something to improve.

Experts: ``gridworld`` (a BFS shortest path to G avoiding holes), ``tictactoe`` (minimax, playing
for the agent to move). Other environments have no expert: set ``sft_steps=0`` or ``init=...``.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any, Callable

import torch

from ..rollout.multiturn import build_prompt
from .sft import sft_on_tokens

__all__ = ["EXPERTS", "expert_turns", "agent_sft"]


def _gridworld_expert(env: Any) -> str:
    """The first move of a shortest path from the agent to G that avoids holes (BFS)."""
    from ..envs.gridworld import MOVES

    start = env.pos
    seen = {start: None}
    queue = deque([start])
    while queue:
        cur = queue.popleft()
        if env._cell(*cur) == "G":
            while seen[cur] is not None and seen[cur][0] != start:
                cur = seen[cur][0]
            return seen[cur][1] if seen[cur] is not None else "up"
        for name, (dr, dc) in MOVES.items():
            nxt = (cur[0] + dr, cur[1] + dc)
            if env._cell(*nxt) in "#H" or nxt in seen:
                continue
            seen[nxt] = (cur, name)
            queue.append(nxt)
    return "up"


def _tictactoe_expert(env: Any) -> str:
    from ..envs.tictactoe import _minimax

    return str(_minimax(env.board, env.to_move)[1] + 1)


EXPERTS: dict[str, Callable[[Any], str]] = {"gridworld": _gridworld_expert, "tictactoe": _tictactoe_expert}


def expert_turns(env_factory: Callable[[], Any], env_name: str, seeds: list[int], *, noise: float, max_turns: int,
                 history_len: int, instruction: str | None, seed: int) -> list[tuple[str, str]]:
    """(prompt, move) pairs from noisy-expert episodes on ``seeds`` (deterministic under ``seed``)."""
    if env_name not in EXPERTS:
        raise ValueError(f"agent SFT: no scripted expert for env {env_name!r} (have {', '.join(EXPERTS)}); "
                         "set sft_steps=0 or init=<checkpoint dir>.")
    expert, rng, out = EXPERTS[env_name], random.Random(seed), []
    for s in seeds:
        env = env_factory()
        obs, _ = env.reset(seed=s)
        instr = instruction if instruction is not None else env.action_prompt
        history: list[tuple[str, str]] = []
        for _ in range(max_turns):
            move = expert(env) if rng.random() >= noise else rng.choice(env.valid_actions())
            out.append((build_prompt(instr, history, obs, history_len), move))
            history.append((obs, move))
            obs, _r, term, trunc, _info = env.step(move)
            if term or trunc:
                break
    return out


def agent_sft(model: torch.nn.Module, tokenizer: Any, pairs: list[tuple[str, str]], *, steps: int, batch_size: int,
              lr: float, warmup_steps: int, seed: int) -> list[dict[str, float]]:
    """Train ``model`` in place on (prompt, move) pairs: cross-entropy of move + EOS, AdamW, warmup +
    cosine (as ``grouprl.train.sft``); returns per-step ``{"step", "loss", "lr"}``."""
    if not pairs:
        raise ValueError("agent SFT: no (prompt, move) pairs; check the seeds and max_turns.")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prompts = [bos + tokenizer.encode(p, add_special_tokens=False) for p, _ in pairs]
    answers = [tokenizer.encode(a, add_special_tokens=False) + [tokenizer.eos_token_id] for _, a in pairs]
    return sft_on_tokens(model, tokenizer, prompts, answers, steps=steps, batch_size=batch_size, lr=lr,
                         warmup_steps=warmup_steps, seed=seed, stream=12)
