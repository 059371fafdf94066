"""The arena end to end on a miniature sweep (tiny model, a few steps): store, failures, report,
CLI, exports, a real SIGKILL + resume, and the optional Ray backend."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import require
import yaml

from grouprl.arena import ArenaError, ArenaStore, SpecError, load_spec, run_arena, spec_from_dict
from grouprl.arena.report import write_report
from grouprl.arena.spec import warm_key
from grouprl.arena.stats import bootstrap_ci, holm, paired_test

SRC = Path(__file__).resolve().parents[1] / "src"

TINY = dict(model="tiny", sft_steps=4, sft_batch_size=8, steps=3, prompts_per_step=4, group_size=4, max_new_tokens=3,
            eval_every=2, eval_size=24, pass_k=2, pass_k_size=4, save_every=3, micro_batch_size=16,
            reward_fn="test_arena:digit_reward", lr=3e-3)


def digit_reward(example, completion: str) -> float:
    """A lenient verifier (varied rewards from an untrained model; 'correct' = 3 digits)."""
    return sum(c.isdigit() for c in completion[:3]) / 3.0


def mini_spec(name: str = "mini", **kw) -> dict:
    d = dict(name=name, base=dict(TINY), tasks=["mixed"], seeds=[0, 1], baseline="grpo",
             methods={"grpo": {"estimator": "grpo"}, "dr_grpo": {"estimator": "dr_grpo"},
                      "broken": {"reward_fn": "no_such_module_xyz:score"}})
    d.update(kw)
    return d


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("arena")
    return run_arena(spec_from_dict(mini_spec()), out_dir=out, workers=2)


def _db(root: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{root / 'arena.db'}?mode=ro", uri=True)


# ---------------------------------------------------------------------------- spec
def test_spec_cells_and_validation(tmp_path):
    spec = spec_from_dict(mini_spec())
    cells = spec.cells()
    assert [c.cell_id for c in cells][:2] == ["grpo__mixed__s0", "grpo__mixed__s1"]
    assert len(cells) == 6
    c = cells[2]
    assert c.config["estimator"] == "dr_grpo" and c.config["seed"] == 0 and c.config["threads"] == 1
    assert warm_key(cells[0].config) == warm_key(cells[2].config) != warm_key(cells[1].config)
    with pytest.raises(SpecError, match="unknown spec key"):
        spec_from_dict({**mini_spec(), "seedz": [1]})
    with pytest.raises(SpecError, match="seed are set by the arena"):
        spec_from_dict(mini_spec(base={**TINY, "seed": 3}))
    with pytest.raises(SpecError, match="baseline 'nope'"):
        spec_from_dict(mini_spec(baseline="nope"))
    with pytest.raises(SpecError, match=r"cell typo__mixed__s0 .*estimatr"):
        spec_from_dict(mini_spec(methods={"typo": {"estimatr": "grpo"}}, baseline="typo"))
    with pytest.raises(SpecError, match="duplicates"):
        spec_from_dict(mini_spec(seeds=[1, 1]))
    s = load_spec(preset="quick")
    assert {"grpo", "dr_grpo", "rloo"} == set(s.methods) and list(s.tasks) == ["add3r"]
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump({"seeds": [7], "base": {"steps": 2}}))
    s = load_spec(f, preset="quick")
    assert s.seeds == [7] and s.base["steps"] == 2 and s.base["eval_size"] == 200
    with pytest.raises(SpecError, match="unknown preset"):
        load_spec(preset="huge")


# ---------------------------------------------------------------------------- store
def test_store_finish_is_one_transaction(tmp_path):
    spec = spec_from_dict(mini_spec())
    store = ArenaStore(tmp_path / "a.db")
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.add_cells(spec.cells())
    cid = spec.cells()[0].cell_id
    store.mark_running(cid, "x")
    rows = [{"step": 1, "reward": 0.5, "acc": 0.25}, {"step": 2, "reward": 0.75, "acc": None}]
    bad = {"status": "done", "metrics": rows, "evals": [{"step": 0, "acc": "not a number", "x": 1.0}],
           "summary": {"train_seconds": 1.0}}
    # a failure inside the transaction (duplicate primary key) leaves nothing behind
    with pytest.raises(sqlite3.IntegrityError):
        store.finish(cid, {**bad, "metrics": rows + [rows[0]]})
    assert store.statuses()[cid] == "running"
    assert store.conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 0
    store.finish(cid, bad)
    assert store.statuses()[cid] == "done"
    assert store.series("metrics", "reward") == {cid: [(1, 0.5), (2, 0.75)]}
    assert store.series("evals", "x") == {cid: [(0, 1.0)]} and store.series("evals", "acc") == {}
    with pytest.raises(ValueError, match="status 'running'"):
        store.finish(cid, {"status": "running"})
    store.close()


# ---------------------------------------------------------------------------- the miniature arena
def test_mini_arena_cells_rows_and_failures(mini):
    with ArenaStore(mini / "arena.db") as store:
        cells = {c["cell_id"]: c for c in store.cells()}
        meta = store.meta()
    assert {cid: c["status"] for cid, c in cells.items()} == {
        "grpo__mixed__s0": "done", "grpo__mixed__s1": "done", "dr_grpo__mixed__s0": "done",
        "dr_grpo__mixed__s1": "done", "broken__mixed__s0": "failed", "broken__mixed__s1": "failed"}
    assert "no_such_module_xyz" in cells["broken__mixed__s0"]["error"]
    assert meta["spec"]["name"] == "mini" and "torch" in meta["versions"]
    con = _db(mini)
    for cid, c in cells.items():
        if c["status"] != "done":
            continue
        assert c["attempts"] == 1 and c["wall_s"] > 0 and c["train_s"] > 0
        steps = [r[0] for r in con.execute("SELECT DISTINCT step FROM metrics WHERE cell_id=? ORDER BY step", (cid,))]
        assert steps == [1, 2, 3]
        esteps = [r[0] for r in con.execute("SELECT DISTINCT step FROM evals WHERE cell_id=? AND name='acc' ORDER BY step", (cid,))]
        assert esteps == [0, 2, 3]
        n_groups = con.execute("SELECT COUNT(*) FROM evals WHERE cell_id=? AND step=3 AND name LIKE 'acc/%'", (cid,)).fetchone()[0]
        assert n_groups == 4  # the mixed task's four data groups
        run_metrics = [json.loads(x) for x in (Path(c["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        db_reward = dict(con.execute("SELECT step, value FROM metrics WHERE cell_id=? AND name='reward'", (cid,)).fetchall())
        assert db_reward == {r["step"]: pytest.approx(r["reward"]) for r in run_metrics}
    # cells with the same seed share one warm start (2 seeds -> 2 checkpoints)
    assert len([p for p in (mini / "warm").iterdir() if p.is_dir()]) == 2
    for table in ("cells", "metrics", "evals"):
        assert (mini / "export" / f"{table}.csv").stat().st_size > 0
    n_csv = len((mini / "export" / "metrics.csv").read_text().splitlines()) - 1
    assert n_csv == con.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
    try:
        import pyarrow.parquet as pq
    except ImportError:
        return
    assert pq.read_table(mini / "export" / "evals.parquet").num_rows == con.execute("SELECT COUNT(*) FROM evals").fetchone()[0]


def _final(con, method: str) -> dict[int, float]:
    q = """SELECT c.seed, e.value FROM cells c JOIN evals e ON e.cell_id = c.cell_id
           WHERE c.method=? AND c.status='done' AND e.name='acc'
             AND e.step = (SELECT MAX(step) FROM evals WHERE cell_id=c.cell_id AND name='acc')"""
    return dict(con.execute(q, (method,)).fetchall())


def test_report_renders_and_matches_database(mini, tmp_path):
    paths = write_report(mini, tmp_path / "rep")
    md = paths["markdown"].read_text()
    page = paths["html"].read_text()
    for name in ("curves_mixed", "zero_adv_mixed", "time_mixed"):
        png = paths["figures"] / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"figures/{name}.png" in md and f'src="figures/{name}.png"' in page
    assert "<table>" in page and "Final score" in page
    assert "broken__mixed__s0" in md and "no_such_module_xyz" in md  # failed cells are listed
    con = _db(mini)
    g, d = _final(con, "grpo"), _final(con, "dr_grpo")
    table = {m.group(1): m.group(0) for m in re.finditer(r"^\| `(\w+)` \| 2 \| .*$", md, flags=re.M)}
    assert set(table) >= {"grpo", "dr_grpo"}
    for method, vals in (("grpo", g), ("dr_grpo", d)):
        cols = [c.strip() for c in table[method].strip("|").split("|")]
        mean, lo, hi = bootstrap_ci([vals[s] for s in sorted(vals)], seed=0)
        assert cols[2] == f"{np.mean(list(vals.values())):.3f}" == f"{mean:.3f}"
        assert cols[3] == f"[{lo:.3f}, {hi:.3f}]"
    start = dict(con.execute("SELECT c.seed, e.value FROM cells c JOIN evals e ON e.cell_id=c.cell_id "
                             "WHERE c.method='dr_grpo' AND e.name='acc' AND e.step=0").fetchall())
    cols = [c.strip() for c in table["dr_grpo"].strip("|").split("|")]
    assert cols[6] == f"{np.mean([d[s] - start[s] for s in (0, 1)]):+.3f}"
    # the comparison table: every cell scored the same 24 prompts, so the mean paired per-prompt
    # difference is the mean of the per-seed accuracy differences, and the sign-flip p is the same
    pt = paired_test([d[s] for s in (0, 1)], [g[s] for s in (0, 1)], seed=0)
    cols = [c.strip() for c in re.search(r"^\| `dr_grpo` \| 2 × 24 \| .*$", md, flags=re.M).group(0).strip("|").split("|")]
    assert cols[2].startswith(f"{pt.mean_diff:+.3f} [")
    assert cols[3] == f"{pt.p_value:.3f}" and cols[4] == f"{holm([pt.p_value])[0]:.3f}"
    assert cols[7].startswith("not significant")  # 2 seeds: the smallest attainable p is 0.5
    assert "smallest attainable p is 0.5" in md and "Not significant" in md
    # fairness table: worst group and Gini of the seed-averaged group accuracies
    from grouprl.metrics.fairness import fairness_summary

    names = [r[0] for r in con.execute("SELECT DISTINCT name FROM evals WHERE name LIKE 'acc/%' ORDER BY name")]
    gm = []
    for n in names:
        q = """SELECT AVG(e.value) FROM cells c JOIN evals e ON e.cell_id=c.cell_id WHERE c.method='grpo'
               AND e.name=? AND e.step=(SELECT MAX(step) FROM evals WHERE cell_id=c.cell_id AND name=?)"""
        gm.append(con.execute(q, (n, n)).fetchone()[0])
    row = re.search(r"^\| `grpo` \| (?!2 \|).*$", md[md.index("Per-group fairness"):], flags=re.M).group(0)
    assert row.strip().endswith(f"| {fairness_summary(gm)['gini']:.3f} |")
    # zero-advantage table: mean over seeds of each cell's mean fraction
    zrow = re.search(r"^\| `grpo` \| ([0-9.]+) \| \[", md[md.index("Zero-advantage"):], flags=re.M).group(1)
    per_cell = [r[0] for r in con.execute(
        "SELECT AVG(m.value) FROM metrics m JOIN cells c ON c.cell_id=m.cell_id WHERE c.method='grpo' "
        "AND m.name='frac_constant_groups' GROUP BY m.cell_id")]
    assert zrow == f"{np.mean(per_cell):.3f}"


def test_cli_report_and_errors(mini, tmp_path):
    from typer.testing import CliRunner

    from grouprl.cli import app

    r = CliRunner().invoke(app, ["report", str(mini), "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "r" / "report.html").exists()
    r = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 2 and "neither arena.db (an arena run) nor config.yaml" in " ".join(r.output.split())  # rich wraps
    r = CliRunner().invoke(app, ["arena"])
    assert r.exit_code == 2 and "--preset" in " ".join(r.output.split())
    with pytest.raises(ArenaError, match="already holds an arena run"):
        run_arena(spec_from_dict(mini_spec()), out_dir=mini.parent)


# ---------------------------------------------------------------------------- kill -9 and resume
def test_resume_after_sigkill_reruns_only_unfinished_cells(tmp_path):
    spec = mini_spec("killed", methods={"grpo": {"estimator": "grpo"}, "dr_grpo": {"estimator": "dr_grpo"}},
                     base={**TINY, "steps": 6, "eval_every": 3, "save_every": 6})
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{Path(__file__).parent}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", "from grouprl.cli import main; main()", "arena", str(spec_file),
           "--out", str(tmp_path), "--workers", "1", "--no-report"]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = tmp_path / "killed" / "arena.db"
    deadline = time.time() + 90
    statuses: dict[str, str] = {}
    try:
        while time.time() < deadline:
            if db.exists():
                try:
                    statuses = dict(_db(db.parent).execute("SELECT cell_id, status FROM cells").fetchall())
                except sqlite3.OperationalError:
                    statuses = {}
                if list(statuses.values()).count("done") >= 1:
                    break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)  # the arena and its workers, for real
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    con = _db(db.parent)
    before = {r[0]: r[1:] for r in con.execute("SELECT cell_id, status, attempts, finished FROM cells")}
    con.close()
    done_before = {cid for cid, (s, _, _) in before.items() if s == "done"}
    in_flight = {cid for cid, (s, _, _) in before.items() if s == "running"}
    assert 1 <= len(done_before) < 4, before
    assert len(in_flight) <= 1
    # a killed cell wrote no result rows: the status flip and the rows are one transaction
    con = _db(db.parent)
    for cid in in_flight:
        assert con.execute("SELECT COUNT(*) FROM metrics WHERE cell_id=?", (cid,)).fetchone()[0] == 0
    con.close()

    # a resume runs the configs stored in the database: change one for the unfinished cells
    rw = sqlite3.connect(db)
    for cid in set(before) - done_before:
        cfg = json.loads(rw.execute("SELECT config FROM cells WHERE cell_id=?", (cid,)).fetchone()[0])
        rw.execute("UPDATE cells SET config=? WHERE cell_id=?", (json.dumps({**cfg, "eval_every": 2}), cid))
    rw.commit()
    rw.close()
    run_arena(resume=db.parent, workers=2)
    con = _db(db.parent)
    after = {r[0]: r[1:] for r in con.execute("SELECT cell_id, status, attempts, finished FROM cells")}
    assert all(s == "done" for s, _, _ in after.values()), after
    for cid in done_before:  # never re-run: same attempt count and finish time
        assert after[cid] == before[cid]
    for cid in in_flight:
        assert after[cid][1] == 2
    for cid in set(after) - done_before - in_flight:
        assert after[cid][1] == 1
    for cid in after:
        steps = [r[0] for r in con.execute("SELECT DISTINCT step FROM metrics WHERE cell_id=? ORDER BY step", (cid,))]
        assert steps == list(range(1, 7))
        evals = [r[0] for r in con.execute("SELECT step FROM evals WHERE cell_id=? AND name='acc' ORDER BY step", (cid,))]
        assert evals == ([0, 3, 6] if cid in done_before else [0, 2, 4, 6])
    with pytest.raises(ArenaError, match="no arena.db"):
        run_arena(resume=tmp_path)


# ---------------------------------------------------------------------------- ray
def _results(root: Path) -> dict[str, list[tuple]]:
    """A store's cells and result rows, without wall-clock timings (time/*, perf/*) and run paths."""
    con = _db(root)
    clock = "name NOT LIKE 'time/%' AND name NOT LIKE 'perf/%'"
    out = {"cells": con.execute("SELECT cell_id, method, task, seed, status, error, config, attempts FROM cells "
                                "ORDER BY cell_id").fetchall(),
           "metrics": con.execute(f"SELECT * FROM metrics WHERE {clock} ORDER BY cell_id, step, name").fetchall(),
           "evals": con.execute("SELECT * FROM evals ORDER BY cell_id, step, name").fetchall(),
           "eval_items": con.execute("SELECT * FROM eval_items ORDER BY cell_id, step, item").fetchall()}
    con.close()
    return out


