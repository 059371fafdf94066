"""The estimator registry, ``compute_advantages`` and composition of estimators.

An estimator is a pure function ``fn(batch: Rollouts, *, hparam=default, ...) -> Tensor`` that
returns either one advantage per row (B,) — broadcast to the row's tokens here, one write — or a
per-token (B, T) tensor. Register it with ``@estimator(name, needs=..., paper=...)``; its docstring
states the paper's equation. ``compute_advantages`` checks the fields it needs, its keyword
arguments (unknown → suggestions) and its output (finite, float32 (B, T), 0 on masked tokens).

Composition: ``get("grpo") * 0.7 + get("rloo") * 0.3`` or the string ``"0.7*grpo + 0.3*rloo"``,
and post-transforms with ``.then("whiten")`` or ``"grpo | whiten"``.
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from ..core import Registry, Rollouts, broadcast, group_stats, masked_whiten, suggest

__all__ = [
    "EstimatorInfo",
    "Estimator",
    "estimator",
    "transform",
    "get",
    "parse",
    "resolve",
    "compute_advantages",
    "ESTIMATORS",
    "TRANSFORMS",
    "group_diagnostics",
    "example_batch",
    "TRAITS",
]


@dataclass(frozen=True)
class EstimatorInfo:
    name: str
    fn: Callable[..., Tensor]
    needs: tuple[str, ...]
    paper: str
    level: str
    example: dict[str, Any] | None
    defaults: dict[str, Any] = field(default_factory=dict)
    masks_output: bool = False
    traits: frozenset[str] = frozenset()
    optional: tuple[str, ...] = ()
    reward_view: Callable[..., tuple[Tensor, dict[str, float]]] | None = None
    validate: Callable[[dict[str, Any]], None] | None = None

    @property
    def doc(self) -> str:
        return inspect.cleandoc(self.fn.__doc__ or "")

    @property
    def summary(self) -> str:
        return self.doc.split("\n", 1)[0] if self.doc else ""


ESTIMATORS: Registry[EstimatorInfo] = Registry("estimator")

#: Properties an estimator may declare (``@estimator(..., traits=...)``), read by the trainer's hooks.
TRAITS: dict[str, str] = {
    "bootstraps_truncated": "a row with truncated=True is still in flight: its advantages stop at the last generated "
    "token and bootstrap with the critic's values; its outcome reward is not used",
}
TRANSFORMS: Registry[Callable[..., Tensor]] = Registry("advantage transform")


def _keyword_defaults(fn: Callable) -> dict[str, Any]:
    sig = inspect.signature(fn)
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def estimator(
    name: str,
    *,
    needs: tuple[str, ...] = ("rewards", "group", "mask"),
    paper: str = "",
    level: str = "outcome",
    example: dict[str, Any] | None = None,
    masks_output: bool = False,
    traits: tuple[str, ...] = (),
    optional: tuple[str, ...] = (),
    reward_view: Callable[..., tuple[Tensor, dict[str, float]]] | None = None,
    validate: Callable[[dict[str, Any]], None] | None = None,
):
    """Register ``fn`` as the estimator ``name``.

    ``needs``: the batch fields it reads (checked before the call). ``example``: a small worked
    example for ``grouprl explain``: ``{"rewards": [...], "group": [...], ...other fields,
    "kwargs": {...}}`` (one response token per row unless a ``mask`` is given).
    ``masks_output``: a (B, T)-returning estimator that guarantees exact zeros on masked tokens
    (and says so in a test) lets ``compute_advantages`` skip its own masking pass.
    ``traits``: declared properties that the trainer's hooks check (``TRAITS`` lists them).
    ``optional``: batch fields it reads when the batch has them (not checked; a trainer that can
    supply them does, e.g. CANON's old-policy ``entropy`` when the batch has no ``metric``).
    ``reward_view(batch, **hparams) -> (rewards (B,), metrics)``: for an estimator that trains on a
    reward other than ``batch.rewards`` (MaxMin: the worst-off group's column of
    ``reward_components``), that reward and the scalars a trainer should log; a trainer gives it to
    whatever else learns from the reward (a critic). ``validate(hparams)``: raises ``ValueError`` for
    hyperparameters that are bad together, when they are bound (``get``, ``parse``), before any batch.
    """
    unknown = set(traits) - set(TRAITS)
    if unknown:
        raise ValueError(f"estimator {name!r}: unknown trait {sorted(unknown)[0]!r}; declared traits: {', '.join(TRAITS)}.")

    def deco(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        ESTIMATORS.add(
            name,
            EstimatorInfo(name, fn, tuple(needs), paper, level, example, _keyword_defaults(fn), masks_output,
                          frozenset(traits), tuple(optional), reward_view, validate),
        )
        return fn

    return deco


def transform(name: str):
    """Register a post-transform ``fn(adv (B,T), batch, **kw) -> (B,T)``."""

    def deco(fn):
        TRANSFORMS.add(name, fn)
        return fn

    return deco


@transform("whiten")
def whiten(adv: Tensor, batch: Rollouts, *, shift_mean: bool = True) -> Tensor:
    """Batch whitening over all response tokens: (A − mean)/sqrt(var + 1e-8), as verl."""
    return masked_whiten(adv, batch.mask, shift_mean=shift_mean)


@transform("clip")
def clip(adv: Tensor, batch: Rollouts, *, value: float = 5.0) -> Tensor:
    """Clamp advantages to [−value, value]."""
    return adv.clamp(-value, value)


@transform("scale")
def scale(adv: Tensor, batch: Rollouts, *, value: float = 1.0) -> Tensor:
    """Multiply advantages by a constant."""
    return adv * value


def example_batch(example: dict[str, Any]) -> tuple[Rollouts, dict[str, Any]]:
    """The ``Rollouts`` of a registered worked example (``grouprl explain``) and its kwargs: one
    group unless ``group`` is given, one response token per row unless ``mask`` is."""
    fields = {k: v for k, v in example.items() if k != "kwargs"}
    n = len(fields["rewards"])
    fields.setdefault("group", [0] * n)
    fields.setdefault("mask", [[1]] * n)
    return Rollouts(**fields), dict(example.get("kwargs", {}))


# ---------------------------------------------------------------------------------------------
class MissingBatchField(ValueError):
    """The batch lacks a field the estimator declares in ``needs``."""


def _how(name: str) -> str:
    """How a batch gets the field ``name``: a ``Rollouts`` field, or an entry of its ``extras``."""
    from ..core.batch import _ALL_FIELDS

    return f"{name}=..." if name in _ALL_FIELDS else f"extras={{{name!r}: ...}}"


def _check_needs(info: EstimatorInfo, batch: Rollouts) -> None:
    missing = [f for f in info.needs if not batch.has(f)]
    if missing:
        raise MissingBatchField(
            f"estimator {info.name!r} needs the batch field(s) {', '.join(map(repr, missing))}, "
            f"which the batch does not have; build Rollouts with {_how(missing[0])} "
            f"(it needs: {', '.join(info.needs)})."
        )


def _check_kwargs(what: str, defaults: dict[str, Any], kwargs: dict[str, Any]) -> None:
    for k in kwargs:
        if k not in defaults:
            hint = suggest(k, defaults) if defaults else "it takes no hyperparameters"
            raise TypeError(f"{what} got an unknown hyperparameter {k!r}: {hint}")


def _finish(out: Tensor, batch: Rollouts, who: str, masked: bool = False) -> Tensor:
    if out.dim() == 1:
        if out.shape[0] != len(batch):
            raise ValueError(f"estimator {who!r} returned {tuple(out.shape)}, expected ({len(batch)},)")
        out32 = out.to(torch.float32)  # checked after the cast: a float64 1.5e308 is inf in float32
        bad = ~torch.isfinite(out32)
        if bool(bad.any()):
            r = int(bad.nonzero()[0, 0])
            raise FloatingPointError(
                f"estimator {who!r} produced a non-finite advantage at row {r} ({out[r].item():g} as float64, "
                f"{out32[r].item()} as float32); rescale the rewards of that row's group (reward {batch.rewards[r].item():g})."
            )
        return broadcast(out32, batch.mask)
    if tuple(out.shape) != tuple(batch.mask.shape):
        raise ValueError(
            f"estimator {who!r} returned {tuple(out.shape)}, expected (B,) or (B, T) = "
            f"{tuple(batch.mask.shape)}"
        )
    out = out.to(torch.float32)
    if not bool(torch.isfinite(out.sum())):  # a finite sum implies finite entries: one cheap pass
        bad = ~torch.isfinite(out)
        if bool(bad.any()):
            r = int(bad.any(dim=1).nonzero()[0, 0])
            raise FloatingPointError(f"estimator {who!r} produced a non-finite advantage at row {r}.")
    return out if masked else torch.where(batch.mask, out, 0.0)


class Estimator:
    """A callable advantage estimator: a named one with bound hyperparameters, a weighted sum of
    estimators, or an estimator followed by post-transforms. Calling it returns float32 (B, T)."""

    def __init__(self, terms, transforms=()) -> None:
        # terms: list of (weight, EstimatorInfo, kwargs); transforms: list of (name, kwargs)
        self.terms = list(terms)
        self.transforms = list(transforms)

    # composition -------------------------------------------------------------------------
    def __mul__(self, c: float) -> "Estimator":
        if not math.isfinite(float(c)):
            raise ValueError(f"an estimator's weight must be a finite number, got {c!r}")
        if self.transforms:
            raise ValueError("scale an estimator before adding transforms, or use .then('scale', value=c)")
        return Estimator([(w * float(c), i, k) for w, i, k in self.terms])

    __rmul__ = __mul__

    def __add__(self, other: "Estimator") -> "Estimator":
        if not isinstance(other, Estimator):
            return NotImplemented
        if self.transforms or other.transforms:
            raise ValueError("add estimators first, then apply transforms to the sum")
        return Estimator(self.terms + other.terms)

    def then(self, name: str, **kwargs: Any) -> "Estimator":
        fn = TRANSFORMS[name]
        _check_kwargs(f"transform {name!r}", _keyword_defaults(fn), kwargs)
        return Estimator(self.terms, self.transforms + [(name, kwargs)])

    @property
    def traits(self) -> frozenset[str]:
        """The traits every term declares (a sum is only as capable as its weakest term)."""
        return frozenset.intersection(*(info.traits for _, info, _ in self.terms))

    @property
    def any_traits(self) -> frozenset[str]:
        """The traits at least one term declares."""
        return frozenset().union(*(info.traits for _, info, _ in self.terms))

    def _fields(self, attr: str) -> tuple[str, ...]:
        """The union, in first-seen order, of the terms' ``attr`` field tuples."""
        seen: dict[str, None] = {}
        for _, info, _ in self.terms:
            seen.update(dict.fromkeys(getattr(info, attr)))
        return tuple(seen)

    @property
    def optional(self) -> tuple[str, ...]:
        """The batch fields some term reads when present (``estimator(optional=...)``)."""
        return self._fields("optional")

    @property
    def needs(self) -> tuple[str, ...]:
        return self._fields("needs")

    def __repr__(self) -> str:
        s = " + ".join(
            (f"{w:g}*" if w != 1.0 else "") + info.name + (f"({kw})" if kw else "")
            for w, info, kw in self.terms
        )
        for name, kw in self.transforms:
            s += f" | {name}" + (f"({kw})" if kw else "")
        return f"Estimator({s})"

    def __call__(self, batch: Rollouts) -> Tensor:
        total: Tensor | None = None
        for w, info, kwargs in self.terms:
            _check_needs(info, batch)
            out = _finish(info.fn(batch, **kwargs), batch, info.name, info.masks_output)
            if w != 1.0:
                out = out * w
            total = out if total is None else total + out
        assert total is not None
        for name, kwargs in self.transforms:
            total = torch.where(batch.mask, TRANSFORMS[name](total, batch, **kwargs), 0.0)
        if (len(self.terms) > 1 or self.transforms or self.terms[0][0] != 1.0) and not bool(torch.isfinite(total.sum())):
            bad = ~torch.isfinite(total)  # each term was finite: the weights or transforms overflowed
            if bool(bad.any()):
                r = int(bad.any(dim=1).nonzero()[0, 0])
                raise FloatingPointError(f"{self!r} produced a non-finite advantage at row {r}: a weight or a "
                                         "transform overflowed; use smaller weights or transform values.")
        return total


def get(name: str, **kwargs: Any) -> Estimator:
    """The registered estimator ``name`` with hyperparameters bound (checked now)."""
    info = ESTIMATORS[name]
    _check_kwargs(f"estimator {name!r}", info.defaults, kwargs)
    if info.validate is not None:
        info.validate(kwargs)
    return Estimator([(1.0, info, kwargs)])


_TERM = re.compile(r"^\s*(?:([0-9.eE+-]+)\s*\*\s*)?([A-Za-z_][\w.]*)\s*$")
_TRANSFORM = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?:\(\s*([^)]*)\))?\s*$")


