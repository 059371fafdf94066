"""A small name -> object registry with helpful errors (close matches on a typo)."""

from __future__ import annotations

import difflib
from typing import Generic, Iterator, TypeVar

T = TypeVar("T")

__all__ = ["Registry", "UnknownName", "suggest"]


class UnknownName(KeyError, ValueError):
    """An unknown registry name; the message lists the close matches."""

    def __str__(self) -> str:
        return str(self.args[0])


def suggest(name: str, choices) -> str:
    """A hint for a mistyped ``name``: prefix matches first, then difflib's close matches."""
    choices = list(choices)
    prefix = [c for c in choices if c and (name.startswith(c) or c.startswith(name))]
    close = prefix + [c for c in difflib.get_close_matches(name, choices, n=3, cutoff=0.5) if c not in prefix]
    close = close[:3]
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    return "choose one of: " + ", ".join(sorted(choices))


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        if name in self._items and self._items[name] is not item:
            raise ValueError(f"{self.kind} {name!r} is already registered; pick another name.")
        self._items[name] = item
        return item

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownName(f"unknown {self.kind} {name!r}: {suggest(name, self._items)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def items(self):
        return sorted(self._items.items())
