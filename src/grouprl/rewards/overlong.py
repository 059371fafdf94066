"""DAPO's overlong reward shaping, arXiv:2503.14476.

* Soft overlong punishment, added to the correctness reward:
      R_len(y) = 0                                   if |y| ≤ L_max − L_cache
      R_len(y) = ((L_max − L_cache) − |y|) / L_cache  if L_max − L_cache < |y| ≤ L_max
      R_len(y) = −1                                  if |y| > L_max
  (the paper). verl's recipe computes min(−(|y| − (L_max − L_cache))/L_cache · factor, 0) with no
  −1 floor (generation is truncated at L_max there): ``mode="verl"``.
* Overlong filtering: truncated responses get no loss (their mask rows are zeroed).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import Rollouts

__all__ = ["overlong_penalty", "shape_overlong", "overlong_filter"]

MODES = ("paper", "verl")


def overlong_penalty(
    lengths: Tensor, *, max_length: int, cache_length: int, factor: float = 1.0, mode: str = "paper"
) -> Tensor:
    """R_len per response (float32 (B,)) from response lengths |y| (token counts).

    ``factor`` scales the linear ramp (verl's ``overlong_penalty_factor``, 1.0). ``mode="paper"``
    floors at −factor for |y| > L_max; ``"verl"`` keeps the ramp going (no floor).
    """
    if mode not in MODES:
        raise ValueError(f"overlong_penalty: mode={mode!r}; choose one of {MODES}")
    if not 0 < cache_length <= max_length:
        raise ValueError(
            f"overlong_penalty: need 0 < cache_length <= max_length, got {cache_length} and {max_length}."
        )
    L = torch.as_tensor(lengths).to(torch.float64)
    expected = max_length - cache_length
    pen = torch.clamp((expected - L) / cache_length * factor, max=0.0)
    if mode == "paper":
        pen = torch.where(L > max_length, torch.full_like(pen, -factor), pen)
    return pen.to(torch.float32)


def shape_overlong(
    batch: Rollouts,
    *,
    max_length: int,
    cache_length: int,
    factor: float = 1.0,
    mode: str = "paper",
    lengths: Tensor | None = None,
) -> Rollouts:
    """The batch with R_len added to its rewards; lengths default to ``batch.lengths`` (the number
    of unmasked response tokens)."""
    L = batch.lengths if lengths is None else torch.as_tensor(lengths, device=batch.device)
    if L.shape != (len(batch),):
        raise ValueError(f"shape_overlong: lengths must have shape ({len(batch)},), got {tuple(L.shape)}.")
    pen = overlong_penalty(L, max_length=max_length, cache_length=cache_length, factor=factor, mode=mode)
    return batch.replace(rewards=batch.rewards + pen.to(batch.rewards.dtype).to(batch.device))


def overlong_filter(batch: Rollouts, *, max_length: int | None = None) -> Rollouts:
    """Overlong filtering: the batch with the mask rows of truncated responses zeroed.

    Truncated rows are ``batch.truncated`` when present, else rows whose length reaches
    ``max_length``. The rows stay in the batch (they still count in group statistics) but get no
    loss, as in DAPO.
    """
    if batch.truncated is not None:
        trunc = batch.truncated
    elif max_length is not None:
        trunc = batch.lengths >= max_length
    else:
        raise ValueError(
            "overlong_filter: the batch has no 'truncated' field; build Rollouts(truncated=...) "
            "or pass max_length=... to flag rows that reached it."
        )
    return batch.replace(mask=batch.mask & ~trunc.unsqueeze(1))
