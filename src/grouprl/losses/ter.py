"""Confucius3-Math's Targeted Entropy Regularization, TER, arXiv:2506.18330.

    loss += |H − entropy_target| × entropy_coeff,   entropy_target = 0.55, entropy_coeff = 0.001

with H the aggregated mean token entropy of the current policy. Unlike an entropy bonus it pulls H
toward the target from both sides: its gradient is coeff·sign(H − target)·∇H, i.e. an entropy
coefficient that adapts its sign to the current entropy (−0.001 below the target, a bonus;
+0.001 above, a penalty). Stage 1 of the tech report only (GRPO, 4K context).

* ``ter_loss``: the pure term for one call (the whole batch at once).
* ``TargetedEntropyRegularizer``: the same term for micro-batched training. ``update`` reads the
  full (mini-)batch's entropy once per step and fixes the signed coefficient; its
  ``entropy_coef`` then goes straight into ``policy_loss(..., entropy=H, entropy_coef=...)`` for
  every micro-batch, so the summed gradient equals that of |H − target|·coeff on the full batch
  (|·| of a per-micro-batch mean would not). Checkpointable (``state_dict``/``load_state_dict``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .aggregation import Number, aggregate, check_agg

__all__ = ["ter_loss", "TargetedEntropyRegularizer"]

#: |H − target| at or below this counts as "at the target" (subgradient 0), so rounding in the
#: mean of tokens that all equal the target cannot produce a ±coeff gradient.
AT_TARGET_TOL = 1e-9


def ter_loss(
    entropy: Tensor,
    mask: Tensor,
    *,
    target: float = 0.55,
    coef: float = 0.001,
    agg: str = "token-mean",
    num_tokens: Number | None = None,
    num_seqs: Number | None = None,
    norm_const: Number | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """TER term coeff·|H − target| (0-d, differentiable through ``entropy``) and metrics.

    H = aggregate(entropy, mask, agg) (``agg`` and the normalisers as in ``policy_loss``; the
    report logs the token-mean entropy). With no valid token the term is skipped (0), a proposed
    reading (verl would add coeff·target = 0.00055 for H = 0). At the target (within
    ``AT_TARGET_TOL``) the term and its subgradient are 0.
    """
    m = mask.to(torch.bool)
    if tuple(entropy.shape) != tuple(m.shape):
        raise ValueError(f"ter: entropy has shape {tuple(entropy.shape)}, expected {tuple(m.shape)} like mask.")
    H = aggregate(entropy, m, agg, num_tokens=num_tokens, num_seqs=num_seqs, norm_const=norm_const)
    diff = H - target
    at_target = diff.detach().abs() <= AT_TARGET_TOL
    term = torch.where(m.any() & ~at_target, coef * diff.abs(), torch.zeros_like(H))
    return term, {"entropy": H.detach(), "ter": term.detach()}


class TargetedEntropyRegularizer:
    """TER with the step's signed coefficient as state (see the module docstring).

    Per step: ``coef_t = ter.update(entropy_full, mask_full)`` (detached, once, on the whole
    (mini-)batch), then for each micro-batch ``policy_loss(..., entropy=H_mb,
    entropy_coef=ter.entropy_coef, **normalizers(full_mask))`` — or add ``ter.loss(H_mb, mask_mb,
    ...)`` yourself. ``entropy_coef`` = −coeff·sign(H_t − target) (the loss subtracts
    entropy_coef·H); 0 before the first update, at the target and on a batch without valid tokens.
    """

    def __init__(self, target: float = 0.55, coef: float = 0.001, agg: str = "token-mean") -> None:
        if coef < 0:
            raise ValueError(f"ter: coef={coef}; pass a non-negative coefficient (the report uses 0.001).")
        self.target = float(target)
        self.coef = float(coef)
        self.agg = check_agg(agg)
        self.steps = 0
        self.signed_coef = 0.0  # coeff·sign(H_t − target) of the current step
        self.last_entropy: float | None = None
        self.last_term: float | None = None

    @property
    def entropy_coef(self) -> float:
        """The coefficient to pass as ``policy_loss(entropy_coef=...)`` this step."""
        return -self.signed_coef

    def update(
        self,
        entropy: Tensor,
        mask: Tensor,
        *,
        num_tokens: Number | None = None,
        num_seqs: Number | None = None,
        norm_const: Number | None = None,
    ) -> float:
        """Read the full batch's entropy (no gradient) and fix this step's signed coefficient."""
        with torch.no_grad():
            term, met = ter_loss(
                entropy.detach(), mask, target=self.target, coef=self.coef, agg=self.agg,
                num_tokens=num_tokens, num_seqs=num_seqs, norm_const=norm_const,
            )
        valid = bool(mask.any())
        H = float(met["entropy"])
        self.steps += 1
        self.last_entropy = H if valid else None
        self.last_term = float(term)
        diff = H - self.target
        if not valid or abs(diff) <= AT_TARGET_TOL:
            diff = 0.0
        self.signed_coef = self.coef * ((diff > 0) - (diff < 0))
        return self.signed_coef

    def loss(
        self,
        entropy: Tensor,
        mask: Tensor,
        *,
        num_tokens: Number | None = None,
        num_seqs: Number | None = None,
        norm_const: Number | None = None,
    ) -> Tensor:
        """signed_coef·H_mb for one micro-batch (pass the full batch's normalisers): the micro-batch
        terms sum to coeff·|H − target| up to the constant −signed_coef·target, so the gradients
        match exactly."""
        H = aggregate(entropy, mask.to(torch.bool), self.agg, num_tokens=num_tokens, num_seqs=num_seqs, norm_const=norm_const)
        return self.signed_coef * H

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "coef": self.coef,
            "agg": self.agg,
            "steps": self.steps,
            "signed_coef": self.signed_coef,
            "last_entropy": self.last_entropy,
            "last_term": self.last_term,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"target", "coef", "agg", "steps", "signed_coef"} - set(state)
        if missing:
            raise ValueError(f"ter: state_dict lacks {sorted(missing)}; pass a dict from TargetedEntropyRegularizer.state_dict().")
        self.target = float(state["target"])
        self.coef = float(state["coef"])
        self.agg = check_agg(state["agg"])
        self.steps = int(state["steps"])
        self.signed_coef = float(state["signed_coef"])
        self.last_entropy = state.get("last_entropy")
        self.last_term = state.get("last_term")

    def __repr__(self) -> str:
        return (
            f"TargetedEntropyRegularizer(target={self.target}, coef={self.coef}, agg={self.agg!r}, "
            f"steps={self.steps}, signed_coef={self.signed_coef})"
        )
