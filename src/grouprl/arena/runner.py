"""Run an arena: every cell with the embedded trainer, in parallel worker processes, into the store.

Layout of an arena run directory ``out_dir/name``::

    arena.db        the SQLite store (grouprl.arena.store)
    spec.yaml       the spec as run
    warm/KEY/sft    shared SFT warm starts: cells with the same task, seed, model and SFT settings
                    start RL from the same checkpoint (built once, under a file lock)
    cells/CELL_ID   each cell's trainer run dir (config.yaml, metrics.jsonl, eval.jsonl, ...)

Backends: ``local`` keeps up to ``workers`` long-lived ``spawn`` worker processes (one torch thread
each; the trainer is imported once per worker) and hands each one cell at a time; a cell that raises,
or whose worker dies (segfault, OOM kill), is stored as ``failed`` with its error, a dead worker is
replaced, and the sweep goes on. Workers die with the arena process (Linux ``PR_SET_PDEATHSIG``). ``ray`` submits the same cell function as Ray
tasks (``num_cpus=1`` each) and writes the returned rows into the same store; ray is imported only
then. Only this parent process writes the database (one transaction per finished cell).

One sweep at a time: a sweep holds an exclusive lock on ``RUN_DIR/arena.lock`` (``fcntl.flock``) from
before it looks at the run until it ends, for a fresh start as for a resume; a second sweep of the
same run is refused with an ``ArenaError`` naming the holder's pid (the kernel drops the lock when
the holder dies, so a killed sweep never blocks its resume). Under the lock the sweep first removes
the temporaries killed writers left (``warm/.KEY.tmp-*``).

Resume (``resume=RUN_DIR``): cells run with the configs stored in the database when the sweep was
created (later changes of TrainConfig defaults do not leak into a resumed sweep); ``done`` cells are never run again; ``running`` cells (in flight when the
sweep was killed) and ``pending`` ones run from scratch (their run dir is wiped first); ``failed``
cells run again only with ``retry_failed=True``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import yaml

from .._osutil import LockHeld, die_with_parent, exclusive_lock, release_lock, remove_stale_temps, write_text_atomic
from .spec import ArenaSpec, Cell, spec_from_dict, warm_key
from .store import ArenaStore, export, versions

__all__ = ["run_arena", "run_cell", "ensure_warm_start", "ArenaError", "DB_NAME"]

DB_NAME = "arena.db"
LOCK_NAME = "arena.lock"


class ArenaError(RuntimeError):
    """The arena cannot start (existing run without --resume, missing run, bad backend)."""


# ---------------------------------------------------------------------------- worker side
def ensure_warm_start(config: dict[str, Any], warm_root: str | Path) -> str | None:
    """The shared SFT warm-start checkpoint of a cell config (built now if missing); None if the
    cell has no SFT phase. An exclusive file lock per key makes concurrent workers build it once;
    the directory appears by an atomic rename, so a killed build leaves no half checkpoint."""
    import fcntl

    from ..train.config import build_config
    from ..train.task_source import load_initial_model, load_task

    key = warm_key(config)
    if key is None:
        return None
    root = Path(warm_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (final / "sft" / "config.json").exists():
                tmp = root / f".{key}.tmp-{os.getpid()}"
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
                cfg = build_config(config)
                load_initial_model(cfg, load_task(cfg), tmp)
                shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return str(final / "sft")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    from ..train.logging import read_jsonl

    return read_jsonl(path)


def run_cell(config: dict[str, Any], run_dir: str, warm_root: str) -> dict[str, Any]:
    """Run one cell (warm start, then RL) in this process; never raises: returns the result dict
    for ``ArenaStore.finish`` (status done/failed, error, metrics, evals, eval_items, summary, timings)."""
    import torch

    from ..train.config import build_config
    from ..train import train

    t0 = time.perf_counter()
    warm_s = 0.0
    run = Path(run_dir)
    try:
        torch.set_num_threads(int(config.get("threads", 1)))
        init = ensure_warm_start(config, warm_root)
        warm_s = time.perf_counter() - t0
        shutil.rmtree(run, ignore_errors=True)
        values = {**config, "name": run.name, "out_dir": str(run.parent)}
        if init is not None:
            values["init"] = init
        summary = train(build_config(values))
        status, error = "done", None
    except BaseException as exc:  # a failed cell must not stop the sweep
        if isinstance(exc, KeyboardInterrupt):
            raise
        summary, status = None, "failed"
        error = f"{type(exc).__name__}: {exc}\n" + traceback.format_exc(limit=8)
    return {
        "status": status, "error": error, "summary": summary, "warm_s": warm_s,
        "wall_s": time.perf_counter() - t0,
        "metrics": _read_jsonl(run / "metrics.jsonl"), "evals": _read_jsonl(run / "eval.jsonl"),
        "eval_items": _read_jsonl(run / "eval_items.jsonl"),
    }


def _worker_main(conn: Any) -> None:
    """A local worker process: imports the trainer once, then runs cells sent over ``conn`` until
    it receives None. Each message is (cell_id, config, run_dir, warm_root); each reply
    (cell_id, result)."""
    die_with_parent()  # Linux: SIGKILL this worker when the arena process dies (no orphan keeps writing a run dir)
    import torch

    torch.set_num_threads(1)
    from ..train import loop  # noqa: F401  (import the trainer once, before the first cell)

    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        cid, config, run_dir, warm_root = msg
        conn.send((cid, run_cell(config, run_dir, warm_root)))


# ---------------------------------------------------------------------------- backends
class _LocalBackend:
    """Up to ``workers`` long-lived spawn processes, one cell at a time each (the trainer's imports
    are paid once per worker, not per cell). A worker that dies fails its cell and is replaced."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.ctx = mp.get_context("spawn")
        self.procs: list[dict[str, Any]] = []  # {"proc", "conn", "cell"}

    def _busy(self) -> int:
        return sum(1 for w in self.procs if w["cell"] is not None)

    def free(self) -> int:
        return self.workers - self._busy()

    def submit(self, cell: Cell, run_dir: Path, warm_root: Path) -> None:
        idle = [w for w in self.procs if w["cell"] is None]
        if idle:
            w = idle[0]
        else:
            parent, child = self.ctx.Pipe()
            proc = self.ctx.Process(target=_worker_main, args=(child,), name="arena-worker", daemon=False)
            proc.start()
            child.close()
            w = {"proc": proc, "conn": parent, "cell": None}
            self.procs.append(w)
        w["conn"].send((cell.cell_id, cell.config, str(run_dir), str(warm_root)))
        w["cell"] = cell.cell_id

    def poll(self, timeout: float) -> list[tuple[str, dict[str, Any]]]:
        """Finished cells as (cell_id, result); waits up to ``timeout`` seconds for the first one."""
        from multiprocessing.connection import wait

        busy = [w for w in self.procs if w["cell"] is not None]
        if not busy:
            return []
        wait([w["conn"] for w in busy] + [w["proc"].sentinel for w in busy], timeout=timeout)
        done = []
        for w in busy:
            result = None
            try:
                if w["conn"].poll():
                    cid, result = w["conn"].recv()
            except (EOFError, OSError):
                result = None
            if result is None and not w["proc"].is_alive():
                w["proc"].join()
                code = w["proc"].exitcode
                why = f"killed by signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
                result = {"status": "failed", "error": f"worker process died ({why}) before reporting a result"}
                self.procs.remove(w)
            if result is not None:
                done.append((w["cell"], result))
                w["cell"] = None
        return done

    def shutdown(self) -> None:
        for w in self.procs:
            try:
                w["conn"].send(None)
            except (BrokenPipeError, OSError):
                pass
        for w in self.procs:
            w["proc"].join(timeout=2 if w["cell"] is None else 0)
            if w["proc"].is_alive():
                w["proc"].kill()
                w["proc"].join()
        self.procs.clear()


