"""``uniform``: epochs over the data in seeded random order, one generation round per step."""

from __future__ import annotations

from typing import Any, Callable

from ._base import EpochOrder, Sampler, group_view, register

__all__ = ["UniformSampler"]


@register("uniform")
class UniformSampler(Sampler):
    """Every step takes the next ``prompts_per_step`` prompts of a seeded shuffle of the data set;
    a new shuffle starts each epoch. Trains on every group it generates (no filtering).

    Metrics: ``gen_rounds`` (1), ``wasted_rollouts`` (0), ``kept_groups``, ``frac_zero_adv_groups``
    (groups whose rewards spread by at most ``tol``), ``epoch``.
    """

    needs = ("rewards",)
    carries = ("order",)  # rewards: only for its metrics; order: the epoch shuffle

    def __init__(self, num_prompts: int, *, seed: int = 0, prompt_groups=None, tol: float = 1e-6) -> None:
        super().__init__(num_prompts, seed=seed, prompt_groups=prompt_groups)
        self.tol = float(tol)
        self.order = EpochOrder(self.num_prompts, self.rng)

    def collect(self, step: int, prompts_per_step: int, generate: Callable[[list[int]], Any]):
        b = self._check_budget(prompts_per_step)
        idx = self.order.take(b)
        gen = self._generate(generate, idx)
        view = group_view(gen.prompt_index, gen.rewards)
        zero = float((view.spread <= self.tol).double().mean()) if view.num_groups else 0.0
        metrics = {
            "gen_rounds": 1,
            "wasted_rollouts": 0,
            "kept_groups": view.num_groups,
            "frac_zero_adv_groups": zero,
            "epoch": self.order.epoch,
        }
        return gen, metrics

    def state_dict(self) -> dict:
        d = super().state_dict()
        d["order"] = self.order.state_dict()
        return d

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self.order.load_state_dict(d["order"])
