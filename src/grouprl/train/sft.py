"""Warm start: supervised fine-tuning on the task's reference answers.

A tiny model starts at 0% accuracy, and a group method needs some successes in a group to get a
signal. ``sft`` minimises the cross-entropy of ``task.reference(example)`` + EOS given the prompt
(answer tokens only; the prompt is not trained on), with AdamW, linear warmup then cosine decay to
10% of ``sft_lr``, on batches drawn uniformly from the train pool with a (seed, step) generator.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from ..rollout import left_pad, pad_right, response_logprobs
from .data import encode_answers, encode_prompts, step_generator

__all__ = ["sft", "sft_on_tokens", "lr_at"]


def lr_at(step: int, *, base: float, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Learning rate at optimizer step ``step`` (0-based): linear warmup, then constant or cosine."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return base
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


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
) -> list[dict[str, float]]:
    """Train ``model`` in place for ``steps`` steps; returns per-step ``{"step", "loss", "lr"}``."""
    pool = task.train_pool
    if len(pool) == 0:
        raise ValueError(f"sft: task {getattr(task, 'name', task)!r} has an empty train pool.")
    prompts = encode_prompts(tokenizer, [e.prompt for e in pool])
    answers = encode_answers(tokenizer, [task.reference(e) for e in pool])
    return sft_on_tokens(model, tokenizer, prompts, answers, steps=steps, batch_size=batch_size, lr=lr,
                         warmup_steps=warmup_steps, seed=seed, stream=11, on_step=on_step)


def sft_on_tokens(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: list[list[int]],
    answers: list[list[int]],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_steps: int,
    seed: int,
    stream: int,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """The SFT loop on token ids: cross-entropy of ``answers[i]`` given ``prompts[i]`` (answer tokens
    only), batches drawn uniformly with the (seed, step, stream) generator, AdamW, warmup + cosine."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    model.train()
    history = []
    for step in range(steps):
        g = step_generator(seed, step, stream)
        idx = torch.randint(len(prompts), (batch_size,), generator=g).tolist()
        p_ids, p_mask = left_pad([prompts[i] for i in idx], tokenizer.pad_token_id)
        T = max(len(answers[i]) for i in idx)
        r_ids = torch.stack([pad_right(torch.tensor(answers[i]), T, tokenizer.pad_token_id) for i in idx])
        r_mask = torch.stack([torch.arange(T) < len(answers[i]) for i in idx])
        cur = lr_at(step, base=lr, total=steps, warmup=warmup_steps, schedule="cosine", min_ratio=0.1)
        for group in opt.param_groups:
            group["lr"] = cur
        logp, _ = response_logprobs(model, p_ids, p_mask, r_ids, r_mask)
        loss = -(logp * r_mask).sum() / r_mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        row = {"step": step, "loss": loss.item(), "lr": cur}
        history.append(row)
        if on_step is not None:
            on_step(step, row)
    return history