class _RayBackend:
    """The same cell function as Ray tasks (``num_cpus=1`` each); ``ray`` is imported only here."""

    def __init__(self, workers: int, ray_address: str | None = None) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ArenaError("--backend ray needs ray: pip install 'grouprl[ray]' (or ray)") from exc
        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            if ray_address:
                ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            self.started = True
        self.workers = workers
        self.remote = ray.remote(num_cpus=1, max_retries=0)(run_cell)
        self.live: dict[Any, str] = {}

    def free(self) -> int:
        return self.workers - len(self.live)

    def submit(self, cell: Cell, run_dir: Path, warm_root: Path) -> None:
        self.live[self.remote.remote(cell.config, str(run_dir), str(warm_root))] = cell.cell_id

    def poll(self, timeout: float) -> list[tuple[str, dict[str, Any]]]:
        if not self.live:
            return []
        ready, _ = self.ray.wait(list(self.live), num_returns=1, timeout=timeout)
        done = []
        for ref in ready:
            cid = self.live.pop(ref)
            try:
                result = self.ray.get(ref)
            except Exception as exc:  # the task's worker died
                result = {"status": "failed", "error": f"ray task failed: {type(exc).__name__}: {exc}"}
            done.append((cid, result))
        return done

    def shutdown(self) -> None:
        for ref in self.live:
            self.ray.cancel(ref, force=True)
        self.live.clear()
        if self.started:
            self.ray.shutdown()


