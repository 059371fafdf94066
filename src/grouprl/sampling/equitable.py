"""``equitable`` / ``equitable_maxmin``: divide each step's prompt budget across data groups.

After "Adaptive Sampling Strategies to Construct Equitable Training Datasets" (Cai et al.,
arXiv:2202.01327). Verified at abstract level: choose per-group
sample sizes n_g maximising f(P_1(n_1), …, P_K(n_K)) under a budget, where P_g follows a
group-specific learning curve and f is utilitarian (average) or egalitarian (worst group); a
sequential algorithm re-fits the curves and gives the next batch to the group with the largest
estimated marginal gain (egalitarian: the group with the worst estimated error).

**Proposed readings** (this library's, for RL too):

* learning curve err_g(n) = a_g · n^(−b_g), fitted by least squares on (log n, log err) — a
  proposed form; b_g is clipped to [0, ``b_max``];
* in RL, n_g is the number of prompts of group g trained on so far and err_g is 1 − the group's
  mean success (rewards mapped onto [0, 1] by ``reward_range``) measured on the step's rollouts,
  recorded at n = max(n_g, 1) before the step's prompts are added;
* pilot: until every group has ``pilot_obs`` observations the budget is split equally;
* every group gets at least ``min_per_group`` prompts per step (when the budget allows), so no
  curve goes unmeasured; the rest is allocated greedily one prompt at a time;
* within a group, prompts are drawn in seeded epochs (no repeats until the group is exhausted).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from ..core import factorize
from ._base import Sampler, group_view, register, to_unit_interval

__all__ = ["EquitableSampler", "EquitableMaxMinSampler", "fit_power_law", "greedy_allocation"]

OBJECTIVES = ("utilitarian", "egalitarian")


def fit_power_law(n, err) -> tuple[float, float]:
    """Least-squares fit of log err = log a − b log n; returns (a, b). Needs two distinct n."""
    x = np.log(np.asarray(n, dtype=np.float64))
    y = np.log(np.asarray(err, dtype=np.float64))
    xm, ym = x.mean(), y.mean()
    sxx = ((x - xm) ** 2).sum()
    if sxx <= 0:
        raise ValueError("fit_power_law: all n are equal; the curve needs observations at two or more sizes.")
    slope = ((x - xm) * (y - ym)).sum() / sxx
    return float(np.exp(ym - slope * xm)), float(-slope)


def greedy_allocation(
    a, b, n0, budget: int, unit: int = 1, objective: str = "utilitarian", capacity=None
) -> np.ndarray:
    """Greedy sequential allocation of ``budget`` samples, ``unit`` at a time, across K groups.

    With err_g(n) = a_g n^(−b_g): ``"utilitarian"`` gives each unit to the group with the largest
    error reduction err_g(n_g) − err_g(n_g + unit) (maximising the mean over groups);
    ``"egalitarian"`` gives it to the group with the largest current error err_g(n_g). Both value
    sequences decrease in n, so the greedy choice equals the top ``budget/unit`` entries of the
    (K, budget/unit) value table — computed at once, no loop. ``capacity``: max units per group.
    Ties go to the lower group index. Returns the units given to each group (K,) int64.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: unknown {objective!r}; choose one of {OBJECTIVES}.")
    a, b, n0 = (np.asarray(v, dtype=np.float64) for v in (a, b, n0))
    k = len(a)
    units = int(budget) // int(unit)
    if units <= 0 or k == 0:
        return np.zeros(k, dtype=np.int64)
    n = np.maximum(n0[:, None] + unit * np.arange(units)[None, :], 1.0)
    err = a[:, None] * n ** (-b[:, None])
    if objective == "egalitarian":
        val = err
    else:
        val = err - a[:, None] * (n + unit) ** (-b[:, None])
    if capacity is not None:
        cap = np.asarray(capacity, dtype=np.int64)
        val = np.where(np.arange(units)[None, :] < cap[:, None], val, -np.inf)
    flat = np.argsort(-val.ravel(), kind="stable")[:units]
    flat = flat[np.isfinite(val.ravel()[flat])]
    return np.bincount(flat // units, minlength=k).astype(np.int64)


def _split_equal(budget: int, capacity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Equal split of ``budget`` over groups (remainder to random groups), respecting capacity."""
    k = len(capacity)
    m = np.minimum(np.full(k, budget // k), capacity)
    left = budget - int(m.sum())
    while left > 0:  # a few passes: each fills a group or hands out the last few prompts
        room = np.nonzero(m < capacity)[0]
        if left >= len(room):
            m[room] += np.minimum(left // len(room), capacity[room] - m[room])
        else:
            m[rng.permutation(room)[:left]] += 1
        left = budget - int(m.sum())
    return m


@register("equitable")
class EquitableSampler(Sampler):
    """Budget split across data groups from fitted per-group learning curves (utilitarian).

    Needs ``prompt_groups`` (one data-group label per prompt). Hyperparameters: ``pilot_obs`` (3),
    ``min_per_group`` (1), ``reward_range`` ((0, 1)), ``err_floor`` (1e-3: errors are clipped to
    [err_floor, 1] before the log), ``b_max`` (2.0), ``forget`` (1.0: weight kept by old curve
    observations each step; < 1 tracks a moving policy). See the module doc for what is a proposed
    reading.

    Metrics: ``gen_rounds`` (1), ``wasted_rollouts`` (0), ``kept_groups``, ``frac_zero_adv_groups``,
    ``equitable_pilot`` (1 while splitting equally), and per data group ``alloc/<label>`` (prompts
    this step) and ``err/<label>`` (observed 1 − success this step, NaN when not sampled).
    """

    objective = "utilitarian"

    needs = ("prompt_groups", "rewards")
    carries = ("key", "n", "obs", "sums", "used")  # per data group: prompts used, observed errors, the fitted curves

    def __init__(
        self,
        num_prompts: int,
        *,
        seed: int = 0,
        prompt_groups=None,
        pilot_obs: int = 3,
        min_per_group: int = 1,
        reward_range: tuple[float, float] = (0.0, 1.0),
        err_floor: float = 1e-3,
        b_max: float = 2.0,
        forget: float = 1.0,
        tol: float = 1e-6,
    ) -> None:
        super().__init__(num_prompts, seed=seed, prompt_groups=prompt_groups)
        if prompt_groups is None:
            raise ValueError(f"{self.name}: prompt_groups is required: pass one data-group label per prompt.")
        ids, k, uniques = factorize(prompt_groups)
        if ids.numel() != self.num_prompts:
            raise ValueError(
                f"{self.name}: prompt_groups has {ids.numel()} labels for {self.num_prompts} prompts; pass one per prompt."
            )
        if uniques is None:
            uniques = torch.unique(torch.as_tensor(prompt_groups)).tolist()
        self.labels = [str(u) for u in uniques]
        self.group_of = ids.numpy().astype(np.int64)
        self.k = k
        self.size = np.bincount(self.group_of, minlength=k)
        if pilot_obs < 2:
            raise ValueError(f"{self.name}: pilot_obs={pilot_obs}; a curve needs at least 2 observations.")
        if not 0.0 < forget <= 1.0:
            raise ValueError(f"{self.name}: forget={forget} must lie in (0, 1].")
        self.pilot_obs, self.min_per_group = int(pilot_obs), int(min_per_group)
        self.reward_range, self.err_floor, self.b_max, self.forget = tuple(reward_range), float(err_floor), float(b_max), float(forget)
        self.tol = float(tol)
        self.n = np.zeros(k)  # prompts trained per group
        self.obs = np.zeros(k, dtype=np.int64)
        self.sums = np.zeros((5, k))  # weight, Σx, Σy, Σxx, Σxy of (log n, log err)
        self.key = self.rng.random(self.num_prompts)  # within-group epoch order
        self.used = np.zeros(self.num_prompts, dtype=bool)

    # ------------------------------------------------------------------------------------------
    def curves(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(a, b, fitted) per group from the running least-squares sums; unfitted groups get a=1, b=0."""
        w, sx, sy, sxx, sxy = self.sums
        den = w * sxx - sx * sx
        ok = (self.obs >= 2) & (den > 1e-12)
        slope = np.where(ok, (w * sxy - sx * sy) / np.where(ok, den, 1.0), 0.0)
        inter = np.where(ok, (sy - slope * sx) / np.maximum(w, 1e-12), 0.0)
        return np.exp(inter), np.clip(-slope, 0.0, self.b_max), ok

    def allocate(self, budget: int) -> tuple[np.ndarray, bool]:
        """Prompts per data group for this step and whether the pilot (equal split) was used."""
        a, b, ok = self.curves()
        pilot = bool((self.obs < self.pilot_obs).any() | (~ok).any())
        if pilot:
            return _split_equal(budget, self.size.copy(), self.rng), True
        m0 = np.minimum(np.full(self.k, self.min_per_group if budget >= self.min_per_group * self.k else 0), self.size)
        extra = greedy_allocation(a, b, self.n + m0, budget - int(m0.sum()), 1, self.objective, self.size - m0)
        return m0 + extra, False

    def _pick(self, m: np.ndarray) -> np.ndarray:
        """Take m_g prompts of every group g from its epoch order (vectorised, two passes)."""
        n = self.num_prompts
        start = np.concatenate([[0], np.cumsum(self.size)[:-1]])
        picked = np.zeros(n, dtype=bool)
        need = m.copy()
        for _ in range(2):  # pass 2 only for groups whose epoch ran out mid-step
            avail = ~self.used & ~picked
            navail = np.bincount(self.group_of, weights=avail, minlength=self.k).astype(np.int64)
            take = np.minimum(need, navail)
            order = np.lexsort((self.key, ~avail, self.group_of))
            pos = np.arange(n) - start[self.group_of[order]]
            chosen = order[pos < take[self.group_of[order]]]
            picked[chosen] = True
            need -= take
            if not need.any():
                break
            refresh = need > 0  # new epoch for these groups; this step's picks go to its end
            mask = refresh[self.group_of]
            self.used[mask] = False
            self.key[mask] = self.rng.random(int(mask.sum()))
        self.used |= picked
        idx = np.nonzero(picked)[0]
        return idx[np.argsort(self.key[idx] + self.group_of[idx], kind="stable")]

    def collect(self, step: int, prompts_per_step: int, generate: Callable[[list[int]], Any]):
        bsz = self._check_budget(prompts_per_step)
        m, pilot = self.allocate(bsz)
        idx = self._pick(m)
        gen = self._generate(generate, idx)
        r01 = to_unit_interval(gen.rewards, self.reward_range, self.name).numpy()
        g_rows = self.group_of[gen.prompt_index.numpy()]
        rows = np.bincount(g_rows, minlength=self.k).astype(np.float64)
        succ = np.bincount(g_rows, weights=r01, minlength=self.k)
        seen = rows > 0
        err = np.where(seen, np.clip(1.0 - succ / np.maximum(rows, 1.0), self.err_floor, 1.0), np.nan)
        x = np.log(np.maximum(self.n, 1.0))
        y = np.log(np.where(seen, err, 1.0))
        w = seen.astype(np.float64)
        self.sums *= np.where(seen, self.forget, 1.0)[None, :]
        self.sums += np.stack([w, w * x, w * y, w * x * x, w * x * y])
        self.obs += seen
        self.n += m

        view = group_view(gen.prompt_index, gen.rewards)
        metrics: dict[str, float] = {
            "gen_rounds": 1,
            "wasted_rollouts": 0,
            "kept_groups": view.num_groups,
            "frac_zero_adv_groups": float((view.spread <= self.tol).double().mean()) if view.num_groups else 0.0,
            "equitable_pilot": int(pilot),
        }
        for g, label in enumerate(self.labels):
            metrics[f"alloc/{label}"] = int(m[g])
            metrics[f"err/{label}"] = float(err[g])
        return gen, metrics

    # ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        d = super().state_dict()
        d.update(
            n=self.n.tolist(), obs=self.obs.tolist(), sums=self.sums.tolist(), key=self.key.tolist(),
            used=self.used.astype(int).tolist(),
        )
        return d

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self.n = np.asarray(d["n"], dtype=np.float64)
        self.obs = np.asarray(d["obs"], dtype=np.int64)
        self.sums = np.asarray(d["sums"], dtype=np.float64)
        self.key = np.asarray(d["key"], dtype=np.float64)
        self.used = np.asarray(d["used"], dtype=bool)


@register("equitable_maxmin")
class EquitableMaxMinSampler(EquitableSampler):
    """Egalitarian (max-min) variant of ``equitable``: each prompt beyond ``min_per_group`` goes to
    the group whose fitted curve predicts the worst error at its current n (arXiv:2202.01327's sequential
    algorithm for an egalitarian f). Greedy from a pilot cannot reach an optimum below the pilot size."""

    objective = "egalitarian"
