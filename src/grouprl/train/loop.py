"""The training loop of ``grouprl train``, task and environment runs alike, top to bottom.

    set up (run dir, rollout source, model [+ warm start], LoRA, credit hook, reference model,
            optimizer, method hooks)
    resume from the latest checkpoint, or evaluate the warm start as step 0
    for each step:
        1. rollout     the source's rows: a task's prompts (chosen by the prompt sampler) x G
                       responses, scored by the verifier guard (grouprl.train.task_source), or
                       environment seeds x G episodes, one row per agent step
                       (grouprl.train.env_source); a credit hook may extend them
        2. logprobs    old-policy log-probs (recomputed in one forward, the sampling ones, or, fully
                       on-policy, the update forward's own: old_logprobs=auto), reference log-probs
                       when kl_coef > 0 (KL in the loss, or in the reward)
        3. advantages  any registered estimator name or expression, on a grouprl.Rollouts batch
                       (the source's fields; credit and method hooks add theirs, e.g. answers,
                       reward components, values), rollout IS weights, TER's coefficient
        4. update      ppo_epochs x mini-batches x micro-batches; the loss normalisers are computed
                       once per mini-batch so gradient accumulation is micro-batch invariant;
                       grad clipping, AdamW, LR schedule
        5. log, evaluate every eval_every steps (the source's fixed held-out set), checkpoint every
           save_every

The two modes differ only in the source; what each provides (batch fields) and which options it
does not read are declared in ``grouprl.train.modes`` and checked when the config loads, so every
option either works in both modes or is refused naming the option and the mode.

Determinism: every random draw of step s comes from a generator seeded with (seed, s, stream), and
CPU kernels are deterministic at a fixed thread count: on CPU with the same seed and thread count, a
run killed at any moment and resumed writes the same metrics as an uninterrupted one (timings, under
``time/`` and ``perf/``, excepted; tested with a real SIGKILL in tests/test_checkpoint.py).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from .._osutil import write_text_atomic
from ..advantages.registry import group_diagnostics
from ..core import Rollouts
from ..losses import rollout_is
from ..rollout import Generation, response_logprobs
from .checkpoint import (latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, seed_global_rngs,
                         set_rng_state)
from .config import ConfigError, TrainConfig
from .credit import CreditContext, make_credit
from .data import step_generator
from .device import apply_lora, autocast, device_generator, resolve_device, resolve_precision, trainable_parameters
from .env_source import EnvSource
from .logging import JsonlWriter, TensorBoard, environment_versions, read_jsonl, truncate_after
from .methods import MethodHooks, sequence_kl
from .reports import ranking_report
from .rundir import check_resume, prepare_run_dir, resume_state
from .sft import lr_at
from .task_source import TaskSource, _sft_missed_target

__all__ = ["begin_step", "old_logprobs_source", "train_loop", "update_policy"]


def _micro_batches(rows: torch.Tensor, size: int) -> list[torch.Tensor]:
    return list(rows.split(size))


def begin_step(cfg: TrainConfig, optimizer: torch.optim.Optimizer, step: int) -> float:
    """Seed torch's global RNG from (seed, step) (for anything not given a generator) and set the
    step's learning rate; returns it."""
    torch.manual_seed(step_generator(cfg.seed, step, 0).initial_seed())
    lr = lr_at(step, base=cfg.lr, total=cfg.steps, warmup=cfg.warmup_steps, schedule=cfg.lr_schedule,
               min_ratio=cfg.min_lr_ratio)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def update_policy(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    gen: Any,
    cfg: TrainConfig,
    *,
    old_lp: torch.Tensor | None,
    adv: torch.Tensor,
    loss_mask: torch.Tensor,
    ref_lp: torch.Tensor | None,
    generator: torch.Generator,
    norm_const: float,
    amp: Any = contextlib.nullcontext,
    need_entropy: bool = False,
    entropy_coef: float | torch.Tensor | None = None,
    extra_loss_kwargs: Any = None,
    is_w: torch.Tensor | None = None,
    record: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, float], list[float], int]:
    """The PPO-style update of one step: ``ppo_epochs`` x ``mini_batches`` optimizer steps, each over
    micro-batches whose losses use the mini-batch's global normalisers (so the gradient does not
    depend on ``micro_batch_size``). ``extra_loss_kwargs(mb, entropy)`` adds method-specific loss
    arguments. Returns the summed loss metrics, the grad norms and the number of optimizer steps.

    ``old_lp=None`` is the fully on-policy update (``old_logprobs=auto``, see
    ``old_logprobs_source``): one epoch and one mini-batch, so every row is seen once, before the
    only optimizer step, by the policy that sampled it; its old log-probs are the update forward's
    own, detached (the ratio is exactly 1 and its gradient the policy gradient: no separate forward
    is needed). Then ``record`` (a dict) receives the detached log-probs ``"logprobs"`` and the
    token entropies ``"entropy"`` (N, T) of every row, for the step's metrics."""
    from ..losses import normalizers, policy_loss

    on_policy = old_lp is None
    if on_policy and (cfg.ppo_epochs != 1 or cfg.mini_batches != 1):
        raise ValueError(
            f"update_policy: old_lp=None (the update's own log-probs as the old ones) needs ppo_epochs=1 and "
            f"mini_batches=1, got {cfg.ppo_epochs} and {cfg.mini_batches}; pass recomputed old log-probs."
        )
    kl_in_loss = ref_lp is not None and not cfg.kl_in_reward
    entropy_coef = cfg.entropy_coef if entropy_coef is None else entropy_coef
    loss_entropy = cfg.entropy_coef != 0 or need_entropy  # the loss (or a hook) reads the entropy
    if on_policy and record is not None:
        record["logprobs"] = torch.zeros(gen.response_mask.shape, dtype=torch.float32, device=adv.device)
        record["entropy"] = torch.zeros_like(record["logprobs"])
    loss_sums: dict[str, float] = {}
    grad_norms, n_updates = [], 0
    for _epoch in range(cfg.ppo_epochs):
        perm = torch.randperm(len(gen), generator=generator)
        for mini in perm.tensor_split(min(cfg.mini_batches, len(gen))):
            norms = normalizers(loss_mask[mini])  # global normalisers of this mini-batch
            optimizer.zero_grad(set_to_none=True)
            for mb in _micro_batches(mini, cfg.micro_batch_size):
                with amp():
                    lp, ent = response_logprobs(model, gen.prompt_ids[mb], gen.prompt_mask[mb], gen.response_ids[mb],
                                                gen.response_mask[mb], temperature=cfg.temperature,
                                                return_entropy=loss_entropy or (on_policy and record is not None),
                                                entropy_grad=loss_entropy)
                lp = lp.float()  # the loss in fp32 (a no-op: response_logprobs works on fp32 logits)
                old_mb = lp.detach() if on_policy else old_lp[mb]
                if on_policy and record is not None:
                    record["logprobs"][mb] = old_mb
                    record["entropy"][mb] = ent.detach().float()
                if not loss_entropy:
                    ent = None  # computed for the metrics only
                loss, lm = policy_loss(
                    cfg.loss, lp, old_mb, adv[mb], loss_mask[mb], agg=cfg.agg, norm_const=norm_const,
                    ref_logprobs=ref_lp[mb] if kl_in_loss else None, kl_coef=cfg.kl_coef if kl_in_loss else 0.0,
                    kl_type=cfg.kl_type, entropy=ent, entropy_coef=entropy_coef, **norms, **cfg.loss_kwargs,
                    rollout_is_weights=None if is_w is None else is_w[mb],
                    **(extra_loss_kwargs(mb, ent) if extra_loss_kwargs is not None else {}))
                loss.backward()
                # micro-batch losses and metrics are normalised globally: they sum to the mini-batch's
                loss_sums["loss"] = loss_sums.get("loss", 0.0) + loss.item()
                for k, v in lm.items():
                    loss_sums[k] = loss_sums.get(k, 0.0) + float(v)
            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
            grad_norms.append(float(gn))
            optimizer.step()
            n_updates += 1
    return loss_sums, grad_norms, n_updates