def _number(text: str, what: str, expr: str) -> float:
    """A finite number of a composition string, or a ValueError naming it and the expression."""
    try:
        x = float(text)
    except ValueError:
        raise ValueError(f"{what} in {expr!r} is {text.strip()!r}, not a number; write e.g. '0.7*grpo' "
                         "or 'clip(3)'") from None
    if not math.isfinite(x):
        raise ValueError(f"{what} in {expr!r} is {text.strip()!r} = {x}; use a finite number")
    return x


def parse(expr: str, **hparams: Any) -> Estimator:
    """Parse ``"0.7*grpo + 0.3*rloo | whiten | clip(3)"`` into an Estimator.

    Each hyperparameter in ``hparams`` goes to every term whose estimator accepts it; one accepted
    by none is an error.
    """
    parts = expr.split("|")
    terms = []
    used: set[str] = set()
    for piece in parts[0].split("+"):
        m = _TERM.match(piece)
        if not m:
            raise ValueError(f"cannot parse estimator term {piece.strip()!r} in {expr!r}; write e.g. '0.7*grpo'")
        w = _number(m.group(1), f"the weight of {m.group(2)!r}", expr) if m.group(1) else 1.0
        info = ESTIMATORS[m.group(2)]
        kw = {k: v for k, v in hparams.items() if k in info.defaults}
        used.update(kw)
        if info.validate is not None:
            info.validate(kw)
        terms.append((w, info, kw))
    unused = set(hparams) - used
    if unused:
        k = sorted(unused)[0]
        accepted = {p for _, i, _ in terms for p in i.defaults}
        names = "+".join(i.name for _, i, _ in terms)
        hint = suggest(k, accepted) if accepted else "it takes no hyperparameters"
        raise TypeError(f"estimator {names!r} got an unknown hyperparameter {k!r}: {hint}")
    est = Estimator(terms)
    for piece in parts[1:]:
        m = _TRANSFORM.match(piece)
        if not m:
            raise ValueError(f"cannot parse transform {piece.strip()!r} in {expr!r}; write e.g. 'clip(3)'")
        name, arg = m.group(1), m.group(2)
        kwargs: dict[str, Any] = {}
        fn_defaults = _keyword_defaults(TRANSFORMS[name])
        if arg:
            if "=" in arg:
                for kv in arg.split(","):
                    k, eq, v = kv.partition("=")
                    k = k.strip()
                    if not eq:
                        raise ValueError(f"cannot parse {kv.strip()!r} in transform {piece.strip()!r} of {expr!r}; "
                                         f"write e.g. '{name}(value=3)'")
                    if isinstance(fn_defaults.get(k), bool):
                        if v.strip() not in ("True", "False"):
                            raise ValueError(f"transform {name!r}: {k}={v.strip()!r} in {expr!r}; write True or False")
                        kwargs[k] = v.strip() == "True"
                    else:
                        kwargs[k] = _number(v, f"{name}'s {k}", expr)
            elif fn_defaults and not isinstance(next(iter(fn_defaults.values())), bool):
                kwargs[next(iter(fn_defaults))] = _number(arg, f"{name}'s {next(iter(fn_defaults))}", expr)
            else:
                named = ", ".join(f"{k}=..." for k in fn_defaults) or "no argument"
                raise ValueError(f"transform {name!r} takes {named}; write e.g. '{name}' or "
                                 f"'{name}({next(iter(fn_defaults), 'value')}=...)' in {expr!r}")
        if name == "clip" and kwargs.get("value", 0.0) < 0:
            raise ValueError(f"transform 'clip': value={kwargs['value']:g} in {expr!r}; clip to [-value, value] "
                             "needs value >= 0")
        est = est.then(name, **kwargs)
    return est


