"""What every sampler shares: the registry, the seeded generator, epoch orders, group summaries.

The sampler contract (the trainer codes against it)::

    s = get_sampler(name, num_prompts, seed=0, prompt_groups=None, **hp)
    gen, metrics = s.collect(step, prompts_per_step, generate)
    s.state_dict() -> dict ; s.load_state_dict(d)

``generate(list[int]) -> gen`` rolls out a group of responses for every prompt index it gets.
``gen`` is any object with ``.prompt_index`` (R,) int64 and ``.rewards`` (R,) float tensors,
``type(gen).concat(list_of_gens)`` and ``gen.select(rows)``; rows that share a prompt index within
one ``generate`` call form one group. The sampler never looks inside ``gen`` beyond those.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ..core import Registry, group_stats, suggest

__all__ = [
    "Sampler",
    "SAMPLERS",
    "BASE_STATE",
    "register",
    "get_sampler",
    "EpochOrder",
    "GroupView",
    "group_view",
    "to_unit_interval",
]

SAMPLERS: Registry[type] = Registry("sampler")

#: The ``state_dict`` keys of every sampler (its name, pool size, seed and RNG state).
BASE_STATE: tuple[str, ...] = ("name", "num_prompts", "seed", "rng")


def register(name: str):
    """Class decorator: register a :class:`Sampler` subclass under ``name``."""

    def deco(cls: type) -> type:
        cls.name = name
        SAMPLERS.add(name, cls)
        return cls

    return deco


def get_sampler(name: str, num_prompts: int, *, seed: int = 0, prompt_groups=None, **hp) -> "Sampler":
    """Build the sampler ``name`` over ``num_prompts`` prompts (indices ``0..num_prompts-1``).

    ``prompt_groups``: one data-group label per prompt (needed by ``equitable*``, ignored by the
    others). Unknown hyperparameters raise ``ValueError`` listing the accepted ones.
    """
    cls = SAMPLERS[name]
    accepted = _hyperparameters(cls)
    for key in hp:
        if key not in accepted:
            raise ValueError(
                f"sampler {name!r} has no hyperparameter {key!r}: {suggest(key, accepted) if accepted else 'it takes none'}"
            )
    return cls(num_prompts, seed=seed, prompt_groups=prompt_groups, **hp)


def _hyperparameters(cls: type) -> list[str]:
    return [
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in ("seed", "prompt_groups")
    ]


def _rng_state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state  # plain dict of ints and strings: JSON-serialisable


def _set_rng_state(rng: np.random.Generator, state: dict) -> None:
    rng.bit_generator.state = state


class Sampler:
    """Base class: a seeded, checkpointable chooser of the prompts to roll out next.

    Subclasses implement ``collect`` and extend ``state_dict``/``load_state_dict`` with their own
    per-prompt state. All randomness comes from ``self.rng`` (a numpy ``Generator`` on PCG64 seeded
    with ``seed``), whose state is saved in ``state_dict``, so a restored sampler continues exactly
    as an uninterrupted one would.
    """

    name = "sampler"
    #: What the sampler reads beyond the prompt indices (declared, so a trainer passes exactly these):
    #: ``prompt_groups`` (one data-group label per prompt, given at construction) and ``rewards``
    #: (each collected group's rewards, read inside ``collect``).
    needs: tuple[str, ...] = ()
    #: The state it carries from step to step beyond :data:`BASE_STATE` (its ``state_dict`` keys; a
    #: checkpoint saves them and a resumed run restores them).
    carries: tuple[str, ...] = ()

    def __init__(self, num_prompts: int, *, seed: int = 0, prompt_groups=None) -> None:
        if not isinstance(num_prompts, (int, np.integer)) or isinstance(num_prompts, bool) or num_prompts < 1:
            raise ValueError(f"num_prompts: expected a positive int, got {num_prompts!r}; pass len(dataset).")
        self.num_prompts = int(num_prompts)
        self.seed = int(seed)
        self.rng = np.random.Generator(np.random.PCG64(self.seed))
        self.prompt_groups = prompt_groups
        self.last_predictions: dict[str, Tensor] | None = None

    # -- contract -------------------------------------------------------------------------------
    def collect(self, step: int, prompts_per_step: int, generate: Callable[[list[int]], Any]):
        raise TypeError(f"{type(self).__name__} does not implement collect()")

    def state_dict(self) -> dict:
        return {"name": self.name, "num_prompts": self.num_prompts, "seed": self.seed, "rng": _rng_state(self.rng)}

    def load_state_dict(self, d: dict) -> None:
        if d.get("name", self.name) != self.name:
            raise ValueError(
                f"state_dict: saved by sampler {d.get('name')!r}, loading into {self.name!r}; build the same sampler."
            )
        if int(d["num_prompts"]) != self.num_prompts:
            raise ValueError(
                f"state_dict: saved for num_prompts={d['num_prompts']}, this sampler has {self.num_prompts}; "
                "restore with the same data set."
            )
        _set_rng_state(self.rng, d["rng"])

    # -- helpers --------------------------------------------------------------------------------
    def _check_budget(self, prompts_per_step: int) -> int:
        """The step's group budget: ``prompts_per_step``, or the whole pool when it is smaller
        (a batch never holds two groups of one prompt; as proposed for VADE, arXiv:2511.18902: "pool
        smaller than B: take all")."""
        if isinstance(prompts_per_step, bool) or not isinstance(prompts_per_step, (int, np.integer)) or prompts_per_step < 1:
            raise ValueError(f"prompts_per_step: expected a positive int, got {prompts_per_step!r}.")
        return min(int(prompts_per_step), self.num_prompts)

    def _generate(self, generate: Callable[[list[int]], Any], idx: np.ndarray):
        gen = generate([int(i) for i in idx])
        check_generation(gen, idx)
        return gen


def check_generation(gen, requested: np.ndarray) -> None:
    """Check the duck-typed generation object: fields, shapes, and prompt indices that were asked for."""
    for field in ("prompt_index", "rewards"):
        if not hasattr(gen, field):
            raise ValueError(f"generate() returned {type(gen).__name__} without .{field}; it must carry {field} (R,).")
    pi, r = gen.prompt_index, gen.rewards
    if not isinstance(pi, Tensor) or pi.dim() != 1 or pi.dtype != torch.int64:
        raise ValueError("gen.prompt_index: expected an int64 tensor of shape (R,); pass torch.long indices.")
    if not isinstance(r, Tensor) or r.shape != pi.shape:
        raise ValueError(
            f"gen.rewards: expected a tensor of shape {tuple(pi.shape)} like prompt_index, got "
            f"{tuple(r.shape) if isinstance(r, Tensor) else type(r).__name__}."
        )
    bad = ~torch.isfinite(r.to(torch.float64))
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"gen.rewards: row {row} is {r[row].item()}; rewards must be finite.")
    asked = torch.from_numpy(np.asarray(requested, dtype=np.int64))
    stray = ~torch.isin(pi, asked)
    if bool(stray.any()):
        row = int(stray.nonzero()[0, 0])
        raise ValueError(
            f"gen.prompt_index: row {row} has prompt {int(pi[row])}, which generate() was not asked for; "
            "return rows only for the requested prompt indices."
        )