def old_logprobs_source(cfg: TrainConfig) -> str:
    """Where the step's old-policy log-probs come from: ``"recompute"`` (a no-grad forward before
    the update), ``"sampling"`` (recorded while sampling) or ``"update"`` (the update forward's own,
    detached: ``update_policy(old_lp=None)``).

    ``old_logprobs=auto`` (the default) gives ``"update"`` when the step is fully on-policy — one
    PPO epoch and one mini-batch, so one optimizer step per rollout — and nothing before the update
    reads the old log-probs or entropies: no credit hooks, no TER, no KL/reference model, no
    rollout IS, and an estimator that needs neither; otherwise ``"recompute"``. Both give the same
    gradient (the ratio is exactly 1 either way, up to fp32 rounding of the recomputation); the
    separate forward is what ``"update"`` saves.
    """
    if cfg.old_logprobs != "auto":
        return cfg.old_logprobs
    from ..advantages import registry

    parsed = registry.parse(cfg.estimator)
    # fields an estimator needs, or reads when present (its registry entry's needs / optional)
    reads_old = bool(set(parsed.needs + parsed.optional) & {"old_logprobs", "entropy", "ref_logprobs"})
    on_policy = cfg.ppo_epochs == 1 and cfg.mini_batches == 1
    simple = cfg.credit == "none" and not cfg.ter and cfg.kl_coef == 0 and cfg.rollout_is == "none"
    return "update" if on_policy and simple and not reads_old else "recompute"


