"""The rollout source of environment runs (``grouprl train env=NAME``): seeds -> episodes -> batch.

The training loop (:func:`grouprl.train.loop.train_loop`) asks a source for each step's rows; this
one draws ``prompts_per_step`` environment seeds (below EVAL_SEED0) and plays ``group_size``
episodes of each in lock-step, one batched ``sample`` call per turn
(:func:`grouprl.rollout.multiturn.run_episodes`), and hands back one row per agent step: the
token rows, the row's reward (its agent's episode return) and the agent fields of the step-level
``Rollouts`` batch (group = the seed, trajectory, step, state_key, transition_key, step_rewards,
agent, role, extras["invalid_action"]; docs/agents.md). Its batch fields and the options it does not
read are declared in ``grouprl.train.modes.MODES["env"]``.

Set-up: the policy RL starts from is ``init``, or the preset / HF dir, SFT-ed on noisy-expert turns
when ``sft_steps`` > 0 (``expert_noise``; saved to run_dir/sft and reused by a resume). Evaluation
plays the eval seeds EVAL_SEED0 + 0..eval_size-1 (training seeds are drawn below EVAL_SEED0, so
never overlap) once greedily and once at the training temperature, in the environment built with
``env_kwargs`` then ``eval_env_kwargs`` (e.g. a fixed opponent for a self-play policy). Rows carry
``acc`` = the greedy success rate (for ``grouprl plot`` and the summary), ``acc/sampled``, and
``greedy_*``/``sampled_*`` success, return, invalid-action rate, episode length and win/draw/loss
rates. Without an explicit ``estimator`` an env run trains with ``gigpo`` (``configure``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from collections.abc import Callable

import torch

from ..core import Rollouts
from ..rollout.multiturn import AgentBatch, run_episodes
from .agent_sft import agent_sft, expert_turns
from .config import ConfigError, TrainConfig
from .data import step_generator
from .device import device_generator, resolve_device
from .modes import MODES, Rollout

__all__ = ["DEFAULT_ESTIMATOR", "EVAL_SEED0", "SFT_SEED0", "EnvSource", "agent_batch_to_rollouts", "agent_fields"]

ENV_EVAL_EPISODES = 500  # evaluation episodes when eval_size is unset
EVAL_SEED0 = 1_000_000  # eval seeds: EVAL_SEED0 + 0..eval_size-1 (train seeds are drawn below it)
SFT_SEED0 = 2_000_000  # seeds of the warm-start expert episodes
SFT_EPISODES = 256
DEFAULT_ESTIMATOR = "gigpo"  # the estimator of env runs whose config names none


def agent_fields(ab: AgentBatch) -> dict[str, Any]:
    """The step-level ``Rollouts`` fields of a multi-turn rollout beyond rewards and mask (docs/agents.md)."""
    return dict(group=ab.group, trajectory=ab.trajectory, step=ab.step, state_key=ab.state_key,
                transition_key=ab.transition_key, step_rewards=ab.step_rewards, agent=ab.agent, role=ab.agent,
                extras={"invalid_action": ab.invalid.float()})


def agent_batch_to_rollouts(ab: AgentBatch, mask: torch.Tensor, **token_fields: Any) -> Rollouts:
    """The step-level ``Rollouts`` batch of a multi-turn rollout (the fields of docs/agents.md)."""
    return Rollouts(rewards=ab.rewards, mask=mask, **agent_fields(ab), **token_fields)


def _env_factory(cfg: TrainConfig, evaluation: bool = False):
    """A factory of ``cfg.env`` with ``env_kwargs`` (and, for evaluation, ``eval_env_kwargs`` over them)."""
    from ..envs import get_env

    kwargs = {**cfg.env_kwargs, **(cfg.eval_env_kwargs if evaluation else {})}
    get_env(cfg.env, **kwargs)  # fail early: unknown name (close matches) or bad arguments
    return lambda: get_env(cfg.env, **kwargs)


def _episode_metrics(ab: AgentBatch) -> dict[str, float]:
    """Per-episode means (agent 0). The outcome rates read agent 0's reward on the step that ended
    the episode (so step penalties such as the invalid-move one do not count): ``win_rate`` > 0,
    ``loss_rate`` < 0, ``draw_rate`` = 0 (tic-tac-toe: a draw; grid world: a hole); episodes cut off
    by ``max_turns`` count in none of them."""
    done, final = ab.episode_done, ab.episode_final_reward
    return {
        "success": float(ab.episode_success.float().mean()),
        "return": float(ab.episode_return.mean()),
        "invalid_rate": float(ab.invalid.float().mean()),
        "episode_len": float(ab.episode_length.float().mean()),
        "win_rate": float((done & (final > 0)).float().mean()),
        "draw_rate": float((done & (final == 0)).float().mean()),
        "loss_rate": float((done & (final < 0)).float().mean()),
    }


class EnvSource:
    """Environment seeds -> episodes -> batch: the rollout source of env runs (see the module
    docstring; the loop calls it as it calls :class:`grouprl.train.task_source.TaskSource`)."""

    mode = MODES["env"]
    log_files: tuple[str, ...] = ()

    @staticmethod
    def configure(cfg: TrainConfig, resume: Any) -> TrainConfig:
        """The config with the env default estimator when none was named (a resume keeps its own)."""
        if "estimator" not in cfg.model_fields_set and resume is None:
            return cfg.model_copy(update={"estimator": DEFAULT_ESTIMATOR})
        return cfg

    def __init__(self, cfg: TrainConfig, run_dir: Path, device: torch.device, amp: Callable, console: Any = None) -> None:
        self.cfg, self.run_dir, self.device, self.amp, self.console = cfg, run_dir, device, amp, console
        self.make_env = _env_factory(cfg)
        self.make_eval_env = _env_factory(cfg, evaluation=True)
        self.eval_seeds = list(range(EVAL_SEED0, EVAL_SEED0 + (cfg.eval_size or ENV_EVAL_EPISODES)))
        self.task = None  # no task: the method hooks read none of its parts in env runs (modes.MODES)

    def initial_model(self):
        """``init`` if given; else the preset/HF dir, SFT-ed on noisy-expert turns when sft_steps > 0
        (saved to run_dir/sft and reused by a resume)."""
        from ..models import PRESETS, build_model, build_tokenizer, load_pretrained, save_pretrained

        cfg = self.cfg
        if cfg.init is not None:
            if not Path(cfg.init).is_dir():
                raise ConfigError(f"init: {cfg.init!r} is not a directory; pass a checkpoint dir.")
            return load_pretrained(cfg.init)

        def fresh():
            if cfg.model in PRESETS:
                tok = build_tokenizer("char")
                return build_model(cfg.model, tok, seed=cfg.seed), tok
            return load_pretrained(cfg.model)

        if cfg.sft_steps == 0:
            return fresh()
        sft_dir = self.run_dir / "sft"
        if not (sft_dir / "config.json").exists():
            model, tok = fresh()
            t0 = time.perf_counter()
            pairs = expert_turns(self.make_env, cfg.env, list(range(SFT_SEED0, SFT_SEED0 + SFT_EPISODES)),
                                 noise=cfg.expert_noise, max_turns=cfg.max_turns, history_len=cfg.history_len,
                                 instruction=cfg.instruction, seed=cfg.seed)
            model.to(resolve_device(cfg.device))  # the warm start trains on the GPU too
            hist = agent_sft(model, tok, pairs, steps=cfg.sft_steps, batch_size=cfg.sft_batch_size, lr=cfg.sft_lr,
                             warmup_steps=cfg.sft_warmup_steps, seed=cfg.seed)
            save_pretrained(model, tok, sft_dir)
            if self.console is not None:
                self.console.print(f"agent SFT: {len(pairs)} expert turns (noise {cfg.expert_noise}), {cfg.sft_steps} "
                                   f"steps, final loss {hist[-1]['loss']:.3f}, {time.perf_counter() - t0:.0f}s -> {sft_dir}")
        return load_pretrained(str(sft_dir))

    def warm_start_info(self) -> dict[str, Any]:
        """Where RL starts, for summary.json: init (with its path), sft (expert turns) or none."""
        if self.cfg.init is not None:
            return {"source": "init", "path": str(self.cfg.init)}
        return {"source": "sft" if self.cfg.sft_steps > 0 else "none"}

    def reward_component_fns(self) -> list:
        return []  # reward components are refused for env runs at config load (modes.MODES["env"])

    def start(self, model: torch.nn.Module, tok: Any, credit: Any) -> None:
        self.tok = tok

    def open_logs(self) -> None:
        return None  # the loop's metrics.jsonl and eval.jsonl only

    def score(self, gen: Any) -> torch.Tensor:  # pragma: no cover - credit hooks are refused for env runs
        raise ConfigError("env runs score episodes in the environment; credit hooks are not available (credit=none)")

    def _episodes(self, model, make_env, seeds: list[int], group_size: int, greedy: bool,
                  gen: torch.Generator | None) -> AgentBatch:
        """Episodes sampled on the training device under autocast; the batch comes back there."""
        cfg = self.cfg
        with self.amp():
            ab = run_episodes(model, self.tok, make_env, seeds, group_size=group_size, max_turns=cfg.max_turns,
                              history_len=cfg.history_len, instruction=cfg.instruction,
                              max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                              greedy=greedy, generator=None if gen is None else device_generator(gen, self.device))
        return ab.to(self.device)

    # ------------------------------------------------------------------ one step
    def rollout(self, step: int, model: torch.nn.Module, ctx: Any) -> Rollout:
        """``prompts_per_step`` seeds x ``group_size`` episodes, lock-step; one row per agent step."""
        cfg = self.cfg
        seeds = torch.randint(EVAL_SEED0, (cfg.prompts_per_step,), generator=step_generator(cfg.seed, step, 3)).tolist()
        ab = self._episodes(model, self.make_env, seeds, cfg.group_size, False, step_generator(cfg.seed, step, 1))
        model.train()
        return Rollout(
            gen=ab.gen, rewards=ab.rewards, fields=agent_fields(ab), texts=list(ab.texts), examples=None,
            head={"reward": float(ab.episode_return.mean()), **_episode_metrics(ab),
                  "acc": float(ab.episode_success.float().mean()),  # = success; the name `grouprl plot` reads
                  "rows": len(ab), "model_calls": ab.model_calls},
            tail={"reward_failures_total": 0},
        )

    def evaluate(self, step: int, model: torch.nn.Module) -> dict[str, Any]:
        """The eval seeds played once greedily and once sampled (seeded by (seed, step))."""
        greedy = _episode_metrics(self._episodes(model, self.make_eval_env, self.eval_seeds, 1, True, None))
        sampled = _episode_metrics(self._episodes(model, self.make_eval_env, self.eval_seeds, 1, False,
                                                  step_generator(self.cfg.seed, step, 5)))
        row = {"step": step, "acc": greedy["success"], **{f"greedy_{k}": v for k, v in greedy.items()},
               **{f"sampled_{k}": v for k, v in sampled.items()}}
        row["acc/sampled"] = row["sampled_success"]  # drawn by `grouprl plot` beside the greedy curve
        return row

    # ------------------------------------------------------------------ checkpoint, logs
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        return {**summary, "env": self.cfg.env, "warm_start_success": summary["warm_start_acc"],
                "final_success": summary["final_acc"]}

    def sync(self) -> None:
        return None

    def close(self) -> None:
        return None
