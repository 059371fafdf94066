"""The arena report's groupwise-regret section (arXiv 2310.04652) on a synthetic store."""

from __future__ import annotations

import re
from types import SimpleNamespace

from grouprl.arena import ArenaStore
from grouprl.arena.report import write_report
from grouprl.arena.runner import DB_NAME

# final per-group accuracy (seed 0, seed 1) of three methods on groups x and y
FINAL = {
    "a": {"x": (0.5, 0.7), "y": (0.2, 0.2)},
    "b": {"x": (0.6, 0.4), "y": (0.5, 0.5)},
    "c": {"x": (0.8, 0.8), "y": (0.2, 0.4)},
}


def _store(root, final, seeds=(0, 1), missing=()):
    store = ArenaStore(root / DB_NAME)
    spec = {"name": "syn", "methods": {m: {} for m in final}, "tasks": ["t"], "seeds": list(seeds),
            "baseline": "a", "metric": "acc", "base": {}}
    store.set_meta(spec=spec, versions={})
    cells = [SimpleNamespace(cell_id=f"{m}__t__s{s}", method=m, task="t", seed=s, config={})
             for m in final for s in seeds if (m, s) not in missing]
    store.add_cells(cells)
    for c in cells:
        accs = {g: v[c.seed] for g, v in final[c.method].items()}
        last = {"step": 4, "acc": sum(accs.values()) / len(accs), **{f"acc/{g}": a for g, a in accs.items()}}
        first = {"step": 0, "acc": 0.1, "acc/x": 0.1, "acc/y": 0.1}
        store.finish(c.cell_id, {"status": "done", "error": None, "evals": [first, last],
                                 "metrics": [{"step": 1, "time/step": 0.1, "frac_constant_groups": 0.5}],
                                 "summary": {}, "wall_s": 1.0})
    store.close()


def _regret_rows(md: str) -> dict[str, list[str]]:
    sec = md[md.index("Groupwise regret"):]
    return {m.group(1): [c.strip() for c in m.group(0).strip().strip("|").split("|")][1:]
            for m in re.finditer(r"^\| `(\w+)` \|.*$", sec.split("\n## ")[0], flags=re.M)}


def test_report_groupwise_regret_synthetic(tmp_path):
    _store(tmp_path, FINAL)
    md = write_report(tmp_path)["markdown"].read_text()
    rows = _regret_rows(md)
    # by hand: mean over the 2 seeds; best on x is c (0.8), best on y is b (0.5); regret per item = best − own
    assert rows == {"a": ["0.200", "0.300", "y (0.300)"],
                    "b": ["0.300", "0.000", "x (0.300)"],
                    "c": ["0.000", "0.200", "y (0.200)"]}
    assert "over the 2 seed(s)" in md


def test_report_regret_uses_seeds_every_method_finished(tmp_path):
    # c did not finish seed 1: only seed 0 counts (paired rounds), best on x is c (0.8), on y b (0.5)
    _store(tmp_path, FINAL, missing=(("c", 1),))
    md = write_report(tmp_path)["markdown"].read_text()
    rows = _regret_rows(md)
    assert rows == {"a": ["0.300", "0.300", "x (0.300)"],
                    "b": ["0.200", "0.000", "x (0.200)"],
                    "c": ["0.000", "0.300", "y (0.300)"]}
    assert "over the 1 seed(s)" in md
