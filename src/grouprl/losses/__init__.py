"""Floor 2: policy losses by name, KL estimators, entropy bonus, loss aggregation, the value loss and
rollout importance weights.

    from grouprl.losses import policy_loss, normalizers
    norms = normalizers(full_mask)                         # once per (mini-)batch
    for mb in micro_batches:                               # the sum of the micro-batch losses
        loss, metrics = policy_loss("ppo_clip", lp[mb], old[mb], adv[mb], mask[mb],
                                    agg="token-mean", **norms, eps_high=0.28)
        loss.backward()                                    # == the full-batch gradient

``LOSSES`` lists the registered losses; ``register_loss`` adds one. See ``aggregation`` for the
five aggregation modes and ``kl`` for the KL estimators.
"""

from .aggregation import AGG_MODES, aggregate, normalizers
from .importance import ROLLOUT_IS, rollout_is, rollout_is_weights
from .kl import KL_TYPES, kl_penalty
from .registry import LOSSES, LossInfo, example_inputs, policy_loss, register_loss, run_example, token_losses
from .value import value_loss


def _register_all() -> None:
    """Import every loss module of this package (importing one registers its losses)."""
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_") and mod.name not in ("registry", "aggregation", "importance", "kl", "value"):
            importlib.import_module(f"{__name__}.{mod.name}")


_register_all()

from .covariance import clip_cov_select, kl_cov_select, token_covariance  # noqa: E402

__all__ = [
    "AGG_MODES",
    "KL_TYPES",
    "LOSSES",
    "ROLLOUT_IS",
    "LossInfo",
    "aggregate",
    "clip_cov_select",
    "example_inputs",
    "kl_cov_select",
    "kl_penalty",
    "normalizers",
    "policy_loss",
    "register_loss",
    "rollout_is",
    "rollout_is_weights",
    "run_example",
    "token_covariance",
    "token_losses",
    "value_loss",
]
