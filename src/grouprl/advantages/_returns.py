"""Token-level returns without a Python loop over time: reward placement, left-compaction of each
row's trained tokens, masked reward-to-go and GAE, and per-row batch whitening.

Masked positions *inside* a response (an observation span of an agent turn) are bridged as in verl:
the recurrence skips them, carrying the next value and the running return through unchanged. That
is the same as running the recurrence on each row's trained tokens packed to the left, which is what
``Compaction`` does (one cumsum, one scatter, one gather; no sort). Right-padded masks (a prefix of
ones per row, the usual case) need no packing and skip it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core import Rollouts, reverse_discounted_cumsum

__all__ = [
    "Compaction",
    "place_token_rewards",
    "masked_returns",
    "gae_returns",
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
        return batch.token_rewards * mask
    B, T = mask.shape
    out = torch.zeros(B, T, dtype=torch.float32, device=mask.device)
    last = (T - 1) - mask.flip(1).to(torch.uint8).argmax(dim=1)
    r = batch.rewards.to(torch.float32) * mask.any(dim=1)
    return out.scatter_(1, last.unsqueeze(1), r.unsqueeze(1))


@dataclass(frozen=True)
class Compaction:
    """Each row's unmasked tokens packed to the left, in order (``lengths[i]`` of them).

    ``pack(x)`` maps (B, T) to the packed layout (zeros after each row's length); ``unpack(y)`` maps
    back (zeros on masked tokens). For right-padded masks both are the identity up to masking.
    """

    mask: Tensor
    packed_mask: Tensor
    lengths: Tensor
    dest: Tensor | None  # packed position of each token, T for masked tokens; None = right-padded

    @classmethod
    def of(cls, mask: Tensor) -> "Compaction":
        T = mask.shape[1]
        lengths = mask.sum(dim=1)
        packed = torch.arange(T, device=mask.device) < lengths.unsqueeze(1)
        if torch.equal(packed, mask):
            return cls(mask, packed, lengths, None)
        pos = mask.cumsum(dim=1) - 1
        dest = torch.where(mask, pos, torch.full_like(pos, T))
        return cls(mask, packed, lengths, dest)

    @property
    def right_padded(self) -> bool:
        return self.dest is None

    def pack(self, x: Tensor) -> Tensor:
        if self.dest is None:
            return x * self.mask
        B, T = x.shape
        buf = torch.zeros(B, T + 1, dtype=x.dtype, device=x.device)
        return buf.scatter_(1, self.dest, x)[:, :T]

    def unpack(self, y: Tensor) -> Tensor:
        if self.dest is None:
            return y * self.mask
        return y.gather(1, self.dest.clamp_max(y.shape[1] - 1)) * self.mask


def masked_returns(token_rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Reward-to-go G_t = r_t + γ·G_{t'} over the trained tokens (t' = the next trained token);
    masked tokens carry G through and their rewards are ignored (verl's REINFORCE++). Returns
    float32 (B, T), 0 on masked tokens."""
    c = Compaction.of(mask)
    g = reverse_discounted_cumsum(c.pack(token_rewards.to(torch.float32)), gamma)
    return c.unpack(g)


def gae_returns(
    token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over the trained tokens, vectorised.

    δ_t = r_t + γ·V_{t'} − V_t and A_t = δ_t + γλ·A_{t'}, with t' the next trained token of the
    row (V = 0 after the last one). Returns (A, A + V) as float32 (B, T), 0 on masked tokens.
    """
    c = Compaction.of(mask)
    v = c.pack(values.to(torch.float32)).to(torch.float64)
    r = c.pack(token_rewards.to(torch.float32)).to(torch.float64)
    v_next = torch.nn.functional.pad(v[:, 1:], (0, 1))  # 0 past each row's last packed token
    delta = (r + gamma * v_next - v) * c.packed_mask
    adv = reverse_discounted_cumsum(delta, gamma * lam)
    ret = adv + v
    return c.unpack(adv).to(torch.float32), c.unpack(ret).to(torch.float32)


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
