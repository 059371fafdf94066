"""The rollout source of task runs (``grouprl train`` without ``env=``): prompts -> batch.

The training loop (:func:`grouprl.train.loop.train_loop`) asks a source for each step's rows; this
one draws prompts from the task's train pool with the configured prompt sampler, samples
``group_size`` responses each (KV-cached), scores them with the RewardGuard around the verifier
(a failing verifier gives ``failure_reward``, counted; ``max_failed_reward_steps`` stops a run whose
verifier fails on every row), lets the credit hook extend the rows (e.g. T-PPO's in-flight
responses) and hands back a :class:`Rollout`: the token rows, per-row rewards, the batch fields
``group`` (the prompt) and ``data_group``, the decoded texts and examples (for the method hooks),
and its metrics. Evaluation is greedy accuracy (and sampled pass@k) on a fixed, seed-independent
subset of the task's held-out split, one score per example in eval_items.jsonl.

Set-up: the task, its guard and eval set, and the policy RL starts from: ``init``, a shipped warm
start, or SFT on the task's reference answers (``load_initial_model``). Its batch fields and the
options it does not read are declared in ``grouprl.train.modes.MODES["task"]``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from collections.abc import Callable

import torch

from .. import warmstarts
from ..rollout import Generation, sample
from .config import ConfigError, TrainConfig
from .data import CORRECT, LazyTokens, decode_responses, encode_prompts, evaluate, evenly_spaced, step_generator
from .device import device_generator, resolve_device
from .logging import JsonlWriter
from .methods import reward_component_fns
from .modes import MODES, Rollout
from .reports import format_group_table, group_report, sampler_calibration
from .reward_fns import load_reward_fn
from .rundir import current_run
from .sampler import SAMPLERS, get_sampler, load_sampler_state, sampler_state
from .sft import sft, sft_kwargs, sft_progress, sft_summary

__all__ = [
    "RewardFunctionError",
    "Rollout",
    "TaskSource",
    "eval_item_ids",
    "eval_subset",
    "load_initial_model",
    "load_reward_fn",
    "load_task",
    "make_guard",
    "score",
    "shipped_warm_start",
    "warm_start_info",
]


class RewardFunctionError(ConfigError):
    """The reward function failed on every row for ``max_failed_reward_steps`` consecutive steps."""


_SFT_FIELDS = tuple(f for f in TrainConfig.model_fields if f.startswith("sft_"))


def _is_preset(name: str) -> bool:
    from ..models import PRESETS

    return name in PRESETS


def shipped_warm_start(cfg: TrainConfig) -> warmstarts.WarmStart | None:
    """The warm start shipped with grouprl that RL starts from, or None (``init``, SFT or a bare model).

    ``warm_start=auto`` takes it when one fits the task and model (``grouprl.warmstarts``) and no
    ``sft_*`` field differs from its default (a changed SFT setting asks for an SFT run);
    ``warm_start=shipped`` requires one (the config validator refuses a config without a fit)."""
    if cfg.init is not None or cfg.warm_start == "sft":
        return None
    ws = warmstarts.find(cfg.task, cfg.model, cfg.task_kwargs)
    if cfg.warm_start == "shipped":
        return ws
    changed = [f for f in _SFT_FIELDS if getattr(cfg, f) != TrainConfig.model_fields[f].default]
    return None if changed else ws


def warm_start_info(cfg: TrainConfig) -> dict[str, Any]:
    """Where RL starts, for summary.json: source (init, shipped, sft or none) and what identifies it."""
    if cfg.init is not None:
        return {"source": "init", "path": str(cfg.init)}
    ws = shipped_warm_start(cfg)
    if ws is not None:
        return {"source": "shipped", "name": ws.name, "sha256": ws.manifest["files"].get("model.safetensors")}
    return {"source": "sft" if cfg.sft_steps > 0 else "none"}


def load_initial_model(cfg: TrainConfig, task: Any, run_dir: Path, console: Any = None):
    """The policy RL starts from: ``init`` if given, else a shipped warm start (:func:`shipped_warm_start`),
    else the preset/HF dir, SFT-ed when sft_steps > 0.

    The SFT result is saved to ``run_dir/sft`` (and reused by a resume); RL always starts from the
    weights as loaded from disk, so an uninterrupted and a resumed run start from the same model.
    """
    from ..models import build_model, build_tokenizer, load_pretrained, save_pretrained

    if cfg.init is not None:
        if not Path(cfg.init).is_dir():
            raise ConfigError(f"init: {cfg.init!r} is not a directory; pass a checkpoint dir saved by `grouprl sft`.")
        return load_pretrained(cfg.init)
    ws = shipped_warm_start(cfg)
    if ws is not None:
        try:
            warmstarts.verify(ws)
        except warmstarts.WarmStartError as exc:
            raise ConfigError(str(exc)) from None
        if console is not None:
            console.print(f"warm start: {ws.describe()}; `warm_start=sft` trains one instead")
        return load_pretrained(str(ws.path))
    if cfg.sft_steps == 0:
        if _is_preset(cfg.model):
            tok = build_tokenizer("char")
            return build_model(cfg.model, tok, seed=cfg.seed), tok
        return load_pretrained(cfg.model)
    sft_dir = run_dir / "sft"
    if not (sft_dir / "config.json").exists():
        if _is_preset(cfg.model):
            tok = build_tokenizer("char")
            model = build_model(cfg.model, tok, seed=cfg.seed)
        else:
            model, tok = load_pretrained(cfg.model)
        t0 = time.perf_counter()
        model.to(resolve_device(cfg.device))  # the warm start trains on the GPU too
        with sft_progress(console, steps=cfg.sft_steps, target=cfg.sft_target_acc or None,
                          enabled=cfg.progress) as on_step:
            hist = sft(model, tok, task, **sft_kwargs(cfg), on_step=on_step)
        # the log is published with the weights (one rename): a kill cannot keep one without the other
        save_pretrained(model, tok, sft_dir, files={"sft_log.jsonl": "".join(json.dumps(r) + "\n" for r in hist)})
        if console is not None:
            console.print(f"SFT: {sft_summary(hist)}, {time.perf_counter() - t0:.0f}s -> {sft_dir}")
            missed = _sft_missed_target(cfg, hist)
            if missed:
                console.print(f"[bold yellow]warning:[/] {missed}")
    return load_pretrained(str(sft_dir))


def load_task(cfg: TrainConfig) -> Any:
    """The task named by ``cfg.task``, built with ``cfg.task_kwargs``; a bad argument is a ConfigError."""
    from ..tasks import get_task

    try:
        return get_task(cfg.task, seed=cfg.seed, **cfg.task_kwargs)
    except TypeError as exc:
        raise ConfigError(f"task_kwargs {cfg.task_kwargs} do not fit task {cfg.task!r}: {exc}") from None


def make_guard(cfg: TrainConfig, task: Any):
    """The RewardGuard around the verifier: ``reward_fn`` if given (untrusted: a worker process with
    a timeout), else the task's own scorer (in-process when the task says it is trusted)."""
    from ..tasks import RewardGuard

    if cfg.reward_fn:
        guard = RewardGuard(load_reward_fn(cfg.reward_fn), timeout_s=cfg.reward_timeout_s,
                            failure_reward=cfg.failure_reward)
    else:
        guard = RewardGuard(task.score, timeout_s=cfg.reward_timeout_s, failure_reward=cfg.failure_reward,
                            trusted=bool(getattr(task, "trusted", False)))
    run = current_run()
    if run is not None:  # inside train(): its worker stops when train returns or fails
        run.guards.append(guard)
    return guard


