"""Fast mask helpers for (B, T) bool masks on CPU: float conversion, row lengths, and packing each
row's trained tokens to the left (``Compaction``: one cumsum, one scatter, one gather; no sort).

On CPU, torch converts a bool tensor to float or int64 (``mask.sum``, ``x * mask``) through a slow
path; viewing it as uint8 first is several times faster, and a float 0/1 mask multiplies ~5x faster
than ``masked_fill``. Right-padded masks (a prefix of ones per row, the usual case) need no packing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["float_mask", "row_lengths", "Compaction"]

_BLOCK_ELEMS = 1 << 18


def float_mask(mask: Tensor) -> Tensor:
    """The bool mask as float32 0/1. (Going through uint8 is ~8x faster on CPU than converting
    bool directly, and multiplying by a float mask ~5x faster than ``masked_fill`` / bool ``*``.)"""
    return mask.view(torch.uint8).to(torch.float32) if mask.dtype == torch.bool else mask.to(torch.float32)


@dataclass(frozen=True)
class Compaction:
    """Each row's unmasked tokens packed to the left, in order (``lengths[i]`` of them).

    ``pack(x)`` maps (B, T) to the packed layout (zeros after each row's length); ``unpack(y)`` maps
    back (zeros on masked tokens). For right-padded masks both are the identity up to masking.
    ``weight`` / ``packed_weight``: the original / packed mask as float32 0/1.
    """

    weight: Tensor
    packed_weight: Tensor
    lengths: Tensor
    dest: Tensor | None  # packed position of each token, T for masked tokens; None = right-padded

    @classmethod
    def of(cls, mask: Tensor) -> "Compaction":
        T = mask.shape[1]
        w = float_mask(mask)
        # Row i is right-padded iff its n_i ones sit at positions 0..n_i−1, i.e. iff the positions
        # of its ones sum to n_i(n_i − 1)/2 (the least possible sum of n_i distinct positions).
        exact = torch.float32 if T <= 4096 else torch.float64  # integers stay exact
        pos = torch.arange(T, dtype=exact, device=mask.device)
        n = w.sum(dim=1).to(exact)
        pos_sum = torch.mv(w.to(exact), pos)
        lengths = n.to(torch.int64)
        if bool((pos_sum == n * (n - 1) / 2).all()):
            return cls(w, w, lengths, None)
        packed = float_mask(pos.unsqueeze(0) < n.unsqueeze(1))
        dest = torch.where(mask.bool(), w.cumsum(dim=1).to(torch.int64) - 1, T)
        return cls(w, packed, lengths, dest)

    @property
    def right_padded(self) -> bool:
        return self.dest is None

    def pack(self, x: Tensor) -> Tensor:
        if self.dest is None:
            return x * self.weight
        B, T = x.shape
        buf = torch.zeros(B, T + 1, dtype=x.dtype, device=x.device)
        return buf.scatter_(1, self.dest, x)[:, :T]

    def unpack(self, y: Tensor) -> Tensor:
        """Back to the original layout; assumes ``y`` is 0 past each row's length (as the packed
        results here are), so the right-padded case needs no masking."""
        if self.dest is None:
            return y
        return y.gather(1, self.dest.clamp_max(y.shape[1] - 1)) * self.weight


def row_lengths(mask: Tensor, block_elems: int = _BLOCK_ELEMS) -> Tensor:
    """Number of trained tokens per row (int64), counted in cache-sized blocks of rows through a
    float mask (exact: counts below 2^24), avoiding a full-size int64 copy of the mask."""
    B, T = mask.shape
    step = max(1, block_elems // max(T, 1))
    out = torch.empty(B, dtype=torch.float32, device=mask.device)
    for lo in range(0, B, step):  # blocks of rows, not rows
        out[lo : lo + step] = float_mask(mask[lo : lo + step]).sum(dim=1)
    return out.to(torch.int64)
