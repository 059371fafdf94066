"""Warm start: supervised fine-tuning on the task's reference answers.

A tiny model starts at 0% accuracy, and a group method needs some successes in a group to get a
signal. ``sft`` minimises the cross-entropy of ``task.reference(example)`` + EOS given the prompt
(answer tokens only; the prompt is not trained on), with AdamW, linear warmup then cosine decay to
10% of ``sft_lr``, on batches drawn uniformly from the train pool with a (seed, step) generator.

With ``target_acc`` it instead trains at a constant learning rate (after the warmup) until the
greedy accuracy on a validation slice of the train pool (its last ``val_size`` examples, held out
of the SFT batches; the task's eval split is never looked at) reaches the target, checked every
``check_every`` steps, or ``steps`` run out. Small models learn arithmetic with a sudden, seed-
dependent jump after a long plateau, so a fixed step count gives warm starts anywhere from 0 to
0.7 accuracy; a target gives every seed a comparable starting point (docs/training.md).
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable, Iterator, Sequence

import torch

from ..rollout import left_pad, pad_right, response_logprobs
from .data import CORRECT, LazyTokens, decode_responses, encode_answers, encode_prompts, step_generator

__all__ = ["sft", "sft_kwargs", "sft_on_tokens", "sft_summary", "print_checks", "sft_progress", "lr_at"]


def lr_at(step: int, *, base: float, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Learning rate at optimizer step ``step`` (0-based): linear warmup, then constant or cosine."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return base
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def sft_kwargs(cfg: Any) -> dict[str, Any]:
    """The :func:`sft` arguments of a ``TrainConfig``'s ``sft_*`` fields."""
    return dict(steps=cfg.sft_steps, batch_size=cfg.sft_batch_size, lr=cfg.sft_lr, warmup_steps=cfg.sft_warmup_steps,
                seed=cfg.seed, target_acc=cfg.sft_target_acc or None, check_every=cfg.sft_check_every,
                val_size=cfg.sft_val_size, max_new_tokens=cfg.max_new_tokens)


def sft(
    model: torch.nn.Module,
    tokenizer: Any,
    task: Any,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_steps: int,
    seed: int,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    target_acc: float | None = None,
    check_every: int = 100,
    val_size: int = 200,
    max_new_tokens: int = 8,
) -> list[dict[str, float]]:
    """Train ``model`` in place for ``steps`` steps (or, with ``target_acc``, until the validation
    accuracy reaches it); returns per-step ``{"step", "loss", "lr"}`` (plus ``"val_acc"`` on the
    steps where it was checked)."""
    pool = task.train_pool
    if len(pool) == 0:
        raise ValueError(f"sft: task {getattr(task, 'name', task)!r} has an empty train pool.")
    stop = None
    if target_acc is not None:
        if not 0 < target_acc <= 1:
            raise ValueError(f"sft: target_acc={target_acc}; use a value in (0, 1], or None for a fixed step count.")
        if len(pool) < 2 * val_size:
            raise ValueError(f"sft: the train pool ({len(pool)}) is too small for a {val_size}-example validation "
                             "slice; lower sft_val_size or use a fixed step count (sft_target_acc=0).")
        pool, val = pool[:-val_size], pool[-val_size:]
        stop = _target_check(model, tokenizer, task, val, target_acc, check_every, max_new_tokens)
    prompts = LazyTokens([e.prompt for e in pool], lambda t: encode_prompts(tokenizer, t))
    answers = LazyTokens([task.reference(e) for e in pool], lambda t: encode_answers(tokenizer, t))
    return sft_on_tokens(model, tokenizer, prompts, answers, steps=steps, batch_size=batch_size, lr=lr,
                         warmup_steps=warmup_steps, seed=seed, stream=11, on_step=on_step, stop=stop,
                         schedule="cosine" if stop is None else "constant")


def sft_summary(history: list[dict[str, float]]) -> str:
    """One line on an SFT history: steps run, final loss, last validation accuracy when checked."""
    if not history:
        return "0 steps"
    checked = [r["val_acc"] for r in history if "val_acc" in r]
    val = f", validation greedy acc {checked[-1]:.3f}" if checked else ""
    return f"{len(history)} steps, final loss {history[-1]['loss']:.3f}{val}"


