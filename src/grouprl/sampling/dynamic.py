"""Dynamic sampling: over-sample, keep informative groups, refill until the batch is full.

* ``dapo_dynamic`` — DAPO (arXiv 2503.14476, section "Dynamic Sampling"): generate rounds of
  prompts, drop groups without reward spread (``0 < #correct < G``), keep generating until the
  training batch holds ``prompts_per_step`` groups, truncate, and *discard* the surplus
  (``leftover="drop"``). verl caps the rounds with ``max_num_gen_batches`` (here ``max_rounds``).
  NGRPO's reference code (arXiv 2509.18851) instead drops only all-correct groups
  (``filter="all_correct"``) and *carries the surplus over* to the next step (``leftover="carry"``).
* ``recent_sample_recovery`` — Confucius3-Math RSR (arXiv 2506.18330, Algorithm 1): the surplus
  ``B_c[N:]`` goes into a recovery buffer ``B_r`` that is moved to the front of the next step's
  buffer, so recovered samples (one policy version stale, no importance correction) train first.

Both count the batch in whole groups (a proposed reading of Confucius3-Math, arXiv:2506.18330: keep groups intact when
splitting at N; NGRPO's code truncates by sample count and may split a group, which this library
does not do). A prompt never appears twice in one training batch (a second group of the same prompt
stays in the surplus), so the trainer can use the prompt index as the group id.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ._base import EpochOrder, Sampler, ceil_int, group_view, register
from .filters import FILTERS, keep_groups

__all__ = ["DynamicSampler", "RecentSampleRecovery", "NoInformativePrompts"]

LEFTOVER = ("drop", "carry")
ON_CAP = ("pad", "partial", "raise")


class NoInformativePrompts(RuntimeError):
    """Every prompt of the data set was rolled out since the last kept group: nothing left to learn."""


def _rows(group_mask: Tensor, inv: Tensor) -> Tensor:
    return torch.nonzero(group_mask[inv]).squeeze(1)


def _first_per_prompt(prompt: Tensor) -> Tensor:
    """Bool per group (in group order): the first group of its prompt."""
    first = np.unique(prompt.numpy(), return_index=True)[1]
    out = torch.zeros(prompt.numel(), dtype=torch.bool)
    out[torch.from_numpy(first)] = True
    return out


@register("dapo_dynamic")
class DynamicSampler(Sampler):
    """DAPO dynamic sampling (and NGRPO's carry-over variant).

    Each generation round takes ``ceil(oversample · prompts_per_step)`` prompts from a seeded epoch
    order, rolls them out, and keeps the groups that pass ``filter``:

    * ``"mixed"`` (DAPO): groups whose rewards spread, ``max − min > tol`` (float64);
    * ``"all_correct"`` (NGRPO): every group except all-correct ones (``min >= r_max − tol``).

    Rounds repeat until ``prompts_per_step`` groups of distinct prompts are kept (at least one
    round per step), then the first ``prompts_per_step`` groups (carried ones first, then in
    generation order) form the training batch. The surplus is dropped (``leftover="drop"``, DAPO)
    or carried into the next step (``leftover="carry"``, NGRPO; at most ``max_carry_groups``,
    default ``prompts_per_step``, the oldest first; carried groups are one policy version stale).

    Termination: after ``max_rounds`` rounds (``None``: no cap), or once the step has drawn
    ``max_passes · num_prompts`` prompts (default 2 passes over the data; this bound also ends steps
    that cannot fill because fewer informative prompts exist than the batch needs), the step ends
    with what it has —
    ``on_cap="pad"`` (default) fills the batch with filtered-out groups of this step (zero
    advantage, kept so the batch keeps its size; counted in ``padded_groups``), ``"partial"``
    returns the kept groups only, ``"raise"`` raises as verl does. Independently, when every prompt
    of the data set has been rolled out since the last kept group (across steps), the data has no
    informative prompt left and :class:`NoInformativePrompts` is raised, so the loop ends even
    with ``max_rounds=None``.

    Metrics: ``gen_rounds``, ``wasted_rollouts`` (rows generated or carried in that neither train
    nor carry out), ``frac_zero_adv_groups`` (generated groups with spread <= tol),
    ``kept_groups`` (groups in the batch), ``filtered_groups``, ``padded_groups``, ``cap_hit``,
    ``carried_in_groups``, ``carry_groups`` (buffer size after the step).

    ``metric`` names the per-row field the filter reads (default ``"rewards"``; e.g. an accuracy
    field when the reward also holds shaping terms, as verl's ``filter_groups.metric = "acc"``).
    ``frac_zero_adv_groups`` always measures the spread of the rewards.

    ``state_dict()["carry"]`` holds the carried generation object itself (a tensor container):
    checkpoint it with ``torch.save``, not JSON.
    """

    needs = ("rewards",)
    carries = ("order", "tried", "carry", "carry_chunk")  # rewards: the group filter; carry: the groups carried to the next step

    def __init__(
        self,
        num_prompts: int,
        *,
        seed: int = 0,
        prompt_groups=None,
        filter: str = "mixed",
        leftover: str = "drop",
        tol: float = 1e-6,
        r_max: float = 1.0,
        oversample: float = 1.0,
        max_rounds: int | None = 16,
        max_passes: float | None = 2.0,
        on_cap: str = "pad",
        max_carry_groups: int | None = None,
        metric: str = "rewards",
    ) -> None:
        super().__init__(num_prompts, seed=seed, prompt_groups=prompt_groups)
        self.metric = metric
        if max_rounds is None and max_passes is None:
            raise ValueError("max_rounds and max_passes are both None: one of them must bound a step's rounds.")
        if max_passes is not None and not max_passes > 0:
            raise ValueError(f"max_passes: {max_passes}; pass a positive number of passes over the data, or None.")
        if filter not in FILTERS:
            raise ValueError(f"filter: unknown {filter!r}; choose one of {FILTERS}.")
        if leftover not in LEFTOVER:
            raise ValueError(f"leftover: unknown {leftover!r}; choose 'drop' (DAPO) or 'carry' (NGRPO / RSR).")
        if on_cap not in ON_CAP:
            raise ValueError(f"on_cap: unknown {on_cap!r}; choose one of {ON_CAP}.")
        if not oversample >= 1.0:
            raise ValueError(f"oversample: {oversample} < 1; a round must hold at least prompts_per_step prompts.")
        if max_rounds is not None and max_rounds < 1:
            raise ValueError(f"max_rounds: {max_rounds}; pass a positive int, or None for no cap.")
        self.filter, self.leftover, self.on_cap = filter, leftover, on_cap
        self.tol, self.r_max, self.oversample = float(tol), float(r_max), float(oversample)
        self.max_rounds, self.max_passes = max_rounds, max_passes
        self.max_carry_groups = max_carry_groups
        self.order = EpochOrder(self.num_prompts, self.rng)
        self.carry: Any = None  # generation object of carried groups
        self.carry_chunk: Tensor | None = None  # (R,) round id per carried row (same prompt twice = two groups)
        self.tried = np.zeros(self.num_prompts, dtype=bool)  # rolled out since the last kept group

    # ------------------------------------------------------------------------------------------
    def collect(self, step: int, prompts_per_step: int, generate: Callable[[list[int]], Any]):
        b = self._check_budget(prompts_per_step)
        carried_rows = 0 if self.carry is None else int(self.carry_chunk.numel())
        kept, dropped, st = self._rounds(step, b, generate)
        parts, n_sel, carried_in, taken = self._select(kept, b, carried_rows)
        n_pad = 0
        if n_sel < b and st["cap_hit"]:
            if self.on_cap == "raise":
                raise RuntimeError(
                    f"{self.name}: the round cap (max_rounds={self.max_rounds}, max_passes={self.max_passes}) kept "
                    f"only {n_sel} of {b} groups at step {step}; raise the caps, lower prompts_per_step, or use "
                    "on_cap='pad'/'partial'."
                )
            if self.on_cap == "pad":
                pad, n_pad = self._pad(dropped, b - n_sel, taken)
                parts += pad
            if n_sel + n_pad == 0:
                raise NoInformativePrompts(
                    f"{self.name}: {st['rounds']} generation rounds (max_rounds={self.max_rounds}, max_passes="
                    f"{self.max_passes}) kept no group for step {step}; raise max_rounds or use on_cap='pad'."
                )
        batch = parts[0] if len(parts) == 1 else type(parts[0]).concat(parts)
        out_rows = int(batch.prompt_index.numel())
        carry_rows = 0 if self.carry is None else int(self.carry_chunk.numel())
        metrics = {
            "gen_rounds": st["rounds"],
            "wasted_rollouts": st["rows"] + carried_rows - out_rows - carry_rows,
            "frac_zero_adv_groups": st["zero"] / st["groups"] if st["groups"] else 0.0,
            "kept_groups": n_sel + n_pad,
            "filtered_groups": self._count_groups(dropped),
            "padded_groups": n_pad,
            "cap_hit": int(st["cap_hit"]),
            "carried_in_groups": carried_in,
            "carry_groups": 0 if self.carry is None else self._count_groups([(self.carry, self.carry_chunk)]),
        }
        return batch, metrics

    def _rounds(self, step: int, b: int, generate: Callable[[list[int]], Any]):
        """Generate rounds until ``b`` distinct prompts have kept groups (carry included) or a cap.

        Returns the kept and the filtered-out parts, each a list of (generation, round id per row),
        and the step's counts."""
        round_size = min(self.num_prompts, ceil_int(self.oversample * b))
        kept: list[tuple[Any, Tensor]] = []
        dropped: list[tuple[Any, Tensor]] = []
        next_chunk = 0
        kept_prompts = np.zeros(0, dtype=np.int64)
        if self.carry is not None:
            kept.append((self.carry, self.carry_chunk))
            next_chunk = int(self.carry_chunk.max()) + 1
            kept_prompts = np.unique(self.carry.prompt_index.numpy())
        st = {"rounds": 0, "groups": 0, "zero": 0, "rows": 0, "cap_hit": False}
        while st["rounds"] == 0 or len(kept_prompts) < b:
            drawn = st["rounds"] * round_size
            if (self.max_rounds is not None and st["rounds"] >= self.max_rounds) or (
                self.max_passes is not None and drawn and drawn >= self.max_passes * self.num_prompts
            ):
                st["cap_hit"] = True  # the pass bound also ends steps that can never fill
                break
            idx = self.order.take(round_size)
            gen = self._generate(generate, idx)
            st["rounds"] += 1
            view = group_view(gen.prompt_index, gen.rewards)
            keep = keep_groups(self._metric(gen), view.inv, self.filter, tol=self.tol, r_max=self.r_max, num_groups=view.num_groups)
            st["groups"] += view.num_groups
            st["rows"] += int(gen.prompt_index.numel())
            st["zero"] += int((view.spread <= self.tol).sum())
            for mask, parts in ((keep, kept), (~keep, dropped)):
                if bool(mask.any()):
                    rows = _rows(mask, view.inv)
                    parts.append((gen.select(rows), torch.full((rows.numel(),), next_chunk, dtype=torch.int64)))
            next_chunk += 1
            if bool(keep.any()):
                kept_prompts = np.union1d(kept_prompts, view.prompt[keep].numpy())
                self.tried[:] = False
            else:
                self.tried[idx] = True
            if len(kept_prompts) < b and bool(self.tried.all()):
                raise NoInformativePrompts(
                    f"{self.name}: every one of the {self.num_prompts} prompts was rolled out since the last group "
                    f"that passed filter={self.filter!r} (step {step}, round {st['rounds']}): the data set has no "
                    "informative prompt left. Use a harder/easier data set, filter='all_correct', or the "
                    "'uniform' sampler."
                )
        return kept, dropped, st

    def _metric(self, gen) -> Tensor:
        """The per-row value the filter tests: ``gen.<metric>`` (verl's ``filter_groups.metric``)."""
        if self.metric == "rewards":
            return gen.rewards
        value = getattr(gen, self.metric, None)
        if not isinstance(value, Tensor) or value.shape != gen.rewards.shape:
            raise ValueError(
                f"{self.name}: metric={self.metric!r} needs gen.{self.metric} as a tensor of shape "
                f"{tuple(gen.rewards.shape)} (one value per row); the generation has {type(value).__name__}."
            )
        return value

    def _select(self, kept: list[tuple[Any, Tensor]], b: int, carried_rows: int):
        """First ``b`` kept groups of distinct prompts (carried first, then generation order); the
        surplus becomes the new carry (``leftover="carry"``). Returns (batch parts, groups taken,
        carried groups taken, prompts taken)."""
        self.carry, self.carry_chunk = None, None
        pool, pool_chunk = self._concat(kept)
        if pool is None:
            return [], 0, 0, np.zeros(0, dtype=np.int64)
        view = group_view(pool.prompt_index, pool.rewards, pool_chunk, self.num_prompts)
        cand = torch.nonzero(_first_per_prompt(view.prompt)).squeeze(1)[:b]
        sel = torch.zeros(view.num_groups, dtype=torch.bool)
        sel[cand] = True
        carried_in = int(sel[torch.unique(view.inv[:carried_rows])].sum()) if carried_rows else 0
        if self.leftover == "carry":
            limit = b if self.max_carry_groups is None else int(self.max_carry_groups)
            rest = torch.nonzero(~sel).squeeze(1)[:limit]  # oldest surplus first
            if rest.numel():
                keep_rest = torch.zeros(view.num_groups, dtype=torch.bool)
                keep_rest[rest] = True
                rows = _rows(keep_rest, view.inv)
                self.carry = pool.select(rows)
                self.carry_chunk = torch.unique(pool_chunk[rows], return_inverse=True)[1]  # compact round ids
        return [pool.select(_rows(sel, view.inv))], int(cand.numel()), carried_in, view.prompt[sel].numpy()

    def _pad(self, dropped: list[tuple[Any, Tensor]], need: int, taken: np.ndarray):
        """Up to ``need`` filtered-out groups of prompts not in the batch yet (generation order)."""
        dpool, dchunk = self._concat(dropped)
        if dpool is None:
            return [], 0
        view = group_view(dpool.prompt_index, dpool.rewards, dchunk, self.num_prompts)
        ok = _first_per_prompt(view.prompt) & ~torch.from_numpy(np.isin(view.prompt.numpy(), taken))
        pad = torch.nonzero(ok).squeeze(1)[:need]
        if not pad.numel():
            return [], 0
        sel = torch.zeros(view.num_groups, dtype=torch.bool)
        sel[pad] = True
        return [dpool.select(_rows(sel, view.inv))], int(pad.numel())

    # ------------------------------------------------------------------------------------------
    @staticmethod
    def _concat(parts: list[tuple[Any, Tensor]]):
        if not parts:
            return None, None
        gens = [g for g, _ in parts]
        gen = gens[0] if len(gens) == 1 else type(gens[0]).concat(gens)
        return gen, torch.cat([c for _, c in parts])

    def _count_groups(self, parts: list[tuple[Any, Tensor]]) -> int:
        return sum(int(torch.unique(c * self.num_prompts + g.prompt_index).numel()) for g, c in parts)

    def state_dict(self) -> dict:
        d = super().state_dict()
        d["order"] = self.order.state_dict()
        d["tried"] = self.tried.astype(int).tolist()
        d["carry"] = self.carry
        d["carry_chunk"] = None if self.carry_chunk is None else self.carry_chunk.tolist()
        return d

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self.order.load_state_dict(d["order"])
        self.tried = np.asarray(d["tried"], dtype=bool)
        self.carry = d["carry"]
        self.carry_chunk = None if d["carry_chunk"] is None else torch.tensor(d["carry_chunk"], dtype=torch.int64)


@register("recent_sample_recovery")
class RecentSampleRecovery(DynamicSampler):
    """Confucius3-Math Recent Sample Recovery (arXiv 2506.18330, Algorithm 1).

    DAPO dynamic sampling (``0 < #correct < G``) whose surplus ``B_c[N:]`` is stored in a recovery
    buffer ``B_r`` and moved to the *front* of the next step's buffer instead of being discarded.
    Recovered groups are one policy version stale; the tech report applies no importance
    correction, and this library's proposed reading is that the trainer recomputes their π_old
    log-probs with the current policy (as verl recomputes old_log_prob every step).

    Proposed readings: N is counted in whole groups (the report counts samples); the buffer keeps at
    most ``max_carry_groups`` groups (default: ``prompts_per_step``; the report does not bound it).
    Extra metric: ``recovered_groups`` (= ``carried_in_groups``).
    """

    def __init__(
        self,
        num_prompts: int,
        *,
        seed: int = 0,
        prompt_groups=None,
        filter: str = "mixed",
        tol: float = 1e-6,
        r_max: float = 1.0,
        oversample: float = 1.0,
        max_rounds: int | None = 16,
        max_passes: float | None = 2.0,
        on_cap: str = "pad",
        max_carry_groups: int | None = None,
        metric: str = "rewards",
    ) -> None:
        super().__init__(
            num_prompts, seed=seed, prompt_groups=prompt_groups, filter=filter, leftover="carry", tol=tol,
            r_max=r_max, oversample=oversample, max_rounds=max_rounds, max_passes=max_passes, on_cap=on_cap,
            max_carry_groups=max_carry_groups, metric=metric,
        )

    def collect(self, step: int, prompts_per_step: int, generate: Callable[[list[int]], Any]):
        batch, metrics = super().collect(step, prompts_per_step, generate)
        metrics["recovered_groups"] = metrics["carried_in_groups"]
        return batch, metrics
