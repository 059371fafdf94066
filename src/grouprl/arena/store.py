"""One SQLite database per arena run: cells, per-step metrics, evaluations, configs, versions, timings.

Durability scheme (chosen): **one transaction per finished cell.** Only the arena's parent
process writes the database (workers write their trainer run dir, or return rows over Ray). A cell
goes ``pending -> running`` (committed when it starts) and, when it ends, its per-step metrics, its
evaluations, its summary and its ``done``/``failed`` status are written in ONE transaction. The
database is in WAL mode with ``synchronous=FULL``, so a ``kill -9`` of the arena at any moment
leaves every finished cell complete and every other cell ``pending`` or ``running`` with no result
rows: it loses at most the cells in flight, which ``--resume`` runs again from scratch.

Tables::

    meta(key, value)                       spec (JSON), versions (JSON), created, ...
    cells(cell_id, method, task, seed, status, error, config, run_dir, attempts,
          started, finished, wall_s, warm_s, train_s, summary)
    metrics(cell_id, step, name, value)    one row per (step, metric) of metrics.jsonl
    evals(cell_id, step, name, value)      one row per (step, key) of eval.jsonl (step 0 = warm start)
    eval_items(cell_id, step, item, score) one row per (step, example) of eval_items.jsonl: each
                                           held-out example's greedy score; ``item`` is the example's
                                           index in the task's held-out split (the same for every
                                           method and seed), so comparisons pair by (seed, item)
                                           (WITHOUT ROWID: half the size; 1.6 MB per 10 cells x 5
                                           evaluations x 1,000 prompts, measured)

A database made before ``eval_items`` existed opens as before (the table is created empty), and the
report says that per-prompt statistics are unavailable for it.

``export(db, out_dir)`` writes cells/metrics/evals/eval_items as CSV (and Parquet when pyarrow imports).
``slim(db, out)`` writes a copy small enough to keep in the repository: every table but ``eval_items``
whole, and of ``eval_items`` each cell's first (step 0, the warm start) and last evaluation only,
which is all the paired statistics of the report and the claims table read.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

__all__ = ["ArenaStore", "STATUSES", "export", "slim", "versions"]

STATUSES = ("pending", "running", "done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cells (
    cell_id TEXT PRIMARY KEY, method TEXT NOT NULL, task TEXT NOT NULL, seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    error TEXT, config TEXT NOT NULL, run_dir TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    started REAL, finished REAL, wall_s REAL, warm_s REAL, train_s REAL, summary TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
    cell_id TEXT NOT NULL REFERENCES cells(cell_id), step INTEGER NOT NULL, name TEXT NOT NULL, value REAL,
    PRIMARY KEY (cell_id, step, name)
);
CREATE TABLE IF NOT EXISTS evals (
    cell_id TEXT NOT NULL REFERENCES cells(cell_id), step INTEGER NOT NULL, name TEXT NOT NULL, value REAL,
    PRIMARY KEY (cell_id, step, name)
);
CREATE TABLE IF NOT EXISTS eval_items (
    cell_id TEXT NOT NULL REFERENCES cells(cell_id), step INTEGER NOT NULL, item TEXT NOT NULL, score REAL,
    PRIMARY KEY (cell_id, step, item)
) WITHOUT ROWID;
"""


def versions() -> dict[str, Any]:
    """The versions a sweep's numbers depend on (``grouprl.train.logging.environment_versions``:
    Python, platform, grouprl, torch, transformers, ...) plus the git commit, for the record."""
    from ..train.logging import environment_versions

    out = environment_versions()
    try:
        import subprocess

        root = Path(__file__).resolve().parents[3]
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if rev.returncode == 0:
            out["git"] = rev.stdout.strip()
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5)
            if dirty.returncode == 0 and dirty.stdout.strip():
                out["git"] += " (+ uncommitted changes)"
    except Exception:  # pragma: no cover - no git
        pass
    return out


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _long_rows(cell_id: str, rows: Iterable[dict[str, Any]]) -> list[tuple[str, int, str, float | None]]:
    """JSONL rows ``{step, k: v, ...}`` -> (cell_id, step, k, v) for the numeric entries."""
    out = []
    for row in rows:
        step = int(row["step"])
        for k, v in row.items():
            if k == "step":
                continue
            if v is None or _num(v) is not None:
                out.append((cell_id, step, k, _num(v)))
    return out


def _item_rows(cell_id: str, rows: Iterable[dict[str, Any]]) -> list[tuple[str, int, str, float | None]]:
    """eval_items.jsonl rows ``{step, items: {item: score}}`` -> (cell_id, step, item, score)."""
    return [(cell_id, int(row["step"]), str(item), _num(score))
            for row in rows for item, score in (row.get("items") or {}).items()]