def _forward_logprobs(model, gen: Generation, rows: torch.Tensor, cfg: TrainConfig, entropy: bool):
    """Teacher-forced log-probs (and entropy) of ``gen``'s rows, micro-batched, no grad."""
    lps, ents = [], []
    with torch.no_grad():
        for mb in _micro_batches(rows, cfg.micro_batch_size):
            lp, ent = response_logprobs(model, gen.prompt_ids[mb], gen.prompt_mask[mb], gen.response_ids[mb],
                                        gen.response_mask[mb], temperature=cfg.temperature, return_entropy=entropy)
            lps.append(lp)
            ents.append(ent)
    return torch.cat(lps), (torch.cat(ents) if entropy else None)


# ---------------------------------------------------------------------------- the loop
def train_loop(cfg: TrainConfig, *, resume: str | Path | None = None, console: Any = None) -> dict[str, Any]:
    """RL as configured, task or environment (the source: ``TaskSource`` or ``EnvSource``); the entry
    point that also holds the run's lock and clean-up is :func:`grouprl.train.run.train`."""
    from ..losses import normalizers

    source_cls = EnvSource if cfg.env is not None else TaskSource
    cfg = source_cls.configure(cfg, resume)  # the mode's defaults (env: gigpo unless an estimator is named)
    torch.set_num_threads(cfg.threads)
    # CPU kernels are deterministic at a fixed thread count; use_deterministic_algorithms(True) would
    # only swap in 5x slower index/scatter backward kernels (measured) and is not needed here.
    seed_global_rngs(cfg.seed)  # python, numpy, torch: a checkpoint's RNG states depend on the config alone
    run_dir, cfg = prepare_run_dir(cfg, resume)
    ckpt_root = run_dir / "checkpoints"

    # -- rollout source (task + verifier guard + eval set, or environment), model, reference, optimizer
    device = resolve_device(cfg.device)  # grouprl.train.device: auto -> CUDA when available
    precision = resolve_precision(cfg.precision, device)
    amp = lambda: autocast(device, precision)  # noqa: E731  bf16 forwards; weights, losses stay fp32
    source = source_cls(cfg, run_dir, device, amp, console)
    model, tok = source.initial_model()
    model = apply_lora(model, rank=cfg.lora_rank, alpha=cfg.lora_alpha, target_modules=cfg.lora_target_modules,
                       dropout=cfg.lora_dropout).to(device)
    model.train()
    credit = make_credit(cfg, model)  # token/segment credit hooks (grouprl.train.credit); no-op for "none"
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if cfg.kl_coef > 0 else None
    # the fused AdamW kernel (one pass per tensor; TRL's default optimizer too) where torch has it
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                  weight_decay=cfg.weight_decay, fused=device.type in ("cpu", "cuda") or None)
    source.start(model, tok, credit)  # task: the prompt sampler
    methods = MethodHooks(cfg, source.task, source.reward_component_fns())  # per-method hooks (methods.py)
    norm_const = cfg.norm_const if cfg.norm_const is not None else float(cfg.max_new_tokens)
    old_source = old_logprobs_source(cfg)

    # -- resume or start
    start_step = 0
    ckpt = latest_checkpoint(ckpt_root)
    if ckpt is not None:
        if resume is None:  # pragma: no cover - prepare_run_dir refuses existing runs
            raise ConfigError(f"{run_dir} has checkpoints; use --resume")
        state = load_checkpoint(ckpt, model=model, optimizer=optimizer)
        check_resume(cfg, state, ckpt, run_dir)  # same trajectory: config hash; fields added since at default
        source.load_state_dict(state)
        methods.load_state_dict(state.get("methods") or {})  # absent from checkpoints of the former agent loop
        set_rng_state(state["rng"])
        credit.load_state_dict(state.get("credit", {}))
        start_step = int(state["step"])
    for f in ("metrics.jsonl", "eval.jsonl", *source.log_files):
        truncate_after(run_dir / f, start_step if ckpt is not None else -1)
    source.open_logs()
    # lines are flushed at once and fsync-ed before each checkpoint (not after every line: ~5 ms a step)
    metrics_log = JsonlWriter(run_dir / "metrics.jsonl", fsync_every_line=False)
    eval_log = JsonlWriter(run_dir / "eval.jsonl", fsync_every_line=False)
    tb = TensorBoard(run_dir / "tb", enabled=cfg.tensorboard, console=console)

    def run_eval(step: int) -> dict[str, Any]:
        model.eval()
        row = source.evaluate(step, model)
        model.train()
        eval_log.write(row)
        tb.write("eval", row)
        return row

    if ckpt is None:
        run_eval(0)  # the warm start, before any RL step
    progress = _Progress(cfg, start_step, console)

    for step in range(start_step, cfg.steps):
        times: dict[str, float] = {}
        lr = begin_step(cfg, optimizer, step)

        # ---- 1. rollout: the source's rows (task: prompts x G responses, scored; env: seeds x G episodes)
        t0 = time.perf_counter()
        ctx = CreditContext(model, cfg, tok.eos_token_id, source.score,
                            device_generator(step_generator(cfg.seed, step, 6), device))
        roll = source.rollout(step, model, ctx)
        gen = roll.gen
        rows = torch.arange(len(gen))
        times["rollout"] = time.perf_counter() - t0

        # ---- 2. old-policy and reference log-probs
        t0 = time.perf_counter()
        mask = gen.response_mask
        with amp():
            if old_source == "recompute":
                old_lp, entropy = _forward_logprobs(model, gen, rows, cfg, entropy=True)
            elif old_source == "sampling":
                old_lp, entropy = gen.logprobs, _forward_logprobs(model, gen, rows, cfg, entropy=True)[1]
            else:  # "update": the update forward's own, filled in by update_policy below
                old_lp, entropy = None, None
            ref_lp = _forward_logprobs(ref_model, gen, rows, cfg, entropy=False)[0] if ref_model is not None else None
        rewards = roll.rewards.clone()
        if ref_lp is not None and cfg.kl_in_reward:
            rewards = rewards - cfg.kl_coef * sequence_kl(old_lp, ref_lp, mask)  # k1 per sequence
        times["logprobs"] = time.perf_counter() - t0

        # ---- 3. advantages
        t0 = time.perf_counter()
        batch = Rollouts(rewards=rewards, mask=mask, logprobs=gen.logprobs, old_logprobs=old_lp, ref_logprobs=ref_lp,
                         entropy=entropy, truncated=gen.truncated, **roll.fields)
        batch = credit.prepare(batch, gen, ctx)
        batch = methods.prepare(batch, roll.texts, roll.examples)
        adv = methods.advantages(batch, step)  # per-method hooks (grouprl.train.methods)
        # truncated IS of the sampler-vs-trainer mismatch (grouprl.losses.importance; off by default)
        is_w, is_metrics = rollout_is(old_lp, gen.logprobs, mask, level=cfg.rollout_is, cap=cfg.rollout_is_cap)
        loss_mask = credit.loss_mask(mask) & batch.mask
        methods.before_update(entropy, loss_mask, normalizers(loss_mask))
        times["advantages"] = time.perf_counter() - t0

        # ---- 4. update: epochs x mini-batches x micro-batches
        t0 = time.perf_counter()
        record: dict[str, torch.Tensor] = {}
        loss_sums, grad_norms, n_updates = update_policy(
            model, optimizer, gen, cfg, old_lp=old_lp, adv=adv, loss_mask=loss_mask, ref_lp=ref_lp,
            generator=step_generator(cfg.seed, step, 2), norm_const=norm_const, amp=amp,
            need_entropy=credit.needs_entropy or methods.needs_entropy,
            entropy_coef=methods.entropy_coef(cfg.entropy_coef), is_w=is_w, record=record,
            extra_loss_kwargs=lambda mb, ent: {**credit.loss_kwargs(ent), **methods.loss_kwargs(mb)})
        if old_lp is None:  # old_logprobs=auto, fully on-policy: the update's own (detached) values
            old_lp, entropy = record["logprobs"], record["entropy"]
            batch = batch.replace(old_logprobs=old_lp, entropy=entropy)
        credit_metrics = credit.after_update(batch, gen, ctx)  # e.g. the critic's own update
        times["update"] = time.perf_counter() - t0

        # ---- 5. metrics, evaluation, checkpoint
        n_tok = int(mask.sum())
        diag = group_diagnostics(batch)
        row: dict[str, Any] = {
            "step": step + 1,
            **roll.head,
            "frac_constant_groups": float(diag["frac_constant_groups"]),
            "entropy": float((entropy * mask).sum() / max(n_tok, 1)),
            "response_len": float(gen.lengths.float().mean()),
            "truncated": float(gen.truncated.float().mean()),
            "adv_abs": float((adv.abs() * mask).sum() / max(n_tok, 1)),
            "grad_norm": sum(grad_norms) / len(grad_norms),
            "lr": lr,
            **roll.tail,
            **{k: v / n_updates for k, v in loss_sums.items()},
            **roll.extra,
            **credit_metrics,
            **is_metrics,
            **methods.metrics(),
            **ranking_report(batch.rewards, old_lp, mask, roll.fields["group"]),
        }
        if ref_lp is not None:
            d = ref_lp - old_lp
            row["kl"] = float(((d.exp() - d - 1) * mask).sum() / max(n_tok, 1))  # k3 estimate per token
        times["step"] = sum(times.values())
        row.update({f"time/{k}": v for k, v in times.items()})
        row["perf/rollout_tok_s"] = n_tok / max(times["rollout"], 1e-9)
        row["perf/update_tok_s"] = n_tok * cfg.ppo_epochs / max(times["update"], 1e-9)
        metrics_log.write(row)
        tb.write("train", row)
        last = step + 1 == cfg.steps
        ev = run_eval(step + 1) if last or (cfg.eval_every and (step + 1) % cfg.eval_every == 0) else None
        if last or (step + 1) % cfg.save_every == 0:
            metrics_log.sync()
            eval_log.sync()
            source.sync()
            save_checkpoint(ckpt_root, step + 1, model=model, optimizer=optimizer, keep=cfg.keep_checkpoints, state={
                **resume_state(cfg), "methods": methods.state_dict(), "rng": rng_state(),
                "credit": credit.state_dict(), **source.state_dict(),
            })
        progress.update(row, ev)
    progress.close()
    source.close()
    methods.close()
    metrics_log.close()
    eval_log.close()
    tb.close()
    summary = source.summary(_summary(run_dir, cfg, source.warm_start_info()))
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _summary(run_dir: Path, cfg: TrainConfig, warm_start: dict[str, Any]) -> dict[str, Any]:
    evals = read_jsonl(run_dir / "eval.jsonl")
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    sft_log = read_jsonl(run_dir / "sft" / "sft_log.jsonl")  # [] when RL started from init=
    sft_checks = [r["val_acc"] for r in sft_log if "val_acc" in r]
    first, final = (evals[0] if evals else {}), (evals[-1] if evals else {})
    return {
        "warm_start": warm_start,
        "sft_steps_run": len(sft_log),
        "sft_seconds": sft_log[-1].get("time/elapsed") if sft_log else None,
        "sft_val_acc": sft_checks[-1] if sft_checks else None,
        "sft_missed_target": _sft_missed_target(cfg, sft_log) is not None,
        "run_dir": str(run_dir),
        "steps": cfg.steps,
        "estimator": cfg.estimator,
        "loss": cfg.loss,
        "task": cfg.task,
        "model": cfg.model,
        "seed": cfg.seed,
        "warm_start_acc": first.get("acc"),
        "final_acc": final.get("acc"),
        "eval_n": final.get("n"),
        "best_acc": max((e.get("acc", 0.0) for e in evals), default=None),
        f"final_pass@{cfg.pass_k}": final.get(f"pass@{cfg.pass_k}"),
        "final_eval": final,
        "mean_reward_last10": (sum(m["reward"] for m in metrics[-10:]) / len(metrics[-10:])) if metrics else None,
        "reward_failures_total": metrics[-1]["reward_failures_total"] if metrics else 0,
        "train_seconds": sum(m.get("time/step", 0.0) for m in metrics),
        "versions": environment_versions(),
    }


class _Progress:
    """A rich progress bar with ETA and live reward / accuracy (silent when progress=False)."""

    def __init__(self, cfg: TrainConfig, start: int, console: Any) -> None:
        self.bar = None
        self.acc = "-"
        if not cfg.progress:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("[bold]RL"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.description}"),
                            console=console, transient=False)
        self.task = self.bar.add_task("", total=cfg.steps, completed=start)
        self.bar.start()

    def update(self, row: dict[str, Any], ev: dict[str, Any] | None) -> None:
        if self.bar is None:
            return
        if ev is not None:
            self.acc = f"{ev['acc']:.3f}"
        self.bar.update(self.task, advance=1,
                        description=f"reward {row['reward']:.3f}  eval acc {self.acc}  {row['time/step']:.2f}s/step")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
