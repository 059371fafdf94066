"""Procedural arithmetic tasks for small character-level models: ``"23+45="`` -> ``"68"``.

Task ``<op><d>`` draws operand pairs below 10^d whose larger operand has exactly ``d`` digits, so
``add1``, ``add2`` and ``add3`` share no prompt (``7+5=`` is add1, ``7+15=`` add2). The eval
split is a fixed sample of pairs chosen by ``split_seed`` (default 0, independent of the training
seed), so every run of the same task config is evaluated on the same prompts; the training pool
is drawn by ``seed`` from the remaining pairs, disjoint from the eval split by construction.
"""

from __future__ import annotations

import numpy as np

from .base import Example, Task

__all__ = ["Arithmetic", "Mixed", "OPS"]

#: op name -> (symbol, function on int64 arrays).
OPS = {
    "add": ("+", lambda a, b: a + b),
    "sub": ("-", lambda a, b: a - b),
    "mul": ("*", lambda a, b: a * b),
}


def _pairs(op: str, index: np.ndarray, digits: int) -> tuple[np.ndarray, np.ndarray]:
    """The operand pairs numbered ``index`` among all valid pairs for ``digits``.

    Valid pairs have both operands below n = 10^digits and the larger of them at least
    m = 10^(digits-1) (0 for one digit), so the digit levels are disjoint. add/mul: ordered pairs
    (a, b), n^2 - m^2 of them, numbered first the rows a < m (b in [m, n)), then the rows a >= m.
    sub: pairs with a >= b (answers stay non-negative), numbered row by row in the triangle.
    """
    n, m = 10**digits, (10 ** (digits - 1) if digits > 1 else 0)
    if op == "sub":
        k = index + m * (m + 1) // 2  # skip the rows a < m
        a = ((np.sqrt(8.0 * k + 1.0) - 1.0) // 2).astype(np.int64)
        # Correct float rounding at triangular-number boundaries.
        a -= (a * (a + 1) // 2) > k
        a += ((a + 1) * (a + 2) // 2) <= k
        return a, k - a * (a + 1) // 2
    low = index < m * (n - m)
    k2 = index - m * (n - m)
    a = np.where(low, index // max(n - m, 1), m + k2 // n)
    b = np.where(low, m + index % max(n - m, 1), k2 % n)
    return a, b


def _count(op: str, digits: int) -> int:
    n, m = 10**digits, (10 ** (digits - 1) if digits > 1 else 0)
    return (n * (n + 1) - m * (m + 1)) // 2 if op == "sub" else n * n - m * m


class Arithmetic(Task):
    """``a<op>b=`` -> the exact result; operands below 10^digits, the larger with exactly ``digits`` digits.

    Args:
        op: ``"add"``, ``"sub"`` (a >= b) or ``"mul"``.
        digits: 1, 2 or 3 (more works, the pool is sampled).
        seed: orders and samples the training pool.
        train_size: the pool size cap (all remaining pairs when fewer).
        eval_size: held-out prompts, capped at a fifth of all pairs (add1 has 100 pairs: 20 eval). The
            default 1,000 keeps one run's binomial standard error of accuracy at or below 0.016.
        split_seed: picks the eval split; keep the default to compare runs.
        reverse: the answer is written least-significant digit first (``"23+49="`` -> ``"27"``),
            the format in which small transformers learn addition much faster (Lee et al. 2023,
            "Teaching Arithmetic to Small Transformers"): each output digit then depends only on
            the digits of that place and the carry from the digit just written.
        name: the task name (default ``f"{op}{digits}"``, plus ``"r"`` when reversed), also the data group.
    """

    def __init__(
        self,
        op: str = "add",
        digits: int = 2,
        *,
        seed: int = 0,
        train_size: int = 200_000,
        eval_size: int = 1000,
        split_seed: int = 0,
        reverse: bool = False,
        name: str | None = None,
    ) -> None:
        if op not in OPS:
            raise ValueError(f"op={op!r}: choose one of {sorted(OPS)}.")
        if not (isinstance(digits, int) and 1 <= digits <= 9):
            raise ValueError(f"digits={digits!r}: use an int from 1 to 9.")
        if train_size < 1 or eval_size < 1:
            raise ValueError(f"train_size={train_size}, eval_size={eval_size}: both must be >= 1.")
        self.op, self.digits, self.seed, self.split_seed = op, digits, seed, split_seed
        self.reverse = bool(reverse)
        self.name = name or f"{op}{digits}{'r' if reverse else ''}"
        self.data_groups = [self.name]
        total = _count(op, digits)
        n_eval = min(eval_size, total // 5)
        eval_idx = np.random.default_rng([split_seed, digits, list(OPS).index(op)]).choice(
            total, size=n_eval, replace=False
        )
        rng = np.random.default_rng(seed)
        rest = total - n_eval
        if rest <= train_size:
            keep = np.ones(total, dtype=bool)
            keep[eval_idx] = False
            train_idx = rng.permutation(np.flatnonzero(keep))
        else:
            draw = rng.choice(total, size=min(total, train_size + n_eval), replace=False)
            train_idx = draw[~np.isin(draw, eval_idx)][:train_size]
        self.eval_examples = self._examples(np.sort(eval_idx))
        self.train_pool = self._examples(train_idx)

    def _examples(self, index: np.ndarray) -> list[Example]:
        sym, fn = OPS[self.op]
        a, b = _pairs(self.op, np.asarray(index, dtype=np.int64), self.digits)
        c = fn(a, b)
        g = self.name
        return [
            Example(f"{x}{sym}{y}=", str(z)[::-1] if self.reverse else str(z), g, {"a": x, "b": y})
            for x, y, z in zip(a.tolist(), b.tolist(), c.tolist())
        ]


class Mixed(Task):
    """Several tasks in one: the pools concatenated and shuffled by ``seed`` (minus any prompt that
    is in some sub-task's eval split); each example's ``data_group`` is its sub-task's name, and
    scoring dispatches to the sub-task."""

    def __init__(self, tasks: list[Task], *, seed: int = 0, name: str | None = None) -> None:
        if not tasks:
            raise ValueError("Mixed needs at least one task; e.g. get_task('mix:add1,add2').")
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"Mixed sub-task names must be distinct, got {names}.")
        self.tasks = {t.name: t for t in tasks}
        self.name = name or "mix:" + ",".join(names)
        self.trusted = all(t.trusted for t in tasks)
        self.data_groups = [g for t in tasks for g in t.data_groups]
        held = {e.prompt for t in tasks for e in t.eval_examples}
        pool = [e for t in tasks for e in t.train_pool if e.prompt not in held]
        order = np.random.default_rng(seed).permutation(len(pool))
        self.train_pool = [pool[i] for i in order.tolist()]
        self.eval_examples = [e for t in tasks for e in t.eval_examples]
        self._owner = {g: t for t in tasks for g in t.data_groups}

    def _task(self, example: Example) -> Task:
        try:
            return self._owner[example.data_group]
        except KeyError:
            raise ValueError(
                f"example data_group {example.data_group!r} is not one of this mixed task's groups {self.data_groups}."
            ) from None

    def extract(self, completion: str) -> str:
        return next(iter(self.tasks.values())).extract(completion)

    def score(self, example: Example, completion: str) -> float:
        return self._task(example).score(example, completion)

    def reference(self, example: Example) -> str:
        return self._task(example).reference(example)