# ---------------------------------------------------------------------------- progress
class _Progress:
    """Rich live display: one bar over all cells (done / running / failed, ETA) and one line per
    running cell with its RL step (read from its metrics.jsonl). Silent when ``console`` is None."""

    def __init__(self, total: int, done: int, console: Any, cell_steps: dict[str, int]) -> None:
        self.bar = None
        self.cell_steps = cell_steps
        self.rows: dict[str, Any] = {}
        if console is None:
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.bar = Progress(TextColumn("{task.fields[label]}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.description}"),
                            console=console, transient=False)
        self.main = self.bar.add_task("", total=total, completed=done, label="[bold]cells")
        self.bar.start()

    def update(self, done: int, running: list[tuple[str, Path]], failed: int) -> None:
        if self.bar is None:
            return
        self.bar.update(self.main, completed=done,
                        description=f"done {done - failed}  running {len(running)}  failed {failed}")
        live = {cid for cid, _ in running}
        for cid in list(self.rows):
            if cid not in live:
                self.bar.remove_task(self.rows.pop(cid))
        for cid, run_dir in running:
            if cid not in self.rows:
                self.rows[cid] = self.bar.add_task("", total=self.cell_steps.get(cid, 1), label=f"  {cid}")
            steps = _count_lines(run_dir / "metrics.jsonl")
            self.bar.update(self.rows[cid], completed=steps, description="warm start" if steps == 0 else "RL steps")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


# ---------------------------------------------------------------------------- the sweep
def run_arena(spec: ArenaSpec | None = None, *, out_dir: str | Path | None = None, resume: str | Path | None = None,
              workers: int = 2, backend: str = "local", retry_failed: bool = False, console: Any = None,
              ray_address: str | None = None, on_cell: Callable[[str, dict[str, Any]], None] | None = None) -> Path:
    """Run (or resume) an arena; returns its run directory. See the module docstring."""
    if workers < 1:
        raise ArenaError(f"workers={workers}; give at least 1")
    if backend not in ("local", "ray"):
        raise ArenaError(f"backend {backend!r}: choose 'local' or 'ray'")
    if resume is not None:
        root = Path(resume)
        if not (root / DB_NAME).is_file():
            raise ArenaError(f"--resume {root}: no {DB_NAME} there; is it an arena run directory?")
    else:
        if spec is None:
            raise ArenaError("give a spec (or resume=RUN_DIR)")
        root = Path(out_dir if out_dir is not None else spec.out_dir) / spec.name
        root.mkdir(parents=True, exist_ok=True)
    lock = _lock_sweep(root)
    try:
        return _sweep(root, spec, resume, workers=workers, backend=backend, retry_failed=retry_failed,
                      console=console, ray_address=ray_address, on_cell=on_cell)
    finally:
        release_lock(lock)


