"""SPO-tree sampling, arXiv:2505.23564: a tree of fixed-length segments per prompt.

``tree_rollout(model, first, branch=(b1, b2), segment_len=M, ...)`` grows the tree from ``first``,
the depth-0 layer: ``b0`` responses per prompt (a normal rollout), each cut to its first M tokens —
sampling a full response and keeping M tokens is the same distribution as sampling M tokens. A
node that ended with EOS (or hit the total length limit) is a leaf; every other node at depth d < D−1
gets ``branch[d]`` children of up to M more tokens each (``continue_from``, batched over all nodes
of the level); the last depth generates to the end. Nodes are the rows of one ``Generation`` (each
row = the node's full response so far), level by level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from .generation import Generation
from .prefix import continue_from

__all__ = ["Tree", "tree_rollout", "truncate"]


@dataclass
class Tree:
    """Tree nodes: ``gen`` (one row per node), ``parent`` (N,) (−1: the prompt is the parent),
    ``depth`` (N,), ``segment_start`` (N,): the parent's response length (where the node's own
    segment starts), ``leaf`` (N,) bool."""

    gen: Generation
    parent: Tensor
    depth: Tensor
    segment_start: Tensor
    leaf: Tensor


def truncate(gen: Generation, max_len: int) -> Generation:
    """Each row cut to its first ``max_len`` response tokens; cut rows are flagged truncated."""
    L = gen.lengths
    cut = L > max_len
    T = min(int(gen.response_ids.shape[1]), max_len)
    keep = torch.arange(T, device=L.device).unsqueeze(0) < L.clamp(max=max_len).unsqueeze(1)
    return Generation(
        prompt_ids=gen.prompt_ids, prompt_mask=gen.prompt_mask,
        response_ids=gen.response_ids[:, :T].masked_fill(~keep, gen.pad_id), response_mask=keep,
        logprobs=gen.logprobs[:, :T] * keep, truncated=gen.truncated | cut, prompt_index=gen.prompt_index,
        pad_id=gen.pad_id,
    )


def tree_rollout(
    model: torch.nn.Module,
    first: Generation,
    *,
    branch: Sequence[int],
    segment_len: int,
    max_new_tokens: int,
    eos_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    logits_processor: Callable[[Tensor], Tensor] | None = None,
) -> Tree:
    """Grow SPO's tree: depth 0 = ``first`` cut to ``segment_len`` tokens; ``branch[d − 1]``
    children per expandable node at depth d = 1..len(branch) (tree depth D = len(branch) + 1).
    Nodes at depth < D − 1 add at most ``segment_len`` tokens; the last depth runs to EOS or to
    ``max_new_tokens`` in total. Leaves: rows that ended with EOS, reached ``max_new_tokens``, or are
    at the last depth."""
    if segment_len < 1:
        raise ValueError(f"tree_rollout: segment_len={segment_len} must be >= 1 (SPO's M).")
    if any(int(b) < 1 for b in branch):
        raise ValueError(f"tree_rollout: branch={list(branch)}; every branching factor must be >= 1.")
    D = len(branch) + 1
    level = truncate(first, segment_len) if D > 1 else first
    leaf = ~level.truncated | (level.lengths >= max_new_tokens) | (D == 1)
    gens, parents, depths, starts, leaves = [level], [torch.full((len(level),), -1)], [torch.zeros(len(level), dtype=torch.int64)], [torch.zeros(len(level), dtype=torch.int64)], [leaf]
    offset = 0
    for d in range(1, D):
        expand = (~leaf).nonzero().squeeze(1)
        if expand.numel() == 0:
            break
        k = int(branch[d - 1])
        last = d == D - 1
        L = level.lengths[expand]
        step = max_new_tokens if last else segment_len
        nxt = continue_from(model, level, expand, L, num_samples=k, eos_id=eos_id, max_new_tokens=step,
                            budget=(max_new_tokens - L).clamp(max=step), temperature=temperature, top_p=top_p,
                            generator=generator, logits_processor=logits_processor)
        nxt.extras = {}
        n = len(nxt)
        parents.append(offset + expand.repeat_interleave(k))
        depths.append(torch.full((n,), d, dtype=torch.int64))
        starts.append(L.repeat_interleave(k))
        leaf = torch.ones(n, dtype=torch.bool) if last else (~nxt.truncated | (nxt.lengths >= max_new_tokens))
        leaves.append(leaf)
        offset += len(level)
        gens.append(nxt)
        level = nxt
    for g in gens:
        g.extras = {}
    return Tree(Generation.concat(gens), torch.cat(parents), torch.cat(depths), torch.cat(starts), torch.cat(leaves))
