"""The policy-loss registry and ``policy_loss``, the one entry point a trainer calls.

A registered loss is a pure function

    fn(logprobs, old_logprobs, advantages, mask, *, hparam=default, ...) -> (loss, metrics)

on (B, T) tensors (``logprobs`` carries the gradient, the others are constants, ``mask`` bool).
It returns the per-token loss (B, T) — or, for ``level="sequence"`` losses, one loss per row (B,) —
and a dict of metric maps (bool indicators or floats): a (B, T) map is averaged over the valid
tokens, a (B,) map over the valid rows, a 0-d tensor is passed through. ``policy_loss`` validates and sanitises the inputs
(masked positions are replaced by harmless values, so padding that holds −inf or NaN cannot leak
into the loss or its gradient), multiplies by rollout IS weights, aggregates with the GLOBAL
normalisers it is given, and adds the KL and entropy terms.

All metrics are 0-d detached tensors normalised by the same global counts as the loss, so the
metrics of the micro-batches of one mini-batch SUM to the full-batch metric. Nothing calls
``Tensor.item``; the only host sync is the check that the advantages are finite and the log-probs not NaN on
the valid tokens (``validate=False`` removes it). A mask that is not bool must hold only 0 and 1.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from ..core import Registry, suggest
from .aggregation import Number, _norm_const, aggregate, check_agg
from .kl import kl_penalty

__all__ = ["LossInfo", "LOSSES", "register_loss", "register_preset", "policy_loss", "token_losses", "example_inputs", "run_example"]

LEVELS = ("token", "sequence")
STANDARD_METRICS = ("clipfrac", "clipfrac_low", "clipfrac_high")


@dataclass(frozen=True)
class LossInputs:
    """What a loss that takes more than ``advantages`` gets once per step from its ``inputs`` hook:
    the (B, T) advantages to pass as ``advantages``, per-row tensors (indexed by each micro-batch's
    rows), scalar keywords, and scalars a trainer should log."""

    advantages: Tensor
    row_kwargs: dict[str, Tensor] = field(default_factory=dict)
    kwargs: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    def for_rows(self, rows: Tensor) -> dict[str, Any]:
        """The loss keywords of the micro-batch ``rows``."""
        return {**{k: v[rows] for k, v in self.row_kwargs.items()}, **self.kwargs}


@dataclass(frozen=True)
class LossInfo:
    """A registered policy loss: the function and its metadata (``register_loss`` documents the
    declarations ``needs``, ``inputs`` and ``inputs_hparams_from``)."""

    name: str
    fn: Callable[..., tuple[Tensor, dict[str, Tensor]]]
    paper: str
    level: str
    agg: str | None
    example: dict[str, Any] | None
    defaults: dict[str, Any] = field(default_factory=dict)
    needs: tuple[str, ...] = ()
    inputs: Callable[..., LossInputs] | None = None
    inputs_hparams_from: str | None = None

    @property
    def doc(self) -> str:
        return inspect.cleandoc(self.fn.__doc__ or "")

    @property
    def summary(self) -> str:
        return self.doc.split("\n", 1)[0] if self.doc else ""

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[Tensor, dict[str, Tensor]]:
        return self.fn(*args, **kwargs)


LOSSES: Registry[LossInfo] = Registry("policy loss")


def _keyword_defaults(fn: Callable) -> dict[str, Any]:
    return {
        p.name: (None if p.default is inspect.Parameter.empty else p.default)
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def register_loss(
    name: str,
    *,
    paper: str = "",
    level: str = "token",
    agg: str | None = None,
    example: dict[str, Any] | None = None,
    needs: tuple[str, ...] = (),
    inputs: Callable[..., LossInputs] | None = None,
    inputs_hparams_from: str | None = None,
):
    """Register ``fn`` as the policy loss ``name``.

    Declarations a trainer reads instead of the loss's name: ``needs``, batch fields the trainer
    must fill before the step (e.g. ``answer``); ``inputs(batch, **hparams) -> LossInputs``, a
    once-per-step hook whose advantages replace the estimator's and whose keywords go to the loss;
    ``inputs_hparams_from``, the estimator whose ``estimator_kwargs`` the hook takes when the
    config's estimator expression uses it (else the hook's defaults).

    ``level``: ``"token"`` (fn returns a (B, T) loss) or ``"sequence"`` (a (B,) loss, aggregated
    as a mean over the valid rows whatever ``agg`` says). ``agg``: the loss's own aggregation mode,
    used for its policy-gradient term instead of the caller's ``agg`` unless the caller passes
    ``respect_agg=True`` (verl hard-codes such modes, e.g. SAPO). ``example``: a worked example for
    ``grouprl explain``: ``{"logprobs": [[...]], "old_logprobs": [[...]], "advantages": [[...]],
    "mask": [[...]], "kwargs": {...}}`` as nested (B, T) lists.
    """
    if level not in LEVELS:
        raise ValueError(f"register_loss({name!r}): level={level!r}; choose one of {LEVELS}")
    if agg is not None:
        check_agg(agg)

    def deco(fn: Callable[..., tuple[Tensor, dict[str, Tensor]]]):
        LOSSES.add(name, LossInfo(name, fn, paper, level, agg, example, _keyword_defaults(fn), tuple(needs), inputs,
                                  inputs_hparams_from))
        return fn

    return deco


def register_preset(
    name: str, of: str, *, paper: str, doc: str, example: dict[str, Any] | None = None, module: str | None = None,
    **defaults: Any,
) -> Callable[..., tuple[Tensor, dict[str, Tensor]]]:
    """Register ``name`` as the loss ``of`` with other keyword defaults: a registry alias, not a copy.

    ``register_preset("dapo_clip", "ppo_clip", eps_low=0.2, eps_high=0.28, ...)`` is ``ppo_clip``
    whose defaults are DAPO's; every keyword of ``of`` still overrides them, its level, batch
    fields and aggregation are ``of``'s, and ``doc`` (one paragraph: what the preset fixes and why)
    is what ``grouprl explain`` shows. Returns the callable that was registered."""
    base = LOSSES[of]
    sig = inspect.signature(base.fn)
    unknown = sorted(set(defaults) - set(sig.parameters))
    if unknown:
        raise ValueError(f"register_preset({name!r}): {of!r} has no keyword(s) {unknown}; it takes {sorted(base.defaults)}")

    def preset(*args: Any, **kwargs: Any) -> tuple[Tensor, dict[str, Tensor]]:
        return base.fn(*args, **{**defaults, **kwargs})

    preset.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[p.replace(default=defaults[p.name]) if p.name in defaults else p for p in sig.parameters.values()]
    )
    preset.__name__ = preset.__qualname__ = name
    preset.__doc__ = doc
    preset.__module__ = module or preset.__module__
    register_loss(name, paper=paper, level=base.level, agg=base.agg, example=example, needs=base.needs,
                  inputs=base.inputs, inputs_hparams_from=base.inputs_hparams_from)(preset)
    return preset


# ---------------------------------------------------------------------------------------------
_OWN_KEYWORDS = (
    "agg", "num_tokens", "num_seqs", "norm_const", "ref_logprobs", "kl_coef", "kl_type", "entropy",
    "entropy_coef", "rollout_is_weights", "dp_size", "respect_agg", "validate",
)


def _check_hparams(info: LossInfo, hparams: dict[str, Any]) -> None:
    for k in hparams:
        if k not in info.defaults:
            close = suggest(k, [*info.defaults, *_OWN_KEYWORDS])
            if not close.startswith("did you mean"):
                close = (
                    "it takes " + ", ".join(sorted(info.defaults)) if info.defaults else "it takes no hyperparameters"
                )
            raise TypeError(f"policy loss {info.name!r} got an unknown hyperparameter {k!r}: {close}")


def _as_float(x: Any, like: Tensor, name: str, shape: tuple[int, ...]) -> Tensor:
    t = torch.as_tensor(x, device=like.device)
    if not t.dtype.is_floating_point:
        t = t.to(like.dtype)
    if name == "advantages" and t.dim() == 1 and len(shape) == 2 and t.shape[0] == shape[0]:
        t = t.unsqueeze(1).expand(shape)  # one advantage per row (TRL style) -> every token
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape} like logprobs")
    return t.to(like.dtype)


def _check_binary_mask(m: Tensor) -> None:
    if m.is_complex():
        raise ValueError("mask: complex dtype; pass a bool or 0/1 tensor (1 = response token that is trained on).")
    bad = (m != 0) & (m != 1)  # NaN compares unequal to both
    if bool(bad.any()):
        r, t = (int(v) for v in bad.nonzero()[0])
        raise ValueError(
            f"mask has the value {m[r, t].tolist()} at row {r} (token {t}); a mask is 0/1 (or bool): 1 = a response "
            "token that is trained on. Weight tokens with rollout_is_weights, not with the mask."
        )


def _check_finite(adv: Tensor, mask: Tensor, logprobs: Tensor | None = None, old: Tensor | None = None) -> None:
    """Advantages finite, and log-probs not NaN, on the valid tokens: one host sync in all."""
    bad = mask & ~torch.isfinite(adv)
    nan_lp = None
    if logprobs is not None and old is not None:
        nan_lp = mask & (torch.isnan(logprobs) | torch.isnan(old))
        bad = bad | nan_lp
    if bool(bad.any()):  # the one host sync; skipped with validate=False
        if nan_lp is not None and bool(nan_lp.any()):
            r, t = (int(v) for v in nan_lp.nonzero()[0])
            name = "logprobs" if bool(torch.isnan(logprobs[r, t])) else "old_logprobs"
            raise ValueError(
                f"{name} is NaN at row {r} (token {t}), a token the mask trains on; the loss would be NaN. "
                "Check the model's forward (a NaN in its weights or logits) or mask that token out."
            )
        r, t = (int(v) for v in bad.nonzero()[0])
        what = "NaN" if bool(torch.isnan(adv[r, t])) else "an infinite value"
        raise ValueError(
            f"advantages has {what} at row {r} (token {t}); NaN survives masking (NaN*0 = NaN): "
            "fix the reward or estimator for that row, or set its advantage to 0 before the loss."
        )


def _prepare(logprobs, old_logprobs, advantages, mask, validate: bool):
    if not isinstance(logprobs, Tensor) or logprobs.dim() != 2 or not logprobs.dtype.is_floating_point:
        raise ValueError(
            "logprobs must be a float (B, T) tensor (the current policy's log-probs of the sampled "
            f"tokens, with gradient); got {type(logprobs).__name__}"
            + (f" of shape {tuple(logprobs.shape)}" if isinstance(logprobs, Tensor) else "")
        )
    shape = tuple(logprobs.shape)
    m = torch.as_tensor(mask, device=logprobs.device)
    if tuple(m.shape) != shape:
        raise ValueError(f"mask has shape {tuple(m.shape)}, expected {shape} like logprobs")
    if m.dtype != torch.bool:  # README: a mask that is not 0/1 is an error (a bool mask needs no check)
        _check_binary_mask(m)
    m = m.to(torch.bool)
    old = _as_float(old_logprobs, logprobs, "old_logprobs", shape).detach()
    adv = _as_float(advantages, logprobs, "advantages", shape).detach()
    if validate:
        _check_finite(adv, m, logprobs.detach(), old)
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    lp = torch.where(m, logprobs, zero)
    return lp, torch.where(m, old, zero), torch.where(m, adv, zero), m, zero


def token_losses(name: str, logprobs, old_logprobs, advantages, mask, **hparams: Any):
    """The raw output of loss ``name``: its per-token (or per-sequence) loss and metric maps,
    before IS weights, aggregation, KL and entropy (for explanations and tests)."""
    info = LOSSES[name]
    _check_hparams(info, hparams)
    lp, old, adv, m, _ = _prepare(logprobs, old_logprobs, advantages, mask, True)
    return info.fn(lp, old, adv, m, **hparams)


def policy_loss(
    name: str,
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    agg: str = "token-mean",
    num_tokens: Number | None = None,
    num_seqs: Number | None = None,
    norm_const: Number | None = None,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    kl_type: str = "k3",
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    rollout_is_weights: Tensor | None = None,
    dp_size: int = 1,
    respect_agg: bool = False,
    validate: bool = True,
    **hparams: Any,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Scalar policy loss of the registered loss ``name`` and its metrics.

    loss = agg(w ⊙ ℓ_name) + kl_coef · agg(KL_{kl_type}(π_θ ‖ π_ref)) − entropy_coef · agg(H)

    - ``logprobs`` (B, T) carries the gradient; ``old_logprobs``, ``advantages`` ((B, T) or (B,)),
      ``ref_logprobs``, ``rollout_is_weights`` are constants; ``mask`` (B, T) bool; ``entropy``
      (B, T) may carry a gradient.
    - ``agg`` one of ``AGG_MODES``; ``num_tokens``/``num_seqs`` the GLOBAL counts of the full
      (mini-)batch from ``normalizers(full_mask)`` (``None``: local counts of this call, verl's
      per-micro-batch behaviour); ``norm_const`` Dr. GRPO's constant for ``seq-mean-token-sum-norm``
      (``None``: the padded width T, with a warning).
    - A loss registered with its own ``agg`` (``sapo``, ``gspo``) uses it for the policy-gradient
      term unless ``respect_agg=True``; the KL and entropy terms always use ``agg``. A
      sequence-level loss (``gmpo``) is a mean over valid rows; its IS weight is the geometric
      mean of the row's token weights, as verl.
    - ``dp_size``: the number of data-parallel ranks; multiplies the returned loss (not the
      metrics), see ``aggregate``. ``kl_coef``/``entropy_coef`` may be 0-d tensors (adaptive
      controllers) without a host sync.
    - ``**hparams`` go to the loss (unknown ones: TypeError with close matches).

    Metrics (0-d, detached): ``pg_loss``, ``clipfrac``, ``clipfrac_low``, ``clipfrac_high``,
    ``ppo_kl`` (mean of log π_old − log π_θ over valid tokens), the loss's own extras, ``kl`` (with
    ``ref_logprobs``) and ``entropy`` (with ``entropy``). Token metrics divide by ``num_tokens``
    and row metrics by ``num_seqs``, so micro-batch metrics sum to the full-batch value.
    """
    info = LOSSES[name]
    _check_hparams(info, hparams)
    check_agg(agg)
    lp, old, adv, m, zero = _prepare(logprobs, old_logprobs, advantages, mask, validate)
    if agg == "seq-mean-token-sum-norm" or info.agg == "seq-mean-token-sum-norm":
        norm_const = _norm_const(norm_const, m)  # warns once, here, if None
    norms = dict(num_tokens=num_tokens, num_seqs=num_seqs, norm_const=norm_const)

    out, raw_metrics = info.fn(lp, old, adv, m, **hparams)
    if rollout_is_weights is not None:
        w = torch.where(m, _as_float(rollout_is_weights, lp, "rollout_is_weights", tuple(lp.shape)), zero)
        if out.dim() == 2:
            out = out * w.detach()
        else:  # one weight per row: the geometric mean of its token weights (verl's geo_mean)
            log_w = torch.where(m, torch.log(w.clamp_min(1e-10)), zero)
            out = out * torch.exp(log_w.sum(dim=1) / m.sum(dim=1).clamp_min(1)).detach()
    pg_agg = info.agg if (info.agg is not None and not respect_agg) else agg
    pg_loss = aggregate(out, m, pg_agg, **norms)
    loss = pg_loss

    metrics: dict[str, Tensor] = {"pg_loss": pg_loss.detach()}
    for k in STANDARD_METRICS:
        metrics[k] = zero.detach()
    for k, v in raw_metrics.items():
        metrics[k] = _reduce_metric(v.detach(), m, num_tokens, num_seqs, lp.dtype)
    metrics["ppo_kl"] = aggregate((old - lp).detach(), m, "token-mean", num_tokens=num_tokens)

    if ref_logprobs is not None:
        ref = torch.where(m, _as_float(ref_logprobs, lp, "ref_logprobs", tuple(lp.shape)), zero)
        kl = aggregate(kl_penalty(lp, ref, kl_type), m, agg, **norms)
        metrics["kl"] = kl.detach()
        if _active(kl_coef):
            loss = loss + kl_coef * kl
    elif _active(kl_coef):
        raise ValueError(f"kl_coef={kl_coef} needs ref_logprobs (the reference policy's log-probs, (B, T)).")

    if entropy is not None:
        if tuple(entropy.shape) != tuple(lp.shape):
            raise ValueError(f"entropy has shape {tuple(entropy.shape)}, expected {tuple(lp.shape)}")
        ent = aggregate(torch.where(m, entropy.to(lp.dtype), zero), m, agg, **norms)
        metrics["entropy"] = ent.detach()
        if _active(entropy_coef):
            loss = loss - entropy_coef * ent
    elif _active(entropy_coef):
        raise ValueError(f"entropy_coef={entropy_coef} needs entropy (per-token entropies, (B, T)).")
    if dp_size != 1:
        loss = loss * dp_size
    return loss, metrics


