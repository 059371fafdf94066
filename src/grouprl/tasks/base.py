"""Examples and the Task base class: a prompt pool, a fixed held-out split and a verifier."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

__all__ = ["Example", "Task", "first_line", "EOS_MARKERS"]

#: Strings that end a completion when a decoder kept special tokens in the text.
EOS_MARKERS: tuple[str, ...] = ("<eos>", "</s>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>")


@dataclass
class Example:
    """One prompt with its reference answer.

    ``data_group`` labels the sub-population the example belongs to (the sub-task of a mixed task,
    the reasoning-gym dataset), for per-group reports; ``meta`` holds anything a verifier needs.
    """

    prompt: str
    answer: str
    data_group: str = "default"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("prompt", "answer", "data_group"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ValueError(f"Example.{name} must be a str, got {type(value).__name__} {value!r}; convert it with str().")


def first_line(completion: str) -> str:
    """The completion up to its first newline or end-of-sequence marker, stripped of spaces."""
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a str, got {type(completion).__name__}; decode the tokens first.")
    end = len(completion)
    for stop in ("\n", *EOS_MARKERS):
        i = completion.find(stop)
        if 0 <= i < end:
            end = i
    return completion[:end].strip()


class Task:
    """A task: a training pool, a fixed held-out eval split, and a verifier.

    Subclasses fill ``name``, ``train_pool``, ``eval_examples`` and ``data_groups`` in ``__init__``
    and may override :meth:`extract`, :meth:`score` and :meth:`reference`.

    ``trusted`` says whether :meth:`score` is known to be fast and safe, so a
    :class:`~grouprl.tasks.RewardGuard` may run it in the trainer's own process.
    """

    name: str = "task"
    trusted: bool = True
    train_pool: list[Example]
    eval_examples: list[Example]
    data_groups: list[str]

    def extract(self, completion: str) -> str:
        """The answer part of a completion (default: its first line, stripped)."""
        return first_line(completion)

    def score(self, example: Example, completion: str) -> float:
        """1.0 when the extracted answer equals ``example.answer`` (both stripped), else 0.0."""
        return 1.0 if self.extract(completion) == example.answer.strip() else 0.0

    def reference(self, example: Example) -> str:
        """The completion text a supervised warm-up trains on (the answer; the trainer adds EOS)."""
        return example.answer

    @property
    def max_answer_chars(self) -> int:
        """The longest reference completion over the train pool and eval split (a generation-length hint)."""
        return max(len(self.reference(e)) for e in (*self.train_pool, *self.eval_examples))

    def score_many(self, examples: Sequence[Example], completions: Sequence[str]) -> list[float]:
        """:meth:`score` over pairs (no guard: use RewardGuard in a trainer)."""
        if len(examples) != len(completions):
            raise ValueError(f"{len(examples)} examples but {len(completions)} completions; pass one completion per example.")
        return [self.score(e, c) for e, c in zip(examples, completions)]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, train={len(self.train_pool)}, "
            f"eval={len(self.eval_examples)}, groups={self.data_groups})"
        )
