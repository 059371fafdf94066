"""The claims table (docs/evidence.md) and the slim store: generated from a stored arena with planted
effects, every verdict reachable, every row named, and the same numbers from a slim copy alone."""

from __future__ import annotations

import hashlib
import json
import math
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from test_arena import TINY
from typer.testing import CliRunner

from grouprl.arena import ArenaStore, spec_from_dict
from grouprl.arena.claims import CLAIMS, Claim, Measure, claims_blocks, verdict
from grouprl.arena.report import write_report, write_summary
from grouprl.arena.store import slim
from grouprl.cli import app

# planted per-prompt lifts over grpo: ngrpo helps, canon hurts, copo does nothing
LIFT = {"grpo": 0.0, "ngrpo": 0.3, "canon": -0.3, "copo": 0.0}
SEEDS, N_ITEMS, STEPS = list(range(8)), 120, (0, 2, 4)  # 8 seeds: the smallest exact p, 2/256, survives Holm


def _store(root: Path, name: str = "evidence", lift: dict[str, float] = LIFT, seed: int = 0) -> Path:
    """An arena database with known per-prompt scores (no training) and two data groups: each cell's
    items succeed with probability p_item + the method's lift (+ a small seed-level shift)."""
    spec = spec_from_dict({"name": name, "base": dict(TINY), "tasks": ["mixed"], "seeds": SEEDS, "baseline": "grpo",
                           "methods": {m: {} for m in lift}})
    rng = np.random.default_rng(seed)
    p_item = rng.uniform(0.3, 0.7, size=N_ITEMS)
    group = np.arange(N_ITEMS) % 2
    db = root / f"{name}.db"
    with ArenaStore(db) as store:
        store.set_meta(spec=spec.to_dict(), versions={"git": "abc123"})
        store.add_cells(spec.cells())
        for c in spec.cells():
            store.mark_running(c.cell_id, str(root / c.cell_id))
            shift = rng.normal(0, 0.01)
            items, evals = [], []
            for step in STEPS:
                add = (lift[c.method] + shift) * step / STEPS[-1]
                ok = (rng.random(N_ITEMS) < np.clip(p_item + add, 0, 1)).astype(float)
                items.append({"step": step, "items": {str(i): float(v) for i, v in enumerate(ok)}})
                evals.append({"step": step, "acc": ok.mean(), "acc/even": ok[group == 0].mean(),
                              "acc/odd": ok[group == 1].mean()})
            metrics = [{"step": k, "reward": 0.5, "frac_constant_groups": 0.5, "time/step": 1.0} for k in range(1, STEPS[-1] + 1)]
            store.finish(c.cell_id, {"status": "done", "evals": evals, "eval_items": items, "metrics": metrics,
                                     "summary": {"train_seconds": 1.0}})
    return db


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> Path:
    return _store(tmp_path_factory.mktemp("claims"))


def _rows(md: str) -> list[list[str]]:
    """The body rows of the first Markdown table."""
    lines = md[md.index("| method |"):].split("\n\n")[0].splitlines()[2:]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]


# ---------------------------------------------------------------------------- verdicts
def test_every_verdict_is_reachable_from_synthetic_cis():
    assert verdict(0.01, 0.05, +1) == "**consistent**"
    assert verdict(-0.05, -0.01, +1) == "**contradicted**"
    assert verdict(-0.05, -0.01, -1) == "**consistent**"
    assert verdict(0.01, 0.05, -1) == "**contradicted**"
    assert verdict(-0.01, 0.02, +1, mde=0.031) == "**not detected at this scale** (MDE 0.031)"
    assert verdict(0.0, 0.02, +1, mde=0.031).startswith("**not detected")  # a bound at 0 does not exclude it
    assert verdict(-0.01, 0.02, +1, mde=math.nan) == "**not detected at this scale** (MDE undefined)"
    assert verdict(0.01, 0.05, +1, p_adj=0.2, mde=0.03) == (
        "**not detected at this scale** (the CI excludes 0 but the seed-level test does not: Holm p = 0.200; MDE 0.030)")
    assert verdict(-0.05, -0.01, +1, p_adj=0.01) == "**contradicted**"
    assert verdict(0.01, 0.05, +1, p_adj=0.01) == "**consistent**"
    assert verdict(None, 0.05, +1) == verdict(math.nan, 0.05, +1) == "not measured"
    with pytest.raises(ValueError, match="direction"):
        verdict(0.01, 0.05, 0)


