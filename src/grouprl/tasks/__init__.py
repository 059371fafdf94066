"""Floor 3: tasks (prompt pools, fixed eval splits, verifiers) and the reward guard.

    from grouprl.tasks import get_task, RewardGuard

    task = get_task("mix:add1,add2,sub2", seed=0)
    guard = RewardGuard.for_task(task)            # built-in verifiers run in-process
    rewards, failed = guard.score_batch(examples, completions)

Task names: the arithmetic tasks ``add1..add3``, ``sub1..sub3``, ``mul1..mul3`` and their
reversed-answer forms ``add1r..mul3r`` (least-significant digit first); ``mixed``
(= ``mix:add1,add2,sub2,mul1``); any ``mix:<name>,<name>,...``; and ``rg:<dataset>`` for a
reasoning-gym dataset (optional extra ``grouprl[gym]``).
"""

from __future__ import annotations

from typing import Any, Callable

from ..core.registry import Registry, UnknownName, suggest
from .arithmetic import OPS, Arithmetic, Mixed
from .base import EOS_MARKERS, Example, Task, first_line
from .guard import FAILURE_KINDS, RewardGuard
from .gym import ReasoningGymTask, import_reasoning_gym

__all__ = [
    "Arithmetic",
    "EOS_MARKERS",
    "Example",
    "FAILURE_KINDS",
    "Mixed",
    "ReasoningGymTask",
    "RewardGuard",
    "TASKS",
    "Task",
    "first_line",
    "get_task",
    "import_reasoning_gym",
    "register_task",
]

#: name -> factory(seed=..., **kw) -> Task.
TASKS: Registry[Callable[..., Task]] = Registry("task")

#: The default mixed task's parts.
MIXED_DEFAULT = ("add1", "add2", "sub2", "mul1")


def register_task(name: str, factory: Callable[..., Task]) -> Callable[..., Task]:
    """Register ``factory(seed=..., **kw) -> Task`` under ``name`` (``get_task(name)`` finds it)."""
    if ":" in name or "," in name:
        raise ValueError(f"task name {name!r} may not contain ':' or ','; those are spec separators.")
    return TASKS.add(name, factory)


def _arith(op: str, digits: int, reverse: bool = False) -> Callable[..., Task]:
    def make(seed: int = 0, **kw: Any) -> Task:
        return Arithmetic(op, digits, seed=seed, reverse=reverse, **kw)

    make.__doc__ = f"{op} with operands of up to {digits} digit(s)" + (", answer digits reversed" if reverse else "")
    return make


for _op in OPS:
    for _d in (1, 2, 3):
        register_task(f"{_op}{_d}", _arith(_op, _d))
        register_task(f"{_op}{_d}r", _arith(_op, _d, reverse=True))
register_task("mixed", lambda seed=0, **kw: _mix(list(MIXED_DEFAULT), seed, name="mixed", **kw))


def _mix(parts: list[str], seed: int, name: str | None = None, **kw: Any) -> Task:
    if not parts or any(not p for p in parts):
        raise ValueError(f"empty task name in a mix spec {parts}; write e.g. 'mix:add1,add2'.")
    return Mixed([get_task(p, seed=seed, **kw) for p in parts], seed=seed, name=name)


def get_task(spec: "str | Task", seed: int = 0, **kw: Any) -> Task:
    """The task named by ``spec``: a registered name, ``"mix:a,b,..."`` or ``"rg:<dataset>"``.

    Keyword arguments go to the task's constructor (e.g. ``train_size``, ``eval_size`` for the
    arithmetic tasks; ``size``, ``eval_size`` for reasoning-gym). A Task passes through unchanged.
    """
    if isinstance(spec, Task):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"task spec must be a str or a Task, got {type(spec).__name__}.")
    spec = spec.strip()
    if spec.startswith("mix:"):
        return _mix([p.strip() for p in spec[4:].split(",")], seed, **kw)
    if spec.startswith("rg:"):
        name = spec[3:].strip()
        if not name:
            raise ValueError("'rg:' needs a reasoning-gym dataset name, e.g. 'rg:leg_counting'.")
        return ReasoningGymTask(name, seed=seed, **kw)
    if spec not in TASKS:
        choices = [*TASKS, "mix:<a>,<b>", "rg:<dataset>"]
        raise UnknownName(f"unknown task {spec!r}: {suggest(spec, choices)}")
    return TASKS[spec](seed=seed, **kw)
