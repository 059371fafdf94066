"""Test helper (no tests here): a tiny stand-in for the trainer's generation, G Bernoulli rewards per prompt."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class FakeGen:
    prompt_index: torch.Tensor  # (R,) int64
    rewards: torch.Tensor  # (R,) float32

    @classmethod
    def concat(cls, gens: list["FakeGen"]) -> "FakeGen":
        return cls(torch.cat([g.prompt_index for g in gens]), torch.cat([g.rewards for g in gens]))

    def select(self, rows: torch.Tensor) -> "FakeGen":
        return FakeGen(self.prompt_index[rows], self.rewards[rows])


class FakeEnv:
    """``env(list_of_prompt_indices) -> FakeGen``: G rows per prompt, reward 1 with probability p[prompt].

    Its own torch.Generator makes the rewards a deterministic function of the call sequence;
    ``state()``/``restore()`` let a test resume it alongside the sampler. ``calls`` logs every request.
    """

    def __init__(self, probs, group_size: int = 4, seed: int = 123, low: float = 0.0) -> None:
        self.p = torch.as_tensor(probs, dtype=torch.float64)
        self.g = group_size
        self.low = low
        self.gen = torch.Generator().manual_seed(seed)
        self.calls: list[list[int]] = []

    def __call__(self, idx: list[int]) -> FakeGen:
        self.calls.append(list(idx))
        pi = torch.as_tensor(idx, dtype=torch.int64).repeat_interleave(self.g)
        u = torch.rand(pi.numel(), generator=self.gen, dtype=torch.float64)
        r = torch.where(u < self.p[pi], 1.0, self.low).to(torch.float32)
        return FakeGen(pi, r)

    def state(self):
        return self.gen.get_state().clone()

    def restore(self, s) -> None:
        self.gen.set_state(s)