def _reduce_metric(v: Tensor, m: Tensor, num_tokens, num_seqs, dtype: torch.dtype) -> Tensor:
    """A metric map -> 0-d: token maps over ``num_tokens``, row maps over ``num_seqs``."""
    if v.dim() == 0:
        return v
    if v.dtype != torch.bool:
        return aggregate(v.to(dtype), m, "token-mean", num_tokens=num_tokens, num_seqs=num_seqs)
    # an indicator: an integer count of the valid hits, no float copy of the map
    valid = m if v.dim() == 2 else m.any(dim=1)
    given = num_tokens if v.dim() == 2 else num_seqs
    n = valid.sum() if given is None else torch.as_tensor(given, device=m.device)
    return (v & valid).sum().to(dtype) / n.to(dtype).clamp_min(1.0)


def _active(coef: float | Tensor) -> bool:
    """A coefficient is on if it is a non-zero number or any tensor (no host sync on tensors)."""
    return isinstance(coef, Tensor) or coef != 0


# ---------------------------------------------------------------------------------------------
def example_inputs(name: str, dtype: torch.dtype = torch.float64) -> dict[str, Any]:
    """The worked example of loss ``name`` as tensors: logprobs (a leaf requiring grad),
    old_logprobs, advantages, mask and the keyword arguments."""
    info = LOSSES[name]
    if not info.example:
        raise ValueError(f"policy loss {name!r} has no worked example")
    ex = dict(info.example)
    out: dict[str, Any] = {
        "logprobs": torch.tensor(ex["logprobs"], dtype=dtype).requires_grad_(True),
        "old_logprobs": torch.tensor(ex["old_logprobs"], dtype=dtype),
        "advantages": torch.tensor(ex["advantages"], dtype=dtype),
    }
    if "mask" in ex:
        out["mask"] = torch.tensor(ex["mask"], dtype=torch.bool)
    else:
        out["mask"] = torch.ones_like(out["old_logprobs"], dtype=torch.bool)
    out["kwargs"] = dict(ex.get("kwargs", {}))
    return out


def run_example(name: str, **overrides: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """``policy_loss`` on the worked example of ``name`` (``overrides`` update its kwargs)."""
    ex = example_inputs(name)
    kwargs = {**ex.pop("kwargs"), **overrides}
    return policy_loss(name, ex["logprobs"], ex["old_logprobs"], ex["advantages"], ex["mask"], **kwargs)