def test_claims_data_names_every_seed_method_with_its_paper():
    names = [c.name for c in CLAIMS]
    for want in ("NGRPO", "CANON", "COPO", "Confucius3", "SRPO", "MaxMin", "DAPO", "VADE", "HAPO", "SPO",
                 "T-PPO/EGAE", "GiGPO", "SALT", "MARS", "ReAd", "AdvEvo"):
        assert sum(n.startswith(want) for n in names) == 1, want
    for c in CLAIMS:
        assert re.fullmatch(r"\d{4}\.\d{4,5}", c.arxiv), c
        assert c.claim and c.direction in (1, -1) and (c.measures or c.why), c


# ---------------------------------------------------------------------------- the table
def test_claims_table_from_a_stored_arena(stored, tmp_path):
    out = tmp_path / "evidence.md"
    r = CliRunner().invoke(app, ["claims", str(stored), "--out", str(out)])
    assert r.exit_code == 0, r.output
    md = out.read_text()
    assert f"`grouprl claims {stored} --out {out}`" in md.split("\n\n")[1]  # the command that regenerates it
    rows = _rows(md)
    assert len(rows) == sum(max(1, len(c.measures)) for c in CLAIMS)
    expect = [c.name for c in CLAIMS for _ in (c.measures or (None,))]
    for row, name in zip(rows, expect):  # no row without its method's name in the first cell
        assert row[0].startswith(name) and len(row) == 9, row
    by = {row[0]: row for row in rows}
    comps = {c["method"]: c for c in json.loads(write_summary(stored, tmp_path / "s").read_text())["comparisons"]}
    for m, name in (("ngrpo", "NGRPO"), ("canon", "CANON"), ("copo", "COPO")):
        c, row = comps[m], by[name]
        assert row[3] == f"{c['diff']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]"  # the report's numbers
        assert row[4] == f"{len(SEEDS)} × {N_ITEMS}" and row[5] == f"{c['mde']:.3f}" and row[6] == f"{c['p_adj']:.3f}"
        assert row[2].startswith("`mixed`, tiny model, 3 RL steps from a 4-step SFT warm start per seed (`evidence`)")
        assert row[8].startswith("worst ") and "Gini" in row[8]
    assert by["NGRPO"][7].startswith("**consistent**")
    assert by["CANON"][7].startswith("**contradicted**")
    assert by["COPO"][7] == f"**not detected at this scale** (MDE {comps['copo']['mde']:.3f})"
    assert by["DAPO"][2] == "not run: `dapo` has no finished cell in the stored `evidence` run (methods: grpo, ngrpo, " \
                            "canon, copo)"
    assert by["HAPO"][2] == "not run: token_credit (`grouprl arena --preset token_credit`)"
    assert by["SPO: `spo_tree`"][2].startswith("not run: token_credit")
    runs = md[md.index("## Stored runs"):]
    assert f"| `evidence` | `{stored}` | {4 * len(SEEDS)} done, 0 failed, 0 not finished of {4 * len(SEEDS)} | `abc123` |" in runs


def test_a_claim_that_cannot_run_here_says_why_and_one_group_is_said(tmp_path):
    db = _store(tmp_path, name="solo", lift={"grpo": 0.0, "ngrpo": 0.0})
    con = sqlite3.connect(db)
    con.execute("DELETE FROM evals WHERE name LIKE 'acc/%'")  # one data group
    con.commit()
    con.close()
    claims = (Claim("Foo", "2501.00001", "Foo helps.", +1, why="it needs a 7B model"),
              Claim("Bar", "2501.00002", "Bar hurts less.", -1, (Measure("solo", "ngrpo"),)))
    (row_foo, row_bar), = [b[2] for b in claims_blocks([db], claims) if b[0] == "table"][:1]
    assert row_foo[0] == "Foo" and row_foo[2] == "cannot be run meaningfully here: it needs a 7B model"
    assert row_bar[0] == "Bar" and row_bar[8] == "one group" and "(`solo`)" in row_bar[2]
    with pytest.raises(ValueError, match="two stored runs named 'solo'"):
        claims_blocks([db, db], claims)
    con = sqlite3.connect(db)  # ngrpo finished seed 0 only, grpo every seed but 0
    con.execute("UPDATE cells SET status='failed' WHERE (method='ngrpo') != (seed=0)")
    con.commit()
    con.close()
    (_, row_bar), = [b[2] for b in claims_blocks([db], claims) if b[0] == "table"][:1]
    assert row_bar[2] == "not run: `ngrpo` and `grpo` finished no seed in common in the stored `solo` run"


