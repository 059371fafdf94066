"""The training config: one typed pydantic model, loadable from YAML, overridable from the CLI.

``parse_overrides(["estimator=ngrpo", "--model", "5M", "--estimator_kwargs.eps=1e-6"])`` turns
command-line words into a dict; ``load_config(path, overrides)`` merges YAML and overrides and
validates. Errors are ``ConfigError`` with the key and the reason (unknown key -> close matches).

Sections (``SECTIONS``: model, task, rollout, method, optim, eval, run) group the fields for files
and help, not for attribute access: ``cfg.lr`` stays. A config file is flat (every field at the top
level, as every config.yaml written before sections) or nested (``optim: {lr: 1e-4}``), never both;
``flatten_sections`` reads either, ``nest_sections`` writes the nested form (a run's config.yaml).
Overrides take ``lr=1e-5`` and ``optim.lr=1e-5`` alike. A field keeps its name inside its section,
so the three fields named like their section read ``model: {model: 1M}``, ``task: {task: add3r}``,
``method: {method: dapo}``: a mapping under a section name is the section, a string the field.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .config_checks import (
    MAX_REWARD_TIMEOUT_S,
    check_group_of_one,
    check_mode,
    check_model,
    check_reward_spec,
    check_task,
    checked_keywords,
)

__all__ = ["TrainConfig", "ConfigError", "parse_overrides", "load_config", "build_config", "RESUMABLE_FIELDS",
           "SECTIONS", "SECTION_OF", "flatten_sections", "nest_sections", "read_config_file", "read_yaml_mapping", "config_yaml"]


class ConfigError(ValueError):
    """A bad config key or value; the message names the key and says what to do."""


class TrainConfig(BaseModel):
    """Every knob of ``grouprl train`` (and ``grouprl sft``), with its default."""

    # allow_inf_nan=False: every float field is finite (lr=inf, reward_timeout_s=inf are refused here)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    # run
    name: str | None = Field(None, description="run name; the run dir is out_dir/name (default: a timestamp)")
    out_dir: str = Field("runs", description="parent directory of run dirs")
    seed: int = Field(0, description="seed of model init, train-pool order, SFT batches, sampling, shuffling (the eval split is fixed)")
    threads: int = Field(2, ge=1, description="torch CPU threads")
    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda or cuda:N (grouprl.train.device)")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="forward/backward autocast: auto (bf16 on a bf16 GPU, else fp32); weights stay fp32"
    )
    # task and model
    task: str = Field("add3r", description="task name (grouprl.tasks.get_task); add3r: 3-digit addition, answer reversed")
    task_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="task constructor arguments, e.g. train_size (arithmetic) or size (rg:)"
    )
    model: str = Field("1M", description="model preset (1M, 5M, 20M) or a local HF checkpoint dir")
    init: str | None = Field(None, description="start RL from this checkpoint dir (e.g. an SFT run's output)")
    warm_start: Literal["auto", "shipped", "sft"] = Field(
        "auto", description="where RL starts when init is unset: auto = the warm start shipped with grouprl for this "
        "task and model when there is one and no sft_* field is changed, else SFT; shipped = require it; sft = always SFT "
        "(grouprl.warmstarts)"
    )
    # warm start (SFT on the task's reference answers), run before RL when init is unset
    sft_steps: int = Field(3000, ge=0, description="SFT steps before RL when init is unset (0 = none); the cap when sft_target_acc > 0")
    sft_batch_size: int = Field(128, ge=1)
    sft_lr: float = Field(1e-3, gt=0)
    sft_warmup_steps: int = Field(20, ge=0)
    sft_target_acc: float = Field(
        0.4, ge=0, le=1, description="SFT until greedy accuracy on a validation slice of the train pool reaches this "
        "(constant lr, at most sft_steps steps); 0 = a fixed sft_steps with cosine decay"
    )
    sft_check_every: int = Field(100, ge=1, description="SFT steps between validation checks (sft_target_acc > 0)")
    sft_val_size: int = Field(200, ge=1, description="validation slice (the train pool's last examples, not trained on)")
    # method recipe (grouprl.recipes): expanded at load, explicit fields override it one by one
    method: str | None = Field(
        None, description="a paper's method as data, e.g. dapo, ngrpo, confucius3, srpo, gigpo (grouprl list): its "
        "estimator, loss, sampler, credit, shaping and hyperparameters; any field set explicitly overrides it"
    )
    # rollout
    prompts_per_step: int = Field(16, ge=1)
    group_size: int = Field(8, ge=1, description="G: responses sampled per prompt")
    max_new_tokens: int = Field(6, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    sampler: str = Field("uniform", description="prompt sampler name")
    sampler_kwargs: dict[str, Any] = Field(default_factory=dict)
    # advantage and loss
    estimator: str = Field("grpo", description="any registered estimator name or expression")
    estimator_kwargs: dict[str, Any] = Field(default_factory=dict)
    loss: str = Field("ppo_clip", description="policy loss name (grouprl.losses.LOSSES)")
    loss_kwargs: dict[str, Any] = Field(default_factory=dict)
    agg: str = Field("token-mean", description="loss aggregation mode")
    credit: str = Field("none", description="token/segment credit hooks: none, hapo, spo_chain, spo_tree, critic, tppo (grouprl.train.credit)")
    credit_kwargs: dict[str, Any] = Field(default_factory=dict)
    norm_const: float | None = Field(None, description="constant for agg=seq-mean-token-sum-norm (default max_new_tokens)")
    old_logprobs: Literal["auto", "recompute", "sampling"] = Field(
        "auto", description="old-policy log-probs: auto (fully on-policy steps take the update forward's own, "
        "detached, and skip a forward; else recompute), recomputed in a forward, or those recorded while sampling"
    )
    rollout_is: Literal["none", "token", "sequence"] = Field(
        "none", description="truncated importance sampling of recomputed old vs sampling log-probs (needs old_logprobs=recompute or auto)"
    )
    rollout_is_cap: float = Field(2.0, gt=0, description="truncation C of the rollout_is weights")
    kl_coef: float = Field(0.0, ge=0, description="KL to the reference (initial) policy; 0 = no reference model")
    kl_type: str = Field("k3")
    kl_in_reward: bool = Field(False, description="subtract kl_coef * sequence KL from the reward instead of the loss")
    entropy_coef: float = Field(0.0)
    # method extras (grouprl.train.methods)
    ter: bool = Field(False, description="Confucius3-Math targeted entropy regularisation (stateful, checkpointed)")
    ter_kwargs: dict[str, Any] = Field(default_factory=dict, description="TER target (0.55) and coef (0.001)")
    overlong_buffer: int = Field(0, ge=0, description="DAPO overlong shaping: L_cache tokens before max_new_tokens (0 = off)")
    overlong_factor: float = Field(1.0, ge=0, description="DAPO overlong shaping: penalty at max_new_tokens")
    mask_truncated: bool = Field(False, description="DAPO overlong filtering: truncated responses get no loss")
    reward_components: list[str] = Field(
        default_factory=list, description="MaxMin: reward functions ('task' or 'module:function'), one per user group"
    )
    reward_models: str | None = Field(
        None, description="MaxMin: a directory from `grouprl fit-rewards`; its K reward models score each response into reward_components"
    )
    # optimisation
    steps: int = Field(200, ge=0, description="RL steps")
    lr: float = Field(1e-4, gt=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine floor as a fraction of lr")
    weight_decay: float = Field(0.0, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0, description="max grad norm (0 = off)")
    ppo_epochs: int = Field(1, ge=1)
    mini_batches: int = Field(1, ge=1, description="optimizer steps per epoch")
    micro_batch_size: int = Field(128, ge=1, description="rows per forward/backward (gradient accumulation)")
    # LoRA (optional extra grouprl[lora]: peft); lora_rank=0 trains all weights
    lora_rank: int = Field(0, ge=0, description="LoRA adapter rank (0 = full fine-tuning)")
    lora_alpha: float = Field(16.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="module names that get adapters",
    )
    # evaluation
    eval_every: int = Field(25, ge=0, description="evaluate every N RL steps (0 = only start and end)")
    eval_size: int | None = Field(
        None, ge=1, description="evaluate on N evenly spaced examples of the task's fixed eval set (default: all of it, "
        "1,000 for the arithmetic tasks); env runs: N episodes (default 500)"
    )
    pass_k: int = Field(4, ge=1, description="k of the sampled pass@k")
    pass_k_size: int = Field(50, ge=0, description="eval examples used for pass@k (0 = skip)")
    # output
    save_every: int = Field(10, ge=1, description="checkpoint every N steps (and at the end)")
    keep_checkpoints: int = Field(2, ge=1)
    reward_fn: str | None = Field(
        None, description="'module:function' scoring (example, completion) -> float, replacing the task's verifier "
        "(imported from sys.path, then the current directory; a config naming one is as trusted as code)"
    )
    reward_timeout_s: float = Field(2.0, gt=0)
    failure_reward: float = 0.0
    max_failed_reward_steps: int = Field(
        5, ge=0, description="stop the run when the verifier fails on every row of this many consecutive steps (0 = never)"
    )
    tensorboard: bool = Field(True, description="TensorBoard event files in RUN/tb (a one-line note when TensorBoard is not installed)")
    progress: bool = True
    # multi-turn agents (grouprl.train.env_source, selected by env=<name>; docs/agents.md)
    env: str | None = Field(None, description="train an agent in this text environment (grouprl.envs) instead of a task")
    env_kwargs: dict[str, Any] = Field(default_factory=dict, description="arguments of the environment")
    eval_env_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="env arguments of evaluation episodes, over env_kwargs (e.g. {opponent: random} for a self-play policy)",
    )
    max_turns: int = Field(10, ge=1, description="turns per episode (env runs)")
    history_len: int = Field(2, ge=0, description="past (observation, action) turns shown in the prompt (env runs)")
    instruction: str | None = Field(None, description="task instruction of env prompts (default: the env's action_prompt)")
    expert_noise: float = Field(0.5, ge=0, le=1, description="env SFT warm start: probability of a random move instead of the expert's")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        # a run dir is out_dir/name: the name must be one path component (no writing outside out_dir)
        if v and (v in (".", "..") or any(c in v for c in "/\\") or not v.isprintable()):
            raise ValueError(
                f"run name {v!r} is not a single directory name; use a name without / or \\, not '.' or '..' "
                "(e.g. name=exp1), and put parent directories in out_dir"
            )
        return v

    @field_validator("agg")
    @classmethod
    def _agg(cls, v: str) -> str:
        from ..losses import AGG_MODES

        if v not in AGG_MODES:
            raise ValueError(f"unknown aggregation {v!r}; choose one of {', '.join(AGG_MODES)}")
        return v

    @field_validator("loss")
    @classmethod
    def _loss(cls, v: str) -> str:
        from ..losses import LOSSES

        if v not in LOSSES:
            close = [n for n in LOSSES if n.startswith(v) or v.startswith(n)]
            close += [n for n in difflib.get_close_matches(v, list(LOSSES), n=3, cutoff=0.5) if n not in close]
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ValueError(f"unknown policy loss {v!r}; {hint}registered: {', '.join(sorted(LOSSES))}")
        return v

    @field_validator("credit")
    @classmethod
    def _credit(cls, v: str) -> str:
        from .credit import CREDITS

        CREDITS[v]  # UnknownName with close matches
        return v

    @field_validator("kl_type")
    @classmethod
    def _kl_type(cls, v: str) -> str:
        from ..losses import KL_TYPES

        if v not in KL_TYPES:
            raise ValueError(f"unknown KL estimator {v!r}; choose one of {', '.join(KL_TYPES)}")
        return v

    @field_validator("estimator")
    @classmethod
    def _estimator(cls, v: str) -> str:
        from ..advantages import registry

        try:
            registry.parse(v)
        except Exception as exc:  # UnknownName (with suggestions) or a malformed expression
            raise ValueError(str(exc)) from None  # UnknownName's str() has no KeyError quotes
        return v

    @field_validator("reward_timeout_s")
    @classmethod
    def _reward_timeout(cls, v: float) -> float:
        if v > MAX_REWARD_TIMEOUT_S:  # the guard's poll() overflows on larger values
            raise ValueError(f"reward_timeout_s={v:g} s is more than a day ({MAX_REWARD_TIMEOUT_S:g} s); use at most that")
        return v

    @field_validator("norm_const")
    @classmethod
    def _norm_const(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError(f"norm_const={v:g}: the loss divides by it; pass a positive number (default max_new_tokens)")
        return v

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, v: str) -> str:
        from ..sampling import SAMPLERS

        SAMPLERS[v]  # UnknownName with close matches
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: str | None) -> str | None:
        if v is not None:
            from ..envs import ENVS

            ENVS[v]  # UnknownName with close matches
        return v

    @field_validator("reward_fn")
    @classmethod
    def _reward_fn(cls, v: str | None) -> str | None:
        if v is not None:
            check_reward_spec("reward_fn", v)
        return v

    @field_validator("reward_components")
    @classmethod
    def _reward_components(cls, v: list[str]) -> list[str]:
        for i, spec in enumerate(v):
            if spec != "task":
                check_reward_spec(f"reward_components[{i}]", spec)
        return v

    @model_validator(mode="after")
    def _names_and_keywords(self) -> "TrainConfig":
        """Names looked up and keyword dicts checked against their callables (config_checks)."""
        if self.env is None:
            check_task(self.task)
        if self.init is None:
            check_model(self.model)
        check_mode(self)  # options and estimator/loss fields fit the mode: task or env= (grouprl.train.modes)
        # coerced values are written past validate_assignment (no re-validation loop)
        for name, value in checked_keywords(self).items():
            self.__dict__[name] = value
        if self.group_size == 1:
            check_group_of_one(self.estimator, self.estimator_kwargs)
        return self

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        base, _, index = v.partition(":")
        if base not in ("auto", "cpu", "cuda") or (index and (base != "cuda" or not index.isdigit())):
            raise ValueError(f"unknown device {v!r}; choose auto, cpu, cuda or cuda:N")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        if self.rollout_is != "none" and self.old_logprobs == "sampling":
            raise ValueError(
                f"rollout_is={self.rollout_is} needs old_logprobs=recompute or auto (with old_logprobs=sampling the "
                "weights are all 1); set old_logprobs=recompute or rollout_is=none"
            )
        if self.warm_start == "shipped" and self.init is not None:
            raise ValueError("warm_start=shipped and init are both set; RL starts from one of them: drop init, or "
                             "set warm_start=auto")
        if self.warm_start == "shipped" and self.env is not None:
            raise ValueError(f"warm_start=shipped: no warm start is shipped for environments (env={self.env}); "
                             "use warm_start=auto (an SFT warm start on the environment's expert)")
        if self.warm_start == "shipped":
            from .. import warmstarts

            if warmstarts.find(self.task, self.model, self.task_kwargs) is None:
                why = "; ".join(f"{ws.name}: {ws.fits(self.task, self.model, self.task_kwargs)}"
                                for ws in warmstarts.shipped().values())
                raise ValueError(f"warm_start=shipped: no shipped warm start fits task={self.task} model={self.model} "
                                 f"({why or 'none shipped'}); use warm_start=auto or sft")
        from .credit import CREDITS

        CREDITS[self.credit].check_config(self)  # the credit hook's declared needs (estimator traits, options)
        if self.mini_batches > self.prompts_per_step * self.group_size:
            raise ValueError(
                f"mini_batches={self.mini_batches} exceeds the rows per step "
                f"(prompts_per_step*group_size = {self.prompts_per_step * self.group_size})"
            )
        from .estimator_setup import check_method_config

        check_method_config(self)  # reward components / reward models and estimator hyperparameters
        return self

    def compat_hash(self, fields: Iterable[str] | None = None) -> str:
        """Hash of the fields that a resumed run must share with the original (all but RESUMABLE_FIELDS).

        ``fields`` restricts it to the fields a run of an older version had (the keys of its
        config.yaml): a field added since takes its default in the resumed config and is checked
        against that default by :func:`grouprl.train.rundir.check_resume`, not by the hash."""
        keep = None if fields is None else set(fields)
        d = {k: v for k, v in self.model_dump().items() if k not in RESUMABLE_FIELDS and (keep is None or k in keep)}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# Fields that may differ between a run and its resumption (they do not change the trajectory).
RESUMABLE_FIELDS = frozenset({"steps", "threads", "tensorboard", "progress", "out_dir", "name", "save_every", "keep_checkpoints",
                              "max_failed_reward_steps"})


class Section(NamedTuple):
    """One group of fields of a config file and of ``grouprl train --help``."""

    doc: str
    fields: tuple[str, ...]


#: Every field of TrainConfig in exactly one section (checked when this module is imported), in the
#: order of a written config.yaml and of the help panels; docs/training.md holds this as a table.
SECTIONS: dict[str, Section] = {
    "model": Section(
        "the policy and where RL starts: a preset or checkpoint, the shipped or SFT warm start, LoRA",
        ("model", "init", "warm_start", "sft_steps", "sft_batch_size", "sft_lr", "sft_warmup_steps", "sft_target_acc",
         "sft_check_every", "sft_val_size", "expert_noise", "lora_rank", "lora_alpha", "lora_dropout",
         "lora_target_modules"),
    ),
    "task": Section(
        "what is learned and how it is scored: a task or a multi-turn environment, the reward",
        ("task", "task_kwargs", "env", "env_kwargs", "max_turns", "history_len", "instruction", "reward_fn",
         "reward_timeout_s", "failure_reward", "max_failed_reward_steps", "reward_components", "reward_models"),
    ),
    "rollout": Section(
        "sampling: prompts per step and their sampler, responses per prompt, length, temperature",
        ("prompts_per_step", "group_size", "max_new_tokens", "temperature", "top_p", "sampler", "sampler_kwargs"),
    ),
    "method": Section(
        "the RL method: recipe, advantage estimator, policy loss and aggregation, credit, old log-probs, KL, "
        "entropy, reward shaping",
        ("method", "estimator", "estimator_kwargs", "loss", "loss_kwargs", "agg", "norm_const", "credit",
         "credit_kwargs", "old_logprobs", "rollout_is", "rollout_is_cap", "kl_coef", "kl_type", "kl_in_reward",
         "entropy_coef", "ter", "ter_kwargs", "overlong_buffer", "overlong_factor", "mask_truncated"),
    ),
    "optim": Section(
        "the update: steps, learning rate and schedule, AdamW, gradient clipping, epochs and batch split",
        ("steps", "lr", "lr_schedule", "warmup_steps", "min_lr_ratio", "weight_decay", "beta1", "beta2", "grad_clip",
         "ppo_epochs", "mini_batches", "micro_batch_size"),
    ),
    "eval": Section(
        "held-out evaluation: how often, on how many examples, pass@k",
        ("eval_every", "eval_size", "pass_k", "pass_k_size", "eval_env_kwargs"),
    ),
    "run": Section(
        "the run itself: directory, seed, threads, device, precision, checkpoints, logging",
        ("name", "out_dir", "seed", "threads", "device", "precision", "save_every", "keep_checkpoints", "tensorboard",
         "progress"),
    ),
}
SECTION_OF: dict[str, str] = {f: name for name, sec in SECTIONS.items() for f in sec.fields}


def _check_sections() -> None:
    listed = [f for sec in SECTIONS.values() for f in sec.fields]
    twice = sorted({f for f in listed if listed.count(f) > 1})
    missing = [f for f in TrainConfig.model_fields if f not in SECTION_OF]
    stale = [f for f in SECTION_OF if f not in TrainConfig.model_fields]
    if twice or missing or stale:  # a field without a section would be dropped from a written config.yaml
        raise RuntimeError(
            f"grouprl.train.config.SECTIONS does not list every TrainConfig field exactly once (in no section: "
            f"{missing}, in two: {twice}, not a field: {stale}); add each field to the section it belongs to"
        )


_check_sections()


def _close(key: str, names: list[str]) -> str:
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _section_fields(section: str, body: dict[str, Any], where: str) -> dict[str, Any]:
    """The fields of one section's mapping; a field of another section or no field is an error."""
    out = {}
    for key, value in body.items():
        home = SECTION_OF.get(key)
        if home is None:
            raise ConfigError(f"{where}: unknown config key {key!r} in section {section}"
                              f"{_close(key, list(SECTIONS[section].fields) + list(SECTION_OF))}; "
                              f"section {section} holds {', '.join(SECTIONS[section].fields)}")
        if home != section:
            raise ConfigError(f"{where}: {key} belongs to section {home}, not {section}; move it there "
                              f"({home}: {{{key}: ...}}, or {home}.{key}=... on the command line)")
        out[key] = value
    return out


