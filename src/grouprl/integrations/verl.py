"""verl plug-in: every grouprl estimator and policy loss inside verl's PPO trainer (tested: verl 0.9.1).

Activation (in every process that imports verl, i.e. the trainer and the Ray workers):

* explicit: ``from grouprl.integrations.verl import register_all; register_all()``;
* by import side effect: ``import grouprl.integrations.verl_plugin`` (registers everything and
  installs the field pass-through below). verl imports the modules named in the environment variable
  ``VERL_USE_EXTERNAL_MODULES`` (comma-separated) when ``verl`` is imported, so
  ``export VERL_USE_EXTERNAL_MODULES=grouprl.integrations.verl_plugin`` on every node activates it
  without code changes; a ``verl.plugins`` entry point naming that module does the same
  automatically once grouprl is installed (see ``docs/scaling.md``).

Estimators are registered with ``register_adv_est`` as ``<prefix><name>`` (``grouprl.grpo``,
``grouprl.ngrpo``, ...) plus ``<prefix>expr`` for an expression such as ``"0.7*grpo + 0.3*rloo |
whiten"``. Conventions adapted:

* ``token_level_rewards`` (B, T) → ``rewards`` = its sum over tokens (verl's outcome score) and
  ``token_rewards`` = the tensor itself (token-level estimators such as GAE read it);
* ``response_mask`` → ``mask``; ``index`` (numpy object array of uid strings) → ``group``;
  ``reward_baselines`` → ``reward_baselines``;
* hyperparameters from the algorithm config's ``grouprl`` section (``algorithm.grouprl.hparams``),
  plus ``algorithm.gamma`` / ``algorithm.lam`` for estimators that take ``gamma`` / ``lam``;
* the return value is ``(advantages, returns)``: returns = advantages for outcome estimators, and
  the critic targets for estimators whose module defines ``<function>_with_returns`` (GAE:
  A + V before whitening, as verl).

The ``algorithm.grouprl`` section (all keys optional)::

    algorithm:
      adv_estimator: grouprl.ngrpo
      grouprl:
        hparams: {r_max: 1.0}          # keyword arguments of the estimator
        expr: "0.7*grpo + 0.3*rloo"    # only for adv_estimator=grouprl.expr
        fields: {step: step_ids}       # Rollouts field -> DataProto key (pass-through only)

verl's dispatcher gives a custom estimator only ``token_level_rewards``, ``response_mask``,
``config``, ``index`` and ``reward_baselines``. Estimators that need more (values, log-probs,
entropies, step ids, state keys, agent ids) get them through ``install_field_passthrough()``: it
wraps ``verl.trainer.ppo.ray_trainer.compute_advantage`` so that, for a ``grouprl.*`` estimator
only, the whole ``DataProto`` is handed over and the needed fields are copied from ``data.batch`` /
``data.non_tensor_batch`` into the ``Rollouts``. Every other estimator goes to verl's original
function unchanged. Default keys: ``values`` → values, ``old_log_probs`` → old_logprobs,
``ref_log_prob`` → ref_logprobs, ``entropys`` → entropy; any other need is looked up under its own
name or under the key given in ``algorithm.grouprl.fields`` (a field named there is copied even if
the estimator only reads it optionally); a field the estimator declares ``optional`` is copied when
the DataProto has it under its key.

Policy losses are registered with ``register_policy_loss`` as ``<prefix><name>`` and called with
verl's signature ``(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config,
rollout_is_weights) -> (loss, metrics)``; the aggregation uses verl's global counts
(``config.global_batch_info``: ``batch_num_tokens``, ``global_batch_size``, ``loss_scale_factor``,
times ``dp_size``) so the objective matches verl's aggregation modes; metrics become Python floats
here, at the boundary (grouprl keeps them as tensors). Loss hyperparameters come from the actor
fields that verl's counterpart of the loss reads (``VERL_ACTOR_FIELDS``) and from the JSON in
``$GROUPRL_VERL_LOSS_HPARAMS`` (verl's actor config refuses unknown keys). ``rollout_is_weights``
are verl's own (its ``rollout_is`` option); ``grouprl.losses.rollout_is_weights`` computes the same
truncated weights from two log-prob tensors where a user wants grouprl's.

Beyond those seven values (verl 0.9.1's actor passes nothing else), two declared paths:

* a loss with an ``inputs`` hook (``LossInfo.inputs`` with its ``needs``; COPO: global advantages
  and a blend weight over the step's whole batch, from ``non_tensor_batch["answer"]``): the
  wrapped ``RayPPOTrainer._update_actor`` (legacy trainer, ``trainer.use_v1=False``) runs the hook
  once per step on the whole DataProto and stores its outputs as fields (``store_loss_inputs``:
  ``batch["grouprl_advantages"]``, ``batch["grouprl_<keyword>"]``, ``meta_info
  ["grouprl_loss_inputs"]``); verl splits them into mini- and micro-batches with every other
  field, and the wrapped ``ppo_loss`` hands each micro-batch to the loss, which trains on them as
  grouprl's trainer does (the hook's advantages replace the estimator's);
* a loss keyword in ``MODEL_OUTPUT_KEYWORDS`` (HAPO's ``token_entropy``): the wrapped
  ``ppo_loss`` hands the loss verl's model output, whose ``entropy`` verl's actor computes when
  ``actor.calculate_entropy=True`` (or ``entropy_coeff != 0``); the driver refuses a HAPO run
  without it before the first update.

``import grouprl.integrations.verl_plugin`` installs both wrappers (``install_field_passthrough``,
``install_loss_passthrough``). A missing field or setting is an error naming it and the fix.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import inspect
import json
import os
import sys
from contextvars import ContextVar
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor

from ..advantages import ESTIMATORS, Estimator
from ..advantages import resolve as resolve_estimator
from ..core import Rollouts
from ..core.batch import ROW_FIELDS, TOKEN_FIELDS
from .declarations import hook_hparams

from verl.trainer.ppo import core_algos  # noqa: E402  (this module is the verl adapter)

__all__ = [
    "PREFIX",
    "register_all",
    "register_estimators",
    "register_losses",
    "make_adv_estimator",
    "make_policy_loss",
    "rollouts_from_verl",
    "install_field_passthrough",
    "install_loss_passthrough",
    "loss_inputs_from_verl",
    "store_loss_inputs",
    "loss_hook_hparams",
    "DEFAULT_FIELD_KEYS",
    "MODEL_OUTPUT_KEYWORDS",
]

PREFIX = "grouprl."
EXPR_NAME = "expr"
SECTION_KEYS = ("hparams", "expr", "fields")

# Rollouts field -> the key verl uses for it in DataProto.batch.
DEFAULT_FIELD_KEYS: dict[str, str] = {
    "values": "values",
    "old_logprobs": "old_log_probs",
    "ref_logprobs": "ref_log_prob",
    "entropy": "entropys",
}
_STANDARD_FIELDS = frozenset(TOKEN_FIELDS) | frozenset(ROW_FIELDS) | {"reward_components"}

# Adapters are cached so that register_all() can be called again (verl's registries refuse a
# *different* function under a taken name, and accept the same one).
_EST_ADAPTERS: dict[str, Callable] = {}
_LOSS_ADAPTERS: dict[str, Callable] = {}


# --------------------------------------------------------------------------------------- config
def _plain(x: Any) -> Any:
    """A DictConfig / ListConfig / BaseConfig section as plain Python containers."""
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    try:  # omegaconf is a verl dependency
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(x, (DictConfig, ListConfig)):
            return OmegaConf.to_container(x, resolve=True)
    except ImportError:  # pragma: no cover - verl always brings omegaconf
        pass
    if isinstance(x, Mapping):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _cfg_get(config: Any, key: str, default: Any = None) -> Any:
    """``config[key]`` for a dict, DictConfig or verl dataclass config (AlgoConfig, ActorConfig)."""
    if config is None:
        return default
    if isinstance(config, Mapping) or hasattr(config, "get"):
        try:
            v = config.get(key, default)
        except Exception:  # a structured config that refuses unknown keys
            v = getattr(config, key, default)
        return default if v is None else v
    return getattr(config, key, default)


def grouprl_section(config: Any) -> dict[str, Any]:
    """The ``grouprl`` section of verl's algorithm config as a plain dict (empty if absent).

    Raises ValueError for an unknown key (a misspelt ``hparams`` would otherwise be ignored).
    """
    sec = _plain(_cfg_get(config, "grouprl", None)) or {}
    if not isinstance(sec, dict):
        raise ValueError(
            f"algorithm.grouprl: expected a mapping with keys {SECTION_KEYS}, got {type(sec).__name__}."
        )
    unknown = sorted(set(sec) - set(SECTION_KEYS))
    if unknown:
        raise ValueError(
            f"algorithm.grouprl: unknown key {unknown[0]!r}; allowed keys are {SECTION_KEYS} "
            "(estimator keyword arguments go under algorithm.grouprl.hparams)."
        )
    return sec


# ------------------------------------------------------------------------------------ estimators
def _estimator_from_config(name: str | None, config: Any) -> tuple[Estimator, dict[str, Any]]:
    """The grouprl Estimator for verl estimator ``name`` (None = the expression in the config), with
    the hyperparameters of ``algorithm.grouprl.hparams`` and verl's discounts; the name or expression
    is resolved by ``grouprl.advantages.resolve``."""
    sec = grouprl_section(config)
    hparams = dict(sec.get("hparams") or {})
    spec = name
    if name is None:
        spec = sec.get("expr")
        if not spec:
            raise ValueError(
                f"adv_estimator={PREFIX}{EXPR_NAME} needs algorithm.grouprl.expr, e.g. "
                "'0.7*grpo + 0.3*rloo | whiten'."
            )
        spec = str(spec)
    accepted = {p for _, info, _ in resolve_estimator(spec).terms for p in info.defaults}
    _add_discounts(hparams, accepted, config)
    return resolve_estimator(spec, **hparams), hparams


def _add_discounts(hparams: dict[str, Any], accepted: set[str], config: Any) -> None:
    """verl's ``algorithm.gamma`` / ``algorithm.lam`` for estimators that take them (hparams win)."""
    for key in ("gamma", "lam"):
        if key in accepted and key not in hparams:
            v = _cfg_get(config, key, None)
            if v is not None:
                hparams[key] = float(v)


