"""Token-level returns without a Python loop over time: reward placement, GAE / reward-to-go with
optional batch whitening (on the core's discounted scan, ``grouprl.core.reverse_discounted_cumsum``),
and per-row batch whitening.

Masked positions *inside* a response (an observation span of an agent turn) are bridged as in verl:
the recurrence skips them, carrying the next value and the running return through unchanged. That
is the same as running the recurrence on each row's trained tokens packed to the left
(``_masks.Compaction``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import Rollouts, reverse_discounted_cumsum
from ._masks import Compaction, float_mask

__all__ = [
    "discounted_advantages",
    "place_token_rewards",
    "row_whiten",
    "check_discount",
]


def check_discount(name: str, value: float, who: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{who}: {name}={value} is outside [0, 1]; pass a discount between 0 and 1.")
    return value


def place_token_rewards(batch: Rollouts) -> Tensor:
    """Per-token rewards (B, T): ``batch.token_rewards`` when given (zeroed on masked tokens), else
    each row's scalar reward on its **last unmasked token** (verl's placement of an outcome reward);
    a row without trained tokens gets none."""
    mask = batch.mask
    if batch.token_rewards is not None:
        return batch.token_rewards * float_mask(mask)
    B, T = mask.shape
    out = torch.zeros(B, T, dtype=torch.float32, device=mask.device)
    last = (T - 1) - mask.flip(1).to(torch.uint8).argmax(dim=1)
    r = batch.rewards.to(torch.float32) * mask.any(dim=1)
    return out.scatter_(1, last.unsqueeze(1), r.unsqueeze(1))


_BLOCK_ELEMS = 1 << 18  # rows are processed in blocks of about this many tokens (cache-sized)


def discounted_advantages(
    mask: Tensor,
    *,
    gamma: float,
    lam: float | Tensor = 1.0,
    values: Tensor | None = None,
    rewards: Tensor | None = None,
    token_rewards: Tensor | None = None,
    whiten: bool = True,
    with_returns: bool = False,
    block_elems: int = _BLOCK_ELEMS,
) -> tuple[Tensor, Tensor | None]:
    """GAE (``values`` given) or discounted reward-to-go (``values=None``) over each row's trained
    tokens, optionally batch-whitened; float32 (B, T), exactly 0 on masked tokens.

    Rewards: ``token_rewards`` (B, T) (masked entries ignored) or ``rewards`` (B,) on each row's
    last trained token. GAE: δ_t = r_t + γ V_{t'} − V_t, A_t = δ_t + γλ A_{t'} (t' = next trained
    token, V = 0 after the last), returns = A + V. Reward-to-go: G_t = r_t + γ G_{t'}, returns = G.
    Returns ``(advantages, returns or None)``; returns are never whitened. ``lam`` may be a (B,)
    tensor: one λ per row (e.g. a length-adaptive λ).

    Rows are processed in cache-sized blocks (a loop over B·T / ``block_elems`` blocks, not over
    rows or tokens); the whitening statistics are combined across blocks exactly (Chan et al.'s
    parallel mean/variance), then a second blockwise pass normalises in place.
    """
    B, T = mask.shape
    out = torch.empty(B, T, dtype=torch.float32, device=mask.device)
    ret_out = torch.empty_like(out) if with_returns else None
    step = max(1, block_elems // max(T, 1))
    d = gamma * lam if values is not None else gamma
    counts, means, m2s = [], [], []
    for lo in range(0, B, step):  # blocks of rows
        sl = slice(lo, min(B, lo + step))
        c = Compaction.of(mask[sl])
        L = c.lengths
        if values is not None:
            # x = −δ without the reward, V_t − γ V_{t+1} (one fused op), on the packed layout
            if c.right_padded:  # mask afterwards (in place), then restore the cut at t = L − 1
                v = values[sl].to(torch.float32)
                x = torch.empty_like(v)
                torch.sub(v[:, :-1], v[:, 1:], alpha=gamma, out=x[:, :-1])
                x[:, -1] = v[:, -1]
                x.mul_(c.weight)
                inside = (L > 0) & (L < T)  # the row's V_L (padding) must not enter δ_{L−1}
                fix = gamma * v.gather(1, L.clamp_max(T - 1).unsqueeze(1)) * inside.unsqueeze(1)
                x.scatter_add_(1, (L - 1).clamp_min(0).unsqueeze(1), fix)
            else:
                v = c.pack(values[sl].to(torch.float32))
                x = torch.empty_like(v)
                torch.sub(v[:, :-1], v[:, 1:], alpha=gamma, out=x[:, :-1])
                x[:, -1] = v[:, -1]
            sign = -1.0
        else:
            x = torch.zeros(L.shape[0], T, dtype=torch.float32, device=mask.device)
            sign = 1.0
        if token_rewards is not None:
            r = c.pack(token_rewards[sl].to(torch.float32))
            x = x.add_(r, alpha=sign)
        elif rewards is not None:
            r = (rewards[sl].to(torch.float32) * (L > 0)).unsqueeze(1)
            x.scatter_add_(1, (L - 1).clamp_min(0).unsqueeze(1), r if sign > 0 else -r)
        # 0 past each row's length; right-padded rows are written straight into the output
        d_sl = d[sl] if isinstance(d, Tensor) else d
        a = reverse_discounted_cumsum(x, d_sl, sign=sign, out=out[sl] if c.right_padded else None)
        if ret_out is not None:
            if values is None:
                ret_out[sl] = c.unpack(a)
            elif c.right_padded:
                torch.add(a, v, out=ret_out[sl]).mul_(c.weight)
            else:
                ret_out[sl] = c.unpack(a + v)
        if whiten:
            n = L.sum().to(torch.float64)
            mu = a.sum().to(torch.float64) / n.clamp_min(1.0)
            dev = torch.sub(a, c.packed_weight, alpha=float(mu))  # a − μ on trained tokens, else 0
            dev = dev.reshape(-1)
            counts.append(n), means.append(mu), m2s.append(torch.dot(dev, dev).to(torch.float64))
        if not c.right_padded:
            out[sl] = c.unpack(a)
    if whiten:
        n_b, mu_b, m2_b = torch.stack(counts), torch.stack(means), torch.stack(m2s)
        n = n_b.sum()
        mu = (n_b * mu_b).sum() / n.clamp_min(1.0)
        m2 = (m2_b + n_b * (mu_b - mu) ** 2).sum()
        var = m2 / (n - 1).clamp_min(1.0)
        scale = float(torch.rsqrt(var + 1e-8))
        mu_f = float(mu)
        for lo in range(0, B, step):
            sl = slice(lo, min(B, lo + step))
            # a − μ on trained tokens (a is 0 elsewhere, and so is μ·w), then the scale
            out[sl].sub_(float_mask(mask[sl]), alpha=mu_f).mul_(scale)
    return out, ret_out


def row_whiten(per_row: Tensor, lengths: Tensor, eps: float = 1e-8) -> Tensor:
    """Batch whitening of a per-row value broadcast over each row's ``lengths`` tokens, computed on
    (B,) values: the token-weighted mean and unbiased token variance that verl's ``masked_whiten``
    would compute on the (B, T) broadcast, without materialising it. Float64."""
    a = per_row.to(torch.float64)
    w = lengths.to(torch.float64)
    n = w.sum()
    mean = (w * a).sum() / n.clamp_min(1.0)
    var = (w * (a - mean) ** 2).sum() / (n - 1).clamp_min(1.0)
    return (a - mean) * torch.rsqrt(var + eps)