class ArenaStore:
    """The arena database at ``path`` (created with the schema when new). ``readonly=True`` opens an
    existing database for reading only (reports, claims): the file is not modified, not even its
    journal mode, so a store kept in git stays byte-identical; a table it lacks (``eval_items`` of
    an old database) is an empty temporary table of this connection."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly:
            if not self.path.is_file():
                raise FileNotFoundError(f"{self.path}: no arena database there")
            self.conn = sqlite3.connect(f"file:{self.path.resolve()}?mode=ro", uri=True, timeout=60,
                                        isolation_level=None)
            have = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
            for stmt in _SCHEMA.strip().split(";"):
                table = stmt.split("EXISTS", 1)[-1].split("(", 1)[0].strip()
                if stmt.strip() and table not in have:
                    self.conn.execute(stmt.replace("CREATE TABLE", "CREATE TEMP TABLE", 1)
                                      .replace("REFERENCES cells(cell_id)", ""))
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
        if self.conn.execute("SELECT 1 FROM sqlite_master WHERE type='view' AND name='metrics'").fetchone():
            self.conn.close()
            raise ValueError(f"{self.path} is a slim copy (grouprl export --slim): it can be read "
                             "(grouprl report, grouprl claims), not run or resumed; use the sweep's own arena.db")
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        with self.transaction():
            for stmt in _SCHEMA.strip().split(";"):
                if stmt.strip():
                    self.conn.execute(stmt)

    # -- plumbing
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "ArenaStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- meta
    def set_meta(self, **values: Any) -> None:
        with self.transaction() as c:
            for k, v in values.items():
                c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (k, json.dumps(v, default=str)))

    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.conn.execute("SELECT key, value FROM meta")}

    # -- cells
    def add_cells(self, cells: Iterable[Any]) -> None:
        """Insert cells as ``pending`` (cells already present are left as they are)."""
        with self.transaction() as c:
            for cell in cells:
                c.execute(
                    "INSERT OR IGNORE INTO cells(cell_id, method, task, seed, status, config) VALUES (?, ?, ?, ?, 'pending', ?)",
                    (cell.cell_id, cell.method, cell.task, cell.seed, json.dumps(cell.config, sort_keys=True)),
                )

    def statuses(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT cell_id, status FROM cells"))

    def mark_running(self, cell_id: str, run_dir: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE cells SET status='running', run_dir=?, started=?, attempts=attempts+1, error=NULL "
                      "WHERE cell_id=?", (run_dir, time.time(), cell_id))

    def reset(self, cell_ids: Iterable[str]) -> None:
        """Back to ``pending`` with no result rows (cells to run again)."""
        with self.transaction() as c:
            for cid in cell_ids:
                c.execute("DELETE FROM metrics WHERE cell_id=?", (cid,))
                c.execute("DELETE FROM evals WHERE cell_id=?", (cid,))
                c.execute("DELETE FROM eval_items WHERE cell_id=?", (cid,))
                c.execute("UPDATE cells SET status='pending', error=NULL, summary=NULL, finished=NULL, wall_s=NULL, "
                          "train_s=NULL WHERE cell_id=?", (cid,))

    def finish(self, cell_id: str, result: dict[str, Any]) -> None:
        """Write a finished cell in one transaction: rows, summary, timings and the status flip.

        ``result``: ``status`` ('done' or 'failed'), ``error`` (str or None), ``metrics``, ``evals``
        and ``eval_items`` (lists of JSONL rows), ``summary`` (dict or None), ``wall_s``, ``warm_s``.
        """
        status = result["status"]
        if status not in ("done", "failed"):
            raise ValueError(f"finish: status {status!r} must be 'done' or 'failed'")
        summary = result.get("summary")
        with self.transaction() as c:
            c.execute("DELETE FROM metrics WHERE cell_id=?", (cell_id,))
            c.execute("DELETE FROM evals WHERE cell_id=?", (cell_id,))
            c.execute("DELETE FROM eval_items WHERE cell_id=?", (cell_id,))
            c.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?)", _long_rows(cell_id, result.get("metrics") or []))
            c.executemany("INSERT INTO evals VALUES (?, ?, ?, ?)", _long_rows(cell_id, result.get("evals") or []))
            c.executemany("INSERT INTO eval_items VALUES (?, ?, ?, ?)", _item_rows(cell_id, result.get("eval_items") or []))
            c.execute(
                "UPDATE cells SET status=?, error=?, summary=?, finished=?, wall_s=?, warm_s=?, train_s=? WHERE cell_id=?",
                (status, result.get("error"), json.dumps(summary, default=str) if summary is not None else None,
                 time.time(), _num(result.get("wall_s")), _num(result.get("warm_s")),
                 _num((summary or {}).get("train_seconds")), cell_id),
            )

    # -- reading
    def cells(self, status: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT * FROM cells" + (" WHERE status=?" if status else "") + " ORDER BY rowid"
        cur = self.conn.execute(q, (status,) if status else ())
        names = [d[0] for d in cur.description]
        out = []
        for row in cur:
            d = dict(zip(names, row))
            d["config"] = json.loads(d["config"])
            d["summary"] = json.loads(d["summary"]) if d["summary"] else None
            out.append(d)
        return out

    def series(self, table: str, name: str) -> dict[str, list[tuple[int, float | None]]]:
        """``{cell_id: [(step, value), ...]}`` of one metric (table 'metrics' or 'evals')."""
        if table not in ("metrics", "evals"):
            raise ValueError(f"series: table {table!r} must be 'metrics' or 'evals'")
        out: dict[str, list[tuple[int, float | None]]] = {}
        for cid, step, value in self.conn.execute(
                f"SELECT cell_id, step, value FROM {table} WHERE name=? ORDER BY cell_id, step", (name,)):
            out.setdefault(cid, []).append((step, value))
        return out

    def final_items(self, cell_ids: Iterable[str]) -> list[tuple[str, str, float | None]]:
        """(cell_id, item, score) of each given cell's last evaluation in ``eval_items`` (none for a
        cell without per-example rows, e.g. from a database made before the table existed)."""
        ids = list(cell_ids)
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        return self.conn.execute(
            f"SELECT e.cell_id, e.item, e.score FROM eval_items e JOIN (SELECT cell_id, MAX(step) AS step FROM eval_items "
            f"WHERE cell_id IN ({marks}) GROUP BY cell_id) last ON e.cell_id = last.cell_id AND e.step = last.step",
            ids).fetchall()

    def names(self, table: str) -> list[str]:
        if table not in ("metrics", "evals"):
            raise ValueError(f"names: table {table!r} must be 'metrics' or 'evals'")
        return [r[0] for r in self.conn.execute(f"SELECT DISTINCT name FROM {table} ORDER BY name")]


def _table_rows(conn: sqlite3.Connection, table: str) -> tuple[list[str], list[tuple]]:
    kind, sql = conn.execute("SELECT type, sql FROM sqlite_master WHERE name=?", (table,)).fetchone()
    key = "cell_id, step, item" if table == "eval_items" else "cell_id, step, name"
    order = key if kind == "view" or "WITHOUT ROWID" in sql.upper() else "rowid"  # eval_items; a slim copy's views
    cur = conn.execute(f"SELECT * FROM {table} ORDER BY {order}")
    return [d[0] for d in cur.description], cur.fetchall()


def export(db: str | Path, out_dir: str | Path, formats: tuple[str, ...] = ("csv", "parquet")) -> list[Path]:
    """Write the cells, metrics, evals and eval_items tables as CSV and (when pyarrow imports) Parquet
    files (eval_items only when the database has that table)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        pa = pq = None
        if "parquet" in formats:
            try:
                import pyarrow as pa  # type: ignore[no-redef]
                import pyarrow.parquet as pq  # type: ignore[no-redef]
            except ImportError:
                pa = pq = None
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
        for table in [t for t in ("cells", "metrics", "evals", "eval_items") if t in tables]:
            cols, rows = _table_rows(conn, table)
            if "csv" in formats:
                p = out / f"{table}.csv"
                with open(p, "w", newline="") as f:
                    w = csv.writer(f)
                    w.writerow(cols)
                    w.writerows(rows)
                written.append(p)
            if pa is not None:
                p = out / f"{table}.parquet"
                pq.write_table(pa.table({c: [r[i] for r in rows] for i, c in enumerate(cols)}), p)
                written.append(p)
    finally:
        conn.close()
    return written


