"""Loss aggregation: from a per-token loss matrix to one scalar, invariant to micro-batching.

Let ℓ_{i,t} be the per-token loss, M the response mask (B, T), L_i = Σ_t M_{i,t} the number of
valid tokens of row i, N_tok the number of valid tokens and N_seq the number of rows with at least
one valid token — both counted on the **whole (mini-)batch** — and C a constant token budget.

| mode                      | formula                                   | used by                        |
|---------------------------|-------------------------------------------|--------------------------------|
| ``token-mean``            | Σ_{i,t} ℓ·M / N_tok                       | DAPO token-level loss (default)|
| ``token-sum``             | Σ_{i,t} ℓ·M                               | plain sum                      |
| ``seq-mean-token-sum``    | Σ_i (Σ_t ℓ·M) / N_seq                     | CANON                          |
| ``seq-mean-token-mean``   | Σ_i (Σ_t ℓ·M / L_i) / N_seq               | original GRPO (1/G · 1/|o_i|)  |
| ``seq-mean-token-sum-norm``| Σ_{i,t} ℓ·M / (N_seq · C)                | Dr. GRPO (C = MAX_TOKENS)      |

A sequence-level loss vector ℓ_i (B,) (GMPO) is aggregated as Σ_i ℓ_i·[L_i > 0] / N_seq in every mode.

**Micro-batch invariance.** Every mode is a sum of per-row terms divided by a normaliser that does
not depend on the split. Compute ``normalizers(mask)`` once on the full batch and pass
``num_tokens``/``num_seqs`` (and a fixed ``norm_const``) to every micro-batch call: the sum of the
micro-batch losses, and of their gradients, then equals the full-batch loss and gradient exactly.
When they are ``None`` the *local* counts of the tensors passed in are used, which reproduces
verl's per-micro-batch behaviour and makes the objective depend on the split (verl #5625, #7321).
Under data parallelism pass the all-reduced global counts and ``dp_size`` (the number of ranks):
the loss is multiplied by it, which undoes DDP/FSDP gradient averaging (as verl's ``dp_size``).

**Dr. GRPO's constant.** ``seq-mean-token-sum-norm`` divides by ``N_seq · C`` — the paper's
"mean over responses of the token sum divided by MAX_TOKENS" (arXiv:2503.20783), which gives the +0.125
of the Dr. GRPO worked example (tests/test_aggregation.py), and verl 0.9.1's form.
Older verl releases divided by C only, without 1/N_seq: pass ``num_seqs=1`` for that. When ``norm_const`` is
``None``, C is the padded width T of the mask, with a ``UserWarning``: T changes from batch to batch
unless the padding is fixed, which re-weights steps silently; pass the generation budget instead.

Empty input: every denominator is clamped to ≥ 1, so an all-masked (micro-)batch gives a loss of
exactly 0 with a zero gradient, never NaN.
"""

from __future__ import annotations

import math
import warnings
from typing import Union

import torch
from torch import Tensor

__all__ = ["AGG_MODES", "aggregate", "normalizers", "check_agg"]

AGG_MODES: tuple[str, ...] = (
    "token-mean",
    "token-sum",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)

Number = Union[int, float, Tensor]


def check_agg(agg: str) -> str:
    """Return ``agg`` if it is a known mode, else raise ValueError with close matches."""
    if agg not in AGG_MODES:
        from ..core import suggest

        raise ValueError(f"unknown loss aggregation agg={agg!r}: {suggest(str(agg), AGG_MODES)}")
    return agg


def normalizers(mask: Tensor, agg: str | None = None) -> dict[str, Tensor]:
    """Global normalisers of a (mini-)batch: ``num_tokens`` (valid tokens) and ``num_seqs`` (rows
    with at least one valid token), as exact 0-d int64 tensors on the mask's device (no host sync).

    Compute them once on the full batch and pass them to every micro-batch's ``policy_loss`` /
    ``aggregate`` call (``**normalizers(mask)``). ``agg``, if given, is only validated: every mode
    reads at most these two counts (plus the constant ``norm_const``, which is never derived from a
    batch).
    """
    if agg is not None:
        check_agg(agg)
    if mask.dim() != 2:
        raise ValueError(f"mask must be (B, T), got shape {tuple(mask.shape)}")
    m = mask.to(torch.bool)
    return {
        "num_tokens": m.sum(),
        "num_seqs": m.any(dim=1).sum(),
    }


