"""``vade``: Variance-Aware Dynamic Sampling (Hu et al., arXiv 2511.18902).

Verified (paper abstract): a Beta posterior over each prompt's correctness probability, updated
online from the rollouts the trainer already makes; a Thompson sampler that picks the next batch
*before* rollout to maximise information gain through the estimated correctness probability; a
two-scale prior decay so the estimates track the moving policy.

**Proposed reading** (of VADE, arXiv:2511.18902, from its abstract; not checked against FloSophoraeX/VADE): every formula
below — the update, the score, the decay and its constants.

* prior Beta(α0, β0) = Beta(1, 1);
* update after a group of rewards r_j ∈ [0, 1]: α_i += Σ_j r_j, β_i += Σ_j (1 − r_j);
* Thompson step: p̃_i ~ Beta(α_i, β_i), score s_i = p̃_i (1 − p̃_i) (Bernoulli variance), or
  ``score="mixed"``: s_i = 1 − p̃_i^G − (1 − p̃_i)^G (probability that the group is not constant);
  take the top-B scores, random tie-break;
* decay toward the prior, x ← x0 + λ (x − x0): fast (λ_s) for all prompts after every step, slow
  (λ_e) once per epoch (every ``num_prompts`` selections); or ``decay="staleness"``: a prompt
  last updated Δt steps ago is scored with λ_s^Δt applied lazily.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ._base import Sampler, ceil_int, group_view, register, to_unit_interval

__all__ = ["VadeSampler", "beta_update", "decay_toward_prior", "thompson_scores", "top_k"]

SCORES = ("variance", "mixed")
DECAYS = ("two_scale", "staleness")


def beta_update(alpha: np.ndarray, beta: np.ndarray, prompt_index: np.ndarray, rewards01: np.ndarray):
    """α_i += Σ_j r_j and β_i += Σ_j (1 − r_j) over the rows j of prompt i (vectorised, returns copies)."""
    n = len(alpha)
    succ = np.bincount(prompt_index, weights=rewards01, minlength=n)
    rows = np.bincount(prompt_index, minlength=n).astype(np.float64)
    return alpha + succ, beta + (rows - succ)


def decay_toward_prior(x: np.ndarray, x0: float, lam) -> np.ndarray:
    """x0 + λ (x − x0): forget toward the prior (λ may be an array, e.g. λ^Δt per prompt)."""
    return x0 + lam * (x - x0)


def thompson_scores(p: np.ndarray, score: str = "variance", group_size: int | None = None) -> np.ndarray:
    """Information score of sampled success probabilities: p(1 − p), or 1 − p^G − (1 − p)^G."""
    if score == "variance":
        return p * (1.0 - p)
    if score == "mixed":
        if not group_size or group_size < 1:
            raise ValueError("vade: score='mixed' needs group_size=G (responses per prompt).")
        return 1.0 - p**group_size - (1.0 - p) ** group_size
    raise ValueError(f"vade: unknown score {score!r}; choose one of {SCORES}.")


def top_k(scores: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of the ``k`` largest scores, highest first; ties broken at random by ``rng``."""
    tie = rng.random(len(scores))
    return np.lexsort((tie, -scores))[:k]