def _is_section(key: str, value: Any) -> bool:
    # no section is named like a dict field; model, task, method name a section and a string field
    return key in SECTIONS and isinstance(value, dict)


def flatten_sections(values: dict[str, Any], where: str = "config") -> dict[str, Any]:
    """A config written flat or nested by section, as the flat dict of fields TrainConfig takes.

    Flat (no mapping under a section name) is returned as it is. Nested: every top-level key is a
    section and holds only its own fields. A dict mixing both, a section holding another section's
    field or an unknown key is a ``ConfigError`` naming ``where`` and saying where each key goes."""
    sections = [k for k, v in values.items() if _is_section(k, v)]
    if not sections:
        return values
    loose = [k for k in values if k not in sections]
    if loose:
        moves = []
        for k in loose:
            if k in SECTION_OF:
                moves.append(f"{k} -> {SECTION_OF[k]}")
            elif k in SECTIONS:
                moves.append(f"section {k} holds no mapping (write {k}: {{FIELD: VALUE}} or drop it)")
            else:
                moves.append(f"{k} is neither a section nor a field{_close(k, list(SECTIONS) + list(SECTION_OF))}")
        raise ConfigError(
            f"{where} mixes sections ({', '.join(sections)}) with top-level fields ({', '.join(loose)}). A config is "
            f"either flat (every field at the top level, as config.yaml files before sections) or nested "
            f"(every field under its section: {', '.join(SECTIONS)}). To nest it, move each top-level key under "
            f"its section: {'; '.join(moves)}"
        )
    out: dict[str, Any] = {}
    for name in sections:
        out.update(_section_fields(name, values[name], where))
    return out


