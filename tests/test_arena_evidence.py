"""Per-prompt arena evidence end to end: eval_items in the store, the paired statistics of
``grouprl report RUN --json`` recomputed here independently from the stored rows, old databases."""

from __future__ import annotations

import itertools
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from grouprl.arena import ArenaStore, export, run_arena, spec_from_dict
from grouprl.arena.report import write_report, write_summary
from grouprl.arena.stats import hierarchical_bootstrap, iqm_ci
from test_arena import TINY

SEEDS = [0, 1, 2]


@pytest.fixture(scope="module")
def arena(tmp_path_factory) -> Path:
    spec = dict(name="evidence", base={**TINY, "steps": 2}, tasks=["mixed"], seeds=SEEDS, baseline="grpo",
                methods={"grpo": {"estimator": "grpo"}, "dr_grpo": {"estimator": "dr_grpo"}})
    return run_arena(spec_from_dict(spec), out_dir=tmp_path_factory.mktemp("ev"), workers=2)


def _final_items(con: sqlite3.Connection, method: str) -> dict[int, dict[str, float]]:
    """{seed: {item: score}} at each cell's last evaluation, straight from SQL."""
    out: dict[int, dict[str, float]] = {}
    q = """SELECT c.seed, i.item, i.score FROM cells c JOIN eval_items i ON i.cell_id = c.cell_id
           WHERE c.method=? AND c.status='done' AND i.step = (SELECT MAX(step) FROM eval_items WHERE cell_id=c.cell_id)"""
    for sd, item, score in con.execute(q, (method,)):
        out.setdefault(sd, {})[item] = score
    return out


def test_store_holds_every_evaluation_of_every_cell(arena):
    con = sqlite3.connect(f"file:{arena / 'arena.db'}?mode=ro", uri=True)
    for cid, run_dir in con.execute("SELECT cell_id, run_dir FROM cells"):
        lines = [json.loads(x) for x in (Path(run_dir) / "eval_items.jsonl").read_text().splitlines()]
        rows = con.execute("SELECT step, item, score FROM eval_items WHERE cell_id=? ORDER BY step", (cid,)).fetchall()
        assert sorted(rows) == sorted((r["step"], k, v) for r in lines for k, v in r["items"].items())
        assert [r["step"] for r in lines] == [0, 2]
        acc = dict(con.execute("SELECT step, value FROM evals WHERE cell_id=? AND name='acc'", (cid,)).fetchall())
        for r in lines:  # the mean of the per-example scores is the stored accuracy
            assert np.mean(list(r["items"].values())) == pytest.approx(acc[r["step"]])
    assert (arena / "export" / "eval_items.csv").stat().st_size > 0


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """An arena database filled with known per-prompt scores (no training): 5 seeds, 40 prompts,
    dr_grpo lifts every prompt's success probability by 0.15, rloo by nothing; each cell adds its own
    seed-level shift. Varied numbers for the recomputation below (a tiny model's scores are nearly all 0)."""
    root = tmp_path_factory.mktemp("synth") / "synth"
    spec = spec_from_dict(dict(name="synth", base=dict(TINY), tasks=["mixed"], seeds=list(range(5)), baseline="grpo",
                               methods={m: {"estimator": m} for m in ("grpo", "dr_grpo", "rloo")}))
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    p_item = rng.uniform(0.1, 0.9, size=40)
    with ArenaStore(root / "arena.db") as store:
        store.set_meta(spec=spec.to_dict(), versions={})
        store.add_cells(spec.cells())
        for c in spec.cells():
            store.mark_running(c.cell_id, str(root / "cells" / c.cell_id))
            lift = {"grpo": 0.0, "dr_grpo": 0.15, "rloo": 0.0}[c.method] + rng.normal(0, 0.05)
            items = []
            for step, add in ((0, 0.0), (4, lift)):
                ok = (rng.random(40) < np.clip(p_item + add, 0, 1)).astype(float)
                items.append({"step": step, "items": {str(7 * i): float(v) for i, v in enumerate(ok)}})
            evals = [{"step": r["step"], "acc": float(np.mean(list(r["items"].values())))} for r in items]
            metrics = [{"step": k, "frac_constant_groups": 0.5, "time/step": 1.0} for k in range(1, 5)]
            store.finish(c.cell_id, {"status": "done", "evals": evals, "eval_items": items, "metrics": metrics,
                                     "summary": {"train_seconds": 1.0}})
    return root