@register("vade")
class VadeSampler(Sampler):
    """VADE: Thompson sampling of prompts from per-prompt Beta posteriors of success (see module doc).

    Hyperparameters (all proposed readings): ``alpha0``/``beta0`` (1, 1),
    ``score`` ("variance" | "mixed", the latter needs ``group_size``), ``fast_decay`` λ_s (0.99),
    ``slow_decay`` λ_e (0.9), ``decay`` ("two_scale" | "staleness"), ``candidates`` (None: score the
    whole pool; c: score a random subset of ceil(c·B) prompts), ``reward_range`` (rewards are mapped
    linearly onto [0, 1]; (-1, 1) for ±1 rewards).

    ``last_predictions`` after each step: the selected prompts, their posterior means before the
    rollout (the predicted success), and the observed group success rate — feed them to
    ``grouprl.metrics.calibration``. Metrics: ``gen_rounds`` (1), ``wasted_rollouts`` (0),
    ``kept_groups``, ``frac_zero_adv_groups``, ``vade_pred_mean``, ``vade_score_mean``,
    ``vade_brier`` (posterior mean vs observed success), ``vade_new_prompts`` (never seen before).
    """

    needs = ("rewards",)
    carries = ("alpha", "beta", "last_update", "selected_total", "t")  # the per-prompt Beta posteriors and their decay clock

    def __init__(
        self,
        num_prompts: int,
        *,
        seed: int = 0,
        prompt_groups=None,
        alpha0: float = 1.0,
        beta0: float = 1.0,
        score: str = "variance",
        group_size: int | None = None,
        fast_decay: float = 0.99,
        slow_decay: float = 0.9,
        decay: str = "two_scale",
        candidates: float | None = None,
        reward_range: tuple[float, float] = (0.0, 1.0),
        tol: float = 1e-6,
    ) -> None:
        super().__init__(num_prompts, seed=seed, prompt_groups=prompt_groups)
        if not (alpha0 > 0 and beta0 > 0):
            raise ValueError(f"vade: alpha0={alpha0}, beta0={beta0}; the Beta prior needs both > 0 (default 1, 1).")
        if score not in SCORES:
            raise ValueError(f"vade: unknown score {score!r}; choose one of {SCORES}.")
        if score == "mixed" and not group_size:
            raise ValueError("vade: score='mixed' needs group_size=G (responses per prompt).")
        if decay not in DECAYS:
            raise ValueError(f"vade: unknown decay {decay!r}; choose one of {DECAYS}.")
        for nm, lam in (("fast_decay", fast_decay), ("slow_decay", slow_decay)):
            if not 0.0 <= lam <= 1.0:
                raise ValueError(f"vade: {nm}={lam} must lie in [0, 1] (1 = never forget).")
        if candidates is not None and not candidates > 0:
            raise ValueError(f"vade: candidates={candidates}; pass c > 0 (subset of c·B prompts) or None (all).")
        self.alpha0, self.beta0 = float(alpha0), float(beta0)
        self.score, self.group_size = score, group_size
        self.fast_decay, self.slow_decay, self.decay = float(fast_decay), float(slow_decay), decay
        self.candidates = candidates
        self.reward_range = tuple(reward_range)
        self.tol = float(tol)
        self.alpha = np.full(self.num_prompts, self.alpha0)
        self.beta = np.full(self.num_prompts, self.beta0)
        self.last_update = np.full(self.num_prompts, -1, dtype=np.int64)  # step count of the last update
        self.t = 0  # steps taken
        self.selected_total = 0

    # ------------------------------------------------------------------------------------------
    def posterior(self, idx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(α, β) as scored now (staleness decay applied lazily), for ``idx`` or all prompts."""
        idx = np.arange(self.num_prompts) if idx is None else idx
        a, b = self.alpha[idx], self.beta[idx]
        if self.decay == "staleness":
            age = np.where(self.last_update[idx] >= 0, self.t - self.last_update[idx], 0)
            lam = self.fast_decay ** age.astype(np.float64)
            a, b = decay_toward_prior(a, self.alpha0, lam), decay_toward_prior(b, self.beta0, lam)
        return a, b

    def predicted_success(self) -> Tensor:
        """Posterior mean α/(α+β) of every prompt (float64 tensor)."""
        a, b = self.posterior()
        return torch.from_numpy(a / (a + b))

    def collect(self, step: int, prompts_per_step: int, generate: Callable[[list[int]], Any]):
        bsz = self._check_budget(prompts_per_step)
        n = self.num_prompts
        if self.candidates is None:
            cand = np.arange(n)
        else:
            cand = np.sort(self.rng.choice(n, size=min(n, max(bsz, ceil_int(self.candidates * bsz))), replace=False))
        a, b = self.posterior(cand)
        draws = self.rng.beta(a, b)
        scores = thompson_scores(draws, self.score, self.group_size)
        pick = top_k(scores, bsz, self.rng)
        idx = cand[pick]
        pred = a[pick] / (a[pick] + b[pick])
        new_prompts = int((self.last_update[idx] < 0).sum())

        gen = self._generate(generate, idx)
        pidx = gen.prompt_index.numpy()
        r01 = to_unit_interval(gen.rewards, self.reward_range, "vade").numpy()

        # posterior update of the selected prompts (lazy decay materialised first)
        if self.decay == "staleness":
            self.alpha[idx], self.beta[idx] = self.posterior(idx)
            self.last_update[idx] = self.t
        else:
            self.last_update[idx] = self.t
        self.alpha, self.beta = beta_update(self.alpha, self.beta, pidx, r01)
        rows = np.bincount(pidx, minlength=n)[idx].astype(np.float64)
        succ = np.bincount(pidx, weights=r01, minlength=n)[idx]
        seen = rows > 0
        observed = np.divide(succ, rows, out=np.full_like(succ, np.nan), where=seen)

        # decay toward the prior
        self.t += 1
        if self.decay == "two_scale":
            self.alpha = decay_toward_prior(self.alpha, self.alpha0, self.fast_decay)
            self.beta = decay_toward_prior(self.beta, self.beta0, self.fast_decay)
            epochs = (self.selected_total + bsz) // n - self.selected_total // n
            if epochs:
                lam = self.slow_decay**epochs
                self.alpha = decay_toward_prior(self.alpha, self.alpha0, lam)
                self.beta = decay_toward_prior(self.beta, self.beta0, lam)
        self.selected_total += bsz

        view = group_view(gen.prompt_index, gen.rewards)
        zero = float((view.spread <= self.tol).double().mean()) if view.num_groups else 0.0
        self.last_predictions = {
            "prompt_index": torch.from_numpy(idx[seen].copy()),
            "predicted": torch.from_numpy(pred[seen].copy()),
            "observed": torch.from_numpy(observed[seen].copy()),
        }
        brier = float(np.mean((pred[seen] - observed[seen]) ** 2)) if seen.any() else float("nan")
        metrics = {
            "gen_rounds": 1,
            "wasted_rollouts": 0,
            "kept_groups": view.num_groups,
            "frac_zero_adv_groups": zero,
            "vade_pred_mean": float(pred.mean()),
            "vade_score_mean": float(scores[pick].mean()),
            "vade_brier": brier,
            "vade_new_prompts": new_prompts,
        }
        return gen, metrics

    # ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        d = super().state_dict()
        d.update(
            alpha=self.alpha.tolist(), beta=self.beta.tolist(), last_update=self.last_update.tolist(),
            t=self.t, selected_total=self.selected_total,
        )
        return d

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self.alpha = np.asarray(d["alpha"], dtype=np.float64)
        self.beta = np.asarray(d["beta"], dtype=np.float64)
        self.last_update = np.asarray(d["last_update"], dtype=np.int64)
        self.t, self.selected_total = int(d["t"]), int(d["selected_total"])
