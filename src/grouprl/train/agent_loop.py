"""The agent training loop: ``grouprl train env=<name> ...`` (multi-turn text environments), top to bottom.

    set up (run dir, environment factory, model [+ noisy-expert SFT warm start], optimizer)
    resume from the latest checkpoint, or evaluate the warm start as step 0
    for each step:
        1. rollout     prompts_per_step seeds x group_size episodes each, in lock-step, one batched
                       ``sample`` call per turn (grouprl.rollout.multiturn); one row per agent step
        2. logprobs    old-policy log-probs recomputed in one forward (or the sampling ones)
        3. advantages  any registered estimator on a step-level Rollouts batch (group = the seed,
                       trajectory, step, state_key, transition_key, step_rewards, agent, role,
                       extras["invalid_action"]); default gigpo
        4. update      the same PPO-style update as the task loop (epochs x mini x micro batches,
                       normalisers per mini-batch, grad clipping, AdamW, LR schedule)
        5. log, evaluate (fixed held-out eval seeds, greedy and sampled), checkpoint

It reuses the task loop's pieces (run dir, summary, progress bar, forward log-probs, update) and
its checkpoint format, so ``--resume`` works the same way; ``device``, ``precision`` (bf16 autocast
of rollout, log-prob forwards and update) and LoRA are honoured as in the task loop, through
``grouprl.train.device``. Evaluation plays the eval seeds EVAL_SEED0 + 0..eval_size-1 (training
seeds are drawn below EVAL_SEED0, so never overlap) once greedily and once at the training
temperature, in the environment built with ``env_kwargs`` then ``eval_env_kwargs`` (e.g. a fixed
opponent for a self-play policy). Rows carry ``acc`` = the greedy success rate (for ``grouprl plot``
and the summary), ``acc/sampled``, and ``greedy_*``/``sampled_*`` success, return, invalid-action
rate, episode length and win/draw/loss rates.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import torch

from ..advantages import compute_advantages
from ..advantages.registry import group_diagnostics
from ..core import Rollouts
from ..rollout.multiturn import AgentBatch, run_episodes
from .agent_sft import agent_sft, expert_turns
from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, seed_global_rngs, set_rng_state
from .config import ConfigError, TrainConfig
from .data import step_generator
from .device import apply_lora, autocast, device_generator, resolve_device, resolve_precision, trainable_parameters
from .._osutil import write_text_atomic
from .logging import JsonlWriter, TensorBoard, truncate_after
from .loop import _forward_logprobs, _is_preset, _Progress, _summary, begin_step, update_policy
from .rundir import prepare_run_dir

__all__ = ["train_agent", "agent_batch_to_rollouts", "EVAL_SEED0", "SFT_SEED0"]

ENV_EVAL_EPISODES = 500  # evaluation episodes when eval_size is unset
EVAL_SEED0 = 1_000_000  # eval seeds: EVAL_SEED0 + 0..eval_size-1 (train seeds are drawn below it)
SFT_SEED0 = 2_000_000  # seeds of the warm-start expert episodes
SFT_EPISODES = 256


def agent_batch_to_rollouts(ab: AgentBatch, mask: torch.Tensor, **token_fields: Any) -> Rollouts:
    """The step-level ``Rollouts`` batch of a multi-turn rollout (the fields of docs/agents.md)."""
    return Rollouts(
        rewards=ab.rewards, group=ab.group, mask=mask, trajectory=ab.trajectory, step=ab.step,
        state_key=ab.state_key, transition_key=ab.transition_key, step_rewards=ab.step_rewards,
        agent=ab.agent, role=ab.agent, extras={"invalid_action": ab.invalid.float()}, **token_fields,
    )


def _env_factory(cfg: TrainConfig, evaluation: bool = False):
    """A factory of ``cfg.env`` with ``env_kwargs`` (and, for evaluation, ``eval_env_kwargs`` over them)."""
    from ..envs import get_env

    kwargs = {**cfg.env_kwargs, **(cfg.eval_env_kwargs if evaluation else {})}
    get_env(cfg.env, **kwargs)  # fail early: unknown name (close matches) or bad arguments
    return lambda: get_env(cfg.env, **kwargs)


def _initial_model(cfg: TrainConfig, make_env, run_dir: Path, console: Any):
    """``init`` if given; else the preset/HF dir, SFT-ed on noisy-expert turns when sft_steps > 0
    (saved to run_dir/sft and reused by a resume)."""
    from ..models import build_model, build_tokenizer, load_pretrained, save_pretrained

    if cfg.init is not None:
        if not Path(cfg.init).is_dir():
            raise ConfigError(f"init: {cfg.init!r} is not a directory; pass a checkpoint dir.")
        return load_pretrained(cfg.init)

    def fresh():
        if _is_preset(cfg.model):
            tok = build_tokenizer("char")
            return build_model(cfg.model, tok, seed=cfg.seed), tok
        return load_pretrained(cfg.model)

    if cfg.sft_steps == 0:
        return fresh()
    sft_dir = run_dir / "sft"
    if not (sft_dir / "config.json").exists():
        model, tok = fresh()
        t0 = time.perf_counter()
        pairs = expert_turns(make_env, cfg.env, list(range(SFT_SEED0, SFT_SEED0 + SFT_EPISODES)), noise=cfg.expert_noise,
                             max_turns=cfg.max_turns, history_len=cfg.history_len, instruction=cfg.instruction,
                             seed=cfg.seed)
        model.to(resolve_device(cfg.device))  # the warm start trains on the GPU too
        hist = agent_sft(model, tok, pairs, steps=cfg.sft_steps, batch_size=cfg.sft_batch_size, lr=cfg.sft_lr,
                         warmup_steps=cfg.sft_warmup_steps, seed=cfg.seed)
        save_pretrained(model, tok, sft_dir)
        if console is not None:
            console.print(f"agent SFT: {len(pairs)} expert turns (noise {cfg.expert_noise}), {cfg.sft_steps} steps, "
                          f"final loss {hist[-1]['loss']:.3f}, {time.perf_counter() - t0:.0f}s -> {sft_dir}")
    return load_pretrained(str(sft_dir))


def initial_agent_model(cfg: TrainConfig, run_dir: Path, console: Any = None):
    """The policy an env run starts from (``init``, or the expert SFT saved to ``run_dir/sft``)."""
    return _initial_model(cfg, _env_factory(cfg), run_dir, console)


def _episodes(model, tok, make_env, cfg: TrainConfig, seeds: list[int], group_size: int, greedy: bool, gen,
              device: torch.device, amp) -> AgentBatch:
    """Episodes sampled on ``device`` under ``amp``; the batch comes back on ``device``."""
    with amp():
        ab = run_episodes(model, tok, make_env, seeds, group_size=group_size, max_turns=cfg.max_turns,
                          history_len=cfg.history_len, instruction=cfg.instruction, max_new_tokens=cfg.max_new_tokens,
                          temperature=cfg.temperature, top_p=cfg.top_p, greedy=greedy,
                          generator=None if gen is None else device_generator(gen, device))
    return ab.to(device)


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


def train_agent(cfg: TrainConfig, *, resume: str | Path | None = None, console: Any = None) -> dict[str, Any]:
    """Run (or resume) agent RL in ``cfg.env``; returns the summary (also in summary.json)."""
    if "estimator" not in cfg.model_fields_set and resume is None:
        cfg = cfg.model_copy(update={"estimator": "gigpo"})  # the default estimator of env runs
    if cfg.credit != "none" or cfg.kl_in_reward or cfg.reward_fn:
        raise ConfigError("env runs support credit=none, kl_in_reward=false and no reward_fn (the env gives rewards)")
    torch.set_num_threads(cfg.threads)
    seed_global_rngs(cfg.seed)
    run_dir, cfg = prepare_run_dir(cfg, resume)
    ckpt_root = run_dir / "checkpoints"

    # -- environment, model, reference, optimizer
    make_env = _env_factory(cfg)
    make_eval_env = _env_factory(cfg, evaluation=True)
    model, tok = _initial_model(cfg, make_env, run_dir, console)
    device = resolve_device(cfg.device)  # as the task loop: auto -> CUDA when available
    precision = resolve_precision(cfg.precision, device)
    amp = lambda: autocast(device, precision)  # noqa: E731  bf16 forwards; weights, losses stay fp32
    model = apply_lora(model, rank=cfg.lora_rank, alpha=cfg.lora_alpha, target_modules=cfg.lora_target_modules,
                       dropout=cfg.lora_dropout).to(device)
    model.train()
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if cfg.kl_coef > 0 else None
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                  weight_decay=cfg.weight_decay)
    eval_seeds = list(range(EVAL_SEED0, EVAL_SEED0 + (cfg.eval_size or ENV_EVAL_EPISODES)))
    norm_const = cfg.norm_const if cfg.norm_const is not None else float(cfg.max_new_tokens)

    # -- resume or start
    start_step = 0
    ckpt = latest_checkpoint(ckpt_root)
    if ckpt is not None:
        if resume is None:  # pragma: no cover - prepare_run_dir refuses existing runs
            raise ConfigError(f"{run_dir} has checkpoints; use --resume")
        state = load_checkpoint(ckpt, model=model, optimizer=optimizer)
        if state["config_hash"] != cfg.compat_hash():
            raise CheckpointError(f"checkpoint {ckpt} was written by a run with a different config; "
                                  "resume with the run's own config.yaml or start a new run.")
        set_rng_state(state["rng"])
        start_step = int(state["step"])
    for f in ("metrics.jsonl", "eval.jsonl"):
        truncate_after(run_dir / f, start_step if ckpt is not None else -1)
    metrics_log, eval_log = JsonlWriter(run_dir / "metrics.jsonl"), JsonlWriter(run_dir / "eval.jsonl")
    tb = TensorBoard(run_dir / "tb", enabled=cfg.tensorboard, console=console)

    def run_eval(step: int) -> dict[str, Any]:
        model.eval()
        greedy = _episode_metrics(_episodes(model, tok, make_eval_env, cfg, eval_seeds, 1, True, None, device, amp))
        sampled = _episode_metrics(_episodes(model, tok, make_eval_env, cfg, eval_seeds, 1, False,
                                             step_generator(cfg.seed, step, 5), device, amp))
        model.train()
        row = {"step": step, "acc": greedy["success"], **{f"greedy_{k}": v for k, v in greedy.items()},
               **{f"sampled_{k}": v for k, v in sampled.items()}}
        row["acc/sampled"] = row["sampled_success"]  # drawn by `grouprl plot` beside the greedy curve
        eval_log.write(row)
        tb.write("eval", row)
        return row

    if ckpt is None:
        run_eval(0)  # the warm start, before any RL step
    progress = _Progress(cfg, start_step, console)

    for step in range(start_step, cfg.steps):
        times: dict[str, float] = {}
        lr = begin_step(cfg, optimizer, step)

        # ---- 1. rollout: prompts_per_step seeds x group_size episodes, lock-step
        t0 = time.perf_counter()
        seeds = torch.randint(EVAL_SEED0, (cfg.prompts_per_step,), generator=step_generator(cfg.seed, step, 3)).tolist()
        ab = _episodes(model, tok, make_env, cfg, seeds, cfg.group_size, False, step_generator(cfg.seed, step, 1),
                       device, amp)
        model.train()
        gen, rows = ab.gen, torch.arange(len(ab))
        times["rollout"] = time.perf_counter() - t0

        # ---- 2. old-policy (and reference) log-probs
        t0 = time.perf_counter()
        mask = gen.response_mask
        with amp():
            old_lp, entropy = _forward_logprobs(model, gen, rows, cfg, entropy=True)
            if cfg.old_logprobs == "sampling":
                old_lp = gen.logprobs
            ref_lp = _forward_logprobs(ref_model, gen, rows, cfg, entropy=False)[0] if ref_model is not None else None
        times["logprobs"] = time.perf_counter() - t0

        # ---- 3. advantages on the step-level batch
        t0 = time.perf_counter()
        batch = agent_batch_to_rollouts(ab, mask, logprobs=gen.logprobs, old_logprobs=old_lp, ref_logprobs=ref_lp,
                                        entropy=entropy)
        adv = compute_advantages(cfg.estimator, batch, **cfg.estimator_kwargs)
        times["advantages"] = time.perf_counter() - t0

        # ---- 4. update: epochs x mini-batches x micro-batches (as the task loop)
        t0 = time.perf_counter()
        loss_sums, grad_norms, n_updates = update_policy(
            model, optimizer, gen, cfg, old_lp=old_lp, adv=adv, loss_mask=mask, ref_lp=ref_lp,
            generator=step_generator(cfg.seed, step, 2), norm_const=norm_const, amp=amp)
        times["update"] = time.perf_counter() - t0

        # ---- 5. metrics, evaluation, checkpoint
        n_tok = int(mask.sum())
        diag = group_diagnostics(batch)
        row: dict[str, Any] = {
            "step": step + 1,
            "reward": float(ab.episode_return.mean()),
            **_episode_metrics(ab),
            "acc": float(ab.episode_success.float().mean()),  # = success; the name `grouprl plot` reads
            "rows": len(ab),
            "model_calls": ab.model_calls,
            "frac_constant_groups": float(diag["frac_constant_groups"]),
            "entropy": float((entropy * mask).sum() / max(n_tok, 1)),
            "response_len": float(gen.lengths.float().mean()),
            "adv_abs": float((adv.abs() * mask).sum() / max(n_tok, 1)),
            "grad_norm": sum(grad_norms) / len(grad_norms),
            "lr": lr,
            "reward_failures_total": 0,
            **{k: v / n_updates for k, v in loss_sums.items()},
        }
        times["step"] = sum(times.values())
        row.update({f"time/{k}": v for k, v in times.items()})
        metrics_log.write(row)
        tb.write("train", row)
        last = step + 1 == cfg.steps
        ev = run_eval(step + 1) if last or (cfg.eval_every and (step + 1) % cfg.eval_every == 0) else None
        if last or (step + 1) % cfg.save_every == 0:
            save_checkpoint(ckpt_root, step + 1, model=model, optimizer=optimizer, keep=cfg.keep_checkpoints,
                            state={"config_hash": cfg.compat_hash(), "rng": rng_state()})
        progress.update(row, ev)
    progress.close()
    metrics_log.close()
    eval_log.close()
    tb.close()
    summary = {**_summary(run_dir, cfg), "env": cfg.env, "warm_start_success": None, "final_success": None}
    summary["warm_start_success"], summary["final_success"] = summary["warm_start_acc"], summary["final_acc"]
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