def eval_subset(task: Any, size: int | None) -> list:
    """A fixed, seed-independent subset of the task's held-out examples: evenly spaced indices, so
    every sub-task keeps its share and runs with different seeds are evaluated on the same set
    (``size=None``: all of them)."""
    examples = list(task.eval_examples)
    return [examples[i] for i in evenly_spaced(len(examples), size)]


def eval_item_ids(task: Any, size: int | None) -> list[str]:
    """The stable id of each example of ``eval_subset(task, size)`` (same order): its index in the
    task's full held-out split ``task.eval_examples``, as a string. That split depends on the task's
    own settings only (never on the run's seed), so an id names the same example for every method
    and seed, and for every ``eval_size`` (the subset keeps the full split's indices). Indices rather
    than prompt texts: unique by construction where texts repeat (a mixed task holds ``12+34=`` both
    in ``add2`` and in ``add2r``, with different answers) and short (eval_items.jsonl stores one score
    per example per evaluation)."""
    return [str(i) for i in evenly_spaced(len(task.eval_examples), size)]


def _check_failed_rewards(cfg: TrainConfig, streak: int, step: int, guard: Any) -> None:
    """Stop the run (RewardFunctionError) once the verifier failed on every row of
    ``max_failed_reward_steps`` consecutive steps (0: never)."""
    n = cfg.max_failed_reward_steps
    if not n or streak < n:
        return
    first = getattr(guard, "first_failure", None) or "(not recorded)"
    raise RewardFunctionError(
        f"the reward function failed on every row of {streak} consecutive steps (steps {step + 2 - streak}-{step + 1}, "
        f"max_failed_reward_steps={n}); first failure: {first}. Fix the reward function"
        + (f" ({cfg.reward_fn})" if cfg.reward_fn else "")
        + ", or set max_failed_reward_steps=0 to train on regardless."
    )


