"""Floor 6: the arena — methods x tasks x seeds with the embedded trainer, a SQLite result store,
honest statistics and a Markdown/HTML report (docs/arena.md).

    from grouprl.arena import load_spec, run_arena, write_report
    root = run_arena(load_spec(preset="quick"), workers=2)
    write_report(root)
"""

from .runner import ArenaError, run_arena, run_cell
from .spec import PRESETS, ArenaSpec, Cell, SpecError, load_spec, spec_from_dict
from .report import write_report
from .store import ArenaStore, export, slim

__all__ = ["ArenaError", "ArenaSpec", "ArenaStore", "Cell", "PRESETS", "SpecError", "export", "load_spec",
           "run_arena", "run_cell", "slim", "spec_from_dict", "write_report"]
