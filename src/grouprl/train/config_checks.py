"""Config-load checks of the names and keyword dicts in a ``TrainConfig``.

Every name the config holds (sampler, credit, task, env, model preset or path, ``reward_fn``) is
looked up when the config loads, with close matches on a typo, so a typo is refused before any
work starts. Every keyword dict that goes to a registered function or class (``estimator_kwargs``,
``loss_kwargs``, ``sampler_kwargs``, ``credit_kwargs``, ``ter_kwargs``) is checked against that
callable's signature: an unknown name gets close matches, and each value is validated (and
coerced: ``eps=1e-6`` from the command line arrives as the string ``'1e-6'``) by pydantic against
the parameter's annotation, numbers finite.
"""

from __future__ import annotations

import inspect
import re
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from pydantic import ConfigDict, TypeAdapter, ValidationError

from ..core import suggest

__all__ = ["keyword_params", "check_kwargs", "check_reward_spec", "check_model", "check_task", "checked_keywords",
           "check_group_of_one", "check_mode", "MAX_REWARD_TIMEOUT_S"]

_SKIP = frozenset({"self", "cfg", "model", "seed", "prompt_groups", "num_prompts", "batch"})


def keyword_params(fn: Callable) -> dict[str, Any]:
    """``{name: annotation}`` of the keyword parameters of ``fn`` (a function or a class, whose
    ``__init__`` is read; ``**kw`` that a class forwards to its base adds the base's keywords)."""
    out: dict[str, Any] = {}
    targets = [c.__init__ for c in fn.__mro__ if "__init__" in vars(c)] if inspect.isclass(fn) else [fn]
    for target in targets:
        try:
            sig = inspect.signature(target)
        except (TypeError, ValueError):
            break
        try:
            hints = typing.get_type_hints(target)
        except Exception:  # an annotation that does not resolve: accept any value for it
            hints = {}
        var_kw = False
        for p in sig.parameters.values():
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                var_kw = True
            elif p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
                if p.name not in _SKIP and p.name not in out and (p.kind is inspect.Parameter.KEYWORD_ONLY or inspect.isclass(fn)):
                    out[p.name] = hints.get(p.name, Any)
        if not var_kw:
            break
    return out


@lru_cache(maxsize=None)
def _adapter(annotation: Any) -> TypeAdapter:
    cfg = ConfigDict(allow_inf_nan=False, arbitrary_types_allowed=True)
    try:
        return TypeAdapter(annotation, config=cfg)
    except Exception:
        return TypeAdapter(Any)