@pytest.mark.parametrize("which", ["arena", "synthetic"])
def test_report_json_matches_an_independent_recomputation(which, request):
    from typer.testing import CliRunner

    from grouprl.cli import app

    root = request.getfixturevalue(which)
    r = CliRunner().invoke(app, ["report", str(root), "--json", "--no-export"])
    assert r.exit_code == 0, r.output
    body = json.loads((root / "report" / "summary.json").read_text())
    assert set(body) == {"methods", "comparisons"}
    con = sqlite3.connect(f"file:{root / 'arena.db'}?mode=ro", uri=True)
    methods = [m for (m,) in con.execute("SELECT DISTINCT method FROM cells ORDER BY rowid")]
    seeds = [s for (s,) in con.execute("SELECT DISTINCT seed FROM cells ORDER BY seed")]
    finals = {m: _final_items(con, m) for m in methods}

    # per method: mean and IQM over seeds of the final accuracy (= the mean of its items)
    assert [(m["task"], m["method"]) for m in body["methods"]] == [("mixed", m) for m in methods]
    for row in body["methods"]:
        assert set(row) == {"task", "method", "n_seeds", "mean", "iqm", "ci_low", "ci_high"}
        acc = np.array([np.mean(list(finals[row["method"]][sd].values())) for sd in seeds])  # seed order
        cut, srt = int(0.25 * len(acc)), np.sort(acc)  # IQM: drop int(n / 4) values at each end
        assert row["n_seeds"] == len(seeds) and row["mean"] == pytest.approx(acc.mean())
        assert row["iqm"] == pytest.approx(srt[cut:len(acc) - cut].mean())
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(iqm_ci(acc, seed=0)[1:])

    comps = body["comparisons"]
    assert [(c["task"], c["method"], c["baseline"]) for c in comps] == [("mixed", m, "grpo") for m in methods[1:]]
    raw_p = []
    for c in comps:
        assert set(c) == {"task", "method", "baseline", "n_seeds", "n_items", "diff", "ci_low", "ci_high", "p",
                          "p_adj", "prob_improvement", "mde"}
        pair = (c["method"], "grpo")
        items = sorted(set.intersection(*[set(finals[m][sd]) for m in pair for sd in seeds]))
        assert c["n_seeds"] == len(seeds) and c["n_items"] == len(items) > 0
        x = np.array([[finals[c["method"]][sd][i] for i in items] for sd in seeds])
        y = np.array([[finals["grpo"][sd][i] for i in items] for sd in seeds])
        d = x - y
        assert c["diff"] == pytest.approx(d.mean())
        assert (c["ci_low"], c["ci_high"]) == pytest.approx(hierarchical_bootstrap(d, seed=0)[1:])
        assert c["ci_low"] <= c["diff"] <= c["ci_high"]
        # exact sign-flip over every sign pattern of the per-seed mean differences, by enumeration
        ds = d.mean(axis=1)
        flips = [abs(np.mean(np.array(s) * ds)) for s in itertools.product((-1, 1), repeat=len(seeds))]
        raw_p.append(np.mean([f >= abs(ds.mean()) - 1e-12 for f in flips]))
        assert c["p"] == pytest.approx(raw_p[-1]) and c["p"] >= 2 / 2 ** len(seeds)
        # probability of improvement: every pair (method seed a, baseline seed b), ties 1/2
        xs, ys = x.mean(axis=1), y.mean(axis=1)
        pi = 0.5 if np.array_equal(xs, ys) else np.mean([1.0 if a > b else 0.5 if a == b else 0.0
                                                         for a in xs for b in ys])
        assert c["prob_improvement"] == pytest.approx(pi)
        # MDE: (t_{.975, S-1} + t_{.8, S-1}) * sd / sqrt(S)
        n = len(seeds)
        assert c["mde"] == pytest.approx((stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.8, n - 1)) * ds.std(ddof=1) / np.sqrt(n))
    # Holm by hand: sorted p times (k, k-1, ...), running maximum, capped at 1
    order = np.argsort(raw_p)
    adj = np.minimum(1, np.maximum.accumulate([(len(raw_p) - j) * raw_p[i] for j, i in enumerate(order)]))
    assert [c["p_adj"] for c in comps] == pytest.approx([adj[list(order).index(k)] for k in range(len(comps))])
    md = (root / "report" / "report.md").read_text()
    assert "P(improvement)" in md and "MDE (80% power)" in md
    assert f"| `{comps[0]['method']}` | {len(seeds)} × {comps[0]['n_items']} |" in md
    for c in comps:
        if c["p_adj"] >= 0.05:
            assert f"`{c['method']}` vs `grpo` on `mixed` (diff {c['diff']:+.3f}, MDE {c['mde']:.3f})" in md
    if which == "synthetic":  # the numbers are not degenerate: the planted lift shows
        dr = comps[0]
        assert dr["method"] == "dr_grpo" and dr["diff"] > 0.05 and dr["prob_improvement"] > 0.8 and dr["mde"] > 0


