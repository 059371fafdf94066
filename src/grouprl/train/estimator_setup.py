"""Config-load wiring of estimators and reward components (imports no other ``grouprl.train`` module,
so that ``train.config`` can call it): an estimator declares the batch fields it reads (``needs``),
its hyperparameter checks (``validate``) and the reward it trains on (``reward_view``) in its
registry entry; nothing here names a method."""

from __future__ import annotations

from typing import Any

__all__ = ["check_method_config", "estimator_hparams", "load_reward_models"]


def load_reward_models(cfg: Any):
    """The ``RewardModels`` of ``cfg.reward_models`` (a ``ValueError`` naming the directory and the fix)."""
    from ..rewards.preferences import RewardModels

    return RewardModels.load(cfg.reward_models)


def estimator_hparams(cfg: Any, models: Any = None) -> dict[str, Any]:
    """``cfg.estimator_kwargs`` plus the reference statistics of ``reward_models`` (``ref_mean`` /
    ``ref_std``) for a term that takes them when ``normalize=zscore`` and none were given."""
    kw = dict(cfg.estimator_kwargs)
    if cfg.reward_models and kw.get("normalize") == "zscore" and "ref_mean" not in kw and "ref_std" not in kw:
        from ..advantages import registry

        if any("ref_mean" in info.defaults for _w, info, _k in registry.resolve(cfg.estimator).terms):
            man = (models or load_reward_models(cfg)).manifest
            kw["ref_mean"], kw["ref_std"] = list(man["ref_mean"]), list(man["ref_std"])
    return kw


def check_method_config(cfg: Any) -> None:
    """Config-load checks of the method wiring (ValueError naming the key and the fix): the
    estimator's hyperparameters bind (names, and each estimator's own ``validate``); reward
    components are given exactly when an estimator reads them, from one source."""
    from ..advantages import registry

    if cfg.reward_models:
        load_reward_models(cfg)  # the directory is readable and well formed
    needs = registry.resolve(cfg.estimator).needs
    wants = "reward_components" in needs
    if cfg.reward_models and cfg.reward_components:
        raise ValueError("set reward_models (fitted reward models) or reward_components (reward functions), not both")
    if wants and not (cfg.reward_models or cfg.reward_components):
        raise ValueError(
            f"estimator {cfg.estimator!r} reads reward_components: set reward_models=DIR (K reward models from "
            "`grouprl fit-rewards`) or reward_components=[task, mymodule:fn, ...] (one reward function per user "
            "group); the built-in tasks have a single verifier")
    if not wants and (cfg.reward_models or cfg.reward_components):
        key = "reward_models" if cfg.reward_models else "reward_components"
        readers = ", ".join(n for n, i in registry.ESTIMATORS.items() if "reward_components" in i.needs)
        raise ValueError(
            f"{key} is set but estimator {cfg.estimator!r} does not read reward_components; use an estimator that "
            f"does ({readers}) or drop {key}")
    try:
        registry.resolve(cfg.estimator, **estimator_hparams(cfg))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"estimator_kwargs: {str(exc).strip(chr(39))}") from None
