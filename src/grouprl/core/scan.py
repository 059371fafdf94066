"""The discounted scan: y_t = x_t + d·y_{t+1} (a reverse discounted cumulative sum), vectorised as a
two-level chunked matmul with no Python loop over time; one implementation for every return,
advantage and reward-to-go in grouprl."""

from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = ["reverse_discounted_cumsum"]

_CHUNK = 32  # within-chunk scan as a (C, C) matmul; the chunk carries recurse on (B, T / C)


@functools.lru_cache(maxsize=256)
def _suffix_matrix64(d: float, n: int, sign: float) -> Tensor:
    """M[s, t] = sign·d^(s − t) for s >= t, else 0 (float64, CPU; cached: callers never write to it)."""
    i = torch.arange(n, dtype=torch.float64)
    e = i.unsqueeze(1) - i.unsqueeze(0)
    return torch.where(e >= 0, sign * d ** e.clamp_min(0), torch.zeros((), dtype=torch.float64))


def _suffix_matrix(d: float, n: int, sign: float, dtype, device) -> Tensor:
    """M[s, t] = sign·d^(s − t) for s >= t, else 0: (x @ M)[t] = sign·Σ_{s≥t} d^(s−t) x_s."""
    return _suffix_matrix64(float(d), int(n), float(sign)).to(dtype=dtype, device=device)


def _suffix_matrix_rows(d: Tensor, n: int, sign: float, dtype) -> Tensor:
    """Per-row ``_suffix_matrix``: M[b, s, t] = sign·d_b^(s − t) for s >= t, else 0 (B, n, n)."""
    i = torch.arange(n, dtype=torch.float64, device=d.device)
    e = i.unsqueeze(1) - i.unsqueeze(0)
    m = torch.where(e >= 0, sign * d.to(torch.float64)[:, None, None] ** e.clamp_min(0), torch.zeros((), dtype=torch.float64, device=d.device))
    return m.to(dtype=dtype)


def reverse_discounted_cumsum(
    x: Tensor, d: float | Tensor, *, sign: float = 1.0, chunk: int = _CHUNK, out: Tensor | None = None
) -> Tensor:
    """y_t = x_t + d·y_{t+1} along the last dimension (times ``sign``), without a loop over time.

    The discounted return G_t = Σ_{k≥0} γ^k r_{t+k} with d = γ, and GAE's
    Â_t = Σ_{l≥0} (γλ)^l δ_{t+l} with d = γλ (GAE, arXiv:1506.02438, Section 3); d = 1 is the plain
    suffix sum (return-to-go). Every discounted or reverse cumulative scan of grouprl runs
    here.

    Two levels: inside chunks of ``chunk`` steps the suffix sums are one matmul with the (C, C)
    matrix of powers d^(s−t); the value entering each chunk from the right is itself a discounted
    suffix sum (discount d^C) over the chunk heads, solved by recursion (depth log_C T). Only
    non-negative powers of d appear, so any d in [0, 1] is exact to rounding in ``x``'s dtype
    (float64 in, float64 out). ``out``: a contiguous tensor shaped like ``x`` to write into (used when
    T is a multiple of ``chunk``). ``d`` may be a (B,) tensor for a 2-D ``x`` (B, T): one discount
    per row (batched matmuls).
    """
    if isinstance(d, Tensor):
        if x.dim() != 2 or d.shape != (x.shape[0],):
            raise ValueError(f"reverse_discounted_cumsum: per-row d has shape {tuple(d.shape)}; expected ({x.shape[0]},) "
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
    carry = reverse_discounted_cumsum(local[..., 0], d**chunk, chunk=chunk)  # y at each chunk's start
    carry_in = torch.nn.functional.pad(carry[..., 1:], (0, 1))  # ... entering chunk k from k + 1
    powers = d ** (chunk - torch.arange(chunk, dtype=torch.float64))
    local.addcmul_(carry_in.unsqueeze(-1), powers.to(dtype=x.dtype, device=x.device))
    y = local.reshape(*x.shape[:-1], K * chunk)
    if K * chunk == T:
        return y
    return y[..., :T] if out is None else out.copy_(y[..., :T])


def _suffix_sum_rows(x: Tensor, d: Tensor, sign: float, chunk: int) -> Tensor:
    """``reverse_discounted_cumsum`` with a discount per row: the same two-level scan, batched over rows."""
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
