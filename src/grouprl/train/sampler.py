"""The trainer's prompt samplers: ``grouprl.sampling``'s registry, plus checkpoint-safe state.

``get_sampler`` is ``grouprl.sampling.get_sampler`` (``uniform``, ``dapo_dynamic``, ``vade``,
``recent_sample_recovery``, ``equitable``, ``equitable_maxmin``; hyperparameters from
``sampler_kwargs``). The dynamic samplers' ``state_dict()["carry"]`` holds a ``Generation`` (the
groups carried to the next step); ``sampler_state`` turns it into plain tensors, lists and numbers
so the checkpoint stores it in safetensors + JSON without pickle, and ``load_sampler_state``
rebuilds it exactly (tensors bit for bit), so a resumed run continues identically.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..rollout import Generation
from ..sampling import SAMPLERS, UniformSampler, get_sampler

__all__ = ["get_sampler", "SAMPLERS", "UniformSampler", "sampler_state", "load_sampler_state", "generation_to_state",
           "generation_from_state"]

_GEN_KEY = "__generation__"


def generation_to_state(gen: Generation) -> dict[str, Any]:
    """A ``Generation`` as a dict of tensors / lists / numbers (checkpoint-serialisable)."""
    out: dict[str, Any] = {_GEN_KEY: True}
    for f in dataclasses.fields(gen):
        out[f.name] = getattr(gen, f.name)
    out["extras"] = dict(gen.extras)
    return out


def generation_from_state(d: dict[str, Any]) -> Generation:
    """Inverse of :func:`generation_to_state`."""
    kw = {f.name: d[f.name] for f in dataclasses.fields(Generation) if f.name in d}
    kw["pad_id"] = int(kw["pad_id"])
    kw["extras"] = dict(kw.get("extras") or {})
    if kw.get("texts") is not None:
        kw["texts"] = list(kw["texts"])
    return Generation(**kw)


def sampler_state(sampler: Any) -> dict[str, Any]:
    """``sampler.state_dict()`` with any carried ``Generation`` converted to plain data."""
    d = dict(sampler.state_dict())
    for k, v in d.items():
        if isinstance(v, Generation):
            d[k] = generation_to_state(v)
    return d


def load_sampler_state(sampler: Any, d: dict[str, Any]) -> None:
    """Restore ``sampler`` from :func:`sampler_state`'s dict."""
    d = {k: generation_from_state(v) if isinstance(v, dict) and v.get(_GEN_KEY) else v for k, v in d.items()}
    sampler.load_state_dict(d)
