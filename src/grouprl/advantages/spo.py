"""SPO: Segment Policy Optimization, arXiv:2505.23564 — segment-level credit without a critic.

SPO-chain, in three pure steps plus the rollout (``grouprl.rollout.prefix.mc_values``):

1. ``spo_segment_starts(token_probs, mask, interval=5)``: probability-guided cut points. A segment
   starts at every ``interval``-th token with p < 0.9; its cut point (the MC state) is the prefix
   ending just before it (cut point c = t − 1; t = 0 means the bare prompt).
2. MC values V(c) of each cut-point prefix = mean verifier reward of K continuations (rollout layer).
3. ``spo_chain`` (estimator) / ``spo_chain_advantages``: segment advantage V(next) − V(prev),
   V(final) = the reward, the probability mask and batch whitening over the masked tokens.

**Batch layout read by the ``spo_chain`` estimator** (B rows, T response tokens):

* ``token_probs`` (B, T): the old policy's probability of each response token;
* ``extras["segment_id"]`` (B, T) int64: the segment of each token, = the number of segment starts
  at or before it (``spo_segment_ids``): 0 before the first start, j for the j-th segment;
* ``extras["segment_values"]`` (B, S) float: column j − 1 holds V(c_j), the MC value of the prefix
  just before segment j's first token (j = 1..m_i, m_i = the row's number of segments; columns past
  m_i are ignored, S ≥ max m_i, S ≥ 1).

SPO-tree: ``spo_tree_advantages`` on a flat array of tree nodes (node values from the tree itself).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..core import Rollouts, group_stats, masked_whiten
from ._masks import float_mask
from .registry import estimator

__all__ = [
    "PROB_THRESHOLD",
    "spo_segment_starts",
    "spo_segment_ids",
    "spo_chain_advantages",
    "spo_prob_mask",
    "spo_chain",
    "spo_tree",
    "spo_tree_advantages",
    "TREE_ADV_METHODS",
    "check_tree_adv_method",
]

#: the reference code's hard-coded probability threshold of a "decision" token
PROB_THRESHOLD = 0.9


def spo_segment_starts(
    token_probs: Tensor, mask: Tensor, *, interval: int = 5, threshold: float = PROB_THRESHOLD
) -> Tensor:
    """Bool (B, T): the tokens that start a segment (SPO-chain's probability-guided partition).

    The low-probability tokens L = {t : p_t < threshold} (valid tokens only) are the candidates; the
    1st, (1+interval)-th, (1+2·interval)-th ... of each row are kept (candidates[::interval]). The
    cut point of a start t is c = t − 1 (the state is the prefix ending at token c; c = −1 is the
    bare prompt), so every segment begins with a low-probability token.
    """
    if interval < 1:
        raise ValueError(f"spo: interval={interval}; the cut-point interval must be >= 1 (SPO default 5).")
    if token_probs.shape != mask.shape:
        raise ValueError(f"spo: token_probs has shape {tuple(token_probs.shape)}, expected {tuple(mask.shape)} like mask.")
    low = (token_probs < threshold) & mask.to(torch.bool)
    rank = low.to(torch.int64).cumsum(dim=1) - 1  # index of each candidate within its row
    return low & (rank % interval == 0)


def spo_segment_ids(starts: Tensor, mask: Tensor | None = None) -> Tensor:
    """Int64 (B, T): the number of segment starts at or before each token (0 before the first)."""
    ids = starts.to(torch.int64).cumsum(dim=1)
    return ids if mask is None else ids * mask.to(torch.int64)


def spo_prob_mask(token_probs: Tensor, mask: Tensor, threshold: float = PROB_THRESHOLD) -> Tensor:
    """The loss mask of ``use_prob_mask=True``: valid tokens with old-policy probability < 0.9."""
    return mask.to(torch.bool) & (token_probs < threshold)


def spo_chain_advantages(segment_values: Tensor, segment_id: Tensor, rewards: Tensor, mask: Tensor) -> Tensor:
    """Per-token segment advantages (B, T), float32, before the probability mask.

    Segment j (tokens (c_{j−1}, c_j], in the start-token numbering ``segment_id == j``) gets
    A = V(c_{j+1}) − V(c_j), with V after the last segment = the row's reward; tokens before the
    first start (``segment_id == 0``) get 0 (no base value). Layout: see the module docstring.
    """
    B, T = mask.shape
    m = mask.to(torch.bool)
    if segment_id.shape != (B, T):
        raise ValueError(f"spo: extras['segment_id'] has shape {tuple(segment_id.shape)}, expected {(B, T)} like mask.")
    if segment_values.dim() != 2 or segment_values.shape[0] != B:
        raise ValueError(f"spo: extras['segment_values'] has shape {tuple(segment_values.shape)}, expected ({B}, S).")
    seg = segment_id.to(torch.int64) * m
    S = segment_values.shape[1]
    n_seg = seg.amax(dim=1) if T > 0 else torch.zeros(B, dtype=torch.int64)
    if bool((n_seg > S).any()) or bool((seg < 0).any()):
        r = int(((n_seg > S) | (seg < 0).any(dim=1)).nonzero()[0, 0])
        raise ValueError(
            f"spo: row {r} has segment ids up to {int(n_seg[r])} but extras['segment_values'] has S = {S} "
            "columns (or a negative id); store V(c_j) in column j − 1 for every segment j >= 1."
        )
    v = segment_values.to(torch.float64)
    W = torch.cat([v, v.new_zeros(B, 1)], dim=1)
    W.scatter_(1, n_seg.unsqueeze(1), rewards.to(torch.float64).unsqueeze(1))  # V(final) = reward
    nxt = W.gather(1, seg)
    cur = W.gather(1, (seg - 1).clamp_min(0))
    valid = m & (seg > 0)
    return torch.where(valid, nxt - cur, torch.zeros((), dtype=torch.float64)).to(torch.float32)


@estimator(
    "spo_chain",
    needs=("rewards", "group", "mask", "token_probs", "segment_values", "segment_id"),
    paper="Segment Policy Optimization: Effective Segment-Level Credit Assignment in RL for Large "
    "Language Models (SPO), arXiv:2505.23564",
    level="segment",
    example={
        "rewards": [1.0],
        "group": [0],
        "mask": [[1] * 10],
        "token_probs": [[0.95, 0.5, 0.99, 0.6, 0.97, 0.3, 0.98, 0.8, 0.99, 0.99]],
        "extras": {"segment_id": [[0, 1, 1, 1, 1, 2, 2, 2, 2, 2]], "segment_values": [[0.5, 0.25]]},
        "kwargs": {"whiten": False},
    },
)
def spo_chain(
    batch: Rollouts, *, whiten: bool = True, prob_mask: bool = True, threshold: float = PROB_THRESHOLD
) -> Tensor:
    """SPO-chain segment advantage with the probability mask (SPO, arXiv:2505.23564, SPO-chain).

    A_k = V(c_k) − V(c_{k−1}) for the tokens of segment k, V(final) = reward, from the MC values in
    ``extras["segment_values"]`` and the partition ``extras["segment_id"]`` (module docstring).
    Tokens with old-policy probability > ``threshold`` get 0 (the episode generator's mask); with
    ``prob_mask`` only tokens with p < ``threshold`` keep an advantage (the trainer's
    ``use_prob_mask``; pass the same mask to the loss, ``spo_prob_mask``). ``whiten``: zero mean,
    unit unbiased variance over the probability-masked tokens of the batch, (A − mean)/sqrt(var +
    1e-8), falling back to all response tokens when that mask is empty. With one segment per
    response starting at token 0 (V = the prompt's value) this is the outcome advantage r − V.
    """
    mask = batch.mask
    adv = spo_chain_advantages(batch.get("segment_values"), batch.get("segment_id"), batch.rewards, mask)
    return _mask_and_whiten(adv, batch.token_probs, mask, whiten=whiten, prob_mask=prob_mask, threshold=threshold)


def _mask_and_whiten(adv: Tensor, probs: Tensor | None, mask: Tensor, *, whiten: bool, prob_mask: bool,
                     threshold: float) -> Tensor:
    """SPO's probability mask and whitening over the masked tokens (response mask if empty)."""
    assert probs is not None
    adv = adv.masked_fill(probs > threshold, 0.0)
    keep = spo_prob_mask(probs, mask, threshold) if prob_mask else mask.to(torch.bool)
    if whiten:
        wmask = keep if bool(keep.any()) else mask.to(torch.bool)
        adv = masked_whiten(adv, wmask)
    return adv * float_mask(keep)


@estimator(
    "spo_tree",
    needs=("rewards", "group", "mask", "token_probs", "node_advantage", "segment_start"),
    paper="Segment Policy Optimization: Effective Segment-Level Credit Assignment in RL for Large "
    "Language Models (SPO), arXiv:2505.23564",
    level="segment",
    example={
        "rewards": [0.5, 0.0],
        "group": [0, 0],
        "mask": [[1, 1, 1], [1, 1, 1]],
        "token_probs": [[0.5, 0.95, 0.3], [0.2, 0.4, 0.99]],
        "extras": {"node_advantage": [0.25, -0.25], "segment_start": [1, 0]},
        "kwargs": {"whiten": False},
    },
)
def spo_tree(
    batch: Rollouts, *, whiten: bool = True, prob_mask: bool = True, threshold: float = PROB_THRESHOLD
) -> Tensor:
    """SPO-tree: one training row per kept tree edge, its advantage on the child's segment only.

    Row = the child node's full response (the parent's text + the child's segment); the edge
    advantage A(parent → child) (``spo_tree_advantages``) sits in ``extras["node_advantage"]`` (B,)
    and applies to the tokens from ``extras["segment_start"]`` (B,) on (the parent's response
    length). Then the probability mask and whitening of ``spo_chain``. Use the segment tokens (and
    p < 0.9) as the loss mask.
    """
    mask = batch.mask.to(torch.bool)
    T = mask.shape[1]
    seg = torch.arange(T, device=mask.device).unsqueeze(0) >= batch.get("segment_start").to(torch.int64).unsqueeze(1)
    adv = batch.get("node_advantage").to(torch.float32).unsqueeze(1) * float_mask(seg & mask)
    return _mask_and_whiten(adv, batch.token_probs, seg & mask, whiten=whiten, prob_mask=prob_mask, threshold=threshold)


#: SPO-tree's edge advantages (``adv_method``), (SPO-tree, arXiv:2505.23564, as its reference code): the divisor
#: of V(child) − V(parent) given the population std of the siblings' values (None: no division).
TREE_ADV_METHODS: dict[str, Callable[[Tensor, float], Tensor] | None] = {
    "rloo": None,
    "grpo": lambda std, eps: std + eps,
}


def check_tree_adv_method(adv_method: str, who: str = "spo_tree_advantages") -> str:
    """``adv_method`` if it is one of ``TREE_ADV_METHODS``, else a ValueError naming the choices."""
    if adv_method not in TREE_ADV_METHODS:
        raise ValueError(f"{who}: adv_method={adv_method!r}; choose one of {', '.join(map(repr, TREE_ADV_METHODS))}.")
    return adv_method


def spo_tree_advantages(
    parent: Tensor, rewards: Tensor, *, adv_method: str = "rloo", eps: float = 1e-8, bok_k: int = 4
) -> tuple[Tensor, Tensor, Tensor]:
    """SPO-tree node values and edge advantages on a flat array of N tree nodes (SPO-tree, arXiv:2505.23564).

    ``parent`` (N,) int64: each node's parent index, −1 for a root (several trees may share the
    array); ``rewards`` (N,): the verifier reward, read on leaves (nodes without children) only.
    Node value: leaf = reward, inner node = the mean of its children's values (recursive; unequal
    subtrees weigh equally). Edge (parent → node) advantage (``TREE_ADV_METHODS``):

    * ``"rloo"``: A = V(node) − V(parent) (a sibling-mean baseline including the node itself);
    * ``"grpo"``: A = (V(node) − V(parent)) / (population std of the siblings' values + ``eps``).

    Returns ``(values, advantages, keep)``, each (N,); ``keep`` marks the edges trained on:
    non-zero A + (BoK(V_node) − BoK(V_parent)), BoK(v) = 1 − (1 − v)^k (the reference code's
    ``only_adv_greater_than_zero``, which in fact keeps non-zero edges). Roots: A = 0, not kept.

    A node whose children all have the same value (decided exactly: max == min of the children's
    values, never against their computed float mean, which can differ from them in the last bit —
    three children of 0.1 have the float mean 0.10000000000000002) has that value, and its child
    edges get A = 0 and are dropped (a single child is such a node).
    One loop over tree depth (a few levels), none over nodes.
    """
    check_tree_adv_method(adv_method)
    parent = torch.as_tensor(parent, dtype=torch.int64)
    N = parent.shape[0]
    r = torch.as_tensor(rewards, dtype=torch.float64)
    if r.shape != (N,):
        raise ValueError(f"spo_tree_advantages: rewards has shape {tuple(r.shape)}, expected ({N},) like parent.")
    if bool(((parent < -1) | (parent >= N)).any()):
        i = int(((parent < -1) | (parent >= N)).nonzero()[0, 0])
        raise ValueError(f"spo_tree_advantages: parent[{i}] = {int(parent[i])} is not a node index or −1.")
    is_root = parent < 0
    p = parent.clamp_min(0)
    depth = torch.zeros(N, dtype=torch.int64)
    for _ in range(N + 1):  # pointer doubling would be faster; trees are a few levels deep
        new = torch.where(is_root, 0, depth[p] + 1)
        if torch.equal(new, depth):
            break
        depth = new
    else:
        raise ValueError("spo_tree_advantages: parent has a cycle; every chain of parents must end at −1.")
    n_child = torch.zeros(N, dtype=torch.int64).index_add_(0, p[~is_root], torch.ones(int((~is_root).sum()), dtype=torch.int64))
    values = torch.where(n_child == 0, r, torch.zeros_like(r))
    equal = torch.zeros(N, dtype=torch.bool)  # inner nodes whose children all have one value
    for d in range(int(depth.max()), 0, -1):  # children at depth d fill their parents at d − 1
        at = (depth == d).nonzero().squeeze(1)
        sums = torch.zeros(N, dtype=torch.float64).index_add_(0, parent[at], values[at])
        hi = torch.full((N,), -torch.inf, dtype=torch.float64).scatter_reduce_(0, parent[at], values[at], "amax")
        lo = torch.full((N,), torch.inf, dtype=torch.float64).scatter_reduce_(0, parent[at], values[at], "amin")
        inner = (depth == d - 1) & (n_child > 0)
        same = inner & (hi == lo)
        equal |= same
        values = torch.where(same, lo, torch.where(inner, sums / n_child.clamp_min(1), values))
    dropped = is_root | equal[p]
    adv = torch.where(dropped, torch.zeros_like(values), values - values[p])
    divisor = TREE_ADV_METHODS[adv_method]
    if divisor is not None:
        edges = (~is_root).nonzero().squeeze(1)
        st = group_stats(values[edges], parent[edges], N, ddof=0)
        adv = torch.where(dropped, adv, adv / divisor(st.std[p], eps))
    bok = 1.0 - (1.0 - values) ** bok_k
    keep = ~dropped & ((adv + (bok - bok[p])) != 0)
    return values, adv, keep
