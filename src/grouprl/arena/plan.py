"""The plan of an arena sweep, without running it (``grouprl arena ... --dry-run``): each method's
overrides, the number of cells, the warm starts (shipped, or the SFT keys that would be built) and
an estimated time from measured CPU seconds.

The estimate: Σ over cells of the cell's measured CPU seconds (user + sys of one cell at
``threads=1``, ``PRESET_CPU_S`` in ``grouprl.arena.spec``, measured with
``benchmarks/arena_cell_cpu.py``) plus Σ over the SFT warm starts to be built of their measured CPU
seconds, divided by the cells that run at once, min(workers, CPU cores, cells). A cell counts as
measured when its config, less its seed, equals a measured preset cell's; the plan names the cells
and warm starts that have no measurement instead of guessing them. It ignores the wait of the
first cells of a seed for their shared warm start and the machine's other load.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from .spec import PRESET_CPU_S, PRESETS, ArenaSpec, spec_from_dict, warm_key

__all__ = ["Plan", "format_plan", "plan"]


@dataclass
class Plan:
    """What a sweep of ``spec`` would run and cost (see the module docstring)."""

    spec: ArenaSpec
    n_cells: int
    warm_shipped: dict[str, int]            # "add3r-1M" / "none (...)" / "init DIR" -> cells starting there
    warm_sft: dict[str, str]                # SFT key -> its first cell id
    parallel: int
    cpu_s: float                            # measured part of the total CPU seconds
    unmeasured_cells: list[str] = field(default_factory=list)
    unmeasured_warm: list[str] = field(default_factory=list)

    @property
    def wall_s(self) -> float:
        return self.cpu_s / max(self.parallel, 1)


def _less_seed(config: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in config.items() if k != "seed"}, sort_keys=True, default=str)


def _measured() -> dict[str, tuple[float, float | None]]:
    """Config less seed -> (cell CPU s, CPU s of its SFT warm start or None) for the measured preset cells."""
    out: dict[str, tuple[float, float | None]] = {}
    for name, m in PRESET_CPU_S.items():
        for c in spec_from_dict(PRESETS[name]).cells():
            if c.method in m["cells"]:
                out.setdefault(_less_seed(c.config), (float(m["cells"][c.method]), m.get("warm_start")))
    return out


def _start_of(config: dict[str, Any]) -> str:
    """Where a cell without an SFT key starts RL: a shipped warm start, ``init``, or the bare model."""
    from ..train.config import build_config
    from ..train.task_source import shipped_warm_start

    if config.get("init") is not None:
        return f"init {config['init']}"
    ws = shipped_warm_start(build_config(dict(config)))
    return f"shipped {ws.name}" if ws is not None else "none (sft_steps=0: RL from the untrained model)"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def plan(spec: ArenaSpec, workers: int = 2) -> Plan:
    """The plan of a fresh sweep of ``spec`` with ``workers`` local workers."""
    cells = spec.cells()
    measured = _measured()
    shipped: dict[str, int] = {}
    sft: dict[str, str] = {}
    sft_config: dict[str, dict[str, Any]] = {}
    cpu, no_cells, no_warm = 0.0, [], []
    for c in cells:
        key = warm_key(c.config)
        if key is None:
            where = _start_of(c.config)
            shipped[where] = shipped.get(where, 0) + 1
        elif key not in sft:
            sft[key], sft_config[key] = c.cell_id, c.config
        m = measured.get(_less_seed(c.config))
        if m is None:
            no_cells.append(c.cell_id)
        else:
            cpu += m[0]
    for key, config in sft_config.items():
        m = measured.get(_less_seed(config))
        if m is None or m[1] is None:
            no_warm.append(key)
        else:
            cpu += m[1]
    parallel = max(1, min(workers, _cores(), len(cells)))
    return Plan(spec, len(cells), shipped, sft, parallel, cpu, no_cells, no_warm)


def _minutes(s: float) -> str:
    return f"{s / 60:.0f} min" if s >= 600 else f"{s / 60:.1f} min"


def _n(k: int, noun: str) -> str:
    return f"{k} {noun}" + ("" if k == 1 else "s")


def format_plan(p: Plan) -> str:
    """The plan as plain text (what ``--dry-run`` prints)."""
    s = p.spec
    head = (f"arena {s.name!r}: {_n(len(s.methods), 'method')} x {_n(len(s.tasks), 'task')} x "
            f"{_n(len(s.seeds), 'seed')} = {p.n_cells} cells (seeds {', '.join(map(str, s.seeds))}); "
            f"baseline {s.baseline}, metric {s.metric}")
    lines = [head, "base: " + (", ".join(f"{k}={v}" for k, v in s.base.items()) or "(trainer defaults)")]
    for t, over in s.tasks.items():
        lines.append(f"task {t}: " + (", ".join(f"{k}={v}" for k, v in over.items()) or "(no overrides)"))
    lines.append("methods:")
    for m, over in s.methods.items():
        lines.append(f"  {m}: " + (", ".join(f"{k}={v}" for k, v in over.items()) or "(the trainer's defaults)"))
    lines.append("warm starts:")
    for where, n in p.warm_shipped.items():
        lines.append(f"  {where}: {n} cells")
    if p.warm_sft:
        keys = list(p.warm_sft)
        shown = ", ".join(keys[:4]) + (f", ... ({len(keys)} in all)" if len(keys) > 4 else "")
        lines.append(f"  SFT, built once per key and shared by the cells with that key: {len(keys)} to build: {shown}")
    total = len(p.unmeasured_cells) + len(p.unmeasured_warm)
    est = (f"estimated time: {p.cpu_s:,.0f} CPU s (measured per cell and warm start, threads=1) / "
           f"{p.parallel} in parallel = {_minutes(p.wall_s)} on {p.parallel} idle cores")
    if total:
        miss = (p.unmeasured_cells + p.unmeasured_warm)[:3]
        est = (f"estimated time: unknown: {total} of {p.n_cells + len(p.warm_sft)} cells and warm starts have no "
               f"measured CPU time (e.g. {', '.join(miss)}): measured are the unchanged presets' cells "
               f"({', '.join(PRESET_CPU_S)}; benchmarks/arena_cell_cpu.py). Measured part: {p.cpu_s:,.0f} CPU s")
    lines.append(est)
    return "\n".join(lines)
