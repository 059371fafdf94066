"""Token-level returns without a Python loop over time: reward placement, the discounted suffix
sum (a two-level chunked matmul scan), GAE / reward-to-go with optional batch whitening, and
per-row batch whitening.

Masked positions *inside* a response (an observation span of an agent turn) are bridged as in verl:
the recurrence skips them, carrying the next value and the running return through unchanged. That
is the same as running the recurrence on each row's trained tokens packed to the left
(``_masks.Compaction``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import Rollouts
from ._masks import Compaction, float_mask

__all__ = [
    "discounted_suffix_sum",
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


_CHUNK = 32  # within-chunk scan as a (C, C) matmul; the chunk carries recurse on (B, T / C)
_BLOCK_ELEMS = 1 << 18  # rows are processed in blocks of about this many tokens (cache-sized)


def _suffix_matrix(d: float, n: int, sign: float, dtype, device) -> Tensor:
    """M[s, t] = sign·d^(s − t) for s >= t, else 0: (x @ M)[t] = sign·Σ_{s≥t} d^(s−t) x_s."""
    i = torch.arange(n, dtype=torch.float64)
    e = i.unsqueeze(1) - i.unsqueeze(0)
    m = torch.where(e >= 0, sign * d ** e.clamp_min(0), torch.zeros((), dtype=torch.float64))
    return m.to(dtype=dtype, device=device)


def _suffix_matrix_rows(d: Tensor, n: int, sign: float, dtype) -> Tensor:
    """Per-row ``_suffix_matrix``: M[b, s, t] = sign·d_b^(s − t) for s >= t, else 0 (B, n, n)."""
    i = torch.arange(n, dtype=torch.float64, device=d.device)
    e = i.unsqueeze(1) - i.unsqueeze(0)
    m = torch.where(e >= 0, sign * d.to(torch.float64)[:, None, None] ** e.clamp_min(0), torch.zeros((), dtype=torch.float64, device=d.device))
    return m.to(dtype=dtype)


def discounted_suffix_sum(
    x: Tensor, d: float | Tensor, *, sign: float = 1.0, chunk: int = _CHUNK, out: Tensor | None = None
) -> Tensor:
    """y_t = x_t + d·y_{t+1} along the last dimension (times ``sign``), without a loop over time.

    Two levels: inside chunks of ``chunk`` steps the suffix sums are one matmul with the (C, C)
    matrix of powers d^(s−t); the value entering each chunk from the right is itself a discounted
    suffix sum (discount d^C) over the chunk heads, solved by recursion (depth log_C T). Only
    non-negative powers of d appear, so any d in [0, 1] is exact to float32 rounding. ``out``: a
    contiguous tensor shaped like ``x`` to write into (used when T is a multiple of ``chunk``).
    ``d`` may be a (B,) tensor for a 2-D ``x`` (B, T): one discount per row (batched matmuls).
    """
    if isinstance(d, Tensor):
        if x.dim() != 2 or d.shape != (x.shape[0],):
            raise ValueError(f"discounted_suffix_sum: per-row d has shape {tuple(d.shape)}; expected ({x.shape[0]},) "
                             f"for x of shape {tuple(x.shape)}.")
        y = _suffix_sum_rows(x, d.to(x.device), sign, chunk)
        return y if out is None else out.copy_(y)
    T = x.shape[-1]
    if T <= chunk:
        return torch.matmul(x, _suffix_matrix(d, T, sign, x.dtype, x.device), out=out)
    K = -(-T // chunk)
    M = _suffix_matrix(d, chunk, sign, x.dtype, x.device)
    if K * chunk == T:
        xr = x.reshape(*x.shape[:-1], K, chunk)
        local = torch.matmul(xr, M) if out is None else torch.matmul(xr, M, out=out.view(xr.shape))
    else:
        local = torch.nn.functional.pad(x, (0, K * chunk - T)).reshape(*x.shape[:-1], K, chunk) @ M
    carry = discounted_suffix_sum(local[..., 0], d**chunk, chunk=chunk)  # y at each chunk's start
    carry_in = torch.nn.functional.pad(carry[..., 1:], (0, 1))  # ... entering chunk k from k + 1
    powers = d ** (chunk - torch.arange(chunk, dtype=torch.float64))
    local.addcmul_(carry_in.unsqueeze(-1), powers.to(dtype=x.dtype, device=x.device))
    y = local.reshape(*x.shape[:-1], K * chunk)
    if K * chunk == T:
        return y
    return y[..., :T] if out is None else out.copy_(y[..., :T])


def _suffix_sum_rows(x: Tensor, d: Tensor, sign: float, chunk: int) -> Tensor:
    """``discounted_suffix_sum`` with a discount per row: the same two-level scan, batched over rows."""
    B, T = x.shape
    if T <= chunk:
        return torch.bmm(x.unsqueeze(1), _suffix_matrix_rows(d, T, sign, x.dtype)).squeeze(1)
    K = -(-T // chunk)
    xr = torch.nn.functional.pad(x, (0, K * chunk - T)).reshape(B, K, chunk)
    local = torch.bmm(xr, _suffix_matrix_rows(d, chunk, sign, x.dtype))  # (B, K, C)
    carry = _suffix_sum_rows(local[..., 0], d.to(torch.float64) ** chunk, 1.0, chunk)  # y at each chunk's start
    carry_in = torch.nn.functional.pad(carry[..., 1:], (0, 1))
    powers = d.to(torch.float64)[:, None] ** (chunk - torch.arange(chunk, dtype=torch.float64, device=x.device))
    local.addcmul_(carry_in.unsqueeze(-1), powers.to(dtype=x.dtype).unsqueeze(1))
    return local.reshape(B, K * chunk)[:, :T]


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
        a = discounted_suffix_sum(x, d_sl, sign=sign, out=out[sl] if c.right_padded else None)
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
