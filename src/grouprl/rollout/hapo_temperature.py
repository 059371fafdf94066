"""HAPO's Adaptive Temperature Sampling, arXiv:2509.16591, as a logits processor.

    proc = AdaptiveTemperature(tau=0.05, base=1.0)
    gen = sample(model, prompts, ..., logits_processor=proc)     # fixed T₀ while proc has no stats
    proc.update(old_entropy, response_mask)                      # after the step: next step's stats

Each decoding step, the entropy H of each row's next-token distribution (from the logits as given,
before any temperature) is normalised with the *previous* batch's statistics to ĥ ∈ [−1, 1]
(``grouprl.core.entropy``), and the row is sampled at T = T₀·(1 + τ·ĥ). Rows are independent (a
row's temperature depends only on its own logits and the stored statistics).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.entropy import EntropyStats

__all__ = ["AdaptiveTemperature", "logits_entropy"]


def logits_entropy(logits: Tensor) -> Tensor:
    """Shannon entropy (nats) of softmax(logits) along the last dimension; −inf logits allowed."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    return -(p * logp.masked_fill(p == 0, 0.0)).sum(dim=-1)


class AdaptiveTemperature:
    """A logits processor ``logits (N, V) -> logits / T (N, V)`` with HAPO's per-row temperature.

    ``tau`` τ (0.05), ``base`` T₀ (1.0), ``pivot`` the entropy quantile of the statistics (0.8),
    ``code_compat``: the reference code's unsigned ĥ (low-entropy tokens get T > T₀ too; the
    default signed ĥ is the paper's reading, see ``grouprl.core.entropy``). Before the first
    ``update`` (the first training step) every row uses T₀. ``tau=0`` is the plain T₀ softmax.
    State (the statistics) persists through ``state_dict`` / ``load_state_dict``.
    """

    def __init__(self, *, tau: float = 0.05, base: float = 1.0, pivot: float = 0.8, code_compat: bool = False) -> None:
        if not base > 0:
            raise ValueError(f"AdaptiveTemperature: base={base} must be > 0 (T₀, HAPO uses 1.0).")
        if not 0 <= tau < 1:
            raise ValueError(f"AdaptiveTemperature: tau={tau} must be in [0, 1) so that T stays > 0 (HAPO: 0.05).")
        self.tau, self.base, self.pivot, self.code_compat = float(tau), float(base), float(pivot), bool(code_compat)
        self.stats = EntropyStats()

    def temperatures(self, logits: Tensor) -> Tensor:
        """T (N,) for each row of ``logits`` (N, V)."""
        h_hat = self.stats.normalize(logits_entropy(logits), code_compat=self.code_compat)
        return self.base * (1.0 + self.tau * h_hat)

    def __call__(self, logits: Tensor) -> Tensor:
        return logits / self.temperatures(logits).unsqueeze(-1).to(logits.dtype)

    def update(self, entropy: Tensor, mask: Tensor | None = None) -> None:
        """Fit the statistics for the next step from this batch's old-policy token entropies."""
        self.stats = EntropyStats.fit(entropy, mask, pivot=self.pivot)

    def state_dict(self) -> dict:
        return {"stats": self.stats.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "stats" not in state:
            raise ValueError("AdaptiveTemperature.load_state_dict: no 'stats' key; pass a state_dict().")
        self.stats.load_state_dict(state["stats"])