def test_an_old_database_without_eval_items_still_reports(arena, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(arena, old, ignore=shutil.ignore_patterns("report", "export"))
    con = sqlite3.connect(old / "arena.db")
    con.execute("DROP TABLE eval_items")
    con.commit()
    con.close()
    written = export(old / "arena.db", old / "export")  # exports what it has
    assert {p.stem for p in written} == {"cells", "metrics", "evals"}
    paths = write_report(old, json_summary=True)  # opening it adds the (empty) table
    md = paths["markdown"].read_text()
    assert "per-prompt statistics are unavailable" in md and "| `dr_grpo` | 3 × – |" in md
    (c,) = json.loads(paths["json"].read_text())["comparisons"]
    assert c["n_items"] is None
    (new,) = json.loads(write_summary(arena, tmp_path / "new").read_text())["comparisons"]
    assert new["n_items"] == 24
    # the seed-level difference is the same number (each accuracy is the mean of its 24 items)
    assert c["diff"] == pytest.approx(new["diff"]) and c["p"] == pytest.approx(new["p"])


def test_store_eval_items_rows_transaction_and_reset(tmp_path):
    spec = spec_from_dict(dict(name="s", base=dict(TINY), tasks=["mixed"], seeds=[0], baseline="grpo",
                               methods={"grpo": {"estimator": "grpo"}}))
    store = ArenaStore(tmp_path / "a.db")
    store.add_cells(spec.cells())
    cid = spec.cells()[0].cell_id
    store.mark_running(cid, "x")
    items = [{"step": 0, "items": {"3": 0.0, "17": 1.0}}, {"step": 2, "items": {"3": 1.0, "17": 1.0}}]
    with pytest.raises(sqlite3.IntegrityError):  # a failure inside the transaction leaves no item rows
        store.finish(cid, {"status": "done", "eval_items": items + [items[0]]})
    assert store.conn.execute("SELECT COUNT(*) FROM eval_items").fetchone()[0] == 0
    store.finish(cid, {"status": "done", "eval_items": items})
    assert sorted(store.final_items([cid])) == [(cid, "17", 1.0), (cid, "3", 1.0)]
    store.reset([cid])
    assert store.final_items([cid]) == [] and store.final_items([]) == []
    store.close()


def test_json_flag_on_a_training_run_is_an_error(tmp_path):
    from typer.testing import CliRunner

    from grouprl.cli import app

    (tmp_path / "config.yaml").write_text("task: mixed\n")
    r = CliRunner().invoke(app, ["report", str(tmp_path), "--json"])
    assert r.exit_code == 2 and "Drop --json" in " ".join(r.output.split())