def _with_returns(est: Estimator) -> Callable | None:
    """``<fn>_with_returns`` of a single plain estimator's module (GAE), else None."""
    if len(est.terms) != 1 or est.transforms or est.terms[0][0] != 1.0:
        return None
    info = est.terms[0][1]
    mod = inspect.getmodule(info.fn)
    return getattr(mod, f"{info.fn.__name__}_with_returns", None)


def _lookup(data: Any, key: str) -> Any:
    """``key`` from a DataProto's ``batch`` (tensors) or ``non_tensor_batch`` (numpy), else None."""
    if data is None:
        return None
    if not hasattr(data, "batch") and hasattr(data, "keys"):  # a TensorDict or a plain mapping
        return data[key] if key in data.keys() else None
    batch = getattr(data, "batch", None)
    if batch is not None and key in batch.keys():
        return batch[key]
    ntb = getattr(data, "non_tensor_batch", None) or {}
    return ntb.get(key)


def rollouts_from_verl(
    token_level_rewards: Tensor,
    response_mask: Tensor,
    index: Any = None,
    *,
    needs: tuple[str, ...] = (),
    optional: tuple[str, ...] = (),
    reward_baselines: Tensor | None = None,
    data: Any = None,
    fields: Mapping[str, str] | None = None,
    who: str = "grouprl",
) -> Rollouts:
    """Build a ``Rollouts`` batch from verl's estimator inputs.

    ``rewards`` = ``token_level_rewards.sum(-1)``, ``token_rewards`` = ``token_level_rewards``,
    ``mask`` = ``response_mask``, ``group`` = ``index`` (uid labels; one group per row when absent).
    Fields in ``needs`` beyond those, and every field named in ``fields`` (optional inputs an
    estimator reads when present), are copied from ``data`` (a DataProto: its ``batch`` or
    ``non_tensor_batch``), under the key ``fields[name]``, ``DEFAULT_FIELD_KEYS[name]`` or ``name``;
    names that are not ``Rollouts`` fields go to ``extras``. Fields in ``optional`` (read when
    present, ``EstimatorInfo.optional``) are copied when ``data`` has them under that key.
    """
    if token_level_rewards.dim() != 2:
        raise ValueError(
            f"{who}: token_level_rewards must be (B, T), got {tuple(token_level_rewards.shape)}."
        )
    B = token_level_rewards.shape[0]
    group = index if index is not None else np.arange(B)
    kw: dict[str, Any] = {
        "rewards": token_level_rewards.sum(dim=-1),
        "group": group,
        "mask": response_mask,
        "token_rewards": token_level_rewards,
    }
    if reward_baselines is not None:
        kw["reward_baselines"] = reward_baselines.reshape(B) if reward_baselines.numel() == B else reward_baselines
    extras: dict[str, Tensor] = {}
    fields = dict(fields or {})
    # the declared needs, plus optional fields the user mapped explicitly (e.g. CANON's metric)
    wanted = list(needs) + [f for f in fields if f not in needs]
    wanted += [f for f in optional if f not in wanted]
    for need in wanted:
        if need in kw or need in ("rewards", "group", "mask"):
            continue
        key = fields.get(need) or DEFAULT_FIELD_KEYS.get(need) or need
        value = _lookup(data, key)
        if value is None and need in optional and need not in needs and need not in fields:
            continue  # read when present
        if value is None:
            where = (
                "verl's dispatcher passes only token_level_rewards, response_mask, index and "
                "reward_baselines; call grouprl.integrations.verl.install_field_passthrough() "
                "(import grouprl.integrations.verl_plugin does) so grouprl estimators see the "
                "whole DataProto"
                if data is None
                else f"the DataProto has no batch or non_tensor_batch key {key!r}"
            )
            raise ValueError(
                f"{who} needs the field {need!r}: {where}; put it in the DataProto under {key!r} "
                f"or map it with algorithm.grouprl.fields.{need}=<key>."
            )
        if need in _STANDARD_FIELDS:
            kw[need] = value
        else:
            extras[need] = value if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value))
    if extras:
        kw["extras"] = extras
    return Rollouts(**kw)