def score(gen: Generation, pool: list, tok: Any, guard: Any) -> torch.Tensor:
    """Rewards of ``gen``'s full responses by the verifier guard (used by credit hooks, e.g. SPO's
    MC continuations; failures get the guard's failure reward)."""
    gen.texts = decode_responses(tok, gen)
    rewards, _failed = guard.score_batch([pool[i] for i in gen.prompt_index.tolist()], gen.texts)
    return rewards


def _scalars(prefix: str, metrics: dict[str, Any]) -> dict[str, float]:
    """The scalar entries of a metrics dict (numbers and one-element tensors), prefixed."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[prefix + k] = float(v)
    return out


def _sft_missed_target(cfg: TrainConfig, hist: list[dict[str, Any]]) -> str | None:
    """A warning when SFT ran out of steps below ``sft_target_acc`` (None when it reached it or had none)."""
    checked = [r["val_acc"] for r in hist if "val_acc" in r]
    if not cfg.sft_target_acc or not checked or checked[-1] >= cfg.sft_target_acc:
        return None
    return (f"SFT used all sft_steps={cfg.sft_steps} and reached validation accuracy {checked[-1]:.3f} < "
            f"sft_target_acc={cfg.sft_target_acc}; RL from a warm start this weak rarely helps (docs/training.md). "
            "Raise sft_steps or try another seed; or start from a checkpoint that is past it (init=DIR, or a warm start "
            "shipped with grouprl: `grouprl list` shows them).")




class TaskSource:
    """Prompts -> batch: the rollout source of task runs (see the module docstring).

    The loop calls, in order: ``configure(cfg, resume)`` (the class's), the constructor, ``initial_model()``; ``start(model, tok, credit)`` once the policy,
    credit hook and optimizer exist; ``load_state_dict(state)`` on a resume; ``open_logs()``; per step ``rollout(step, model, ctx)``; ``evaluate(step, model)``
    at evaluation points; ``state_dict()`` / ``load_state_dict()`` with the checkpoints; ``close()``."""

    mode = MODES["task"]
    log_files = ("eval_items.jsonl",)  # written here (and truncated with the loop's logs on a resume)

    @staticmethod
    def configure(cfg: TrainConfig, resume: Any) -> TrainConfig:
        """The config as the run uses it (task runs: as given)."""
        return cfg

    def __init__(self, cfg: TrainConfig, run_dir: Path, device: torch.device, amp: Callable, console: Any = None) -> None:
        self.cfg, self.run_dir, self.device, self.amp, self.console = cfg, run_dir, device, amp, console
        self.task = load_task(cfg)
        self.pool = list(self.task.train_pool)
        self.eval_set, self.eval_ids = eval_subset(self.task, cfg.eval_size), eval_item_ids(self.task, cfg.eval_size)
        if console is not None and cfg.eval_size is not None and cfg.eval_size > len(self.eval_set):
            console.print(f"note: eval_size={cfg.eval_size}, but task {cfg.task} holds {len(self.eval_set)} held-out "
                          f"examples; evaluating on {len(self.eval_set)} (each eval.jsonl row records n)")
        self.guard = make_guard(cfg, self.task)
        self.failures_total, self.failed_streak = 0, 0
        self.items_log: JsonlWriter | None = None

    def initial_model(self):
        return load_initial_model(self.cfg, self.task, self.run_dir, self.console)

    def warm_start_info(self) -> dict[str, Any]:
        return warm_start_info(self.cfg)

    def reward_component_fns(self) -> list:
        """The scorers of ``reward_components`` / ``reward_models`` (``MethodHooks``)."""
        return reward_component_fns(self.cfg, self.task, self.guard)

    def start(self, model: torch.nn.Module, tok: Any, credit: Any) -> None:
        cfg = self.cfg
        self.tok, self.credit = tok, credit
        group_names = sorted({e.data_group for e in self.pool}, key=str)
        self.group_id = {g: i for i, g in enumerate(group_names)}
        wants_groups = "prompt_groups" in SAMPLERS[cfg.sampler].needs  # the sampler's declared inputs
        self.sampler = get_sampler(cfg.sampler, len(self.pool), seed=cfg.seed, **cfg.sampler_kwargs,
                                   prompt_groups=[e.data_group for e in self.pool] if wants_groups else None)
        self.pool_prompts = LazyTokens([e.prompt for e in self.pool], lambda t: encode_prompts(tok, t))

    def open_logs(self) -> None:
        """Open this source's own log (after the loop cut the logs back to the resumed step)."""
        self.items_log = JsonlWriter(self.run_dir / "eval_items.jsonl", fsync_every_line=False)  # per-example scores

    def score(self, gen: Generation) -> torch.Tensor:
        """Rewards of full responses (credit hooks' continuations, e.g. SPO's MC values)."""
        return score(gen, self.pool, self.tok, self.guard)

    # ------------------------------------------------------------------ one step
    def rollout(self, step: int, model: torch.nn.Module, ctx: Any) -> Rollout:
        """The sampler picks prompts; G samples each; the guard scores them; the credit hook may
        extend the rows (``ctx``: its ``CreditContext``)."""
        cfg, pool = self.cfg, self.pool
        g_sample = device_generator(step_generator(cfg.seed, step, 1), self.device)
        counts = {"failures": 0, "rows": 0}

        def generate(prompt_indices: list[int]) -> Generation:
            with self.amp():
                gen = sample(model, [self.pool_prompts[i] for i in prompt_indices], eos_id=self.tok.eos_token_id,
                             pad_id=self.tok.pad_token_id, max_new_tokens=cfg.max_new_tokens,
                             num_samples=cfg.group_size, temperature=cfg.temperature, top_p=cfg.top_p,
                             generator=g_sample, prompt_index=prompt_indices,
                             logits_processor=self.credit.logits_processor())
            gen.texts = decode_responses(self.tok, gen)
            examples = [pool[i] for i in gen.prompt_index.tolist()]
            gen.rewards, gen.failed = self.guard.score_batch(examples, gen.texts)
            counts["failures"] += int(gen.failed.sum())
            counts["rows"] += len(gen)
            return gen

        n_prompts = self.credit.prompts_to_draw(cfg.prompts_per_step, cfg.group_size)  # T-PPO: the free slots
        gen, sampler_metrics = self.sampler.collect(step, n_prompts, generate) if n_prompts > 0 else (None, {})
        all_failed = counts["rows"] and counts["failures"] == counts["rows"]
        self.failed_streak = self.failed_streak + 1 if all_failed else 0
        _check_failed_rewards(cfg, self.failed_streak, step, self.guard)
        gen = self.credit.extend_rollout(gen, ctx)  # e.g. T-PPO: continue the in-flight responses
        gen.rewards = gen.rewards.to(self.device)  # the verifier scores on the host
        model.train()
        self.failures_total += counts["failures"]
        texts = gen.texts  # decoded in generate(); a credit hook may have replaced the rows since
        if cfg.credit != "none" or texts is None or len(texts) != len(gen):
            texts = decode_responses(self.tok, gen)
        examples = [pool[i] for i in gen.prompt_index.tolist()]
        data_group = torch.tensor([self.group_id[e.data_group] for e in examples], device=self.device)
        return Rollout(
            gen=gen, rewards=gen.rewards, fields={"group": gen.prompt_index, "data_group": data_group},
            texts=texts, examples=examples,
            head={"reward": float(gen.rewards.mean()),
                  "reward_std": float(gen.rewards.std()) if len(gen) > 1 else 0.0,
                  "acc": float((gen.rewards >= CORRECT).float().mean())},
            tail={"reward_failures": counts["failures"], "reward_failures_total": self.failures_total},
            extra={**_scalars("sampler/", sampler_metrics), **sampler_calibration(self.sampler)},
        )

    def evaluate(self, step: int, model: torch.nn.Module) -> dict[str, Any]:
        """Greedy accuracy (and sampled pass@k) on the fixed eval subset; per-example scores to
        eval_items.jsonl; the per-data-group table to the console."""
        cfg = self.cfg
        row = {"step": step, **evaluate(
            model, self.tok, self.eval_set, self.guard, max_new_tokens=self.credit.eval_max_new_tokens(cfg.max_new_tokens),
            pass_k=cfg.pass_k, pass_k_size=cfg.pass_k_size, temperature=cfg.temperature, top_p=cfg.top_p,
            generator=device_generator(step_generator(cfg.seed, step, 5), self.device))}
        assert self.items_log is not None
        self.items_log.write({"step": step, "items": dict(zip(self.eval_ids, row.pop("scores")))})
        row.update(group_report(row, self.eval_set))  # per data_group table, worst / p20 / Gini
        if self.console is not None:
            self.console.print(format_group_table(step, row))
        return row

    # ------------------------------------------------------------------ checkpoint, logs
    def state_dict(self) -> dict[str, Any]:
        return {"sampler": sampler_state(self.sampler), "failures_total": self.failures_total,
                "failed_reward_steps": self.failed_streak}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_sampler_state(self.sampler, state["sampler"])
        self.failures_total = int(state["failures_total"])
        self.failed_streak = int(state.get("failed_reward_steps", 0))

    def summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        return summary

    def sync(self) -> None:
        if self.items_log is not None:
            self.items_log.sync()

    def close(self) -> None:
        if hasattr(self.guard, "close"):
            self.guard.close()
        if self.items_log is not None:
            self.items_log.close()