@pytest.mark.slow
def test_ray_backend_same_store(tmp_path):
    """The same tiny sweep (2 methods x 1 seed, one shared warm start, one thread per cell) on a local Ray
    instance and with local worker processes gives the same store: cells, statuses, configs, every
    metric (but wall-clock timings), evaluation and per-prompt score."""
    ray = require("ray")
    spec = spec_from_dict(mini_spec("onray", methods={"grpo": {"estimator": "grpo"}, "rloo": {"estimator": "rloo"}},
                                    seeds=[0], base={**TINY, "reward_fn": None}))
    local = run_arena(spec, out_dir=tmp_path / "local", workers=2)
    sys.path.insert(0, str(SRC))
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}})
        root = run_arena(spec, out_dir=tmp_path / "ray", workers=2, backend="ray")
    finally:
        ray.shutdown()
        sys.path.remove(str(SRC))
    on_ray, on_local = _results(root), _results(local)
    assert [(c[0], c[4]) for c in on_ray["cells"]] == [("grpo__mixed__s0", "done"), ("rloo__mixed__s0", "done")]
    assert len(on_ray["metrics"]) > 0 and len(on_ray["eval_items"]) > 0
    for table in on_local:
        assert on_ray[table] == on_local[table], table
    with ArenaStore(root / "arena.db") as store:
        assert [s for s, _ in store.series("metrics", "reward")["grpo__mixed__s0"]] == [1, 2, 3]