def make_adv_estimator(name: str | None) -> Callable[..., tuple[Tensor, Tensor]]:
    """A verl advantage-estimator function backed by the grouprl estimator ``name``
    (``None``: the expression in ``algorithm.grouprl.expr``).

    The function accepts verl's keyword arguments (``token_level_rewards``, ``response_mask``,
    ``index``, ``config``, ``reward_baselines``; ``grouprl_data`` = the DataProto when the
    pass-through is installed; anything else is ignored) and returns ``(advantages, returns)``,
    float32 (B, T), 0 on masked tokens.
    """
    cache_key = "\0expr" if name is None else name
    if cache_key in _EST_ADAPTERS:
        return _EST_ADAPTERS[cache_key]
    label = f"{PREFIX}{EXPR_NAME if name is None else name}"

    def grouprl_adv_estimator(
        token_level_rewards: Tensor,
        response_mask: Tensor,
        index: Any = None,
        config: Any = None,
        reward_baselines: Tensor | None = None,
        grouprl_data: Any = None,
        **unused: Any,
    ) -> tuple[Tensor, Tensor]:
        est, hparams = _estimator_from_config(name, config)
        needs = est.needs
        if index is None and any(i.level != "token" for _, i, _ in est.terms):
            raise ValueError(
                f"{label}: no uid index was passed (DataProto.non_tensor_batch['uid'] is missing); "
                "group estimators need the prompt uid of every row."
            )
        fields = grouprl_section(config).get("fields")
        if fields and grouprl_data is None:
            raise ValueError(
                f"{label}: algorithm.grouprl.fields is set but the DataProto was not passed; call "
                "grouprl.integrations.verl.install_field_passthrough() (import "
                "grouprl.integrations.verl_plugin does)."
            )
        batch = rollouts_from_verl(
            token_level_rewards,
            response_mask,
            index,
            needs=needs,
            optional=est.optional,
            reward_baselines=reward_baselines,
            data=grouprl_data,
            fields=fields,
            who=label,
        )
        with torch.no_grad():
            both = _with_returns(est)
            if both is not None:
                for _, info, _ in est.terms:
                    missing = [f for f in info.needs if not batch.has(f)]
                    if missing:
                        raise ValueError(f"{label} needs the field {missing[0]!r}.")
                adv, ret = both(batch, **est.terms[0][2])
                m = batch.mask.to(adv.dtype)
                adv, ret = adv * m, ret * m
            else:
                adv = est(batch)
                ret = adv
        return adv, ret

    grouprl_adv_estimator.__name__ = f"grouprl_{(name or EXPR_NAME).replace('.', '_')}"
    grouprl_adv_estimator.__qualname__ = grouprl_adv_estimator.__name__
    grouprl_adv_estimator._grouprl_estimator = label  # type: ignore[attr-defined]
    _EST_ADAPTERS[cache_key] = grouprl_adv_estimator
    return grouprl_adv_estimator


def register_estimators(prefix: str = PREFIX) -> list[str]:
    """Register every grouprl estimator (and ``<prefix>expr``) with verl's ``register_adv_est``."""
    names = []
    for name in list(ESTIMATORS) + [None]:
        verl_name = f"{prefix}{EXPR_NAME if name is None else name}"
        if name == EXPR_NAME:
            raise ValueError(f"a grouprl estimator is named {EXPR_NAME!r}, which the verl plug-in reserves.")
        core_algos.register_adv_est(verl_name)(make_adv_estimator(name))
        names.append(verl_name)
    return names


