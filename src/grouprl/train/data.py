"""Task text <-> token ids, per-step generators, and evaluation on the fixed held-out set."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..rollout import Generation, sample

__all__ = ["evenly_spaced", "encode_prompts", "encode_answers", "LazyTokens", "decode_responses", "step_generator", "evaluate", "CORRECT"]

# A response counts as correct when its reward reaches this value (verifiers score 1.0 for right).
CORRECT = 1.0 - 1e-6


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """A torch.Generator that depends only on (seed, step, stream): a resumed run redraws the same numbers."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 64 + stream) % (2**63 - 1))


def evenly_spaced(total: int, size: int | None) -> list[int]:
    """``size`` evenly spaced indices of ``range(total)`` (all of them for ``size=None`` or more)."""
    if size is None or size >= total:
        return list(range(total))
    if size <= 0:
        return []
    return torch.linspace(0, total - 1, size).round().long().unique().tolist()


def encode_prompts(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt, with BOS first when the tokenizer has one."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return [bos + tokenizer.encode(t, add_special_tokens=False) for t in texts]


def encode_answers(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each reference answer followed by EOS (the SFT targets)."""
    return [tokenizer.encode(t, add_special_tokens=False) + [tokenizer.eos_token_id] for t in texts]


class LazyTokens(Sequence[list[int]]):
    """``encode(texts[i])`` computed on first access and cached: a 200,000-prompt pool costs nothing
    until a step draws from it (encoding it all up front took 5 s on one core)."""

    def __init__(self, texts: Sequence[str], encode: Any) -> None:
        self._texts, self._encode, self._cache = texts, encode, {}

    def __len__(self) -> int:
        return len(self._texts)

    def __getitem__(self, i: int) -> list[int]:  # type: ignore[override]
        ids = self._cache.get(i)
        if ids is None:
            ids = self._cache[i] = self._encode([self._texts[i]])[0]
        return ids


def decode_responses(tokenizer: Any, gen: Generation) -> list[str]:
    """Completion text of each row (EOS and padding removed)."""
    ids = gen.response_ids.masked_fill(~gen.response_mask, tokenizer.pad_token_id)
    return tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)


def evaluate(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[Any],
    guard: Any,
    *,
    max_new_tokens: int,
    pass_k: int,
    pass_k_size: int,
    temperature: float,
    top_p: float,
    generator: torch.Generator,
    chunk: int = 256,
) -> dict[str, Any]:
    """Greedy accuracy (overall and per data_group) on a fixed example list, with ``n`` the number of
    examples scored; sampled pass@k and accuracy on ``pass_k_size`` evenly spaced ones (``n_sampled``); and
    ``scores``: each example's greedy score (1.0 correct, 0.0 not; their mean is ``acc``), a list in
    the order of ``examples``."""
    prompts = encode_prompts(tokenizer, [e.prompt for e in examples])
    correct = []
    for s in range(0, len(prompts), chunk):
        gen = sample(
            model, prompts[s : s + chunk], eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
            max_new_tokens=max_new_tokens, greedy=True,
        )
        rewards, _ = guard.score_batch(list(examples[s : s + chunk]), decode_responses(tokenizer, gen))
        correct.append(rewards >= CORRECT)
    ok = torch.cat(correct).float()
    out: dict[str, Any] = {"n": len(examples), "acc": float(ok.mean()), "scores": ok.tolist()}
    groups = sorted({e.data_group for e in examples if e.data_group is not None})
    if len(groups) > 1:
        for g in groups:
            sel = torch.tensor([e.data_group == g for e in examples])
            out[f"acc/{g}"] = float(ok[sel].mean())
    # sampled on evenly spaced examples: a task's held-out split is ordered (the arithmetic tasks by
    # operand pair), and its first examples alone are a biased sample (0+260=, 1+396=, ...)
    picked = evenly_spaced(len(examples), min(pass_k_size, len(examples)))
    n = len(picked)
    if n > 0:
        gen = sample(
            model, [prompts[i] for i in picked], eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
            max_new_tokens=max_new_tokens, num_samples=pass_k, temperature=temperature, top_p=top_p,
            generator=generator,
        )
        rows = [examples[i] for i in picked for _ in range(pass_k)]
        rewards, _ = guard.score_batch(rows, decode_responses(tokenizer, gen))
        hit = (rewards >= CORRECT).view(n, pass_k)
        out["n_sampled"] = n
        out[f"pass@{pass_k}"] = float(hit.any(dim=1).float().mean())
        out["sampled_acc"] = float(hit.float().mean())
    return out