def nest_sections(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The flat ``values`` grouped by section, in ``SECTIONS`` order (sections without a field left out)."""
    nested = {name: {f: values[f] for f in sec.fields if f in values} for name, sec in SECTIONS.items()}
    return {name: body for name, body in nested.items() if body}


def config_yaml(cfg: TrainConfig) -> str:
    """``cfg`` as the YAML of a run's config.yaml: every field, nested by section."""
    return yaml.safe_dump(nest_sections(cfg.model_dump()), sort_keys=False)


def _lift_sections(values: dict[str, Any]) -> dict[str, Any]:
    """Overrides where ``optim.lr=...`` (a section's mapping) and ``lr=...`` may mix: the flat dict."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        for field, v in (_section_fields(key, value, "override") if _is_section(key, value) else {key: value}).items():
            if field in out and not (isinstance(v, dict) and isinstance(out[field], dict)):
                raise ConfigError(f"{field} is set twice (as {field}= and {SECTION_OF[field]}.{field}=); keep one")
            out[field] = _merge(out[field], v) if field in out else v
    return out


class _Flag:
    """A bare ``--key`` (no value): True for a bool field, an error for any other."""

    def __repr__(self) -> str:
        return "<flag without value>"


_FLAG = _Flag()


def _coerce(text: str) -> Any:
    """A command-line value: YAML scalars/lists/dicts (``1e-4`` stays for pydantic to coerce)."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def parse_overrides(words: list[str]) -> dict[str, Any]:
    """``key=value``, ``--key value``, ``--key=value`` and ``--flag`` (True) into a dict of fields
    (dotted keys reach into dict fields, ``estimator_kwargs.eps=1e-6``, and into sections, ``optim.lr=1e-5``)."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(words):
        w = words[i]
        if w.startswith("--"):
            body = w[2:]
            if "=" in body:
                key, val = body.split("=", 1)
            elif i + 1 < len(words) and not words[i + 1].startswith("--") and "=" not in words[i + 1]:
                key, val = body, words[i + 1]
                i += 1
            else:
                key, val = body, _FLAG
        elif "=" in w:
            key, val = w.split("=", 1)
        else:
            raise ConfigError(f"cannot read {w!r}; write overrides as key=value or --key value")
        key = key.replace("-", "_")
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {p} is set both as a value and as a dict")
        node[parts[-1]] = val if val is _FLAG else _coerce(val)
        i += 1
    return _lift_sections(out)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_config(values: dict[str, Any]) -> TrainConfig:
    """Validate ``values`` (flat or nested by section); unknown keys get close-match suggestions, bad
    values name the field.

    ``method=NAME`` expands the recipe ``NAME`` (``grouprl.recipes``) under ``values`` first."""
    from ..core import UnknownName
    from ..recipes import expand_method

    values = flatten_sections(values)
    try:
        values = expand_method(values)
    except UnknownName as exc:
        raise ConfigError(f"method: {exc}; `grouprl list` shows the recipes") from None
    fields = list(TrainConfig.model_fields)
    for key in values:
        if key not in TrainConfig.model_fields:
            close = difflib.get_close_matches(key, fields, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(close)}?" if close else f" Known keys: {', '.join(fields)}."
            if key in SECTIONS:
                hint = (f" {key} is a section: set its fields ({key}: {{...}} in a file, {key}.FIELD=VALUE or "
                        f"FIELD=VALUE on the command line): {', '.join(SECTIONS[key].fields)}.")
            raise ConfigError(f"unknown config key {key!r}.{hint}")
        if values[key] is _FLAG:
            if TrainConfig.model_fields[key].annotation is not bool:
                raise ConfigError(f"--{key} needs a value: write --{key} VALUE or {key}=VALUE")
            values = {**values, key: True}
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if not err["loc"]:  # a whole-config check: its message names the fields itself
                lines.append(msg)
                continue
            where = ".".join(str(p) for p in err["loc"])
            lines.append(f"{where}: {msg} (got {err.get('input')!r})")
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines)) from None


def read_yaml_mapping(path: str | Path, what: str = "config file", holds: str = "of key: value",
                      error: type[ValueError] = ConfigError) -> dict[str, Any]:
    """A YAML file holding a mapping; a missing file, bad YAML or another shape raises ``error`` naming ``what``."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{what} {str(p)!r} does not exist")
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise error(f"{what} {str(p)!r} is not valid YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise error(f"{what} {str(p)!r} must hold a mapping {holds}")
    return loaded


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML config file, flat or nested by section, as a flat dict of fields (not validated)."""
    return flatten_sections(read_yaml_mapping(path), where=f"config file {str(path)!r}")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """YAML file (optional, flat or nested) merged with overrides (``lr`` or ``optim.lr`` keys), validated."""
    values = read_config_file(path) if path is not None else {}
    return build_config(_merge(values, _lift_sections(overrides or {})))