# ---------------------------------------------------------------------------------------- losses
# For the grouprl losses that restate one of verl's, the verl ActorConfig fields (dotted paths)
# that verl's loss reads, and the grouprl hyperparameter each one sets — so that in verl the same
# config lines mean the same thing. Method-specific grouprl losses (ngrpo_clip, dapo_clip, copo, ...)
# keep their own defaults; set them with $GROUPRL_VERL_LOSS_HPARAMS.
_CLIP = {"clip_ratio_low": "eps_low", "clip_ratio_high": "eps_high"}
VERL_ACTOR_FIELDS: dict[str, dict[str, str]] = {
    "ppo_clip": {**_CLIP, "clip_ratio_c": "clip_ratio_c"},  # verl "vanilla" (dual clip included)
    "gspo": dict(_CLIP),
    "cispo": dict(_CLIP),
    "gmpo": dict(_CLIP),  # verl "geo_mean"
    "clip_cov": {
        **_CLIP,
        "policy_loss.clip_cov_ratio": "clip_cov_ratio",
        "policy_loss.clip_cov_lb": "clip_cov_lb",
        "policy_loss.clip_cov_ub": "clip_cov_ub",
    },
    "kl_cov": {"policy_loss.kl_cov_ratio": "kl_cov_ratio", "policy_loss.ppo_kl_coef": "ppo_kl_coef"},
    "sapo": {"tau_pos": "tau_pos", "tau_neg": "tau_neg"},
    "dro": {"policy_loss.dro_beta": "beta"},
}
LOSS_HPARAMS_ENV = "GROUPRL_VERL_LOSS_HPARAMS"
# policy_loss keyword arguments that may be set through $GROUPRL_VERL_LOSS_HPARAMS as well.
_POLICY_LOSS_KWARGS = ("respect_agg", "validate")
# verl applies its configured loss_agg_mode to every loss except those that hard-code a mode; the
# grouprl losses restating the latter keep their own mode in verl, all others follow verl's.
_VERL_OWN_AGG = frozenset({"sapo"})


def _loss_defaults(name: str) -> dict[str, Any]:
    from ..losses import LOSSES

    return dict(LOSSES[name].defaults)


def _env_loss_hparams(name: str) -> dict[str, Any]:
    """Hyperparameters for loss ``name`` from the JSON in $GROUPRL_VERL_LOSS_HPARAMS:
    ``{"<name>": {...}}`` per loss, or a flat ``{...}`` for all losses."""
    raw = os.environ.get(LOSS_HPARAMS_ENV, "").strip()
    if not raw:
        return {}
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"${LOSS_HPARAMS_ENV} is not valid JSON ({exc}); e.g. '{{\"eps_high\": 0.28}}'.") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"${LOSS_HPARAMS_ENV} must be a JSON object, got {type(obj).__name__}.")
    if name in obj and isinstance(obj[name], dict):
        return dict(obj[name])
    if all(isinstance(v, dict) for v in obj.values()) and obj:
        return {}  # per-loss form, nothing for this loss
    return dict(obj)


def _actor_hparams(name: str, config: Any, accepted: Mapping[str, Any]) -> dict[str, Any]:
    """The hyperparameters of loss ``name`` that verl's actor config sets (``VERL_ACTOR_FIELDS``)."""
    out: dict[str, Any] = {}
    for path, hp in VERL_ACTOR_FIELDS.get(name, {}).items():
        if hp in accepted:
            v = config
            for part in path.split("."):
                v = _cfg_get(v, part, None)
            if v is not None:
                out[hp] = v
    return out


def loss_inputs_from_verl(name: str, response_mask: Tensor, data: Any, *, hparams: Mapping[str, Any] | None = None,
                          who: str | None = None) -> Any:
    """The ``LossInputs`` of loss ``name``'s declared ``inputs`` hook, for the rows of ``data``.

    ``data`` (a DataProto, a TensorDict or a mapping) must hold verl's ``token_level_rewards``
    (B, T) and ``uid`` (the prompt uid per row) and every field the loss declares in ``needs``
    (``LossInfo.needs``, e.g. ``answer``), under its own name in ``batch`` or
    ``non_tensor_batch``. The hook computes group statistics (COPO: across prompts too), so
    ``data`` must be the step's whole batch, as at ``RayPPOTrainer._update_actor``. ``hparams`` go
    to the hook (else its defaults).
    """
    from ..losses import LOSSES

    info = LOSSES[name]
    who = who or f"{PREFIX}{name}"
    for f in ("token_level_rewards", "uid", *info.needs):
        if _lookup(data, f) is None:
            raise ValueError(
                f"{who} needs the DataProto field {f!r}, which the batch does not have: {_how_to_supply(f)} "
                f"(the loss declares needs={info.needs})."
            )
    batch = rollouts_from_verl(
        _lookup(data, "token_level_rewards"), response_mask, _lookup(data, "uid"), needs=info.needs, data=data, who=who
    )
    with torch.no_grad():
        return info.inputs(batch, **dict(hparams or {}))


def _how_to_supply(field: str) -> str:
    """How a verl user puts a declared per-row field into the DataProto."""
    if field in ("token_level_rewards", "uid"):
        return "verl's trainer sets it before the advantage step"
    return (
        f"return it from the reward function (verl's legacy trainer copies the extra keys of a reward "
        f"function's dict, e.g. {{'score': s, {field!r}: v}}, into non_tensor_batch[{field!r}]) or add "
        f"non_tensor_batch[{field!r}] (batch[{field!r}] for a float tensor) in the rollout stage, one value per row"
    )


# ------------------------------------------------------------------ per-step inputs of a loss
# A loss with an ``inputs`` hook (COPO) needs group statistics over the step's whole batch, but
# verl calls a policy loss per micro-batch with seven values. The plug-in runs the hook once per
# step on the whole DataProto (``store_loss_inputs``, called by the wrapped
# ``RayPPOTrainer._update_actor``), stores its per-row outputs as DataProto fields, which verl splits
# into mini- and micro-batches with every other field, and the wrapped ``ppo_loss`` hands each
# micro-batch to the loss (``_MICRO_BATCH``), which reads them back.
STEP_FIELD_PREFIX = "grouprl_"
STEP_META_KEY = "grouprl_loss_inputs"
# Loss keywords the plug-in fills from verl's model output inside ppo_loss (the keyword in the
# loss's signature is the declaration): keyword -> (model_output key, the verl setting that makes
# the actor compute it).
MODEL_OUTPUT_KEYWORDS: dict[str, tuple[str, str]] = {
    "token_entropy": ("entropy", "actor_rollout_ref.actor.calculate_entropy=True"),
}


