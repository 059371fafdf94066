"""The arena spec: which methods, tasks and seeds to run, on which shared base config.

A spec is YAML (or a dict)::

    name: quick                  # arena run name (the run dir is out_dir/name)
    out_dir: arenas
    base:                        # TrainConfig fields shared by every cell (flat, or nested by section)
      model: 1M
      steps: 30
    methods:                     # method name -> TrainConfig overrides
      grpo: {estimator: grpo}
      dr_grpo: {estimator: dr_grpo, agg: seq-mean-token-sum-norm}
      dapo_dynamic: {estimator: grpo, sampler: dapo_dynamic}
    tasks: [mixed]               # a list of task names, or task name -> TrainConfig overrides (a name
                                 # whose overrides set env= is a label: env cells keep the default task)
    seeds: [0, 1, 2]
    baseline: grpo               # the method every other one is tested against (default: the first)
    metric: acc                  # the eval.jsonl key the final-score table ranks by

Every cell is ``base`` <- task overrides <- method overrides <- ``{task, seed}``, validated as a
``grouprl.train.TrainConfig`` when the spec is loaded, so a typo fails before any cell runs.
``--preset NAME`` takes a built-in spec (``PRESETS``: quick, evidence and the blocks token_credit,
maxmin, agents, selfplay; docs/arena.md); a spec file given with a preset is merged over it.
``PRESET_CPU_S`` holds the measured CPU seconds per cell that ``--dry-run`` estimates from.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..train.config import (
    ConfigError,
    TrainConfig,
    build_config,
    flatten_sections,
    read_yaml_mapping,
)

__all__ = ["ArenaSpec", "Cell", "SpecError", "PRESETS", "PRESET_CPU_S", "RETIRED_PRESETS", "load_spec", "spec_from_dict", "warm_key"]


class SpecError(ValueError):
    """A bad arena spec; the message names the key and the fix."""


# Fields the arena controls per cell; a spec may not set them in base/methods/tasks.
_CELL_FIELDS = ("task", "seed", "name", "out_dir", "init")
# Fields every cell gets unless the spec says otherwise: one thread per worker, no live bars.
_CELL_DEFAULTS = {"threads": 1, "progress": False, "tensorboard": False}

# The outcome-level methods of the claims table (docs/evidence.md), each from the README default's
# regime: task add3r, the 1M model, RL from the shipped warm start (the same for every method and
# seed), held-out greedy accuracy on all 1,000 held-out prompts. "grpo" is the trainer's default
# (GRPO advantage, PPO-clip, token-mean, no KL): single-part methods swap that one part; the
# recipes (method=...) change what their paper changes.
_METHODS_EVIDENCE = {
    "grpo": {},
    "dr_grpo": {"method": "dr_grpo"},
    "rloo": {"estimator": "rloo"},
    "ngrpo": {"method": "ngrpo"},
    "canon": {"estimator": "canon"},
    "copo": {"estimator": "copo", "loss": "copo"},
    "dapo": {"method": "dapo"},
    "confucius3": {"method": "confucius3"},
    "srpo": {"method": "srpo"},
    "vade": {"sampler": "vade"},
}

# The evidence preset's regime (add3r from the shipped warm start add3r-1M, 100 RL steps, evaluation
# on the 1,000 held-out prompts every 25 steps): the token-credit and MaxMin blocks share it, so
# their grpo cells are the evidence preset's grpo cells (same config, same seeds).
_BASE_EVIDENCE = {"steps": 100, "eval_every": 25, "pass_k_size": 0, "save_every": 100, "keep_checkpoints": 1}

# Token- and segment-level credit (docs/token-credit.md): each method with its credit hook, estimator
# and loss as in examples/*.yaml, fitted to add3r's short answers (at most 6 tokens: 3-4 digits + EOS).
_METHODS_TOKEN_CREDIT = {
    "grpo": {},
    "hapo": {"estimator": "hapo_tlga", "loss": "hapo", "credit": "hapo"},  # examples/hapo.yaml (its defaults)
    "spo_chain": {"estimator": "spo_chain", "estimator_kwargs": {"whiten": True}, "credit": "spo_chain",
                  "credit_kwargs": {"interval": 5, "samples": 4, "prob_mask": True}},  # examples/spo_chain.yaml
    # examples/spo_tree.yaml's tree (group_size 6 at depth 0, then 6 and 6 children) with 2-token
    # segments, so three levels span add3r's 6-token limit; 8 prompts per step as there
    "spo_tree": {"estimator": "spo_tree", "estimator_kwargs": {"whiten": True}, "credit": "spo_tree",
                 "credit_kwargs": {"branch": [6, 6], "segment_len": 2, "adv_method": "rloo", "max_edges": 32},
                 "prompts_per_step": 8, "group_size": 6},
    # T-PPO: windows of 3 tokens, a sequence finished at 6 tokens (add3r's limit), critic lr 1e-3
    "tppo": {"estimator": "egae", "estimator_kwargs": {"gamma": 1.0, "lam": 0.95}, "credit": "tppo",
             "credit_kwargs": {"max_total_tokens": 6, "lr": 0.001, "critic_lam": 1.0}, "max_new_tokens": 3},
    # EGAE without windows (examples/tppo_egae.yaml): PPO with a critic, truncated responses bootstrapped
    "egae": {"estimator": "egae", "estimator_kwargs": {"gamma": 1.0, "lam": 0.95}, "credit": "critic",
             "credit_kwargs": {"lr": 0.001, "critic_lam": 1.0, "finished_only": True}},
}

# The grid world of docs/agents.md ("Measured: GiGPO on the grid world"; examples/agents/gridworld_gigpo.yaml):
# layout 0 with a random start cell per seed named by a letter, a 150-step SFT warm start on a BFS
# expert with 60% random moves (shared by the methods of a seed), 60 RL steps of 8 seeds x 8 episodes,
# greedy success on 128 held-out seeds. ReAd (read) is not in it: it reads a critic's Q and V per
# action (extras q_values / state_values) that the agent loop does not produce.
_BASE_GRIDWORLD = {
    "model": "1M", "sft_steps": 150, "sft_batch_size": 32, "sft_lr": 3e-3, "expert_noise": 0.6,
    "history_len": 0, "instruction": "Reach G.", "max_turns": 10, "max_new_tokens": 6, "prompts_per_step": 8,
    "group_size": 8, "lr": 3e-4, "steps": 60, "eval_every": 20, "eval_size": 128, "save_every": 60,
    "keep_checkpoints": 1,
}
_TASK_GRIDWORLD = {"gridworld": {"env": "gridworld", "env_kwargs": {"layout": 0, "random_start": True,
                                                                    "show_position": True}}}

# Tic-tac-toe self-play (docs/agents.md "Measured: MARS self-play on tic-tac-toe";
# examples/agents/tictactoe_mars.yaml): one policy plays X and O (agent = role = the player), an
# invalid move costs its player -1; a 300-step SFT warm start on minimax with 30% random moves;
# 40 RL steps of 4 seeds x 4 games; greedy wins as X against the random player on 64 held-out seeds.
_BASE_TICTACTOE = {
    "model": "1M", "sft_steps": 300, "sft_batch_size": 32, "sft_lr": 3e-3, "expert_noise": 0.3,
    "history_len": 0, "instruction": "Tic-tac-toe.", "max_turns": 12, "max_new_tokens": 4, "prompts_per_step": 4,
    "group_size": 4, "lr": 3e-4, "steps": 40, "eval_every": 10, "eval_size": 64, "save_every": 40,
    "keep_checkpoints": 1,
}
_TASK_TICTACTOE = {"tictactoe": {"env": "tictactoe", "env_kwargs": {"invalid_penalty": -1.0},
                                 "eval_env_kwargs": {"opponent": "random"}}}

#: Built-in specs (docs/arena.md, "Presets"). ``evidence`` is the outcome-method comparison; the
#: blocks ``token_credit``, ``maxmin``, ``agents`` and ``selfplay`` are the methods that need more than
#: an outcome reward, 20 seeds each (each at most 41 min on 2 idle cores by the measured CPU seconds
#: below; seeds 0-9 of the add3r blocks' grpo cells are evidence's); ``quick`` is a tiny sweep in the
#: evidence regime that CI can afford.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "name": "quick",
        "base": {"steps": 10, "eval_every": 5, "eval_size": 200, "pass_k_size": 0, "save_every": 10,
                 "keep_checkpoints": 1},
        "methods": {"grpo": {}, "dr_grpo": {"method": "dr_grpo"}, "rloo": {"estimator": "rloo"}},
        "tasks": ["add3r"],
        "seeds": [0, 1, 2],
        "baseline": "grpo",
        "metric": "acc",
    },
    "evidence": {
        "name": "evidence",
        "base": {"steps": 100, "eval_every": 25, "pass_k_size": 0, "save_every": 100, "keep_checkpoints": 1},
        "methods": _METHODS_EVIDENCE,
        "tasks": ["add3r"],
        "seeds": list(range(10)),
        "baseline": "grpo",
        "metric": "acc",
    },
    "token_credit": {
        "name": "token_credit",
        "base": _BASE_EVIDENCE,
        "methods": _METHODS_TOKEN_CREDIT,
        "tasks": ["add3r"],
        "seeds": list(range(20)),
        "baseline": "grpo",
        "metric": "acc",
    },
    "maxmin": {
        "name": "maxmin",
        "base": _BASE_EVIDENCE,
        # two reward components: the task's verifier and a second user group that prefers the digits
        # 0-4 (grouprl.rewards.digits); MaxMin trains each step on the worse-off group's reward
        "methods": {"grpo": {}, "maxmin": {"estimator": "maxmin",
                                           "reward_components": ["task", "grouprl.rewards.digits:low_digit_share"]}},
        "tasks": ["add3r"],
        "seeds": list(range(20)),
        "baseline": "grpo",
        "metric": "acc",
    },
    "agents": {
        "name": "agents",
        "base": _BASE_GRIDWORLD,
        "methods": {"grpo": {"estimator": "grpo"}, "gigpo": {"estimator": "gigpo"}, "salt": {"estimator": "salt"}},
        "tasks": _TASK_GRIDWORLD,
        "seeds": list(range(20)),
        "baseline": "grpo",
        "metric": "acc",
    },
    "selfplay": {
        "name": "selfplay",
        "base": _BASE_TICTACTOE,
        "methods": {"grpo": {"estimator": "grpo"}, "mars": {"estimator": "mars"},
                    "advevo": {"estimator": "advevo_public"}},
        "tasks": _TASK_TICTACTOE,
        "seeds": list(range(20)),
        "baseline": "grpo",
        "metric": "acc",
    },
}

#: Measured CPU seconds (user + sys, ``/usr/bin/time -v``) of one cell per method at ``threads=1``, and of
#: one SFT warm start where the preset builds them (one per seed), read by ``grouprl arena --dry-run``
#: (``grouprl.arena.plan``). Measured with ``benchmarks/arena_cell_cpu.py PRESET --seed 0`` on the
#: 2-core build machine while other jobs ran (load average 5-16): docs/arena.md, "Blocks".
PRESET_CPU_S: dict[str, dict[str, Any]] = {
    # the grpo cell of evidence, token_credit and maxmin is one config, measured twice (25.4 s in
    # token_credit's run, 25.2 s in maxmin's): all three presets use the mean, 25.3
    "evidence": {"cells": {"grpo": 25.3, "dr_grpo": 24.1, "rloo": 24.6, "ngrpo": 27.9, "canon": 27.4, "copo": 24.5,
                           "dapo": 29.7, "confucius3": 31.4, "srpo": 36.6, "vade": 28.8}, "warm_start": None},
    "quick": {"cells": {"grpo": 8.2, "dr_grpo": 8.3, "rloo": 8.2}, "warm_start": None},
    "maxmin": {"cells": {"grpo": 25.3, "maxmin": 25.2}, "warm_start": None},
    "token_credit": {"cells": {"grpo": 25.3, "hapo": 28.6, "spo_chain": 31.4, "spo_tree": 24.1, "tppo": 44.3,
                               "egae": 55.6}, "warm_start": None},
    # the env blocks measured again after env runs joined the shared loop (docs/arena.md)
    "agents": {"cells": {"grpo": 70.8, "gigpo": 84.8, "salt": 67.0}, "warm_start": 21.0},
    "selfplay": {"cells": {"grpo": 48.7, "mars": 46.5, "advevo": 47.7}, "warm_start": 70.2},
}

#: Presets that were removed, and what replaced them (named in the error of ``load_spec``).
RETIRED_PRESETS = {"full": "evidence (the same comparison in the regime where RL moves accuracy)"}

_NAME_RE = re.compile(r"^[A-Za-z0-9_.+:,-]+$")


@dataclass(frozen=True)
class Cell:
    """One (method, task, seed) run: its id and its full, validated trainer config (as a dict)."""

    cell_id: str
    method: str
    task: str
    seed: int
    config: dict[str, Any]

    def train_config(self, **extra: Any) -> TrainConfig:
        return build_config({**self.config, **extra})


@dataclass
class ArenaSpec:
    """A parsed spec (see the module docstring)."""

    name: str
    base: dict[str, Any]
    methods: dict[str, dict[str, Any]]
    tasks: dict[str, dict[str, Any]]
    seeds: list[int]
    baseline: str
    metric: str = "acc"
    out_dir: str = "arenas"
    raw: dict[str, Any] = field(default_factory=dict)

    def cells(self) -> list[Cell]:
        """All cells, ordered method-major then seed: the first cells of a sweep use different seeds,
        so parallel workers build different warm starts instead of waiting for the same one."""
        out = []
        for method, m_over in self.methods.items():
            for task, t_over in self.tasks.items():
                for seed in self.seeds:
                    values = {**_CELL_DEFAULTS, **self.base, **t_over, **m_over, "seed": seed}
                    if values.get("env") is None:  # an env cell draws environment seeds: its tasks key is a label
                        values["task"] = task
                    cell_id = f"{method}__{task}__s{seed}"
                    try:
                        cfg = build_config(values)
                    except ConfigError as exc:
                        raise SpecError(f"cell {cell_id} (method {method!r}, task {task!r}): {exc}") from None
                    out.append(Cell(cell_id, method, task, seed, cfg.model_dump()))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "out_dir": self.out_dir, "base": self.base, "methods": self.methods,
                "tasks": self.tasks, "seeds": self.seeds, "baseline": self.baseline, "metric": self.metric}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if k == "methods" and isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = copy.deepcopy(v)  # a spec's method list replaces the preset's
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _flat_fields(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` with ``base`` and each method's and task's overrides as flat TrainConfig fields: each may be
    written flat or nested by section (``optim: {lr: 1e-4}``), and a preset (flat) merges with either."""
    out = dict(d)
    try:
        if isinstance(out.get("base"), dict):
            out["base"] = flatten_sections(out["base"], where="base")
        for part in ("methods", "tasks"):
            if isinstance(out.get(part), dict):
                out[part] = {k: flatten_sections(v, where=f"{part}.{k}") if isinstance(v, dict) else v
                             for k, v in out[part].items()}
    except ConfigError as exc:
        raise SpecError(str(exc)) from None
    return out


