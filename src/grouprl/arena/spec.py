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
    tasks: [mixed]               # a list of task names, or task name -> TrainConfig overrides
    seeds: [0, 1, 2]
    baseline: grpo               # the method every other one is tested against (default: the first)
    metric: acc                  # the eval.jsonl key the final-score table ranks by

Every cell is ``base`` <- task overrides <- method overrides <- ``{task, seed}``, validated as a
``grouprl.train.TrainConfig`` when the spec is loaded, so a typo fails before any cell runs.
``--preset quick`` / ``--preset full`` are built-in specs (``PRESETS``); a spec file given with a
preset is merged over it.
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

__all__ = ["ArenaSpec", "Cell", "SpecError", "PRESETS", "load_spec", "spec_from_dict", "warm_key"]


class SpecError(ValueError):
    """A bad arena spec; the message names the key and the fix."""


# Fields the arena controls per cell; a spec may not set them in base/methods/tasks.
_CELL_FIELDS = ("task", "seed", "name", "out_dir", "init")
# Fields every cell gets unless the spec says otherwise: one thread per worker, no live bars.
_CELL_DEFAULTS = {"threads": 1, "progress": False, "tensorboard": False}

_METHODS_QUICK = {
    "grpo": {"estimator": "grpo"},
    "dr_grpo": {"estimator": "dr_grpo", "agg": "seq-mean-token-sum-norm"},
    "ngrpo": {"estimator": "ngrpo", "loss": "ngrpo_clip"},
    "canon": {"estimator": "canon"},
    # at most 4 sampling rounds per step (default 16) keeps the sampler variant within the budget
    "dapo_dynamic": {"estimator": "grpo", "sampler": "dapo_dynamic", "sampler_kwargs": {"max_rounds": 4}},
}

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

#: Built-in specs. ``quick`` is sized to finish in under 20 minutes with 2 workers on 2 CPU cores
#: (measured: docs/arena.md); ``full`` is the same comparison at the trainer's default budget.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "name": "quick",
        "base": {
            # the warm start measured in docs/arena.md: a fixed 600-step cosine SFT
            "model": "1M", "sft_steps": 600, "sft_batch_size": 64, "sft_lr": 3e-3, "sft_target_acc": 0.0,
            "steps": 40, "lr": 5e-5, "prompts_per_step": 16, "group_size": 8, "eval_every": 10, "eval_size": 300,
            "pass_k_size": 0, "save_every": 40, "keep_checkpoints": 1,
        },
        "methods": _METHODS_QUICK,
        "tasks": ["mixed"],
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
    "full": {
        "name": "full",
        "base": {"model": "1M", "sft_steps": 600, "sft_batch_size": 64, "sft_lr": 3e-3, "sft_target_acc": 0.0,
                 "steps": 150, "lr": 5e-5, "eval_every": 10, "eval_size": 500},
        "methods": {
            **_METHODS_QUICK,
            "vade": {"estimator": "grpo", "sampler": "vade"},
        },
        "tasks": ["mixed"],
        "seeds": [0, 1, 2, 3, 4],
        "baseline": "grpo",
        "metric": "acc",
    },
}

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
                    values = {**_CELL_DEFAULTS, **self.base, **t_over, **m_over, "task": task, "seed": seed}
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
        if preset not in PRESETS:
            raise SpecError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        d = copy.deepcopy(PRESETS[preset])
    if path is not None:
        loaded = read_yaml_mapping(path, "spec file", "(name, base, methods, tasks, seeds, ...)", SpecError)
        d = _merge(d, _flat_fields(loaded))
    if not d:
        raise SpecError("give a spec file or --preset quick|full")
    d = _merge(d, {k: v for k, v in (overrides or {}).items() if v is not None})
    return spec_from_dict(d)


# Fields that decide the SFT warm start; cells that agree on them share one warm-start checkpoint.
_WARM_FIELDS = ("task", "task_kwargs", "seed", "model", "max_new_tokens", "sft_steps", "sft_batch_size", "sft_lr",
                "sft_warmup_steps", "sft_target_acc", "sft_check_every", "sft_val_size")


def warm_key(config: dict[str, Any]) -> str | None:
    """Key of the shared SFT warm start of a cell config (None when the cell has no SFT phase)."""
    from ..train.config import build_config
    from ..train.task_source import shipped_warm_start

    if config.get("init") is not None or int(config.get("sft_steps", 0)) == 0:
        return None
    if shipped_warm_start(build_config(dict(config))) is not None:  # every cell loads the shipped checkpoint
        return None
    d = {k: config.get(k) for k in _WARM_FIELDS}
    h = hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{config['task']}-s{config['seed']}-{h}"