def _count(value: Number | None, local: Tensor, like: Tensor) -> Tensor:
    """The normaliser as a tensor of ``like``'s dtype and device, clamped to >= 1 (empty -> 0 loss)."""
    v = local if value is None else torch.as_tensor(value)
    return v.to(device=like.device, dtype=like.dtype).clamp_min(1.0)


def _norm_const(norm_const: Number | None, mask: Tensor, stacklevel: int = 3) -> Number:
    """``norm_const``, or the padded width T of ``mask`` with a warning when it is None."""
    if norm_const is None:
        warnings.warn(
            "agg='seq-mean-token-sum-norm' without norm_const: dividing by the padded width "
            f"T={mask.shape[-1]} of this batch, which varies between batches unless the padding is "
            "fixed; pass norm_const=<generation budget (max new tokens)> for Dr. GRPO's constant.",
            UserWarning,
            stacklevel=stacklevel,
        )
        return float(mask.shape[-1])
    return norm_const


def aggregate(
    per_token_loss: Tensor,
    mask: Tensor,
    agg: str = "token-mean",
    *,
    num_tokens: Number | None = None,
    num_seqs: Number | None = None,
    norm_const: Number | None = None,
    dp_size: int = 1,
) -> Tensor:
    """Reduce a (B, T) per-token loss (or a (B,) per-sequence loss) to a scalar by ``agg``.

    See the module docstring for the five formulas. ``num_tokens``/``num_seqs`` are the GLOBAL
    counts of the full (mini-)batch (``normalizers(full_mask)``); ``None`` -> local counts of
    ``mask``. ``dp_size`` multiplies the result (data parallelism with averaged gradients).
    Masked entries are ignored even if they hold inf or NaN (selected with ``where``).
    """
    out = _aggregate(per_token_loss, mask, agg, num_tokens, num_seqs, norm_const)
    return out * dp_size if dp_size != 1 else out


def _aggregate(
    per_token_loss: Tensor,
    mask: Tensor,
    agg: str,
    num_tokens: Number | None,
    num_seqs: Number | None,
    norm_const: Number | None,
) -> Tensor:
    check_agg(agg)
    m = mask.to(torch.bool)
    if m.dim() != 2:
        raise ValueError(f"mask must be (B, T), got shape {tuple(mask.shape)}")
    x = per_token_loss
    if not x.dtype.is_floating_point or x.dtype.itemsize < 4:
        x = x.to(torch.float32)  # bf16/fp16 sums and counts would round: reduce in float32
    if x.dim() == 1:  # sequence-level loss: one value per row
        if x.shape[0] != m.shape[0]:
            raise ValueError(f"per-sequence loss has {x.shape[0]} rows, mask has {m.shape[0]}")
        valid = m.any(dim=1)
        n_seq = _count(num_seqs, valid.sum(), x)
        return torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum() / n_seq
    if tuple(x.shape) != tuple(m.shape):
        raise ValueError(f"per-token loss has shape {tuple(x.shape)}, mask has {tuple(m.shape)}")
    xm = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))
    if agg == "token-mean":
        return xm.sum() / _count(num_tokens, m.sum(), x)
    if agg == "token-sum":
        return xm.sum()
    n_seq = _count(num_seqs, m.any(dim=1).sum(), x)
    if agg == "seq-mean-token-sum":
        return xm.sum() / n_seq
    if agg == "seq-mean-token-mean":
        lengths = m.sum(dim=1).to(x.dtype).clamp_min(1.0)
        return (xm.sum(dim=1) / lengths).sum() / n_seq
    # seq-mean-token-sum-norm
    c = _norm_const(norm_const, m, stacklevel=4)
    if isinstance(c, Tensor):
        if c.dim() != 0:
            raise ValueError(f"norm_const must be a scalar, got a tensor of shape {tuple(c.shape)}")
    elif not (float(c) > 0 and math.isfinite(float(c))):
        raise ValueError(f"norm_const must be a finite number > 0 (the token budget), got {c!r}")
    return xm.sum() / (n_seq * torch.as_tensor(c).to(device=x.device, dtype=x.dtype))