# ---------------------------------------------------------------------------- slim stores
def _md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


def test_slim_copy_keeps_what_the_report_and_claims_read(stored, tmp_path):
    out = tmp_path / "keep" / "evidence.db"
    r = CliRunner().invoke(app, ["export", str(stored), "--slim", str(out)])
    assert r.exit_code == 0, r.output
    full = sqlite3.connect(f"file:{stored}?mode=ro", uri=True)
    small = sqlite3.connect(f"file:{out}?mode=ro", uri=True)
    for table in ("cells", "metrics", "evals"):  # every cell, metric and evaluation row
        q = f"SELECT * FROM {table} ORDER BY 1, 2" + (", 3" if table != "cells" else "")
        assert full.execute(q).fetchall() == small.execute(q).fetchall(), table
    steps = {s for (s,) in small.execute("SELECT DISTINCT step FROM eval_items")}
    assert steps == {STEPS[0], STEPS[-1]}  # per-prompt scores of the warm start and the final evaluation
    q = "SELECT * FROM eval_items WHERE step IN (?, ?) ORDER BY 1, 2, 3"
    assert full.execute(q, (STEPS[0], STEPS[-1])).fetchall() == small.execute(q, (STEPS[0], STEPS[-1])).fetchall()
    assert small.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert {r[0] for r in small.execute("SELECT name FROM sqlite_master WHERE type='view'")} == {
        "metrics", "evals", "eval_items"}  # packed tables read through views
    assert json.loads(dict(small.execute("SELECT key, value FROM meta"))["slim"])["from"] == str(stored)
    full.close()
    small.close()
    assert out.stat().st_size < stored.stat().st_size

    digest = _md5(out)
    a = json.loads(write_summary(stored, tmp_path / "a").read_text())
    b = json.loads(write_summary(out, tmp_path / "b").read_text())
    assert a == b  # the paired statistics from the slim copy alone
    paths = write_report(out)  # a database file: the report goes beside it
    assert paths["markdown"].parent == out.parent / "evidence-report" and paths["markdown"].stat().st_size > 0
    r = CliRunner().invoke(app, ["report", str(out), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0 and (tmp_path / "rep" / "export" / "eval_items.csv").is_file(), r.output
    table = [next(b for b in claims_blocks([p]) if b[0] == "table") for p in (stored, out)]
    assert table[0] == table[1]  # the claims rows
    with pytest.raises(ValueError, match="is a slim copy"):  # not a store to run into
        ArenaStore(out)
    assert _md5(out) == digest  # reading never touches a kept store
    assert not out.with_name(out.name + "-wal").exists()


def test_export_cli_errors_name_the_fix(stored, tmp_path):
    r = CliRunner().invoke(app, ["export", str(stored), "--slim", str(tmp_path / "x.db"), "--out", str(tmp_path)])
    assert r.exit_code == 2 and "drop --out" in " ".join(r.output.split())
    r = CliRunner().invoke(app, ["export", str(tmp_path / "missing"), "--slim", str(tmp_path / "x.db")])
    assert r.exit_code == 2 and "no such" not in r.output and "missing" in r.output
    with pytest.raises(ValueError, match="is the database itself"):
        slim(stored, stored)
    r = CliRunner().invoke(app, ["claims", str(tmp_path / "missing"), "--out", str(tmp_path / "e.md")])
    assert r.exit_code == 2 and "missing" in r.output