def _lock_sweep(root: Path) -> int:
    """The arena run's exclusive lock; a sweep already running on it is refused, naming its pid."""
    try:
        return exclusive_lock(root / LOCK_NAME)
    except LockHeld as held:
        raise ArenaError(
            f"{root} is being swept by another grouprl arena process (pid {held.pid or 'unknown'}); two sweeps of "
            f"one run would run its cells twice. Wait for it to finish (or stop it), then --resume {root}."
        ) from None


def _sweep(root: Path, spec: ArenaSpec | None, resume: str | Path | None, *, workers: int, backend: str,
           retry_failed: bool, console: Any, ray_address: str | None,
           on_cell: Callable[[str, dict[str, Any]], None] | None) -> Path:
    """The sweep proper, under the run's lock."""
    remove_stale_temps(root / "warm")  # warm/.KEY.tmp-PID left by a killed warm-start build
    if resume is not None:
        store = ArenaStore(root / DB_NAME)
        spec = spec_from_dict(store.meta()["spec"])
    else:
        if (root / DB_NAME).exists():
            raise ArenaError(f"{root} already holds an arena run; continue it with --resume {root} or choose another name")
        write_text_atomic(root / "spec.yaml", yaml.safe_dump(spec.to_dict(), sort_keys=False))
        store = ArenaStore(root / DB_NAME)
        store.set_meta(spec=spec.to_dict(), versions=versions(), created=time.time())
    store.add_cells(spec.cells())
    # run the configs as stored: a resumed sweep keeps its cells' configs even if defaults changed since
    cells = {r["cell_id"]: Cell(r["cell_id"], r["method"], r["task"], r["seed"], r["config"]) for r in store.cells()}
    status = store.statuses()
    redo = [cid for cid, s in status.items() if s == "running" or (retry_failed and s == "failed")]
    store.reset(redo)
    status = store.statuses()
    todo = [cid for cid in cells if status.get(cid) == "pending"]
    store.set_meta(**{f"resumed_{int(time.time())}": {"todo": len(todo)}} if resume is not None else {})

    cells_dir, warm_root = root / "cells", root / "warm"
    cells_dir.mkdir(exist_ok=True)
    runner = _LocalBackend(workers) if backend == "local" else _RayBackend(workers, ray_address)
    n_total = len(cells)
    n_failed = sum(1 for s in status.values() if s == "failed")
    n_done = n_total - len(todo)
    progress = _Progress(n_total, n_done, console, {cid: int(c.config["steps"]) for cid, c in cells.items()})
    running: dict[str, Path] = {}
    queue = list(todo)
    t_start = time.time()
    try:
        while queue or running:
            while queue and runner.free() > 0:
                cid = queue.pop(0)
                run_dir = cells_dir / cid
                shutil.rmtree(run_dir, ignore_errors=True)
                store.mark_running(cid, str(run_dir))
                runner.submit(cells[cid], run_dir, warm_root)
                running[cid] = run_dir
            progress.update(n_done, list(running.items()), n_failed)
            for cid, result in runner.poll(timeout=1.0):
                store.finish(cid, result)
                running.pop(cid, None)
                n_done += 1
                n_failed += result["status"] == "failed"
                if on_cell is not None:
                    on_cell(cid, result)
                if console is not None and result["status"] == "failed":
                    first = (result.get("error") or "").splitlines()[0] if result.get("error") else ""
                    console.print(f"[red]cell {cid} failed:[/] {first}")
        progress.update(n_done, [], n_failed)
    finally:
        progress.close()
        runner.shutdown()
        store.set_meta(**{"last_sweep_s": time.time() - t_start})
        store.close()
    export(root / DB_NAME, root / "export")
    return root
