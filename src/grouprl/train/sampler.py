"""A built-in ``uniform`` prompt sampler with the sampler protocol of ``grouprl.sampling``.

Protocol: ``collect(step, prompts_per_step, generate) -> (gen, metrics)`` where
``generate(list_of_prompt_indices) -> gen`` samples and scores those prompts; plus
``state_dict()`` / ``load_state_dict()``. ``get_sampler`` uses ``grouprl.sampling`` when it is
installed and provides ``uniform`` itself otherwise.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

__all__ = ["UniformSampler", "get_sampler"]


def _step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """A generator that depends only on (seed, step, stream): resumed runs draw the same numbers."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 16 + stream)


class UniformSampler:
    """Each step, ``prompts_per_step`` distinct prompts drawn uniformly from the pool.

    Stateless across steps (the draw depends on (seed, step) only), so ``state_dict`` is trivial.
    """

    def __init__(self, num_prompts: int, *, seed: int = 0, prompt_groups: Sequence[Any] | None = None) -> None:
        if num_prompts < 1:
            raise ValueError(f"UniformSampler: num_prompts={num_prompts}; the pool is empty.")
        self.num_prompts = num_prompts
        self.seed = seed

    def collect(self, step: int, prompts_per_step: int, generate: Callable[[list[int]], Any]) -> tuple[Any, dict]:
        g = _step_generator(self.seed, step, 7)
        k = min(prompts_per_step, self.num_prompts)
        idx = torch.randperm(self.num_prompts, generator=g)[:k].tolist()
        return generate(idx), {}

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "num_prompts": self.num_prompts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state.get("num_prompts", self.num_prompts)) != self.num_prompts:
            raise ValueError(
                f"UniformSampler.load_state_dict: the checkpoint's pool has {state['num_prompts']} prompts, "
                f"this task has {self.num_prompts}; resume with the same task and seed."
            )
        self.seed = int(state.get("seed", self.seed))


def get_sampler(name: str, num_prompts: int, *, seed: int, prompt_groups: Sequence[Any] | None = None, **hp: Any):
    """The sampler ``name`` from ``grouprl.sampling`` if available, else the built-in ``uniform``."""
    try:
        from ..sampling import get_sampler as _lib_get_sampler  # type: ignore[attr-defined]
    except ImportError:
        _lib_get_sampler = None
    if _lib_get_sampler is not None:
        return _lib_get_sampler(name, num_prompts, seed=seed, prompt_groups=prompt_groups, **hp)
    if name != "uniform":
        raise ValueError(f"sampler {name!r} is unknown; without grouprl.sampling only 'uniform' is available.")
    if hp:
        raise ValueError(f"sampler 'uniform' takes no hyperparameters, got {sorted(hp)}.")
    return UniformSampler(num_prompts, seed=seed, prompt_groups=prompt_groups)
