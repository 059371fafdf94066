"""What both plug-ins read from the registries' declarations (shared by ``verl`` and ``trl``)."""

from __future__ import annotations

from typing import Any

from ..advantages import Estimator

__all__ = ["hook_hparams"]


def hook_hparams(est: Estimator, loss: str) -> dict[str, Any]:
    """The keyword arguments of loss ``loss``'s inputs hook: the bound hyperparameters of the
    estimator term named by ``LossInfo.inputs_hparams_from`` (COPO's ``k``, ``b``, ``mode``...) when
    ``est`` uses it, else none (the hook's defaults), as grouprl's trainer does."""
    from ..losses import LOSSES

    src = LOSSES[loss].inputs_hparams_from
    return next((dict(kw) for _, info, kw in est.terms if info.name == src), {})
