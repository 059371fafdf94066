"""The training loop of ``grouprl train``, top to bottom.

    set up (run dir, task, model [+ SFT warm start], reference model, optimizer, sampler)
    resume from the latest checkpoint, or evaluate the warm start as step 0
    for each step:
        1. rollout     the sampler picks prompts; G responses each (KV-cached sampling), scored by
                       the RewardGuard (a failing verifier gives failure_reward, counted)
        2. logprobs    old-policy log-probs (recomputed in one forward, the sampling ones, or, fully
                       on-policy, the update forward's own: old_logprobs=auto), reference log-probs
                       when kl_coef > 0 (KL in the loss, or in the reward)
        3. advantages  any registered estimator name or expression, on a grouprl.Rollouts batch
        4. update      ppo_epochs x mini-batches x micro-batches; the loss normalisers are computed
                       once per mini-batch so gradient accumulation is micro-batch invariant;
                       grad clipping, AdamW, LR schedule
        5. log, evaluate every eval_every steps (fixed held-out set), checkpoint every save_every

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
from .. import warmstarts
from ..rollout import Generation, response_logprobs, sample
from .checkpoint import (CheckpointError, latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, seed_global_rngs,
                         set_rng_state)
from .credit import CreditContext, make_credit
from .device import apply_lora, autocast, device_generator, resolve_device, resolve_precision, trainable_parameters
from .config import ConfigError, TrainConfig
from .data import CORRECT, LazyTokens, decode_responses, encode_prompts, evaluate, evenly_spaced, step_generator
from .logging import JsonlWriter, TensorBoard, environment_versions, read_jsonl, truncate_after
from .methods import MethodHooks, reward_component_fns, sequence_kl
from .reports import format_group_table, group_report, ranking_report, sampler_calibration
from .sampler import get_sampler, load_sampler_state, sampler_state
from .reward_fns import load_reward_fn
from .rundir import current_run, prepare_run_dir
from .sft import lr_at, sft, sft_kwargs, sft_progress, sft_summary

__all__ = ["train_task", "prepare_run_dir", "load_initial_model", "load_task", "old_logprobs_source", "RewardFunctionError"]


class RewardFunctionError(ConfigError):
    """The reward function failed on every row for ``max_failed_reward_steps`` consecutive steps."""


_SFT_FIELDS = tuple(f for f in TrainConfig.model_fields if f.startswith("sft_"))


def _is_preset(name: str) -> bool:
    from ..models import PRESETS

    return name in PRESETS


def shipped_warm_start(cfg: TrainConfig) -> "warmstarts.WarmStart | None":
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
def train_task(cfg: TrainConfig, *, resume: str | Path | None = None, console: Any = None) -> dict[str, Any]:
    """RL on a task (prompts -> responses -> verifier), as configured; the entry point that also
    sets up the run's lock and clean-up is :func:`grouprl.train.run.train`."""
    from ..losses import normalizers

    torch.set_num_threads(cfg.threads)
    # CPU kernels are deterministic at a fixed thread count; use_deterministic_algorithms(True) would
    # only swap in 5x slower index/scatter backward kernels (measured) and is not needed here.
    seed_global_rngs(cfg.seed)  # python, numpy, torch: a checkpoint's RNG states depend on the config alone
    run_dir, cfg = prepare_run_dir(cfg, resume)
    ckpt_root = run_dir / "checkpoints"

    # -- task, verifier guard, model, reference, optimizer, sampler
    task = load_task(cfg)
    pool = list(task.train_pool)
    eval_set, eval_ids = eval_subset(task, cfg.eval_size), eval_item_ids(task, cfg.eval_size)
    if console is not None and cfg.eval_size is not None and cfg.eval_size > len(eval_set):
        console.print(f"note: eval_size={cfg.eval_size}, but task {cfg.task} holds {len(eval_set)} held-out examples; "
                      f"evaluating on {len(eval_set)} (each eval.jsonl row records n)")
    guard = make_guard(cfg, task)
    model, tok = load_initial_model(cfg, task, run_dir, console)
    device = resolve_device(cfg.device)  # grouprl.train.device: auto -> CUDA when available
    precision = resolve_precision(cfg.precision, device)
    amp = lambda: autocast(device, precision)  # noqa: E731  bf16 forwards; weights, losses stay fp32
    model = apply_lora(model, rank=cfg.lora_rank, alpha=cfg.lora_alpha, target_modules=cfg.lora_target_modules,
                       dropout=cfg.lora_dropout).to(device)
    model.train()
    credit = make_credit(cfg, model)  # token/segment credit hooks (grouprl.train.credit); no-op for "none"
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if cfg.kl_coef > 0 else None
    # the fused AdamW kernel (one pass per tensor; TRL's default optimizer too) where torch has it
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                  weight_decay=cfg.weight_decay, fused=device.type in ("cpu", "cuda") or None)
    group_names = sorted({e.data_group for e in pool}, key=str)
    group_id = {g: i for i, g in enumerate(group_names)}
    sampler = get_sampler(cfg.sampler, len(pool), seed=cfg.seed, prompt_groups=[e.data_group for e in pool],
                          **cfg.sampler_kwargs)
    methods = MethodHooks(cfg, task, reward_component_fns(cfg, task, guard))  # per-method hooks (methods.py)
    pool_prompts = LazyTokens([e.prompt for e in pool], lambda t: encode_prompts(tok, t))
    norm_const = cfg.norm_const if cfg.norm_const is not None else float(cfg.max_new_tokens)
    old_source = old_logprobs_source(cfg)

    # -- resume or start
    start_step, failures_total, failed_streak = 0, 0, 0
    ckpt = latest_checkpoint(ckpt_root)
    if ckpt is not None:
        if resume is None:  # pragma: no cover - prepare_run_dir refuses existing runs
            raise ConfigError(f"{run_dir} has checkpoints; use --resume")
        state = load_checkpoint(ckpt, model=model, optimizer=optimizer)
        if state["config_hash"] != cfg.compat_hash():
            raise CheckpointError(
                f"checkpoint {ckpt} was written by a run with a different config (hash {state['config_hash']} vs "
                f"{cfg.compat_hash()}); resume with the run's own config.yaml or start a new run."
            )
        load_sampler_state(sampler, state["sampler"])
        methods.load_state_dict(state.get("methods", {}))
        set_rng_state(state["rng"])
        credit.load_state_dict(state.get("credit", {}))
        start_step, failures_total = int(state["step"]), int(state["failures_total"])
        failed_streak = int(state.get("failed_reward_steps", 0))
    for f in ("metrics.jsonl", "eval.jsonl", "eval_items.jsonl"):
        truncate_after(run_dir / f, start_step if ckpt is not None else -1)
    # lines are flushed at once and fsync-ed before each checkpoint (not after every line: ~5 ms a step)
    metrics_log = JsonlWriter(run_dir / "metrics.jsonl", fsync_every_line=False)
    eval_log = JsonlWriter(run_dir / "eval.jsonl", fsync_every_line=False)
    items_log = JsonlWriter(run_dir / "eval_items.jsonl", fsync_every_line=False)  # per-example greedy scores
    tb = TensorBoard(run_dir / "tb", enabled=cfg.tensorboard, console=console)

    def run_eval(step: int) -> dict[str, Any]:
        model.eval()
        row = {"step": step, **evaluate(
            model, tok, eval_set, guard, max_new_tokens=credit.eval_max_new_tokens(cfg.max_new_tokens), pass_k=cfg.pass_k,
            pass_k_size=cfg.pass_k_size, temperature=cfg.temperature, top_p=cfg.top_p,
            generator=device_generator(step_generator(cfg.seed, step, 5), device))}
        model.train()
        items_log.write({"step": step, "items": dict(zip(eval_ids, row.pop("scores")))})
        row.update(group_report(row, eval_set))  # per data_group table, worst / p20 / Gini
        if console is not None:
            console.print(format_group_table(step, row))
        eval_log.write(row)
        tb.write("eval", row)
        return row

    if ckpt is None:
        run_eval(0)  # the warm start, before any RL step
    progress = _Progress(cfg, start_step, console)

    for step in range(start_step, cfg.steps):
        times: dict[str, float] = {}
        lr = begin_step(cfg, optimizer, step)

        # ---- 1. rollout: the sampler picks prompts; G samples each; the guard scores them
        t0 = time.perf_counter()
        g_sample = device_generator(step_generator(cfg.seed, step, 1), device)
        step_failures, step_rows = 0, 0

        def generate(prompt_indices: list[int]) -> Generation:
            nonlocal step_failures, step_rows
            with amp():
                gen = sample(model, [pool_prompts[i] for i in prompt_indices], eos_id=tok.eos_token_id,
                             pad_id=tok.pad_token_id, max_new_tokens=cfg.max_new_tokens, num_samples=cfg.group_size,
                             temperature=cfg.temperature, top_p=cfg.top_p, generator=g_sample,
                             prompt_index=prompt_indices, logits_processor=credit.logits_processor())
            gen.texts = decode_responses(tok, gen)
            examples = [pool[i] for i in gen.prompt_index.tolist()]
            gen.rewards, gen.failed = guard.score_batch(examples, gen.texts)
            step_failures += int(gen.failed.sum())
            step_rows += len(gen)
            return gen

        n_prompts = credit.prompts_to_draw(cfg.prompts_per_step, cfg.group_size)  # T-PPO: the free in-flight slots
        gen, sampler_metrics = sampler.collect(step, n_prompts, generate) if n_prompts > 0 else (None, {})
        failed_streak = failed_streak + 1 if step_rows and step_failures == step_rows else 0
        _check_failed_rewards(cfg, failed_streak, step, guard)
        ctx = CreditContext(model, cfg, tok.eos_token_id, lambda g: score(g, pool, tok, guard),
                            device_generator(step_generator(cfg.seed, step, 6), device))
        gen = credit.extend_rollout(gen, ctx)  # e.g. T-PPO: continue the in-flight responses
        gen.rewards = gen.rewards.to(device)  # the verifier scores on the host
        model.train()
        failures_total += step_failures
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
        rewards = gen.rewards.clone()
        seq_kl = None
        if ref_lp is not None:
            seq_kl = sequence_kl(old_lp, ref_lp, mask)  # k1 per sequence, for the in-reward penalty
            if cfg.kl_in_reward:
                rewards = rewards - cfg.kl_coef * seq_kl
        times["logprobs"] = time.perf_counter() - t0

        # ---- 3. advantages
        t0 = time.perf_counter()
        batch = Rollouts(
            rewards=rewards, group=gen.prompt_index, mask=mask, logprobs=gen.logprobs, old_logprobs=old_lp,
            ref_logprobs=ref_lp, entropy=entropy, truncated=gen.truncated,
            data_group=torch.tensor([group_id[pool[i].data_group] for i in gen.prompt_index.tolist()], device=device),
        )
        batch = credit.prepare(batch, gen, ctx)
        texts = gen.texts  # decoded in generate(); credit hooks may have extended the rows since
        if cfg.credit != "none" or texts is None or len(texts) != len(gen):
            texts = decode_responses(tok, gen)
        batch = methods.prepare(batch, texts, [pool[i] for i in gen.prompt_index.tolist()])
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
            "reward": float(gen.rewards.mean()),
            "reward_std": float(gen.rewards.std()) if len(gen) > 1 else 0.0,
            "acc": float((gen.rewards >= CORRECT).float().mean()),
            "frac_constant_groups": float(diag["frac_constant_groups"]),
            "entropy": float((entropy * mask).sum() / max(n_tok, 1)),
            "response_len": float(gen.lengths.float().mean()),
            "truncated": float(gen.truncated.float().mean()),
            "adv_abs": float((adv.abs() * mask).sum() / max(n_tok, 1)),
            "grad_norm": sum(grad_norms) / len(grad_norms),
            "lr": lr,
            "reward_failures": step_failures,
            "reward_failures_total": failures_total,
            **{k: v / n_updates for k, v in loss_sums.items()},
            **_scalars("sampler/", sampler_metrics),
            **credit_metrics,
            **is_metrics,
            **methods.metrics(),
            **sampler_calibration(sampler),
            **ranking_report(batch.rewards, old_lp, mask, gen.prompt_index),
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
            items_log.sync()
            save_checkpoint(ckpt_root, step + 1, model=model, optimizer=optimizer, keep=cfg.keep_checkpoints, state={
                "config_hash": cfg.compat_hash(), "sampler": sampler_state(sampler), "methods": methods.state_dict(), "rng": rng_state(),
                "failures_total": failures_total, "credit": credit.state_dict(), "failed_reward_steps": failed_streak,
            })
        progress.update(row, ev)
    progress.close()
    if hasattr(guard, "close"):
        guard.close()
    methods.close()
    metrics_log.close()
    eval_log.close()
    items_log.close()
    tb.close()
    summary = _summary(run_dir, cfg)
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


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


def _summary(run_dir: Path, cfg: TrainConfig) -> dict[str, Any]:
    evals = read_jsonl(run_dir / "eval.jsonl")
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    sft_log = read_jsonl(run_dir / "sft" / "sft_log.jsonl")  # [] when RL started from init=
    sft_checks = [r["val_acc"] for r in sft_log if "val_acc" in r]
    first, final = (evals[0] if evals else {}), (evals[-1] if evals else {})
    return {
        "warm_start": warm_start_info(cfg),
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