def test_example_specs_match_presets():
    root = Path(__file__).resolve().parents[1] / "examples" / "arena"
    from grouprl.arena.spec import PRESETS

    for name, preset in PRESETS.items():
        assert yaml.safe_load((root / f"{name}.yaml").read_text()) == preset
    assert len(load_spec(root / "mini.yaml").cells()) == 4


def test_dead_worker_fails_its_cell_and_is_replaced(tmp_path):
    """A worker killed mid-cell (as by the OOM killer) fails that cell with the signal's name."""
    from grouprl.arena.runner import _LocalBackend

    (cell,) = spec_from_dict(mini_spec("dead", methods={"grpo": {}}, seeds=[0],
                                       base={**TINY, "steps": 200, "reward_fn": None})).cells()
    backend = _LocalBackend(workers=1)
    try:
        backend.submit(cell, tmp_path / "cells" / cell.cell_id, tmp_path / "warm")
        assert backend.free() == 0
        os.kill(backend.procs[0]["proc"].pid, signal.SIGKILL)
        results = []
        deadline = time.time() + 30
        while not results and time.time() < deadline:
            results = backend.poll(timeout=1.0)
        ((cid, result),) = results
        assert cid == cell.cell_id and result["status"] == "failed"
        assert "SIGKILL" in result["error"]
        assert backend.free() == 1 and backend.procs == []
    finally:
        backend.shutdown()
