"""Batched sampling from a causal LM with a KV cache, and teacher-forced log-probs.

``sample`` continues every given token sequence (a prompt, or a prompt plus a partial response:
continuing from an arbitrary prefix is the same call) ``num_samples`` times:

1. prompts are left-padded into one (N, P) batch with an attention mask and explicit position ids,
   so padding never shifts a row's positions;
2. one prefill forward over the prompts (once per prompt, not per sample) fills the KV cache,
   which is then repeated for the ``num_samples`` rows of each prompt; then one forward per new
   token on the rows that are still running — a row stops at its EOS (or at ``max_new_tokens``,
   flagged ``truncated``) and is dropped from the cache, so finished rows cost nothing afterwards;
3. each token is drawn from softmax(logits / temperature), optionally truncated to the top-p
   nucleus, with ``torch.multinomial`` under a ``torch.Generator``: the same generator state gives
   the same tokens. ``greedy=True`` takes the argmax instead (evaluation).

The recorded ``logprobs`` are log softmax(logits / temperature) of the chosen token — the full
tempered distribution, not the top-p-renormalised one — which is exactly what
``response_logprobs`` recomputes in one teacher-forced forward (old, reference and current policy).
"""

from __future__ import annotations

import inspect
from typing import Callable, Sequence

import torch
from torch import Tensor

from .generation import Generation

