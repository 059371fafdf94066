"""reasoning-gym datasets as grouprl tasks (optional extra: ``pip install grouprl[gym]``).

``get_task("rg:leg_counting", seed=0, size=2000)`` builds the training pool from
``reasoning_gym.create_dataset(name, seed=seed, size=size)`` and the eval split from the same
dataset generated with ``split_seed`` (fixed by default, so every run sees the same eval prompts);
eval questions that also occur in the pool are dropped from the pool. Each example's
``data_group`` is the dataset name; scores come from the dataset's own ``score_answer``.
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import EOS_MARKERS, Example, Task

__all__ = ["ReasoningGymTask", "import_reasoning_gym"]


def import_reasoning_gym():
    """Import reasoning_gym or raise an ImportError saying how to install it."""
    try:
        return importlib.import_module("reasoning_gym")
    except ImportError as err:
        raise ImportError(
            "reasoning-gym tasks ('rg:<dataset>') need the optional package reasoning-gym: "
            "pip install 'grouprl[gym]'  (or: pip install reasoning-gym)"
        ) from err


class ReasoningGymTask(Task):
    """A reasoning-gym dataset: question -> prompt, answer -> answer, ``score_answer`` -> reward.

    Args:
        dataset: the reasoning-gym dataset name (``reasoning_gym.factory.DATASETS``).
        seed: the training pool's generator seed.
        size: the training pool size.
        eval_size: the eval split size.
        split_seed: the eval split's generator seed (default 10_000_019, apart from usual seeds).
        prompt_suffix: appended to every question (e.g. ``"\\nAnswer:"``).
        first_line_only: score only the completion's first line (default False: the whole
            completion up to an end-of-sequence marker, stripped; many answers span lines).
        **config: extra dataset options passed to ``create_dataset``.

    ``trusted`` is False: its verifiers are third-party code, so a RewardGuard runs them in its
    worker process with a timeout.
    """

    trusted = False

    def __init__(
        self,
        dataset: str,
        *,
        seed: int = 0,
        size: int = 1000,
        eval_size: int = 200,
        split_seed: int = 10_000_019,
        prompt_suffix: str = "",
        first_line_only: bool = False,
        **config: Any,
    ) -> None:
        rg = import_reasoning_gym()
        if split_seed == seed:
            raise ValueError(f"split_seed={split_seed} equals seed: the eval split would repeat the pool; pick another.")
        self.dataset_name = dataset
        self.name = f"rg:{dataset}"
        self.data_groups = [dataset]
        self.prompt_suffix, self.first_line_only = prompt_suffix, first_line_only
        try:
            train = rg.create_dataset(dataset, seed=seed, size=size, **config)
            held = rg.create_dataset(dataset, seed=split_seed, size=eval_size, **config)
        except (KeyError, ValueError) as err:
            names = sorted(getattr(getattr(rg, "factory", None), "DATASETS", {}) or [])
            from ..core.registry import suggest

            hint = suggest(dataset, names) if names else str(err)
            raise ValueError(f"reasoning-gym dataset {dataset!r} could not be created ({err}); {hint}") from err
        self._datasets = {"train": train, "eval": held}
        self.eval_examples = [self._example(e, "eval", i) for i, e in enumerate(held)]
        seen = {e.prompt for e in self.eval_examples}
        pool = [self._example(e, "train", i) for i, e in enumerate(train)]
        self.train_pool = [e for e in pool if e.prompt not in seen]

    def _example(self, entry: dict, split: str, index: int) -> Example:
        return Example(
            prompt=str(entry["question"]) + self.prompt_suffix,
            answer=str(entry["answer"]),
            data_group=self.dataset_name,
            meta={"entry": entry, "split": split, "index": index},
        )

    def extract(self, completion: str) -> str:
        if self.first_line_only:
            return super().extract(completion)
        end = len(completion)
        for stop in EOS_MARKERS:
            i = completion.find(stop)
            if 0 <= i < end:
                end = i
        return completion[:end].strip()

    def score(self, example: Example, completion: str) -> float:
        """The dataset's ``score_answer(extracted_answer, entry)`` (usually 1.0 / 0.0, some partial)."""
        entry = example.meta.get("entry")
        if entry is None:
            raise ValueError(f"example {example.prompt[:40]!r} has no meta['entry']; build it with ReasoningGymTask.")
        ds = self._datasets[example.meta.get("split", "train")]
        return float(ds.score_answer(self.extract(completion), entry=entry))
