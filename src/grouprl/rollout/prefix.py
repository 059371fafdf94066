"""Generation that resumes from arbitrary prefixes of earlier responses, and Monte Carlo prefix values.

``continue_from(model, gen, rows, lengths, num_samples=K, ...)`` continues, K times each, the prefixes
"prompt of ``gen`` row ``rows[j]`` + its first ``lengths[j]`` response tokens" (length 0 = the bare
prompt). Identical prefixes are sampled once (deduplicated) and shared. All prefixes go through one
batched, KV-cached ``sample`` call: one left-padded prefill forward for all of them, then one
forward per new token. (The prompt's KV cache of the original rollout is not reused: each prefix is
prefilled again, in the same batched forward.)

The result is a ``Generation`` of **full responses** (prefix tokens + continuation), so it is scored
exactly like a fresh rollout (decode, verifier); ``extras["prefix_index"]`` says which of the given
prefixes each row continues and ``extras["prefix_len"]`` how many of its tokens came from the prefix.
``prefix_values`` turns their rewards into MC values V(prefix) = mean reward of its continuations.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .generation import Generation
from .sampling import sample

__all__ = ["continue_from", "prefix_values", "mc_values"]


def continue_from(
    model: torch.nn.Module,
    gen: Generation,
    rows: Tensor,
    lengths: Tensor,
    *,
    num_samples: int,
    eos_id: int,
    max_new_tokens: int,
    budget: Tensor | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    logits_processor: Callable[[Tensor], Tensor] | None = None,
) -> Generation:
    """``num_samples`` continuations of each prefix (``rows``, ``lengths``: (n,) int64), prefix-major.

    ``max_new_tokens``: the most tokens any continuation may add; ``budget`` (n,): a per-prefix cap
    (e.g. the rollout's length limit minus the prefix length): a continuation longer than its budget
    is cut there and flagged ``truncated``. A prefix ending in EOS is not continued (its rows are the
    prefix itself, not truncated). Rows carry ``prompt_index`` of their source row.
    """
    rows = torch.as_tensor(rows, dtype=torch.int64).reshape(-1)
    lengths = torch.as_tensor(lengths, dtype=torch.int64).reshape(-1)
    n = rows.shape[0]
    if lengths.shape != (n,):
        raise ValueError(f"continue_from: lengths has shape {tuple(lengths.shape)}, expected ({n},) like rows.")
    if n == 0:
        raise ValueError("continue_from: no prefixes given; pass at least one (row, length).")
    src_len = gen.lengths[rows]
    if bool(((lengths < 0) | (lengths > src_len)).any()):
        j = int(((lengths < 0) | (lengths > src_len)).nonzero()[0, 0])
        raise ValueError(
            f"continue_from: prefix {j} asks for {int(lengths[j])} tokens of row {int(rows[j])}, which has "
            f"{int(src_len[j])}; a prefix length must be in [0, the row's response length]."
        )
    if budget is None:
        budget = torch.full((n,), max_new_tokens, dtype=torch.int64)
    budget = torch.as_tensor(budget, dtype=torch.int64).clamp(max=max_new_tokens)

    # token lists of the prefixes (prompt without padding + response head), deduplicated
    keys: dict[tuple, int] = {}
    uniq: list[tuple] = []
    inverse: list[int] = []
    first_rows: list[int] = []
    prompts = gen.prompt_ids.cpu()
    pmask = gen.prompt_mask.cpu()
    resp = gen.response_ids.cpu()
    for r, L in zip(rows.tolist(), lengths.tolist()):  # one token list per prefix, as left_pad does
        toks = tuple(prompts[r][pmask[r]].tolist() + resp[r, :L].tolist())
        if toks not in keys:
            keys[toks] = len(uniq)
            uniq.append(toks)
            first_rows.append(r)
        inverse.append(keys[toks])
    inv = torch.tensor(inverse, dtype=torch.int64)
    ends_eos = (lengths > 0) & (resp[rows, (lengths - 1).clamp_min(0)] == eos_id)
    steps = int(torch.where(ends_eos, 0, budget).max().clamp_min(1))
    cont = sample(model, uniq, eos_id=eos_id, pad_id=gen.pad_id, max_new_tokens=steps, num_samples=num_samples,
                  temperature=temperature, top_p=top_p, generator=generator, prompt_index=gen.prompt_index[torch.tensor(first_rows)],
                  logits_processor=logits_processor)

    # row j·K + k continues prefix j with sample k of its unique prefix
    k = torch.arange(num_samples)
    src = (inv.unsqueeze(1) * num_samples + k).reshape(-1)
    pre_row, pre_len = rows.repeat_interleave(num_samples), lengths.repeat_interleave(num_samples)
    eos_pre = ends_eos.repeat_interleave(num_samples)
    cap = torch.where(eos_pre, 0, budget.repeat_interleave(num_samples))
    c_len = torch.minimum(cont.lengths.cpu()[src], cap)
    cut = cont.lengths.cpu()[src] > cap
    total = pre_len + c_len
    T = int(total.max().clamp_min(1))
    t = torch.arange(T).unsqueeze(0)
    in_pre = t < pre_len.unsqueeze(1)
    c_idx = (t - pre_len.unsqueeze(1)).clamp(0, max(cont.response_ids.shape[1] - 1, 0))
    r_idx = t.clamp_max(resp.shape[1] - 1)
    mask = t < total.unsqueeze(1)

    def merge(a: Tensor, b: Tensor, pad) -> Tensor:
        x = torch.where(in_pre, a.cpu()[pre_row].gather(1, r_idx.expand(len(src), T)),
                        b.cpu()[src].gather(1, c_idx.expand(len(src), T)))
        return torch.where(mask, x, torch.as_tensor(pad, dtype=x.dtype))

    truncated = torch.where(eos_pre, torch.zeros_like(cut), cont.truncated.cpu()[src] | cut)
    dev = gen.response_ids.device
    return Generation(
        prompt_ids=gen.prompt_ids[pre_row.to(dev)],
        prompt_mask=gen.prompt_mask[pre_row.to(dev)],
        response_ids=merge(resp, cont.response_ids, gen.pad_id).to(dev),
        response_mask=mask.to(dev),
        logprobs=merge(gen.logprobs, cont.logprobs, 0.0).to(dev),
        truncated=truncated.to(dev),
        prompt_index=gen.prompt_index[pre_row.to(dev)],
        pad_id=gen.pad_id,
        extras={"prefix_index": torch.arange(n).repeat_interleave(num_samples).to(dev), "prefix_len": pre_len.to(dev)},
    )


def prefix_values(rewards: Tensor, prefix_index: Tensor, num_prefixes: int) -> Tensor:
    """MC value of each prefix: the mean reward of its continuations (float32 (num_prefixes,));
    a prefix without continuations gets 0 (SPO: an empty rollout set gives V = 0)."""
    idx = torch.as_tensor(prefix_index, dtype=torch.int64)
    r = torch.as_tensor(rewards, dtype=torch.float64)
    s = torch.zeros(num_prefixes, dtype=torch.float64).index_add_(0, idx, r)
    c = torch.bincount(idx, minlength=num_prefixes).to(torch.float64)
    return torch.where(c > 0, s / c.clamp_min(1.0), torch.zeros_like(s)).to(torch.float32)


def mc_values(
    model: torch.nn.Module,
    gen: Generation,
    rows: Tensor,
    lengths: Tensor,
    score: Callable[[Generation], Tensor],
    *,
    num_samples: int,
    **sample_kw,
) -> tuple[Tensor, Generation]:
    """V(prefix) = mean of ``score(continuations)`` over ``num_samples`` continuations per prefix.

    ``score(gen) -> rewards (N,)`` scores full responses (the trainer's verifier). ``sample_kw`` go
    to ``continue_from`` (``eos_id``, ``max_new_tokens``, ``budget``, ``temperature``, ...). Returns
    the values (n,) and the scored continuations.
    """
    cont = continue_from(model, gen, rows, lengths, num_samples=num_samples, **sample_kw)
    rewards = torch.as_tensor(score(cont), dtype=torch.float32)
    cont.rewards = rewards
    return prefix_values(rewards, cont.extras["prefix_index"], len(torch.as_tensor(rows).reshape(-1))), cont