__all__ = ["sample", "response_logprobs", "left_pad", "top_p_filter"]


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Left-pad token lists into ids (N, P) int64 and a bool mask (N, P)."""
    if len(seqs) == 0:
        raise ValueError("left_pad: no sequences given; pass at least one prompt.")
    lengths = [len(s) for s in seqs]
    if min(lengths) == 0:
        raise ValueError(f"left_pad: prompt {lengths.index(0)} is empty; every prompt needs >= 1 token (e.g. BOS).")
    P = max(lengths)
    ids = torch.full((len(seqs), P), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(seqs), P), dtype=torch.bool)
    for i, s in enumerate(seqs):  # building the batch from Python lists: one copy per prompt
        ids[i, P - len(s):] = torch.as_tensor(list(s), dtype=torch.int64)
        mask[i, P - len(s):] = True
    return ids, mask


def _prefill_kwargs(model: torch.nn.Module, cache) -> tuple[dict, dict]:
    """Keyword arguments for the prefill and decode forwards, across transformers versions."""
    params = inspect.signature(type(model).forward).parameters
    step = {"cache" if "cache" in params else "past_key_values": cache, "use_cache": True}
    prefill = dict(step)
    if "logits_to_keep" in params:
        prefill["logits_to_keep"] = 1
    return prefill, step


def _positions(mask: Tensor) -> Tensor:
    return (mask.long().cumsum(dim=1) - 1).clamp(min=0)


def top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Set logits outside the smallest set of tokens with cumulative probability >= top_p to -inf."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    # drop a token when the mass before it already reaches top_p (the first token is always kept)
    drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    eos_id: int,
    pad_id: int,
    max_new_tokens: int,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    return_entropy: bool = False,
    prompt_index: Tensor | Sequence[int] | None = None,
    logits_processor: Callable[[Tensor], Tensor] | None = None,
) -> Generation:
    """Sample ``num_samples`` continuations of every prompt (rows ordered prompt-major).

    ``prompts``: token-id lists (BOS included if the model expects it). ``prompt_index``: the pool
    index of each prompt (default 0..len-1), repeated per sample in the result.
    ``logits_processor``: ``fn(logits (n, V)) -> logits`` replacing the division by ``temperature``
    (e.g. HAPO's ``AdaptiveTemperature``); the recorded log-probs are of its output. Returns a
    ``Generation``; rewards are filled in by the caller after scoring.
    """
    if max_new_tokens < 1:
        raise ValueError(f"sample: max_new_tokens={max_new_tokens}; it must be >= 1.")
    if num_samples < 1:
        raise ValueError(f"sample: num_samples={num_samples}; it must be >= 1.")
    if not greedy and not temperature > 0:
        raise ValueError(f"sample: temperature={temperature} must be > 0 (use greedy=True for argmax).")
    if not 0 < top_p <= 1:
        raise ValueError(f"sample: top_p={top_p} must be in (0, 1].")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id)
    n_prompts = ids.shape[0]
    if prompt_index is None:
        prompt_index = torch.arange(n_prompts)
    prompt_index = torch.as_tensor(prompt_index, dtype=torch.int64)
    if prompt_index.shape != (n_prompts,):
        raise ValueError(f"sample: prompt_index has shape {tuple(prompt_index.shape)}, expected ({n_prompts},).")
    ids, mask = ids.to(device), mask.to(device)
    N = n_prompts * num_samples

    out_ids = torch.full((N, max_new_tokens), pad_id, dtype=torch.int64, device=device)
    out_lp = torch.zeros((N, max_new_tokens), dtype=torch.float32, device=device)
    out_ent = torch.zeros((N, max_new_tokens), dtype=torch.float32, device=device) if return_entropy else None
    lengths = torch.zeros(N, dtype=torch.int64, device=device)
    done = torch.zeros(N, dtype=torch.bool, device=device)

    from transformers import DynamicCache  # local import: floor-4 module, heavy dependency

    cache = DynamicCache()
    prefill_kw, step_kw = _prefill_kwargs(model, cache)
    active = torch.arange(N, device=device)  # rows still running, in cache order
    # the prefill runs once per prompt; its KV cache and last logits are then repeated per sample
    logits = model(
        input_ids=ids, attention_mask=mask.long(), position_ids=_positions(mask), **prefill_kw
    ).logits[:, -1, :].float()
    ids = ids.repeat_interleave(num_samples, dim=0)
    mask = mask.repeat_interleave(num_samples, dim=0)
    if num_samples > 1:
        cache.batch_repeat_interleave(num_samples)
        logits = logits.repeat_interleave(num_samples, dim=0)
    attn = mask.long()
    last_pos = _positions(mask)[:, -1]
    for t in range(max_new_tokens):
        if greedy:
            scaled = logits
        elif logits_processor is not None:
            scaled = logits_processor(logits)
        else:
            scaled = logits / temperature
        logp = torch.log_softmax(scaled, dim=-1)
        if greedy:
            tok = logp.argmax(dim=-1)
        else:
            probs = torch.softmax(top_p_filter(scaled, top_p), dim=-1)
            tok = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        out_ids[active, t] = tok
        out_lp[active, t] = logp.gather(1, tok[:, None]).squeeze(1)
        if out_ent is not None:
            out_ent[active, t] = -(logp.exp() * logp).sum(dim=-1)
        lengths[active] = t + 1
        finished = tok == eos_id
        done[active[finished]] = True
        if t + 1 == max_new_tokens:
            break
        keep = ~finished
        if not bool(keep.any()):
            break
        if not bool(keep.all()):  # drop finished rows from the cache and the batch
            keep_idx = keep.nonzero().squeeze(1)
            cache.batch_select_indices(keep_idx)
            active, tok, attn, last_pos = active[keep_idx], tok[keep_idx], attn[keep_idx], last_pos[keep_idx]
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
        last_pos = last_pos + 1
        logits = model(
            input_ids=tok[:, None],
            attention_mask=attn,
            position_ids=last_pos[:, None],
            **step_kw,
        ).logits[:, -1, :].float()

    T = int(lengths.max())
    resp_mask = torch.arange(T, device=device)[None, :] < lengths[:, None]
    if was_training:
        model.train()
    return Generation(
        prompt_ids=ids,
        prompt_mask=mask,
        response_ids=out_ids[:, :T],
        response_mask=resp_mask,
        logprobs=out_lp[:, :T],
        entropy=None if out_ent is None else out_ent[:, :T],
        truncated=~done,
        prompt_index=prompt_index.to(device).repeat_interleave(num_samples),
        pad_id=pad_id,
    )


def _shared_prefix_ok(model: torch.nn.Module) -> bool:
    """Whether the prompt forward may be shared by the rows that repeat a prompt: the model takes a
    KV cache, nothing random runs in its forward (dropout in training mode would draw one mask per
    prompt instead of one per row) and activation checkpointing (which drops the cache) is off."""
    params = inspect.signature(type(model).forward).parameters
    if "past_key_values" not in params and "cache" not in params:
        return False
    checkpointing = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5.x name
    if checkpointing is None:
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    if checkpointing:
        return False
    if model.training:
        if float(getattr(getattr(model, "config", None), "attention_dropout", 0.0) or 0.0) > 0:
            return False
        if any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules()):
            return False
    return True


def response_logprobs(
    model: torch.nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    *,
    temperature: float = 1.0,
    return_entropy: bool = False,
    entropy_grad: bool = True,
    share_prompts: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Per-token log-probs (N, T) of ``response_ids`` given left-padded prompts, teacher-forced.

    Uses log softmax(logits / temperature), 0 on masked tokens; with ``return_entropy`` also the
    entropy of each position's distribution (differentiable unless ``entropy_grad=False``, which
    computes it from detached logits: a metric that costs no backward). Gradients flow when called
    with grad enabled (the policy update); wrap in ``torch.no_grad()`` for old/reference log-probs.

    The same numbers as one forward over ``[prompt, response]``, computed with less work:

    * columns that are padding in every row (leading prompt columns, trailing response columns)
      are dropped, and the last response token (whose next-token logits nobody reads) is not fed;
    * logits (and the log-softmax) are computed on the T response positions only;
    * ``share_prompts``: rows that repeat a prompt (the G samples of a group) share one prompt
      forward: the distinct prompts run once, filling a KV cache that is expanded to the rows
      (a differentiable gather: the rows' gradients are summed into the shared prompt activations,
      exactly the gradient of the per-row forward), then the responses run against it. Used when
      at most half the rows have distinct prompts and the model allows it (a KV cache, no active
      dropout, no activation checkpointing); the result equals the per-row forward to fp32
      rounding (tests/test_train_speed.py).
    """
    if response_ids.shape != response_mask.shape:
        raise ValueError(
            f"response_logprobs: response_ids {tuple(response_ids.shape)} and response_mask "
            f"{tuple(response_mask.shape)} differ; pass the same (N, T) shape."
        )
    N, T = response_ids.shape
    if T == 0:
        empty = response_ids.new_zeros((N, 0), dtype=torch.float32)
        return empty, (empty.clone() if return_entropy else None)
    # drop all-padding columns: leading prompt columns and trailing response columns
    p_cols = prompt_mask.any(dim=0)
    p0 = int(p_cols.long().argmax()) if bool(p_cols.any()) else 0
    p0 = min(p0, max(prompt_mask.shape[1] - 1, 0))  # keep one prompt column: it predicts the first token
    r_cols = response_mask.any(dim=0)
    t1 = T - int(r_cols.flip(0).long().argmax()) if bool(r_cols.any()) else 1
    p_ids, p_mask = prompt_ids[:, p0:], prompt_mask[:, p0:]
    r_ids, r_mask = response_ids[:, :t1], response_mask[:, :t1]
    logits = _response_logits(model, p_ids, p_mask, r_ids, r_mask, share_prompts=share_prompts).float()
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(2, r_ids.unsqueeze(2)).squeeze(2).masked_fill(~r_mask, 0.0)
    ent = None
    if return_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            la = logp_all if entropy_grad else logp_all.detach()
            ent = -(la.exp() * la).sum(dim=-1).masked_fill(~r_mask, 0.0)
    if t1 < T:
        logp = torch.nn.functional.pad(logp, (0, T - t1))
        ent = None if ent is None else torch.nn.functional.pad(ent, (0, T - t1))
    return logp, ent


def _response_logits(model: torch.nn.Module, p_ids: Tensor, p_mask: Tensor, r_ids: Tensor, r_mask: Tensor, *,
                     share_prompts: bool) -> Tensor:
    """Next-token logits (N, T, V) at the positions that predict ``r_ids`` (the last prompt token
    and the response tokens but the last)."""
    N, T = r_ids.shape
    params = inspect.signature(type(model).forward).parameters
    keep = {"logits_to_keep": T} if "logits_to_keep" in params else {}
    if share_prompts and N > 1 and p_ids.shape[1] > 0 and _shared_prefix_ok(model):
        key = torch.cat([p_ids.masked_fill(~p_mask, -1), p_mask.long()], dim=1)
        uniq, inv = torch.unique(key, dim=0, return_inverse=True)
        if 2 * uniq.shape[0] <= N:
            rep = torch.zeros(uniq.shape[0], dtype=torch.int64, device=inv.device).scatter_reduce_(
                0, inv, torch.arange(N, device=inv.device), "amin", include_self=False)  # a row of each prompt
            out = _shared_prompt_logits(model, p_ids[rep], p_mask[rep], inv, p_mask, r_ids, r_mask)
            if out is not None:
                return out
    ids = torch.cat([p_ids, r_ids[:, :-1]], dim=1)
    attn = torch.cat([p_mask, r_mask[:, :-1]], dim=1)
    logits = model(input_ids=ids, attention_mask=attn.long(), position_ids=_positions(attn), **keep).logits
    return logits[:, -T:, :]


def _shared_prompt_logits(model: torch.nn.Module, u_ids: Tensor, u_mask: Tensor, inv: Tensor, p_mask: Tensor,
                          r_ids: Tensor, r_mask: Tensor) -> Tensor | None:
    """The shared-prompt forward of ``response_logprobs``; None when the model did not fill the
    KV cache (the caller then runs the per-row forward)."""
    from transformers import DynamicCache  # local import: floor-4 module, heavy dependency

    P, T = u_ids.shape[1], r_ids.shape[1]
    cache = DynamicCache()
    prefill_kw, step_kw = _prefill_kwargs(model, cache)
    first = model(input_ids=u_ids, attention_mask=u_mask.long(), position_ids=_positions(u_mask),
                  **prefill_kw).logits[:, -1:, :]
    if cache.get_seq_length() != P:
        return None
    first = first[inv]
    if T == 1:
        return first
    cache.batch_select_indices(inv)
    attn = torch.cat([p_mask, r_mask[:, :-1]], dim=1)
    pos = _positions(attn)[:, P:]
    rest = model(input_ids=r_ids[:, :-1], attention_mask=attn.long(), position_ids=pos, **step_kw).logits
    return torch.cat([first, rest], dim=1)
