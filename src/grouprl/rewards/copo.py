"""COPO's answer side (arXiv:2508.04138): extract each response's final answer and map
it to an int64 id for ``Rollouts(answer=...)``; the consistency entropy, global reward and blend
live in ``grouprl.advantages.copo`` because they are standardised across the batch's prompts.

Matching is exact string equality after extraction (the reference code's sympy canonicalisation
is disabled there). A failed extraction gives the empty string, which still counts as one answer
value.
"""

from __future__ import annotations

import hashlib
import re
from typing import Callable, Iterable

import torch
from torch import Tensor

__all__ = ["extract_boxed_answer", "answer_ids", "stable_id"]

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")


def extract_boxed_answer(text: str) -> str:
    """The content of the last ``\\boxed{...}`` (braces balanced), else the last number in the
    text, else ``""``. Surrounding whitespace is stripped."""
    start = text.rfind("\\boxed{")
    if start >= 0:
        i = start + len("\\boxed{")
        depth = 1
        for j in range(i, len(text)):
            c = text[j]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return text[i:j].strip()
    nums = _NUMBER.findall(text)
    return nums[-1] if nums else ""


def stable_id(s: str) -> int:
    """A 64-bit signed id of a string, the same in every process (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


def answer_ids(
    texts: Iterable[str], extractor: Callable[[str], str] | None = extract_boxed_answer
) -> Tensor:
    """int64 (B,) ids of the extracted final answers of ``texts`` (``extractor=None``: the texts
    are already the answers). Equal extracted strings get equal ids."""
    ids = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"answer_ids: row {i} is {type(t).__name__}, not a string; pass the response texts.")
        ids.append(stable_id(extractor(t) if extractor is not None else t))
    return torch.tensor(ids, dtype=torch.int64)