def print_checks(console: Any) -> Callable[[int, dict[str, float]], None] | None:
    """An ``on_step`` that prints each validation check to a rich console (None without one)."""
    if console is None:
        return None

    def on_step(step: int, row: dict[str, float]) -> None:
        if "val_acc" in row:
            console.print(f"SFT step {step + 1}: loss {row['loss']:.3f}, validation greedy acc {row['val_acc']:.3f}")

    return on_step


@contextlib.contextmanager
def sft_progress(console: Any, *, steps: int, target: float | None, enabled: bool = True
                 ) -> Iterator[Callable[[int, dict[str, float]], None] | None]:
    """An ``on_step`` for :func:`sft` that prints each validation check (:func:`print_checks`) and,
    when ``enabled``, drives a rich progress bar with ETA, live loss and validation accuracy (with a
    target, the bar's total is the ``steps`` cap: SFT usually stops earlier)."""
    checks = print_checks(console)
    if console is None or not enabled or steps == 0:
        yield checks
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    label = "SFT" if target is None else f"SFT to val acc {target:g} (cap)"
    bar = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.description}"), console=console)
    task = bar.add_task("", total=steps)
    val = "-"

    def on_step(step: int, row: dict[str, float]) -> None:
        nonlocal val
        if "val_acc" in row:
            val = f"{row['val_acc']:.3f}"
            if checks is not None:
                checks(step, row)
        bar.update(task, completed=step + 1, description=f"loss {row['loss']:.3f}  val acc {val}")

    with bar:
        yield on_step


def _target_check(model: torch.nn.Module, tokenizer: Any, task: Any, val: list, target: float, every: int,
                  max_new_tokens: int) -> Callable[[int, dict[str, float]], bool]:
    """``stop(step, row)``: every ``every`` steps, greedy accuracy on ``val`` into ``row["val_acc"]``;
    True once it reaches ``target``."""
    from ..rollout import sample
    from ..tasks import RewardGuard

    prompts = encode_prompts(tokenizer, [e.prompt for e in val])
    guard = RewardGuard(task.score, trusted=bool(getattr(task, "trusted", False)))

    def stop(step: int, row: dict[str, float]) -> bool:
        if (step + 1) % every:
            return False
        model.eval()
        with torch.no_grad():
            gen = sample(model, prompts, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
                         max_new_tokens=max_new_tokens, greedy=True)
        model.train()
        rewards, _ = guard.score_batch(val, decode_responses(tokenizer, gen))
        row["val_acc"] = float((rewards >= CORRECT).float().mean())
        return row["val_acc"] >= target

    return stop


def sft_on_tokens(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    answers: Sequence[list[int]],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_steps: int,
    seed: int,
    stream: int,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    stop: Callable[[int, dict[str, float]], bool] | None = None,
    schedule: str = "cosine",
) -> list[dict[str, float]]:
    """The SFT loop on token ids: cross-entropy of ``answers[i]`` given ``prompts[i]`` (answer tokens
    only), batches drawn uniformly with the (seed, step, stream) generator, AdamW, warmup + cosine
    (or constant). ``stop(step, row)`` returning True ends training after that step."""
    device = next(model.parameters()).device  # SFT runs where the model is (the trainers move it first)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    model.train()
    history = []
    t_start = time.perf_counter()
    for step in range(steps):
        g = step_generator(seed, step, stream)
        idx = torch.randint(len(prompts), (batch_size,), generator=g).tolist()
        p_ids, p_mask = left_pad([prompts[i] for i in idx], tokenizer.pad_token_id)
        T = max(len(answers[i]) for i in idx)
        r_ids = torch.stack([pad_right(torch.tensor(answers[i]), T, tokenizer.pad_token_id) for i in idx])
        r_mask = torch.stack([torch.arange(T) < len(answers[i]) for i in idx])
        p_ids, p_mask, r_ids, r_mask = (t.to(device) for t in (p_ids, p_mask, r_ids, r_mask))
        cur = lr_at(step, base=lr, total=steps, warmup=warmup_steps, schedule=schedule, min_ratio=0.1)
        for group in opt.param_groups:
            group["lr"] = cur
        logp, _ = response_logprobs(model, p_ids, p_mask, r_ids, r_mask)
        loss = -(logp * r_mask).sum() / r_mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        row = {"step": step, "loss": loss.item(), "lr": cur}
        done = stop is not None and stop(step, row)
        row["time/elapsed"] = time.perf_counter() - t_start  # wall seconds since SFT began
        history.append(row)
        if on_step is not None:
            on_step(step, row)
        if done:
            break
    return history