def _mapping(name: str, value: Any, *, allow_list: bool) -> dict[str, dict[str, Any]]:
    if allow_list and isinstance(value, list):
        value = {str(v): {} for v in value}
    if not isinstance(value, dict) or not value:
        kind = "a non-empty list of names or a mapping" if allow_list else "a non-empty mapping"
        raise SpecError(f"spec key {name!r} must be {kind} name -> config overrides (got {value!r})")
    out = {}
    for key, over in value.items():
        key = str(key)
        if not _NAME_RE.match(key):
            raise SpecError(f"{name}: name {key!r} may only hold letters, digits and _ . + : , -")
        over = over or {}
        if not isinstance(over, dict):
            raise SpecError(f"{name}.{key}: overrides must be a mapping of TrainConfig fields (got {over!r})")
        bad = [k for k in over if k in _CELL_FIELDS]
        if bad:
            raise SpecError(f"{name}.{key}: {', '.join(bad)} are set by the arena per cell; remove them")
        out[key] = dict(over)
    return out


def spec_from_dict(d: dict[str, Any]) -> ArenaSpec:
    """Validate a spec dict (and every cell's config) into an ``ArenaSpec``."""
    known = {"name", "out_dir", "base", "methods", "tasks", "seeds", "baseline", "metric"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise SpecError(f"unknown spec key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
    for req in ("methods", "tasks", "seeds"):
        if req not in d:
            raise SpecError(f"spec is missing {req!r}; see docs/arena.md for the format")
    d = _flat_fields(d)
    base = d.get("base") or {}
    if not isinstance(base, dict):
        raise SpecError(f"spec key 'base' must be a mapping of TrainConfig fields (got {base!r})")
    bad = [k for k in base if k in _CELL_FIELDS]
    if bad:
        raise SpecError(f"base: {', '.join(bad)} are set by the arena per cell; remove them")
    methods = _mapping("methods", d["methods"], allow_list=True)
    tasks = _mapping("tasks", d["tasks"], allow_list=True)
    seeds = d["seeds"]
    if isinstance(seeds, int):
        seeds = list(range(seeds))
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise SpecError(f"spec key 'seeds' must be a non-empty list of integers or a count (got {seeds!r})")
    if len(set(seeds)) != len(seeds):
        raise SpecError(f"seeds: {seeds} has duplicates")
    baseline = str(d.get("baseline") or next(iter(methods)))
    if baseline not in methods:
        raise SpecError(f"baseline {baseline!r} is not one of the methods ({', '.join(methods)})")
    name = str(d.get("name") or "arena")
    if not _NAME_RE.match(name):
        raise SpecError(f"name {name!r} may only hold letters, digits and _ . + : , -")
    spec = ArenaSpec(name=name, base=dict(base), methods=methods, tasks=tasks, seeds=list(seeds),
                     baseline=baseline, metric=str(d.get("metric") or "acc"), out_dir=str(d.get("out_dir") or "arenas"),
                     raw=copy.deepcopy(d))
    spec.cells()  # validates every cell's config now
    return spec


def load_spec(path: str | Path | None = None, preset: str | None = None,
              overrides: dict[str, Any] | None = None) -> ArenaSpec:
    """A spec file, a preset, or a file merged over a preset; then ``overrides`` (e.g. ``out_dir``)."""
    d: dict[str, Any] = {}
    if preset is not None:
        if preset in RETIRED_PRESETS:
            raise SpecError(f"preset {preset!r} was removed; use {RETIRED_PRESETS[preset]}")
        if preset not in PRESETS:
            raise SpecError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        d = copy.deepcopy(PRESETS[preset])
    if path is not None:
        loaded = read_yaml_mapping(path, "spec file", "(name, base, methods, tasks, seeds, ...)", SpecError)
        d = _merge(d, _flat_fields(loaded))
    if not d:
        raise SpecError(f"give a spec file or --preset NAME ({', '.join(PRESETS)})")
    d = _merge(d, {k: v for k, v in (overrides or {}).items() if v is not None})
    return spec_from_dict(d)


# Fields that decide the SFT warm start; cells that agree on them share one warm-start checkpoint.
_WARM_FIELDS = ("task", "task_kwargs", "seed", "model", "max_new_tokens", "sft_steps", "sft_batch_size", "sft_lr",
                "sft_warmup_steps", "sft_target_acc", "sft_check_every", "sft_val_size")
# ... and for env runs also those of the expert episodes it is trained on (grouprl.train.agent_sft)
_WARM_FIELDS_ENV = ("env", "env_kwargs", "expert_noise", "max_turns", "history_len", "instruction")


def warm_key(config: dict[str, Any]) -> str | None:
    """Key of the shared SFT warm start of a cell config (None when the cell has no SFT phase)."""
    from ..train.config import build_config
    from ..train.task_source import shipped_warm_start

    if config.get("init") is not None or int(config.get("sft_steps", 0)) == 0:
        return None
    if shipped_warm_start(build_config(dict(config))) is not None:  # every cell loads the shipped checkpoint
        return None
    fields = _WARM_FIELDS + (_WARM_FIELDS_ENV if config.get("env") is not None else ())  # task keys unchanged
    d = {k: config.get(k) for k in fields}
    h = hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{config.get('env') or config['task']}-s{config['seed']}-{h}"
