"""``Generation``: a batch of sampled responses (token ids, masks, sampling log-probs, rewards).

Layout (N rows, one per sampled response):

* ``prompt_ids`` (N, P) int64, **left**-padded with ``pad_id``; ``prompt_mask`` (N, P) bool;
* ``response_ids`` (N, T) int64, **right**-padded; ``response_mask`` (N, T) bool, True on every
  generated token including the EOS that ended the row;
* ``logprobs`` (N, T) float32: log-probability of each generated token under the distribution it
  was sampled from (logits / temperature, before top-p truncation), 0 on padding;
* ``entropy`` (N, T) float32 or None: entropy of that distribution at each generated position;
* ``truncated`` (N,) bool: the row reached ``max_new_tokens`` without EOS;
* ``prompt_index`` (N,) int64: which prompt of the pool the row was sampled for (the group id);
* ``rewards`` / ``failed`` (N,): filled in after scoring; ``texts``: decoded completions.

It satisfies the sampler protocol: ``.prompt_index``, ``.rewards``, ``Generation.concat(list)`` and
``gen.select(rows)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["Generation", "pad_left", "pad_right"]


def pad_left(x: Tensor, width: int, value: int | float | bool) -> Tensor:
    """Left-pad the last dimension of ``x`` to ``width`` with ``value``."""
    extra = width - x.shape[-1]
    if extra <= 0:
        return x
    pad = torch.full((*x.shape[:-1], extra), value, dtype=x.dtype, device=x.device)
    return torch.cat([pad, x], dim=-1)


def pad_right(x: Tensor, width: int, value: int | float | bool) -> Tensor:
    """Right-pad the last dimension of ``x`` to ``width`` with ``value``."""
    extra = width - x.shape[-1]
    if extra <= 0:
        return x
    pad = torch.full((*x.shape[:-1], extra), value, dtype=x.dtype, device=x.device)
    return torch.cat([x, pad], dim=-1)


@dataclass
class Generation:
    """Sampled responses; see the module docstring for the fields."""

    prompt_ids: Tensor
    prompt_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor
    logprobs: Tensor
    truncated: Tensor
    prompt_index: Tensor
    pad_id: int
    entropy: Tensor | None = None
    rewards: Tensor | None = None
    failed: Tensor | None = None
    texts: list[str] | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.response_ids.shape[0])

    @property
    def lengths(self) -> Tensor:
        """Generated tokens per row (EOS included)."""
        return self.response_mask.sum(dim=1)

    @property
    def num_tokens(self) -> int:
        return int(self.response_mask.sum())

    def select(self, rows: Tensor | Sequence[int]) -> "Generation":
        """The rows ``rows`` (indices or bool mask), in that order."""
        idx = torch.as_tensor(rows)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().squeeze(1)
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                out[f.name] = v[idx]
            elif f.name == "texts" and v is not None:
                out[f.name] = [v[i] for i in idx.tolist()]
            elif f.name == "extras":
                out[f.name] = {k: t[idx] for k, t in v.items()}
            else:
                out[f.name] = v
        return Generation(**out)

    @classmethod
    def concat(cls, gens: Sequence["Generation"]) -> "Generation":
        """Stack generations row-wise, re-padding prompts (left) and responses (right)."""
        if not gens:
            raise ValueError("Generation.concat: got an empty list; pass at least one Generation.")
        if len(gens) == 1:
            return gens[0]
        pad_id = gens[0].pad_id
        P = max(g.prompt_ids.shape[1] for g in gens)
        T = max(g.response_ids.shape[1] for g in gens)

        def cat(name: str, pad, side: str) -> Tensor | None:
            vals = [getattr(g, name) for g in gens]
            if any(v is None for v in vals):
                return None
            fn = pad_left if side == "left" else pad_right
            width = P if side == "left" else T
            return torch.cat([fn(v, width, pad) for v in vals], dim=0)

        texts = None
        if all(g.texts is not None for g in gens):
            texts = [t for g in gens for t in g.texts]  # type: ignore[union-attr]
        rows = lambda name: None if any(getattr(g, name) is None for g in gens) else torch.cat(  # noqa: E731
            [getattr(g, name) for g in gens]
        )
        keys = set(gens[0].extras).intersection(*(g.extras for g in gens[1:]))
        return cls(
            prompt_ids=cat("prompt_ids", pad_id, "left"),  # type: ignore[arg-type]
            prompt_mask=cat("prompt_mask", False, "left"),  # type: ignore[arg-type]
            response_ids=cat("response_ids", pad_id, "right"),  # type: ignore[arg-type]
            response_mask=cat("response_mask", False, "right"),  # type: ignore[arg-type]
            logprobs=cat("logprobs", 0.0, "right"),  # type: ignore[arg-type]
            entropy=cat("entropy", 0.0, "right"),
            truncated=rows("truncated"),  # type: ignore[arg-type]
            prompt_index=rows("prompt_index"),  # type: ignore[arg-type]
            rewards=rows("rewards"),
            failed=rows("failed"),
            texts=texts,
            pad_id=pad_id,
            extras={k: torch.cat([g.extras[k] for g in gens]) for k in sorted(keys)},
        )