class EpochOrder:
    """Epochs over ``n`` items in seeded random order; ``take(k)`` returns the next ``k``, no repeats.

    When an epoch runs out mid-request the next epoch is drawn and the items already taken in this
    request are moved to the back of it, so one request never holds an item twice (k <= n).
    """

    def __init__(self, n: int, rng: np.random.Generator) -> None:
        self.n = n
        self.rng = rng
        self.perm = rng.permutation(n)
        self.cursor = 0
        self.epoch = 0

    def take(self, k: int) -> np.ndarray:
        if k > self.n:
            raise ValueError(f"EpochOrder.take: k={k} > n={self.n}; one request cannot repeat an item.")
        head = self.perm[self.cursor : self.cursor + k]
        self.cursor += len(head)
        if len(head) == k:
            return head.copy()
        nxt = self.rng.permutation(self.n)
        dup = np.isin(nxt, head)
        nxt = np.concatenate([nxt[~dup], nxt[dup]])
        need = k - len(head)
        self.perm, self.cursor, self.epoch = nxt, need, self.epoch + 1
        return np.concatenate([head, nxt[:need]])

    def state_dict(self) -> dict:
        return {"perm": self.perm.tolist(), "cursor": self.cursor, "epoch": self.epoch}

    def load_state_dict(self, d: dict) -> None:
        self.perm = np.asarray(d["perm"], dtype=np.int64)
        self.cursor = int(d["cursor"])
        self.epoch = int(d["epoch"])


@dataclass(frozen=True)
class GroupView:
    """The groups of a generation: ``inv`` (R,) row -> group, per-group prompt, first row, max, min."""

    inv: Tensor
    prompt: Tensor
    first_row: Tensor
    count: Tensor
    max: Tensor
    min: Tensor

    @property
    def num_groups(self) -> int:
        return int(self.prompt.numel())

    @property
    def spread(self) -> Tensor:
        return self.max - self.min


def group_view(prompt_index: Tensor, rewards: Tensor, chunk: Tensor | None = None, num_prompts: int = 0) -> GroupView:
    """Group rows by prompt index (and by ``chunk`` when given: the same prompt in two generation
    rounds is two groups). Groups are numbered in order of their first row."""
    key = prompt_index if chunk is None else chunk * max(num_prompts, 1) + prompt_index
    _, inv = torch.unique(key, sorted=True, return_inverse=True)
    g = int(inv.max()) + 1 if inv.numel() else 0
    rows = torch.arange(inv.numel())
    first = torch.full((g,), inv.numel(), dtype=torch.int64).scatter_reduce_(0, inv, rows, reduce="amin")
    # renumber groups by first appearance so "the first N groups" means generation order
    order = torch.argsort(first)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(g)
    inv = rank[inv]
    first = first[order]
    stats = group_stats(rewards, inv, g, ddof=0)
    return GroupView(inv=inv, prompt=prompt_index[first], first_row=first, count=stats.count, max=stats.max, min=stats.min)


def to_unit_interval(rewards: Tensor, reward_range: tuple[float, float], who: str) -> Tensor:
    """Map rewards linearly from ``reward_range`` onto [0, 1] (float64); outside the range raises."""
    lo, hi = float(reward_range[0]), float(reward_range[1])
    if not hi > lo:
        raise ValueError(f"{who}: reward_range {reward_range} must have high > low, e.g. (0, 1) or (-1, 1).")
    x = (rewards.to(torch.float64) - lo) / (hi - lo)
    bad = (x < -1e-6) | (x > 1 + 1e-6)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{who}: reward {rewards[row].item()} at row {row} is outside reward_range {reward_range}; "
            "pass reward_range=(low, high) covering the task's rewards (e.g. (-1, 1) for ±1 rewards)."
        )
    return x.clamp_(0.0, 1.0)


def ceil_int(x: float) -> int:
    return int(math.ceil(x - 1e-12))
