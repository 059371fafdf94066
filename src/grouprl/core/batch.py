"""The batch: ``Rollouts``, one row per sampled response (or per agent step).

Fields (B = rows, T = padded response length, right-padded):

* always: ``rewards`` (B,), ``group`` (B,) labels, ``mask`` (B, T) bool;
* per token, when a method needs them: ``logprobs``, ``old_logprobs``, ``ref_logprobs``,
  ``entropy``, ``values``, ``token_rewards``, ``token_probs`` (B, T);
* per row: ``trajectory``, ``step``, ``state_key``, ``transition_key``, ``agent``, ``role``,
  ``data_group``, ``answer`` (int64 ids), ``metric``, ``step_rewards``, ``reward_baselines``
  (float), ``truncated`` (bool); ``reward_components`` (B, K) for multi-reward estimators;
* ``extras``: any other named tensor with B first, for user estimators that declare it in ``needs``.

Construction validates everything once and factorises ``group`` into dense int64 ids (the original
labels are kept in ``group_labels``). Bad input raises ``ValueError`` naming the field, the first
offending row and what to do.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .groups import factorize

__all__ = ["Rollouts", "TOKEN_FIELDS", "ROW_FIELDS", "INT_ROW_FIELDS"]

TOKEN_FIELDS = (
    "logprobs",
    "old_logprobs",
    "ref_logprobs",
    "entropy",
    "values",
    "token_rewards",
    "token_probs",
)
INT_ROW_FIELDS = (
    "trajectory",
    "step",
    "state_key",
    "transition_key",
    "agent",
    "role",
    "data_group",
    "answer",
)
FLOAT_ROW_FIELDS = ("metric", "step_rewards", "reward_baselines")
ROW_FIELDS = INT_ROW_FIELDS + FLOAT_ROW_FIELDS + ("truncated",)
_FINITE_FIELDS = ("rewards", "values", "reward_components", "step_rewards", "reward_baselines")


def _as_tensor(name: str, x: Any, dtype: torch.dtype | None = None, device=None) -> Tensor:
    if isinstance(x, Tensor):
        t = x
    else:
        if x is None:
            raise ValueError(f"Rollouts.{name} is None; it is required: pass an array with one entry per row.")
        try:
            arr = np.asarray(x)
        except ValueError:  # numpy refuses ragged nested lists
            arr = np.empty(0, dtype=object)
        if arr.dtype.kind in "USa":
            raise ValueError(
                f"Rollouts.{name}: got text (e.g. {arr.reshape(-1)[0].item()!r}); pass numbers "
                "(convert them, e.g. float(x), before building the batch)."
            )
        if arr.dtype == object:
            raise ValueError(
                f"Rollouts.{name}: got a ragged or object array; pass a rectangular numeric array "
                "(right-pad per-token fields to the same length T)."
            )
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if device is not None:
        t = t.to(device)
    return t.to(dtype) if dtype is not None and t.dtype != dtype else t


def _first_bad_row(bad: Tensor) -> int:
    rows = bad.reshape(bad.shape[0], -1).any(dim=1) if bad.dim() > 1 else bad
    return int(rows.nonzero()[0, 0])


@dataclass
class Rollouts:
    """A validated batch of group-sampled responses. See the module docstring for the fields."""

    rewards: Tensor
    group: Any
    mask: Tensor
    logprobs: Tensor | None = None
    old_logprobs: Tensor | None = None
    ref_logprobs: Tensor | None = None
    entropy: Tensor | None = None
    values: Tensor | None = None
    token_rewards: Tensor | None = None
    token_probs: Tensor | None = None
    trajectory: Tensor | None = None
    step: Tensor | None = None
    state_key: Tensor | None = None
    transition_key: Tensor | None = None
    agent: Tensor | None = None
    role: Tensor | None = None
    data_group: Tensor | None = None
    answer: Tensor | None = None
    metric: Tensor | None = None
    step_rewards: Tensor | None = None
    reward_baselines: Tensor | None = None
    truncated: Tensor | None = None
    reward_components: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)
    # Filled by validation: the original labels of the dense group ids (None when given as ints).
    group_labels: list | None = None
    num_groups: int = -1

    def __post_init__(self) -> None:
        rewards = _as_tensor("rewards", self.rewards)
        if rewards.dim() != 1:
            raise ValueError(
                f"Rollouts.rewards: expected shape (B,), got {tuple(rewards.shape)}; pass one scalar "
                "reward per row (per-token rewards go in token_rewards)."
            )
        if not (rewards.dtype.is_floating_point or rewards.dtype in (torch.int32, torch.int64, torch.bool)):
            raise ValueError(f"Rollouts.rewards: dtype {rewards.dtype} is not numeric.")
        if not rewards.dtype.is_floating_point:
            rewards = rewards.to(torch.float32)
        B = rewards.shape[0]
        if B == 0:
            raise ValueError("Rollouts: the batch is empty (rewards has 0 rows); pass at least one row.")
        dev = rewards.device
        self.rewards = rewards

        mask = _as_tensor("mask", self.mask, device=dev)
        if mask.dim() != 2 or mask.shape[0] != B:
            raise ValueError(
                f"Rollouts.mask: expected shape (B, T) = ({B}, T), got {tuple(mask.shape)}; "
                "pass one row of response-token flags per reward."
            )
        if mask.dtype != torch.bool:
            if mask.is_complex():
                raise ValueError("Rollouts.mask: complex dtype; pass a bool or 0/1 tensor.")
            bad = (mask != 0) & (mask != 1)
            if bool(bad.any()):
                r = _first_bad_row(bad)
                raise ValueError(
                    f"Rollouts.mask: row {r} has values other than 0/1 (e.g. {mask[r][bad[r]][0].item()}); "
                    "pass a bool tensor or 0/1 flags (1 = response token that is trained on)."
                )
            mask = mask != 0
        self.mask = mask
        T = mask.shape[1]

        # Group labels -> dense ids, unless already dense (a re-validation after replace()).
        if not (isinstance(self.group, Tensor) and self.group.dtype == torch.int64 and self.num_groups >= 0):
            if self.group is None or isinstance(self.group, (str, bytes)) or not hasattr(self.group, "__len__"):
                raise ValueError(
                    f"Rollouts.group: got {type(self.group).__name__}; pass one group label per row "
                    f"({B} labels: the prompt or environment each row was sampled for)."
                )
            ids, n, labels = factorize(self.group)
            self.group, self.num_groups, self.group_labels = ids.to(dev), n, labels
        if self.group.shape != (B,):
            raise ValueError(
                f"Rollouts.group: expected shape ({B},), got {tuple(self.group.shape)}; "
                "pass one group label per row (the prompt or environment the row was sampled for)."
            )

        for name in TOKEN_FIELDS:
            v = getattr(self, name)
            if v is None:
                continue
            v = _as_tensor(name, v, device=dev)
            if tuple(v.shape) != (B, T):
                raise ValueError(
                    f"Rollouts.{name}: expected shape (B, T) = ({B}, {T}) like mask, got "
                    f"{tuple(v.shape)}; right-pad per-token fields to the mask's width."
                )
            if not v.dtype.is_floating_point:
                v = v.to(torch.float32)
            setattr(self, name, v)
        for name in ROW_FIELDS:
            v = getattr(self, name)
            if v is None:
                continue
            if name in INT_ROW_FIELDS and not isinstance(v, Tensor) and np.asarray(v).dtype.kind not in "iub":
                v, _, _ = factorize(v)  # strings or other hashable labels -> dense ids
            v = _as_tensor(name, v, device=dev)
            if tuple(v.shape) != (B,):
                raise ValueError(
                    f"Rollouts.{name}: expected shape ({B},) (one value per row), got {tuple(v.shape)}."
                )
            if name in INT_ROW_FIELDS:
                if v.dtype.is_floating_point:
                    raise ValueError(f"Rollouts.{name}: expected integer ids, got dtype {v.dtype}.")
                v = v.to(torch.int64)
            elif name == "truncated":
                v = v.to(torch.bool)
            elif not v.dtype.is_floating_point:
                v = v.to(torch.float32)
            setattr(self, name, v)
        if self.reward_components is not None:
            rc = _as_tensor("reward_components", self.reward_components, device=dev)
            if rc.dim() != 2 or rc.shape[0] != B:
                raise ValueError(
                    f"Rollouts.reward_components: expected shape (B, K) = ({B}, K), got {tuple(rc.shape)}."
                )
            self.reward_components = rc if rc.dtype.is_floating_point else rc.to(torch.float32)
        for key, v in list(self.extras.items()):
            v = _as_tensor(f"extras[{key!r}]", v, device=dev)
            if v.dim() == 0 or v.shape[0] != B:
                raise ValueError(
                    f"Rollouts.extras[{key!r}]: expected the batch size {B} first, got {tuple(v.shape)}."
                )
            self.extras[key] = v

        for name in _FINITE_FIELDS:
            v = getattr(self, name)
            if v is None:
                continue
            bad = ~torch.isfinite(v)
            if bool(bad.any()):
                r = _first_bad_row(bad)
                what = "nan" if bool(torch.isnan(v[r]).any()) else "inf"
                raise ValueError(
                    f"Rollouts.{name}: row {r} is {what}; {name} must be finite. Replace failed rewards "
                    "with a number (e.g. 0.0) or drop the row before building the batch."
                    if name != "values"
                    else f"Rollouts.values: row {r} is {what}; the critic produced non-finite values."
                )

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def batch_size(self) -> int:
        return len(self)

    @property
    def device(self) -> torch.device:
        return self.rewards.device

    @property
    def lengths(self) -> Tensor:
        """Number of trained tokens per row (int64)."""
        return self.mask.sum(dim=1)

    def has(self, name: str) -> bool:
        if name in self.extras:
            return True
        return getattr(self, name, None) is not None if name in _ALL_FIELDS else False

    def get(self, name: str) -> Tensor:
        if name in self.extras:
            return self.extras[name]
        if name in _ALL_FIELDS and getattr(self, name) is not None:
            return getattr(self, name)
        raise KeyError(name)

    def replace(self, **changes: Any) -> "Rollouts":
        """A new batch with some fields changed (re-validated; group ids kept unless changed)."""
        if "group" in changes:
            changes.setdefault("num_groups", -1)
            changes.setdefault("group_labels", None)
        return dataclasses.replace(self, **changes)

    def select(self, rows: Tensor | np.ndarray | list) -> "Rollouts":
        """The rows ``rows`` (indices or a bool mask), group ids re-factorised densely."""
        idx = torch.as_tensor(rows, device=self.device)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().squeeze(1)
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                out[f.name] = v[idx]
        out["extras"] = {k: v[idx] for k, v in self.extras.items()}
        old_ids = torch.unique(out["group"], sorted=True)  # factorize() orders new ids this way
        ids, n, _ = factorize(out["group"])
        labels = None if self.group_labels is None else [self.group_labels[i] for i in old_ids.tolist()]
        out.update(group=ids, num_groups=n, group_labels=labels)
        return Rollouts(**out)

    def to(self, device: torch.device | str) -> "Rollouts":
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for k, v in out.items():
            if isinstance(v, Tensor):
                out[k] = v.to(device)
        out["extras"] = {k: v.to(device) for k, v in self.extras.items()}
        return Rollouts(**out)


_ALL_FIELDS = frozenset(f.name for f in dataclasses.fields(Rollouts)) - {"extras", "group_labels", "num_groups"}