def check_kwargs(field: str, what: str, params: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` validated against ``params`` (from :func:`keyword_params`) and coerced.

    Raises ``ValueError`` naming ``field.key``: an unknown key with close matches (or the accepted
    keys), or a value that does not fit the annotation.
    """
    out = dict(kwargs)
    for key, value in kwargs.items():
        if key not in params:
            accepted = sorted(params)
            hint = suggest(key, accepted) if accepted else "it takes none"
            if accepted and not hint.startswith("did you mean"):
                hint = "it takes " + ", ".join(accepted)
            raise ValueError(f"{field}.{key}: {what} has no keyword {key!r}; {hint}")
        ann = params[key]
        if ann is Any or ann is inspect.Parameter.empty:
            continue
        try:
            out[key] = _adapter(ann).validate_python(value)
        except ValidationError as exc:
            reason = "; ".join(e["msg"] for e in exc.errors())
            raise ValueError(
                f"{field}.{key}={value!r}: {what} takes {key}: {_type_name(ann)} ({reason})"
            ) from None
    return out


def _type_name(ann: Any) -> str:
    return getattr(ann, "__name__", None) or str(ann).replace("typing.", "")


_SPEC = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")


def check_reward_spec(field: str, spec: str) -> None:
    """``'package.module:function'`` syntax (the import happens when the run starts)."""
    if not _SPEC.match(spec):
        raise ValueError(
            f"{field}={spec!r} is not 'module:function' (e.g. mypackage.rewards:score: a module on "
            "the Python path and a function in it)"
        )


def check_model(model: str) -> None:
    """A preset name, or a local checkpoint directory."""
    from ..models import PRESETS

    if model in PRESETS or Path(model).is_dir():
        return
    raise ValueError(
        f"model {model!r} is neither a preset nor a directory: {suggest(model, PRESETS)} "
        "(or pass the path of a local Hugging Face checkpoint dir)"
    )


#: The reward guard's per-call limit, at most: larger values overflow its poll().
MAX_REWARD_TIMEOUT_S = 86400.0


def check_task(spec: str) -> None:
    """A registered task, ``mix:<a>,<b>,...`` of registered tasks, or ``rg:<dataset>``."""
    from ..tasks import TASKS

    spec = spec.strip()
    if spec.startswith("rg:"):
        if not spec[3:].strip():
            raise ValueError("task 'rg:' needs a reasoning-gym dataset name, e.g. 'rg:leg_counting'")
        return
    parts = [p.strip() for p in spec[4:].split(",")] if spec.startswith("mix:") else [spec]
    for part in parts:
        if part not in TASKS:
            choices = [*TASKS, "mix:<a>,<b>", "rg:<dataset>"]
            raise ValueError(f"unknown task {part!r}: {suggest(part, choices)}")


def _estimator_params(expr: str) -> list[tuple[str, dict[str, Any]]]:
    from ..advantages import registry

    return [(info.name, keyword_params(info.fn)) for _, info, _ in registry.parse(expr).terms]


def checked_keywords(cfg: Any) -> dict[str, dict[str, Any]]:
    """The config's keyword dicts, each checked against its callable's signature and coerced."""
    from ..losses import LOSSES
    from ..losses.ter import TargetedEntropyRegularizer
    from ..sampling import SAMPLERS
    from .credit import CREDITS

    out: dict[str, dict[str, Any]] = {}
    # estimator_kwargs: each key goes to every term that takes it (grouprl.advantages.parse)
    terms = _estimator_params(cfg.estimator)
    kw = dict(cfg.estimator_kwargs)
    for key, value in cfg.estimator_kwargs.items():
        takers = [(n, p) for n, p in terms if key in p]
        if not takers:
            union = {k: v for _, p in terms for k, v in p.items()}
            check_kwargs("estimator_kwargs", f"estimator {cfg.estimator!r}", union, {key: value})
        for n, p in takers:
            kw[key] = check_kwargs("estimator_kwargs", f"estimator {n!r}", p, {key: value})[key]
    out["estimator_kwargs"] = kw
    out["loss_kwargs"] = check_kwargs("loss_kwargs", f"policy loss {cfg.loss!r}", keyword_params(LOSSES[cfg.loss].fn),
                                      cfg.loss_kwargs)
    out["sampler_kwargs"] = check_kwargs("sampler_kwargs", f"sampler {cfg.sampler!r}",
                                         keyword_params(SAMPLERS[cfg.sampler]), cfg.sampler_kwargs)
    out["credit_kwargs"] = check_kwargs("credit_kwargs", f"credit {cfg.credit!r}", keyword_params(CREDITS[cfg.credit]),
                                        cfg.credit_kwargs)
    out["ter_kwargs"] = check_kwargs("ter_kwargs", "TER (TargetedEntropyRegularizer)",
                                     keyword_params(TargetedEntropyRegularizer), cfg.ter_kwargs)
    _probe(cfg, out)
    return out


_PROBE_ERRORS = (ValueError, TypeError, FloatingPointError)


def _probe(cfg: Any, kw: dict[str, dict[str, Any]]) -> None:
    """Values of the right type but out of range (``eps=-0.4``, ``fast_decay=2``) are refused by the
    callables themselves; run them once now, on their own worked examples (``grouprl explain``) or
    a small sampler, so that the refusal comes at load time, not at step 1."""
    from ..advantages import registry
    from ..losses import LOSSES, run_example
    from ..sampling import SAMPLERS

    from .estimator_setup import estimator_hparams

    # with the values the run will bind (e.g. z-score statistics from reward_models' manifest; a
    # schedule's total_steps = steps unless estimator_kwargs set it: grouprl.train.methods)
    bound = {**estimator_hparams(cfg), **kw["estimator_kwargs"]} if kw["estimator_kwargs"] else {}
    for _, info, _ in registry.parse(cfg.estimator).terms:
        own = {k: v for k, v in bound.items() if k in info.defaults}
        if "total_steps" in info.defaults and "total_steps" not in kw["estimator_kwargs"]:
            own["total_steps"] = cfg.steps
        if not own or not info.example:
            continue
        batch, ex_kw = registry.example_batch(info.example)
        try:
            registry.compute_advantages(info.name, batch, **ex_kw)
        except _PROBE_ERRORS:  # pragma: no cover - the worked example itself does not run
            continue
        try:
            registry.compute_advantages(info.name, batch, **{**ex_kw, **own})
        except registry.MissingBatchField:  # e.g. base=gae needs values the worked example lacks:
            continue  # the values are not refused; the run's batch is checked at its first step
        except _PROBE_ERRORS as exc:
            given = {k: v for k, v in own.items() if k in kw["estimator_kwargs"]}
            by_run = "total_steps" in own and "total_steps" not in given  # the loop's total_steps = steps
            what = " with ".join(([f"estimator_kwargs {given}"] if given else [])
                                 + ([f"steps={cfg.steps} (the schedule's total_steps)"] if by_run else []))
            fix = " Raise steps, or set estimator_kwargs.total_steps / warmup_steps." if by_run else ""
            raise ValueError(f"{what}: estimator {info.name!r} refuses them: {exc}{fix}") from None
    if kw["loss_kwargs"] and LOSSES[cfg.loss].example:
        try:
            run_example(cfg.loss, **kw["loss_kwargs"])
        except _PROBE_ERRORS as exc:
            raise ValueError(f"loss_kwargs {kw['loss_kwargs']}: policy loss {cfg.loss!r} refuses them: {exc}") from None
    if kw["sampler_kwargs"]:
        n = max(16, 2 * cfg.prompts_per_step)
        try:
            SAMPLERS[cfg.sampler](n, seed=0, prompt_groups=[i % 2 for i in range(n)], **kw["sampler_kwargs"])
        except _PROBE_ERRORS as exc:
            raise ValueError(f"sampler_kwargs {kw['sampler_kwargs']}: sampler {cfg.sampler!r} refuses them: {exc}") from None


def check_group_of_one(expr: str, kwargs: dict[str, Any]) -> None:
    """``group_size=1``: refuse an estimator that gives every row of a one-row group advantage 0.

    Decided on data, not names: each term runs on its own worked example (``grouprl explain``)
    with every row made its own group. All-zero advantages there mean that every step of the run
    would have zero advantage and zero policy gradient, so the config is refused. An estimator
    that does not take one-row groups at all (e.g. ``singleton="raise"``) is refused with its own
    message. One that needs fields the probe cannot re-group is let through.
    """

    from ..advantages import registry

    zero: list[str] = []
    terms = registry.parse(expr).terms
    for _, info, _ in terms:
        if not info.example:
            return
        ex = dict(info.example)
        n = len(ex["rewards"])
        ex["group"] = list(range(n))
        try:
            batch, ex_kw = registry.example_batch(ex)
        except (ValueError, TypeError):
            return
        own = {k: v for k, v in kwargs.items() if k in info.defaults}
        try:
            adv = registry.compute_advantages(info.name, batch, **{**ex_kw, **own})
        except (ValueError, TypeError) as exc:
            raise ValueError(f"group_size=1: estimator {info.name!r} refuses one-response groups ({exc}); "
                             "use group_size >= 2") from None
        if bool((adv == 0).all()):
            zero.append(info.name)
    if zero and len(zero) == len(terms):
        raise ValueError(
            f"group_size=1: estimator {' and '.join(map(repr, zero))} gives a group of one response an advantage "
            "of 0, so every step would train on zero advantage and zero gradient; use group_size >= 2 "
            "(or an estimator that does not compare responses within a group, e.g. gae with credit=critic)"
        )


def _default(cfg: Any, name: str) -> Any:
    return type(cfg).model_fields[name].get_default(call_default_factory=True)


def check_mode(cfg: Any) -> None:
    """The config fits its mode (``task`` or ``env``, :mod:`grouprl.train.modes`), decided on declarations.

    * an option the mode does not read (``Mode.unread``) set to anything but its default is refused,
      naming the option, the mode and the fix;
    * every term of the estimator, and the loss, must find the batch fields it ``needs`` among the
      mode's ``fields`` plus those the credit hook ``provides``; a missing one is refused naming the
      field, the term, the mode and where the field can come from (the other mode, a credit hook,
      or no trainer source at all).
    """
    from ..advantages import registry
    from ..losses import LOSSES
    from .credit import CREDITS
    from .modes import MODES, mode_of

    mode = mode_of(cfg)
    for option, why in mode.unread.items():
        value = getattr(cfg, option)
        if value != _default(cfg, option):
            raise ValueError(f"{option}={value!r} with {mode.name} runs ({mode.chosen_by}): {why}")
    have = mode.fields | set(CREDITS[cfg.credit].provides)
    wanted = [(f"estimator {info.name!r}", info.needs) for _w, info, _k in registry.parse(cfg.estimator).terms]
    wanted.append((f"loss {cfg.loss!r}", LOSSES[cfg.loss].needs))
    for who, needs in wanted:
        missing = [f for f in needs if f not in have]
        if not missing:
            continue
        f = missing[0]
        others = [m for m in MODES.values() if m is not mode and f in m.fields]
        credits = [n for n, c in CREDITS.items() if f in c.provides]
        if others:
            fix = f"{others[0].name} runs provide it: {mode.other}"
        elif credits and mode.name == "task":
            fix = "a credit hook adds it: set credit=" + " or credit=".join(credits)
        elif credits:
            fix = f"only task runs with credit={' or credit='.join(credits)} add it: {mode.other}"
        else:
            fix = ("no trainer rollout provides it (use the estimator through the library or a plug-in that "
                   "supplies the field)")
        raise ValueError(f"{who} needs the batch field {f!r}, which {mode.name} runs ({mode.chosen_by}) do not "
                         f"provide; {fix}")