def resolve(spec: str | Estimator, **hparams: Any) -> Estimator:
    """The estimator that ``spec`` names: a registered name (``get``), a composition expression such
    as ``"0.7*grpo + 0.3*rloo | clip(3)"`` (``parse``), or an Estimator (returned as it is).

    The one place a name becomes an estimator: ``compute_advantages``, the trainer and the verl and
    TRL plug-ins all resolve here. An unknown name is an ``UnknownName`` error with the closest
    registered names; an unknown hyperparameter a TypeError with the closest accepted ones.
    """
    if isinstance(spec, Estimator):
        if hparams:
            raise TypeError(f"hyperparameters {sorted(hparams)} given with an Estimator: bind them with "
                            "grouprl.advantages.get(name, **hparams) instead")
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"an estimator is a registered name, an expression such as '0.7*grpo + 0.3*rloo' or an "
                        f"Estimator, not {type(spec).__name__}")
    return get(spec, **hparams) if spec in ESTIMATORS else parse(spec, **hparams)


def compute_advantages(
    method: str | Estimator,
    batch: Rollouts,
    *,
    return_info: bool = False,
    **hparams: Any,
):
    """Token advantages of ``batch`` by a registered estimator, an expression or an Estimator.

    Returns a float32 (B, T) tensor, exactly 0 on masked tokens; with ``return_info=True`` also a
    dict of group diagnostics (see ``group_diagnostics``).
    """
    if not isinstance(batch, Rollouts):
        raise TypeError(f"compute_advantages expects a grouprl.Rollouts batch, got {type(batch).__name__}")
    adv = resolve(method, **hparams)(batch)
    if return_info:
        return adv, group_diagnostics(batch)
    return adv


def group_diagnostics(batch: Rollouts, *, tol: float = 0.0) -> dict[str, Tensor]:
    """Per-batch group facts as tensors: number of groups, groups of one, constant ("dead") groups
    (max − min <= tol, no relative signal), and their fraction."""
    st = group_stats(batch.rewards, batch.group, batch.num_groups)
    dead = (st.max - st.min) <= tol
    return {
        "num_groups": torch.tensor(st.num_groups),
        "num_singleton_groups": st.singleton.sum(),
        "num_constant_groups": dead.sum(),
        "frac_constant_groups": dead.to(torch.float32).mean(),
    }
