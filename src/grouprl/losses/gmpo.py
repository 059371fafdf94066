"""GMPO's policy loss: the geometric mean of the token importance ratios instead of their arithmetic
mean (Geometric-Mean Policy Optimization, arXiv:2507.20673)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import LOG_RATIO_CLAMP, log_ratio, resolve_eps
from .registry import register_loss

__all__ = ["gmpo"]


@register_loss(
    "gmpo",
    paper="Geometric-Mean Policy Optimization (GMPO), arXiv:2507.20673",
    level="sequence",
    example={
        # row 0 (A = +1): log-ratios 0.6 -> clipped to 0.4, and 0.0; row 1 (A = −1): −0.2, −0.6 -> −0.4
        "logprobs": [[0.6 - 1.0, -1.0], [-0.2 - 1.0, -0.6 - 1.0]],
        "old_logprobs": [[-1.0, -1.0], [-1.0, -1.0]],
        "advantages": [[1.0, 1.0], [-1.0, -1.0]],
        "mask": [[1, 1], [1, 1]],
        "kwargs": {},
    },
)
def gmpo(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float = 0.4,
    eps_high: float | None = None,
    log_ratio_clamp: float = LOG_RATIO_CLAMP,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GMPO: maximise the geometric mean of the token ratios instead of their arithmetic mean.

    Per token, the log-ratio is clipped sign-aware: for A > 0 at most ε_high, for A < 0 at least
    −ε_low (the bound that would reward a larger step); the sequence ratio is
    R_i = exp((1/|o_i|) Σ_t clipped log ρ_{i,t}) = (Π_t ρ̂_{i,t})^{1/|o_i|} and
    ℓ_i = −Ā_i·R_i with Ā_i the row's mean advantage (as verl's ``geo_mean``). Paper default
    ε = 0.4 on the log scale, i.e. ratios in (e^{−0.4}, e^{0.4}).

    Sequence-level: ``policy_loss`` averages ℓ_i over the rows with at least one valid token
    (global ``num_seqs``), whatever ``agg`` — verl's geo_mean ignores loss_agg_mode too (it takes
    a plain mean over all B rows, including empty ones; here empty rows do not count).
    """
    el, eh = resolve_eps(eps_low, eps_high)
    x = log_ratio(logprobs, old_logprobs, log_ratio_clamp)
    sgn = torch.sign(advantages)
    xc = x.clamp(-el, eh)
    x_hat = sgn * torch.minimum(sgn * x, sgn * xc)
    lengths = mask.sum(dim=1).clamp_min(1).to(x.dtype)
    seq_ratio = torch.exp((x_hat * mask).sum(dim=1) / lengths)
    seq_adv = (advantages * mask).sum(dim=1) / lengths
    low = (advantages < 0) & (x < -el)
    high = (advantages > 0) & (x > eh)
    return -seq_adv * seq_ratio, {"clipfrac": low | high, "clipfrac_low": low, "clipfrac_high": high}