def _columns(conn: sqlite3.Connection, schema: str, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA {schema}.table_info({table})")]


# A slim copy's long tables: integer codes (keys.id) for cell ids, metric names and item ids, in
# WITHOUT ROWID tables, read through views with the store's table and column names.
_SLIM_SCHEMA = """
CREATE TABLE keys (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE);
CREATE TABLE metrics_packed (c INTEGER NOT NULL, step INTEGER NOT NULL, k INTEGER NOT NULL, value REAL,
                             PRIMARY KEY (c, step, k)) WITHOUT ROWID;
CREATE TABLE evals_packed (c INTEGER NOT NULL, step INTEGER NOT NULL, k INTEGER NOT NULL, value REAL,
                           PRIMARY KEY (c, step, k)) WITHOUT ROWID;
CREATE TABLE eval_items_packed (c INTEGER NOT NULL, step INTEGER NOT NULL, k INTEGER NOT NULL, score REAL,
                                PRIMARY KEY (c, step, k)) WITHOUT ROWID;
CREATE VIEW metrics AS SELECT kc.key AS cell_id, p.step AS step, kn.key AS name, p.value AS value
    FROM metrics_packed p JOIN keys kc ON kc.id = p.c JOIN keys kn ON kn.id = p.k;
CREATE VIEW evals AS SELECT kc.key AS cell_id, p.step AS step, kn.key AS name, p.value AS value
    FROM evals_packed p JOIN keys kc ON kc.id = p.c JOIN keys kn ON kn.id = p.k;
CREATE VIEW eval_items AS SELECT kc.key AS cell_id, p.step AS step, ki.key AS item, p.score AS score
    FROM eval_items_packed p JOIN keys kc ON kc.id = p.c JOIN keys ki ON ki.id = p.k
"""


def slim(db: str | Path, out: str | Path) -> Path:
    """Copy the arena database ``db`` to ``out`` for keeping in git: ``meta``, ``cells``, every
    ``metrics`` and ``evals`` row (the learning curves), and the ``eval_items`` of each cell's first
    and last evaluation only (the warm start and the final scores the paired statistics use).

    The copy reads like a store (``ArenaStore(out, readonly=True)``, plain SQL on ``metrics``,
    ``evals``, ``eval_items`` with their columns), but those three are views over packed tables that
    hold integer codes (table ``keys``) instead of the repeated cell-id, name and item strings: about
    a third of the size. Rollback-journal mode, VACUUMed; ``meta.slim`` records what was dropped.
    Built in a temporary file and renamed, so ``out`` is never half written. Returns ``out``."""
    src, out = Path(db), Path(out)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no arena database there")
    if out.exists() and out.resolve() == src.resolve():
        raise ValueError(f"slim: the output {out} is the database itself; give another path")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(str(tmp), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
        kept = [stmt for stmt in _SCHEMA.strip().split(";") if "TABLE IF NOT EXISTS meta " in stmt
                or "TABLE IF NOT EXISTS cells " in stmt]
        for stmt in kept + _SLIM_SCHEMA.strip().split(";"):
            conn.execute(stmt)
        conn.execute("ATTACH DATABASE ? AS src", (f"file:{src.resolve()}?mode=ro",))
        have = {r[0] for r in conn.execute("SELECT name FROM src.sqlite_master WHERE type='table'")}
        conn.execute("BEGIN")
        for table in ("meta", "cells"):
            cols = ", ".join(c for c in _columns(conn, "main", table) if c in _columns(conn, "src", table))
            conn.execute(f"INSERT INTO main.{table} ({cols}) SELECT {cols} FROM src.{table}")
        rows = {"metrics": "SELECT cell_id, step, name, value FROM src.metrics",
                "evals": "SELECT cell_id, step, name, value FROM src.evals"}
        if "eval_items" in have:
            rows["eval_items"] = (
                "SELECT e.cell_id, e.step, e.item, e.score FROM src.eval_items e JOIN "
                "(SELECT cell_id, MIN(step) AS lo, MAX(step) AS hi FROM src.eval_items GROUP BY cell_id) b "
                "ON e.cell_id = b.cell_id AND (e.step = b.lo OR e.step = b.hi)")
        for table, query in rows.items():
            key, val = ("item", "score") if table == "eval_items" else ("name", "value")
            conn.execute(f"CREATE TEMP TABLE t AS {query}")
            conn.execute(f"INSERT OR IGNORE INTO keys(key) SELECT cell_id FROM temp.t UNION SELECT {key} FROM temp.t")
            conn.execute(f"INSERT INTO {table}_packed SELECT kc.id, t.step, kk.id, t.{val} FROM temp.t t "
                         f"JOIN keys kc ON kc.key = t.cell_id JOIN keys kk ON kk.key = t.{key}")
            conn.execute("DROP TABLE temp.t")
        conn.execute("INSERT OR REPLACE INTO main.meta(key, value) VALUES ('slim', ?)",
                     (json.dumps({"from": str(src), "made": time.time(),
                                  "eval_items": "each cell's first and last evaluation only"}),))
        conn.execute("COMMIT")
        conn.execute("DETACH DATABASE src")
        conn.execute("VACUUM")
    except BaseException:
        conn.close()
        tmp.unlink(missing_ok=True)
        raise
    conn.close()
    os.replace(tmp, out)
    return out