def _actor_computes(actor_config: Any, key: str) -> bool:
    """Whether verl 0.9.1's actor puts ``key`` in its model output under ``actor_config`` (its
    trainers ask for the entropy when ``calculate_entropy`` or ``entropy_coeff != 0``)."""
    if key == "entropy":
        return bool(_cfg_get(actor_config, "calculate_entropy", False)) or float(
            _cfg_get(actor_config, "entropy_coeff", 0.0)) != 0.0
    return True


# (micro-batch TensorDict, model_output) of the ppo_loss call in progress (set by its wrapper)
_MICRO_BATCH: ContextVar[tuple[Any, Any] | None] = ContextVar("grouprl_verl_micro_batch", default=None)


def store_loss_inputs(data: Any, name: str, *, hparams: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Run loss ``name``'s ``inputs`` hook once on the step's whole DataProto and store its outputs
    for the loss: ``batch["grouprl_advantages"]`` (B, T) (the advantages the loss trains on, COPO's
    local ones, replacing the estimator's as in grouprl's trainer), ``batch["grouprl_<kw>"]`` (B,)
    per per-row keyword (COPO: ``global_advantages``, ``blend_weight``) and
    ``meta_info["grouprl_loss_inputs"]`` = ``{"loss": name, "rows": [...], "kwargs": {...}}`` (the
    scalar keywords). Returns the hook's metrics."""
    mask = data.batch["response_mask"]
    li = loss_inputs_from_verl(name, mask, data, hparams=hparams)
    data.batch[f"{STEP_FIELD_PREFIX}advantages"] = li.advantages.to(torch.float32)
    for k, v in li.row_kwargs.items():
        data.batch[f"{STEP_FIELD_PREFIX}{k}"] = v.to(torch.float32)
    kwargs = {k: (float(v) if isinstance(v, Tensor) else v) for k, v in li.kwargs.items()}
    data.meta_info[STEP_META_KEY] = {"loss": name, "rows": sorted(li.row_kwargs), "kwargs": kwargs}
    return dict(li.metrics)


def _meta(data: Any) -> Any:
    if data is None:
        return None
    if hasattr(data, "meta_info"):  # DataProto
        return data.meta_info.get(STEP_META_KEY)
    value = data.get(STEP_META_KEY, None) if hasattr(data, "get") else None
    return getattr(value, "data", value)  # a TensorDict's NonTensorData -> its value


def _stored_loss_inputs(name: str, data: Any, like: Tensor) -> tuple[Tensor, dict[str, Any]]:
    """The advantages and keywords ``store_loss_inputs`` stored for loss ``name``, for the rows of
    ``data`` (a micro-batch), on ``like``'s device."""
    from ..losses import LOSSES

    who = f"{PREFIX}{name}"
    meta = _meta(data)
    if meta is None:
        needs = LOSSES[name].needs
        source = (f" from the DataProto field(s) {', '.join(map(repr, needs))} (non_tensor_batch[{needs[0]!r}], one "
                  "value per row)" if needs else "")
        raise ValueError(
            f"{who} needs per-step inputs that its declared inputs hook computes over the step's whole batch{source}, "
            "but this call has none: verl's actor passes a policy loss only old_log_prob, log_prob, "
            "advantages, response_mask, loss_agg_mode, config and rollout_is_weights. Import "
            "grouprl.integrations.verl_plugin in the driver and the workers (VERL_USE_EXTERNAL_MODULES) and use "
            "verl's legacy trainer (trainer.use_v1=False; its v1 trainer drops extra fields before the actor): "
            "the plug-in then runs the hook in RayPPOTrainer._update_actor and hands each micro-batch to the "
            "loss; or call the loss with grouprl_data=<rows after store_loss_inputs(data, "
            f"{name!r})>."
        )
    if meta.get("loss") != name:
        raise ValueError(
            f"{who}: the DataProto holds the per-step inputs of loss {meta.get('loss')!r}, not {name!r}; "
            "actor_rollout_ref.actor.policy_loss.loss_mode changed after store_loss_inputs ran."
        )
    out: dict[str, Any] = {}
    for key in ("advantages", *meta["rows"]):
        value = _lookup(data, f"{STEP_FIELD_PREFIX}{key}")
        if value is None:
            raise ValueError(f"{who}: the micro-batch has no field {STEP_FIELD_PREFIX}{key!s}; it was dropped "
                             "between store_loss_inputs and the loss.")
        if getattr(value, "is_nested", False):
            value = value.to_padded_tensor(0.0)
        out[key] = value.to(device=like.device)
    adv = out.pop("advantages")
    if tuple(adv.shape) != tuple(like.shape):
        raise ValueError(f"{who}: stored advantages have shape {tuple(adv.shape)}, the log-probs "
                         f"{tuple(like.shape)}.")
    return adv, {**out, **meta["kwargs"]}


def _model_output(keyword: str, who: str) -> Tensor:
    """Loss keyword ``keyword`` (``MODEL_OUTPUT_KEYWORDS``) from the model output of the
    ``ppo_loss`` call in progress, padded to the response as verl pads its log-probs."""
    key, setting = MODEL_OUTPUT_KEYWORDS[keyword]
    step = _MICRO_BATCH.get()
    value = None if step is None else step[1].get(key, None)
    if value is None:
        where = ("this call is not inside verl's ppo_loss (import grouprl.integrations.verl_plugin in the workers) "
                 if step is None else f"verl's actor did not compute {key!r}: set {setting}")
        raise ValueError(f"{who} needs {keyword}= (the current policy's per-token {key}, (B, T)): {where}; or pass "
                         f"{keyword}= to the loss.")
    from verl.workers.utils.padding import no_padding_2_padding

    return no_padding_2_padding(value, step[0])


def make_policy_loss(name: str, **fixed_hparams: Any) -> Callable[..., tuple[Tensor, dict[str, float]]]:
    """A verl policy-loss function backed by grouprl's loss ``name``.

    Hyperparameters, later ones winning: the verl actor fields that verl's counterpart of the loss
    reads (``VERL_ACTOR_FIELDS``: clip ratios for ppo_clip/gspo/cispo/gmpo/clip_cov, ...), ``$GROUPRL_VERL_LOSS_HPARAMS`` (JSON), ``fixed_hparams``. The loss is
    aggregated with verl's ``loss_agg_mode`` as verl's own losses are (``respect_agg=True``; SAPO,
    which verl hard-codes to ``seq-mean-token-mean``, keeps its own mode), normalised by verl's global counts (``config.global_batch_info``) and
    multiplied by ``dp_size`` as verl's ``agg_loss`` does. The metrics are this micro-batch's means
    (verl averages them over micro-batches), as Python floats: ``clipfrac`` → ``actor/pg_clipfrac``,
    ``ppo_kl`` → ``actor/ppo_kl``, the others under ``actor/grouprl/``.

    Beyond verl's seven values: a loss with an ``inputs`` hook (COPO) reads the per-row inputs that
    ``store_loss_inputs`` stored for this step from ``grouprl_data`` (the micro-batch; inside verl's
    wrapped ``ppo_loss``, the one verl is computing), and a loss taking a ``MODEL_OUTPUT_KEYWORDS``
    keyword (HAPO's ``token_entropy``) gets it from verl's model output unless it is passed.
    """
    key = name if not fixed_hparams else f"{name}\0{json.dumps(fixed_hparams, sort_keys=True, default=str)}"
    if key in _LOSS_ADAPTERS:
        return _LOSS_ADAPTERS[key]

    def grouprl_policy_loss(
        old_log_prob: Tensor,
        log_prob: Tensor,
        advantages: Tensor,
        response_mask: Tensor,
        loss_agg_mode: str = "token-mean",
        config: Any = None,
        rollout_is_weights: Tensor | None = None,
        *,
        grouprl_data: Any = None,
        token_entropy: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        from ..losses import LOSSES, policy_loss

        loss_info = LOSSES[name]
        who = f"{PREFIX}{name}"
        accepted = _loss_defaults(name)
        extra: dict[str, Any] = {}
        if loss_info.inputs is not None:
            # the loss's declared once-per-step inputs (as grouprl's trainer: they replace the advantages)
            if grouprl_data is None and _MICRO_BATCH.get() is not None:
                grouprl_data = _MICRO_BATCH.get()[0]
            advantages, extra = _stored_loss_inputs(name, grouprl_data, log_prob)
        elif loss_info.needs:
            raise ValueError(
                f"{who} declares needs={loss_info.needs} but no inputs hook; the verl plug-in "
                "passes declared fields to a loss only through its inputs hook."
            )
        given = {"token_entropy": token_entropy}
        for kw in MODEL_OUTPUT_KEYWORDS:
            if kw in accepted:
                extra[kw] = given[kw] if given[kw] is not None else _model_output(kw, who)
        hp = _actor_hparams(name, config, accepted)
        hp.update(_env_loss_hparams(name))
        hp.update(fixed_hparams)
        hp.setdefault("respect_agg", name not in _VERL_OWN_AGG)
        unknown = sorted(k for k in hp if k not in accepted and k not in _POLICY_LOSS_KWARGS)
        if unknown:
            raise TypeError(
                f"{who}: unknown hyperparameter {unknown[0]!r} (from ${LOSS_HPARAMS_ENV} or "
                f"make_policy_loss); the loss takes {sorted(accepted)}."
            )
        info = dict(_cfg_get(config, "global_batch_info", None) or {})
        # Local counts inside grouprl (so the metrics are this micro-batch's means, which verl
        # averages over micro-batches), then the loss rescaled to verl's global normaliser.
        loss, metrics = policy_loss(
            name,
            log_prob,
            old_log_prob,
            advantages,
            response_mask,
            agg=loss_agg_mode,
            norm_const=info.get("loss_scale_factor"),
            rollout_is_weights=rollout_is_weights,
            dp_size=int(info.get("dp_size") or 1),
            **extra,
            **hp,
        )
        loss = loss * _global_rescale(name, loss_agg_mode, bool(hp.get("respect_agg")), response_mask, info)
        out = {_verl_metric_name(k): float(v.detach().item() if isinstance(v, Tensor) else v) for k, v in metrics.items()}
        return loss, out

    grouprl_policy_loss.__name__ = f"grouprl_{name.replace('.', '_')}_loss"
    grouprl_policy_loss.__qualname__ = grouprl_policy_loss.__name__
    grouprl_policy_loss._grouprl_loss = name  # type: ignore[attr-defined]
    _LOSS_ADAPTERS[key] = grouprl_policy_loss
    return grouprl_policy_loss


_VERL_METRIC_NAMES = {"clipfrac": "actor/pg_clipfrac", "ppo_kl": "actor/ppo_kl"}


def _verl_metric_name(k: str) -> str:
    return _VERL_METRIC_NAMES.get(k, f"actor/grouprl/{k}")


def _global_rescale(name: str, agg: str, respect_agg: bool, mask: Tensor, info: Mapping[str, Any]) -> Tensor | float:
    """Factor turning a loss normalised by this micro-batch's counts into verl's global one:
    local tokens / ``batch_num_tokens`` (token-mean) or local sequences / ``global_batch_size``
    (sequence modes and sequence-level losses); 1 when verl gave no global count."""
    from ..losses import LOSSES

    loss_info = LOSSES[name]
    pg_agg = agg if (loss_info.agg is None or respect_agg) else loss_info.agg
    m = mask.to(torch.bool)
    if loss_info.level == "sequence" or pg_agg.startswith("seq-"):
        total = info.get("global_batch_size")
        local = m.any(dim=1).sum()
    elif pg_agg == "token-mean":
        total = info.get("batch_num_tokens")
        local = m.sum()
    else:  # token-sum
        return 1.0
    if total is None:
        return 1.0
    total_t = torch.as_tensor(total, dtype=torch.float32, device=local.device)
    return local.clamp_min(1).to(torch.float32) / total_t


def register_losses(prefix: str = PREFIX) -> list[str]:
    """Register every grouprl policy loss with verl's ``register_policy_loss`` (none if
    ``grouprl.losses`` is not available)."""
    try:
        from ..losses import LOSSES
    except ImportError:
        return []
    names = []
    for name in LOSSES:
        verl_name = f"{prefix}{name}"
        fn = make_policy_loss(name)
        existing = core_algos.POLICY_LOSS_REGISTRY.get(verl_name)
        if existing is not None and existing is not fn and not getattr(existing, "_grouprl_loss", None):
            raise ValueError(f"verl already has a policy loss {verl_name!r} that is not grouprl's.")
        core_algos.POLICY_LOSS_REGISTRY[verl_name] = fn  # the decorator refuses no re-registration
        names.append(verl_name)
    return names


def register_all(prefix: str = PREFIX, *, estimators: bool = True, losses: bool = True) -> dict[str, list[str]]:
    """Register every grouprl estimator and policy loss with verl under ``prefix`` (idempotent).

    Returns ``{"estimators": [...], "losses": [...]}`` with the verl names. Select them in verl's
    config: ``algorithm.adv_estimator=grouprl.ngrpo``,
    ``actor_rollout_ref.actor.policy_loss.loss_mode=grouprl.<loss>``.
    """
    return {
        "estimators": register_estimators(prefix) if estimators else [],
        "losses": register_losses(prefix) if losses else [],
    }


# ------------------------------------------------------------------------------ field pass-through
TRAINER_MODULE = "verl.trainer.ppo.ray_trainer"


def _wrap_compute_advantage(mod: Any, prefix: str) -> None:
    original = getattr(mod, "compute_advantage")
    if getattr(original, "_grouprl_passthrough", False):
        return

    def compute_advantage(
        data: Any,
        adv_estimator: Any,
        gamma: float = 1.0,
        lam: float = 1.0,
        num_repeat: int = 1,
        norm_adv_by_std_in_grpo: bool = True,
        config: Any = None,
    ) -> Any:
        name = getattr(adv_estimator, "value", adv_estimator)
        fn = core_algos.ADV_ESTIMATOR_REGISTRY.get(name) if isinstance(name, str) else None
        if fn is None or not getattr(fn, "_grouprl_estimator", None):
            return original(
                data,
                adv_estimator,
                gamma=gamma,
                lam=lam,
                num_repeat=num_repeat,
                norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo,
                config=config,
            )
        if "response_mask" not in data.batch.keys():
            data.batch["response_mask"] = mod.compute_response_mask(data)
        kwargs: dict[str, Any] = {
            "token_level_rewards": data.batch["token_level_rewards"],
            "response_mask": data.batch["response_mask"],
            "config": config,
            "grouprl_data": data,
        }
        if "uid" in data.non_tensor_batch:
            kwargs["index"] = data.non_tensor_batch["uid"]
        if "reward_baselines" in data.batch.keys():
            kwargs["reward_baselines"] = data.batch["reward_baselines"]
        advantages, returns = fn(**kwargs)
        data.batch["advantages"] = advantages
        data.batch["returns"] = returns
        return data

    compute_advantage.__doc__ = (original.__doc__ or "") + (
        "\n\n(Wrapped by grouprl: grouprl.* estimators receive the whole DataProto.)"
    )
    compute_advantage._grouprl_passthrough = True  # type: ignore[attr-defined]
    compute_advantage.__wrapped__ = original  # type: ignore[attr-defined]
    mod.compute_advantage = compute_advantage
    _rebind(mod, "compute_advantage", original, compute_advantage)
    _wrap_update_actor(mod)


def _rebind(mod: Any, name: str, original: Any, wrapped: Any) -> None:
    """Rebind ``name`` in the modules that imported ``original`` by name before the patch
    (verl.trainer.ppo.v1.utils, verl.workers.engine_workers, recipes). Each module's own namespace
    is read by key, never with getattr: a lazy module's __getattr__ (e.g. transformers', which
    imports a vision processor on access) must not run from an import hook."""
    for other in list(sys.modules.values()):
        try:
            namespace = vars(other)
        except TypeError:  # an object without a __dict__ in sys.modules
            continue
        if other is not mod and namespace.get(name) is original:
            namespace[name] = wrapped


def _loss_mode(actor_config: Any) -> Any:
    return _cfg_get(_cfg_get(actor_config, "policy_loss", None), "loss_mode", "vanilla")


def _grouprl_loss_name(loss_mode: Any) -> str | None:
    """The grouprl loss behind verl loss mode ``loss_mode`` (None: not a grouprl loss)."""
    fn = core_algos.POLICY_LOSS_REGISTRY.get(loss_mode) if isinstance(loss_mode, str) else None
    return getattr(fn, "_grouprl_loss", None)


def loss_hook_hparams(name: str, algorithm_config: Any) -> dict[str, Any]:
    """The hyperparameters of loss ``name``'s inputs hook under verl's algorithm config: those
    ``algorithm.grouprl.hparams`` bind to the estimator term the loss takes them from
    (``LossInfo.inputs_hparams_from``) when ``adv_estimator`` uses it (``grouprl.copo``, or
    ``grouprl.expr`` with a copo term); else none (the hook's defaults)."""
    adv = _cfg_get(algorithm_config, "adv_estimator", None)
    adv = getattr(adv, "value", adv)
    if not isinstance(adv, str) or not adv.startswith(PREFIX):
        return {}
    est_name = adv[len(PREFIX):]
    if est_name != EXPR_NAME and est_name not in ESTIMATORS:
        return {}
    return hook_hparams(_estimator_from_config(None if est_name == EXPR_NAME else est_name, algorithm_config)[0], name)


def _wrap_update_actor(mod: Any) -> None:
    """Wrap ``RayPPOTrainer._update_actor`` of verl's legacy trainer (``trainer.use_v1=False``): for
    a grouprl loss with an ``inputs`` hook, run it on the step's whole batch first
    (``store_loss_inputs``) and log its metrics; for a loss taking a ``MODEL_OUTPUT_KEYWORDS``
    keyword, refuse a config under which verl's actor does not compute it, before the update."""
    cls = vars(mod).get("RayPPOTrainer")
    original = getattr(cls, "_update_actor", None) if cls is not None else None
    if original is None or getattr(original, "_grouprl_passthrough", False):
        return

    def _update_actor(self: Any, batch: Any) -> Any:
        from ..losses import LOSSES

        actor = self.config.actor_rollout_ref.actor
        name = _grouprl_loss_name(_loss_mode(actor))
        if name is None:
            return original(self, batch)
        who = f"{PREFIX}{name}"
        for kw, (key, setting) in MODEL_OUTPUT_KEYWORDS.items():
            if kw in LOSSES[name].defaults and not _actor_computes(actor, key):
                raise ValueError(f"{who} needs {kw}= (the current policy's per-token {key}), which verl's actor "
                                 f"computes only when asked: set {setting}.")
        metrics: dict[str, float] = {}
        if LOSSES[name].inputs is not None:
            metrics = store_loss_inputs(batch, name, hparams=loss_hook_hparams(name, self.config.algorithm))
        output = original(self, batch)
        if metrics:
            output.meta_info["metrics"].update({f"actor/grouprl/{k}": float(v) for k, v in metrics.items()})
        return output

    _update_actor.__doc__ = (original.__doc__ or "") + "\n\n(Wrapped by grouprl: a grouprl loss's per-step inputs.)"
    _update_actor._grouprl_passthrough = True  # type: ignore[attr-defined]
    _update_actor.__wrapped__ = original  # type: ignore[attr-defined]
    cls._update_actor = _update_actor


def _wrap_ppo_loss(mod: Any) -> None:
    """Wrap verl's ``ppo_loss`` (the function its actor calls per micro-batch with the model
    output and the micro-batch TensorDict) so that, while it runs, a grouprl policy loss can read
    that micro-batch and model output (``_MICRO_BATCH``); verl's own computation is unchanged."""
    original = getattr(mod, "ppo_loss")
    if getattr(original, "_grouprl_passthrough", False):
        return

    def ppo_loss(config: Any, model_output: Any, data: Any, dp_group: Any = None) -> Any:
        token = _MICRO_BATCH.set((data, model_output))
        try:
            return original(config=config, model_output=model_output, data=data, dp_group=dp_group)
        finally:
            _MICRO_BATCH.reset(token)

    ppo_loss.__doc__ = (original.__doc__ or "") + "\n\n(Wrapped by grouprl: grouprl losses see the micro-batch.)"
    ppo_loss._grouprl_passthrough = True  # type: ignore[attr-defined]
    ppo_loss.__wrapped__ = original  # type: ignore[attr-defined]
    mod.ppo_loss = ppo_loss
    _rebind(mod, "ppo_loss", original, ppo_loss)


class _WrappedLoader(importlib.abc.Loader):
    """Delegates to the real loader and patches the module once it has executed."""

    def __init__(self, loader: Any, patch: Callable[[Any], None]) -> None:
        self._loader = loader
        self._patch = patch

    def create_module(self, spec):  # noqa: D401
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        self._patch(module)

    def __getattr__(self, item: str) -> Any:  # get_source, get_code, ... for inspect / linecache
        return getattr(self._loader, item)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """One-shot import hook: patch module ``target`` right after it is first imported."""

    def __init__(self, target: str, patch: Callable[[Any], None]) -> None:
        self.target = target
        self.patch = patch

    def find_spec(self, fullname, path, target=None):
        if fullname != self.target:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _WrappedLoader(spec.loader, self.patch)
        return spec


def _install(module: str, patch: Callable[[Any], None]) -> bool:
    if module in sys.modules:
        patch(sys.modules[module])
        return True
    if not any(isinstance(f, _PatchOnImport) and f.target == module for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport(module, patch))
    return False


def install_field_passthrough(module: str = TRAINER_MODULE, prefix: str = PREFIX) -> bool:
    """Let grouprl estimators read any DataProto field (values, log-probs, step ids, state keys...),
    and grouprl losses with an ``inputs`` hook get their per-step inputs.

    Wraps ``compute_advantage`` of ``module`` (verl's ``ray_trainer``; also rebinds copies imported
    by name, e.g. in ``verl.trainer.ppo.v1.utils``). For an estimator registered by this plug-in
    the wrapper calls it with the DataProto as ``grouprl_data``; any other estimator goes to verl's
    function unchanged. Also wraps ``RayPPOTrainer._update_actor`` there (``_wrap_update_actor``).
    If ``module`` is not imported yet, a one-shot import hook patches it when it is, so calling this
    costs no import. Returns True if patched now, False if deferred.

    Limit (verl 0.9.1): the v1 trainer (``trainer.use_v1=True``, the default) builds the DataProto
    for advantages from a fixed list of fields (uid, response_mask, rm_scores, rollout_log_probs,
    old_log_probs, ref_log_prob, values), so there only those are available, and it sends the actor
    only the fields it lists, so a loss's per-step inputs need the legacy trainer
    (``trainer.use_v1=False``), which passes every field.
    """
    return _install(module, lambda m: _wrap_compute_advantage(m, prefix))


LOSSES_MODULE = "verl.workers.utils.losses"


def install_loss_passthrough(module: str = LOSSES_MODULE) -> bool:
    """Let grouprl losses see the micro-batch and model output of verl's ``ppo_loss`` call: wraps
    ``ppo_loss`` of ``module`` (and the copy ``verl.workers.engine_workers`` imported by name,
    which its actor binds with ``functools.partial`` when the model is built). Needed in the
    workers for losses with an ``inputs`` hook (COPO) or a model-output keyword (HAPO's
    ``token_entropy``). Now or on import, as ``install_field_passthrough``."""
    return _install(module, _wrap_ppo_loss)
