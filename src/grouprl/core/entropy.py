"""HAPO's shared entropy normalisation ĥ ∈ [−1, 1] (arXiv:2509.16591), used by the HAPO loss (current
policy's entropies) and the adaptive-temperature sampler (previous batch's statistics).

From *From Uniform to Heterogeneous: Tailoring Policy Optimization to Every Token's Nature*
(HAPO), arXiv:2509.16591. Over the valid tokens:

    ℓ_t = log max(H_t, 1e-8);  q = the ``pivot``-quantile of ℓ ("nearest");
    s = sqrt(max(mean (ℓ − q)², 1e-8));  h_t = (ℓ_t − q)/s;
    P = max(max h, 1e-8);  N = min(min h, −1e-8);
    ĥ = h/P for h > 0,  h/|N| for h ≤ 0      (signed: the paper's reading, the default)
    ĥ = h/P for h > 0,  h/N  for h ≤ 0       (``code_compat``: the reference code, ĥ ≥ 0 always)

then ĥ is clamped to [−1, 1]. The signed form is a **proposed reading** (the paper's figure: low
entropy negative); the released code's h·(1/N) with N < 0 maps low-entropy tokens to about +1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["EntropyStats", "normalized_entropy"]

_FLOOR = 1e-8


def _nearest_quantile(x: Tensor, q: float) -> Tensor:
    """torch.quantile(x, q, interpolation="nearest") for any size (kthvalue, no size limit)."""
    n = x.numel()
    idx = int(torch.round(torch.tensor(q * (n - 1), dtype=torch.float64)))  # half to even, as torch
    return x.kthvalue(idx + 1).values


@dataclass
class EntropyStats:
    """The statistics (q, s, 1/P, 1/N) of one batch of token entropies; ``ready`` is False until set.

    ``EntropyStats.fit(entropy, mask, pivot)`` computes them; ``normalize(H)`` maps any entropies
    (e.g. a decoding step's live next-token entropies) to ĥ with them. ``state_dict`` /
    ``load_state_dict`` persist them across steps (the sampler uses the previous batch's).
    """

    q: float = 0.0
    s: float = 1.0
    inv_pos: float = 1.0  # 1/P
    inv_neg: float = -1.0  # 1/N (negative)
    ready: bool = False

    @classmethod
    def fit(cls, entropy: Tensor, mask: Tensor | None = None, *, pivot: float = 0.8) -> "EntropyStats":
        if not 0.0 <= pivot <= 1.0:
            raise ValueError(f"entropy pivot={pivot} is outside [0, 1]; HAPO uses 0.8.")
        h = entropy.detach().to(torch.float64)
        valid = h.reshape(-1) if mask is None else h[mask.to(torch.bool)]
        if valid.numel() == 0:
            return cls()
        ell = valid.clamp_min(_FLOOR).log()
        q = _nearest_quantile(ell, pivot)
        s = ((ell - q).square().mean().clamp_min(_FLOOR)).sqrt()
        z = (ell - q) / s
        P = z.max().clamp_min(_FLOOR)
        N = z.min().clamp_max(-_FLOOR)
        return cls(float(q), float(s), float(1.0 / P), float(1.0 / N), True)

    def normalize(self, entropy: Tensor, *, code_compat: bool = False) -> Tensor:
        """ĥ of ``entropy`` (any shape) under these statistics, clamped to [−1, 1]; 0 if not ready."""
        if not self.ready:
            return torch.zeros_like(entropy, dtype=torch.float32)
        ell = entropy.to(torch.float32).clamp_min(_FLOOR).log()
        h = (ell - self.q) / self.s
        neg_scale = self.inv_neg if code_compat else -self.inv_neg  # code: h·(1/N) ≥ 0
        return torch.where(h > 0, h * self.inv_pos, h * neg_scale).clamp(-1.0, 1.0)

    def state_dict(self) -> dict:
        return {"q": self.q, "s": self.s, "inv_pos": self.inv_pos, "inv_neg": self.inv_neg, "ready": self.ready}

    def load_state_dict(self, state: dict) -> None:
        missing = {"q", "s", "inv_pos", "inv_neg", "ready"} - set(state)
        if missing:
            raise ValueError(f"EntropyStats.load_state_dict: missing key(s) {sorted(missing)}; pass a state_dict().")
        self.q, self.s = float(state["q"]), float(state["s"])
        self.inv_pos, self.inv_neg = float(state["inv_pos"]), float(state["inv_neg"])
        self.ready = bool(state["ready"])


def normalized_entropy(
    entropy: Tensor, mask: Tensor | None = None, *, pivot: float = 0.8, code_compat: bool = False
) -> Tensor:
    """ĥ (same shape as ``entropy``, float32, clamped to [−1, 1]) with statistics over the valid
    tokens of ``entropy`` itself (the HAPO loss's per-micro-batch use). See the module docstring."""
    return EntropyStats.fit(entropy, mask, pivot=pivot).normalize(entropy, code_compat=code_compat)
