"""Nothing lost, nothing escapes: kills at every durable write, a full disk, concurrent runs and
sweeps, bad run names, an orphaned reward worker, a reward function that always fails, and the
other ways a run directory could end up wrong (docs/reliability.md lists what each test covers)."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import grouprl
import grouprl.train.checkpoint as ckpt_mod
import grouprl.train.loop as loop_mod
from grouprl._osutil import LockHeld, exclusive_lock, release_lock, write_text_atomic
from grouprl.cli import app
from grouprl.train import CheckpointError, ConfigError, build_config, resume_config, train
from grouprl.train.checkpoint import latest_checkpoint
from grouprl.train.logging import read_jsonl
from grouprl.train.task_source import RewardFunctionError, load_reward_fn
from test_train import tiny_overrides

TESTS = Path(__file__).resolve().parent
SRC = Path(grouprl.__file__).resolve().parents[1]
runner = CliRunner()


def _strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rows]


def _outputs(run: Path) -> dict:
    """Everything a run leaves that must not depend on kills and resumes (timings excepted)."""
    last = latest_checkpoint(run / "checkpoints")
    summary = json.loads((run / "summary.json").read_text())
    return {
        "metrics": _strip(read_jsonl(run / "metrics.jsonl")),
        "eval": _strip(read_jsonl(run / "eval.jsonl")),
        "sft_log": _strip(read_jsonl(run / "sft" / "sft_log.jsonl")),
        "summary": {k: v for k, v in summary.items() if k not in ("run_dir", "train_seconds", "sft_seconds")},
        "checkpoint": last.name,
        "state": json.loads((last / "state.json").read_text()),  # RNG states, optimizer, sampler; tensor hashes
        "weights": load_file(str(last / "model.safetensors")),
    }


def _assert_same(a: dict, b: dict, what: str) -> None:
    for key in a:
        if key == "weights":
            assert a[key].keys() == b[key].keys(), what
            for name in a[key]:
                assert torch.equal(a[key][name], b[key][name]), f"{what}: weight {name}"
        else:
            assert a[key] == b[key], f"{what}: {key} differs"


def _temporaries(run: Path) -> list[Path]:
    return [p for p in run.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


# ------------------------------------------------------------------ kill at every durable write
@pytest.mark.slow
def test_kill_at_every_durable_write_then_resume_is_bit_identical(tmp_path, monkeypatch):
    """A forked child runs the trainer and dies (os._exit: no cleanup, no flush, like SIGKILL) just
    before or just after its k-th durable write: every os.replace into the run dir (config.yaml,
    the SFT directory with its log, each checkpoint directory, ``latest``, summary.json) and each
    tensor file of a checkpoint. Then the run is resumed (or, killed before config.yaml existed,
    started again with the same command) and must equal an uninterrupted run bit for bit."""
    over = tiny_overrides(tmp_path, steps=3, save_every=2, eval_every=2)
    runs = tmp_path / "runs"
    events: list[tuple[str, str]] = []
    real_replace, real_save = os.replace, ckpt_mod.save_file

    def _ours(path) -> str | None:
        p = Path(path).resolve()
        return str(p.relative_to(runs.resolve())) if p.is_relative_to(runs.resolve()) else None

    def counting_replace(src, dst, *a, **kw):
        if _ours(dst) is not None:
            events.append(("replace", _ours(dst).split("/", 1)[1]))
        return real_replace(src, dst, *a, **kw)

    def counting_save(tensors, path, *a, **kw):
        out = real_save(tensors, path, *a, **kw)
        events.append(("save_file", Path(path).name))
        return out

    with monkeypatch.context() as m:  # the uninterrupted reference, recording its durable writes
        m.setattr(os, "replace", counting_replace)
        m.setattr(ckpt_mod, "save_file", counting_save)
        ref = _outputs(Path(train(build_config({**over, "name": "full"}))["run_dir"]))
    assert [e for e in events if e[0] == "replace"] == [
        ("replace", "config.yaml"), ("replace", "sft"), ("replace", "checkpoints/step_000002"),
        ("replace", "checkpoints/latest"), ("replace", "checkpoints/step_000003"), ("replace", "checkpoints/latest"),
        ("replace", "summary.json")]
    assert len(events) == 11  # + model.safetensors and state.safetensors of both checkpoints

    kills = [(k, phase) for k, (kind, _) in enumerate(events)
             for phase in (("before", "after") if kind == "replace" else ("after",))]
    for k, phase in kills:
        name = f"k{k}{phase}"
        run = runs / name
        pid = os.fork()
        if pid == 0:  # the child: count durable writes of this run, die at the k-th
            code = 1
            try:
                seen = [0]

                def hit(when: str) -> None:
                    if seen[0] == k and when == phase:
                        os._exit(77)

                def dying_replace(src, dst, *a, **kw):
                    if _ours(dst) is None:
                        return real_replace(src, dst, *a, **kw)
                    hit("before")
                    out = real_replace(src, dst, *a, **kw)
                    hit("after")
                    seen[0] += 1
                    return out

                def dying_save(tensors, path, *a, **kw):
                    out = real_save(tensors, path, *a, **kw)
                    hit("after")
                    seen[0] += 1
                    return out

                os.replace = dying_replace
                ckpt_mod.save_file = dying_save
                train(build_config({**over, "name": name}))
                code = 0  # the kill never came
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 77, f"{name}: the child was not killed at its durable write"
        what = f"killed {phase} {events[k]}"
        if events[k] == ("replace", "sft") and phase == "after":  # the log is published with the SFT weights
            assert len(read_jsonl(run / "sft" / "sft_log.jsonl")) == len(ref["sft_log"]) > 0, what
        if (run / "config.yaml").exists():
            cfg = resume_config(run, {})
            assert cfg == build_config({**over, "name": name}), what
            train(cfg, resume=run)
        else:  # killed before config.yaml was in place: --resume refuses, the same command starts over
            with pytest.raises(ConfigError, match="no config.yaml there"):
                resume_config(run, {})
            train(build_config({**over, "name": name}))
        _assert_same(ref, _outputs(run), what)
        assert _temporaries(run) == [], what


# ------------------------------------------------------------------ config.yaml, names, locks
def test_empty_or_unreadable_config_yaml_is_refused_on_resume(tmp_path):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("")  # what a kill left before config.yaml was written atomically
    with pytest.raises(ConfigError, match=r"config.yaml is empty.*delete"):
        resume_config(run, {})
    (run / "config.yaml").write_text("lr: [unclosed\n")
    with pytest.raises(ConfigError, match=r"config.yaml is unreadable"):
        resume_config(run, {})
    r = runner.invoke(app, ["train", "--resume", str(run)])
    assert r.exit_code == 2 and "unreadable" in r.output and "Traceback" not in r.output


def test_write_text_atomic_keeps_the_old_content_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    write_text_atomic(path, "old: 1\n")

    def broken(src, dst):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        write_text_atomic(path, "new: 2\n")
    assert path.read_text() == "old: 1\n" and sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


@pytest.mark.parametrize("name", ["../../escape", "a/b", "..", "a\\b"])
def test_run_name_is_one_path_component(tmp_path, name):
    with pytest.raises(ConfigError, match=r"name: run name .* is not a single directory name.*out_dir"):
        build_config(tiny_overrides(tmp_path, name=name))
    r = runner.invoke(app, ["train", f"name={name}", f"out_dir={tmp_path / 'runs'}"])
    assert r.exit_code == 2 and "not a single directory name" in " ".join(r.output.split())
    assert not (tmp_path / "escape").exists() and not (tmp_path / "runs").exists()


def test_a_second_process_on_a_run_dir_is_refused_naming_the_holder(tmp_path):
    run = Path(train(build_config(tiny_overrides(tmp_path, name="r", steps=2)))["run_dir"])
    fd = exclusive_lock(run / ".lock")  # as another live process would hold it (a separate open file)
    try:
        with pytest.raises(ConfigError, match=rf"in use by another grouprl process \(pid {os.getpid()}\)"):
            train(resume_config(run, {"steps": 3}), resume=run)
        with pytest.raises(LockHeld):
            exclusive_lock(run / ".lock")
    finally:
        release_lock(fd)
    assert train(resume_config(run, {"steps": 3}), resume=run)["steps"] == 3
    # a fresh start takes the lock before it checks the directory: a run being created is not raced
    fresh = tmp_path / "runs" / "fresh"
    fresh.mkdir()
    fd = exclusive_lock(fresh / ".lock")
    try:
        with pytest.raises(ConfigError, match=rf"in use by another grouprl process \(pid {os.getpid()}\)"):
            train(build_config(tiny_overrides(tmp_path, name="fresh", steps=1)))
        assert sorted(p.name for p in fresh.iterdir()) == [".lock"]  # nothing written, nothing removed
    finally:
        release_lock(fd)


# ------------------------------------------------------------------ disk full
def test_disk_full_during_a_checkpoint(tmp_path, monkeypatch):
    """ENOSPC while writing the second checkpoint: a clear error naming the space needed and where,
    no partial directory left, ``latest`` on the last complete step; the CLI exits 2 without a
    traceback; a later resume (disk freed) equals an uninterrupted run."""
    over = tiny_overrides(tmp_path, steps=4, save_every=2)
    ref = _outputs(Path(train(build_config({**over, "name": "full"}))["run_dir"]))
    real_save, calls = ckpt_mod.save_file, [0]

    def full_disk(tensors, path, *a, **kw):
        calls[0] += 1
        if calls[0] >= 3:  # the second checkpoint's first file
            Path(path).write_bytes(b"\0" * 1000)  # a partial file, as a full disk leaves it
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(tensors, path, *a, **kw)

    monkeypatch.setattr(ckpt_mod, "save_file", full_disk)
    run = tmp_path / "runs" / "full-disk"
    with pytest.raises(CheckpointError, match=rf"no space left on device: \d+ MB needed in {run / 'checkpoints'}"):
        train(build_config({**over, "name": "full-disk"}))
    assert _temporaries(run) == [] and latest_checkpoint(run / "checkpoints").name == "step_000002"
    calls[0] = 2  # the CLI: the same failure is one line and exit code 2
    r = runner.invoke(app, ["train", "--resume", str(run)])
    assert r.exit_code == 2 and "no space left on device" in r.output and "Traceback" not in r.output
    assert _temporaries(run) == []
    monkeypatch.setattr(ckpt_mod, "save_file", real_save)

    def no_room(path, text):  # any other write on a full disk (here summary.json) ends the same way
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with monkeypatch.context() as m:
        m.setattr(loop_mod, "write_text_atomic", no_room)
        with pytest.raises(CheckpointError, match=rf"no space left on device: more space needed in {run}"):
            train(resume_config(run, {}), resume=run)
    train(resume_config(run, {}), resume=run)
    _assert_same(ref, _outputs(run), "resumed after a full disk")


def test_stale_temporaries_of_killed_writers_are_removed_at_start(tmp_path):
    run = Path(train(build_config(tiny_overrides(tmp_path, name="r", steps=2)))["run_dir"])
    stale = [run / ".sft.tmp-abc123", run / "checkpoints" / ".tmp-step_000004-99999", run / ".config.yaml.tmp-99999",
             run / "checkpoints" / ".latest.tmp-99999"]
    for p in stale[:2]:
        p.mkdir()
        (p / "model.safetensors").write_bytes(b"\0" * 4096)
    for p in stale[2:]:
        p.write_text("partial")
    train(resume_config(run, {"steps": 3}), resume=run)
    assert [p for p in stale if p.exists()] == []


# ------------------------------------------------------------------ global RNG states
def test_two_identical_runs_write_identical_checkpoint_state(tmp_path):
    import random

    import numpy as np

    docs = []
    for name in ("a", "b"):
        random.random(), np.random.rand()  # other code in the process drew from the global RNGs
        run = Path(train(build_config(tiny_overrides(tmp_path, name=name, steps=2)))["run_dir"])
        docs.append(json.loads((latest_checkpoint(run / "checkpoints") / "state.json").read_text()))
    assert docs[0] == docs[1]  # python/numpy/torch RNG states, optimizer, sampler, tensor hashes


# ------------------------------------------------------------------ the reward worker dies with its parent
def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie is dead (its new parent has not reaped it yet)


def wait_gone(pids: list[int], timeout: float = 20.0) -> list[int]:
    """The pids still alive after waiting up to ``timeout`` seconds for them to end."""
    deadline = time.time() + timeout
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-c", "from grouprl.cli import main; main()", *args]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{SRC}{os.pathsep}{TESTS}", COLUMNS="300")
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux")
def test_sigkill_of_the_trainer_leaves_no_reward_worker(tmp_path):
    over = tiny_overrides(tmp_path, name="k", steps=100000, save_every=1000, eval_every=0)
    build_config(over)
    proc = subprocess.Popen(_cli(["train", *[f"{k}={v}" for k, v in over.items()]]), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not read_jsonl(tmp_path / "runs" / "k" / "metrics.jsonl") and time.time() < deadline:
            assert proc.poll() is None
            time.sleep(0.05)
        workers = _children(proc.pid)
        assert workers, "the reward_fn= run has no worker process"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert wait_gone(workers) == [], "the reward worker outlived its killed trainer"


def test_reward_worker_holds_only_its_own_socket_end():
    from grouprl.tasks import RewardGuard
    from grouprl.tasks.base import Example

    guard = RewardGuard(lambda e, c: 1.0, timeout_s=30)
    guard.score_batch([Example(prompt="p", answer="1")], ["1"])
    worker = guard._proc.pid
    own = {os.readlink(f"/proc/{worker}/fd/{fd}") for fd in os.listdir(f"/proc/{worker}/fd")}
    parent_end = os.readlink(f"/proc/self/fd/{guard._conn.fileno()}")
    assert parent_end.startswith("socket:") and parent_end not in own
    guard._conn.close()  # the trainer's end closes (as when it dies): the worker sees EOF and exits
    guard._proc.join(timeout=20)
    assert not guard._proc.is_alive()
    guard._conn = None
    guard.close()


# ------------------------------------------------------------------ issue 17: failures before the first step
def test_a_run_that_fails_before_its_first_step_leaves_nothing_that_blocks_a_retry(tmp_path):
    run = tmp_path / "runs" / "retry"
    for bad in ({"reward_fn": "no_such_module_xyz:score"}, {"task_kwargs": {"no_such_kwarg": 1}}):
        with pytest.raises(ConfigError):
            train(build_config(tiny_overrides(tmp_path, name="retry", **bad)))
        assert not run.exists(), bad
    assert train(build_config(tiny_overrides(tmp_path, name="retry", steps=1)))["steps"] == 1


def test_reward_fn_is_found_in_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "my_cwd_reward.py").write_text("def score(example, completion):\n    return 0.5\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "my_cwd_reward", raising=False)
    fn = load_reward_fn("my_cwd_reward:score")
    assert fn(None, "x") == 0.5
    assert sys.path[-1] == str(tmp_path)  # appended: a file here cannot shadow an installed package
    with pytest.raises(ConfigError, match=r"cannot import 'my_cwd_reward:nope'"):
        load_reward_fn("my_cwd_reward:nope")


def always_nan(example, completion):
    return float("nan")


def always_text(example, completion):
    return "not a number"


@pytest.mark.parametrize("fn, first", [("always_nan", "nan on row 0: returned nan"),
                                       ("always_text", "error on row 0: returned str 'not a number'")])
def test_a_reward_function_that_always_fails_stops_the_run(tmp_path, fn, first):
    over = tiny_overrides(tmp_path, name=fn, steps=6, reward_fn=f"test_reliability:{fn}", max_failed_reward_steps=2)
    with pytest.raises(RewardFunctionError, match=rf"every row of 2 consecutive steps \(steps 1-2.*first failure: {first}"):
        train(build_config(over))
    assert len(read_jsonl(tmp_path / "runs" / fn / "metrics.jsonl")) == 1  # stopped before step 2's update
    # the CLI: one line, exit code 2, no traceback
    r = runner.invoke(app, ["train", *[f"{k}={v}" for k, v in {**over, "name": fn + "-cli"}.items()]])
    assert r.exit_code == 2 and "first failure" in r.output and "Traceback" not in r.output
    # 0 disables the check: the run trains to the end with the failure reward
    summary = train(build_config({**over, "name": fn + "-off", "max_failed_reward_steps": 0}))
    assert summary["reward_failures_total"] == 6 * 4 * 4


def test_tensorboard_missing_is_said_once(tmp_path, monkeypatch):
    from rich.console import Console

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if TensorBoard were not installed
    out = io.StringIO()
    train(build_config(tiny_overrides(tmp_path, name="tb", tensorboard=True)), console=Console(file=out, width=300))
    text = out.getvalue()
    assert text.count("tensorboard=true but TensorBoard is not importable") == 1 and "Traceback" not in text
    out = io.StringIO()
    train(build_config(tiny_overrides(tmp_path, name="tb-off", tensorboard=False)), console=Console(file=out, width=300))
    assert "TensorBoard" not in out.getvalue()


# ------------------------------------------------------------------ two arena sweeps at once
@pytest.mark.slow
def test_two_sweeps_of_one_arena_at_once(tmp_path):
    """Two `grouprl arena --resume` of one run, released at the same instant: one sweeps, the other
    is refused naming the sweeper's pid; every cell ends done once, with the data of an
    uninterrupted sweep. A stale warm-start temporary of a killed build is removed."""
    from grouprl.arena import ArenaStore, run_arena, spec_from_dict
    from grouprl.arena.store import versions
    from test_arena import mini_spec

    spec = spec_from_dict(mini_spec("twice", methods={"grpo": {"estimator": "grpo"}, "dr_grpo": {"estimator": "dr_grpo"}},
                                    seeds=[0]))
    ref = run_arena(spec, out_dir=tmp_path / "ref", workers=1)
    root = tmp_path / "conc" / "twice"  # a created sweep with no cell run yet (as run_arena makes it)
    root.mkdir(parents=True)
    store = ArenaStore(root / "arena.db")
    store.set_meta(spec=spec.to_dict(), versions=versions(), created=time.time())
    store.close()
    (root / "warm" / ".somekey.tmp-99999").mkdir(parents=True)
    go = tmp_path / "go"
    code = ("import sys, time, pathlib; from grouprl.cli import main; "
            "pathlib.Path(sys.argv[1] + '.ready').touch(); "
            "exec('while not pathlib.Path(sys.argv[2]).exists(): time.sleep(0.005)'); "
            "sys.argv = ['grouprl'] + sys.argv[3:]; main()")
    args = ["arena", "--resume", str(root), "--workers", "1", "--no-report"]
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"p{i}"), str(go), *args], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        deadline = time.time() + 120
        while not all((tmp_path / f"p{i}.ready").exists() for i in range(2)) and time.time() < deadline:
            assert all(p.poll() is None for p in procs)
            time.sleep(0.02)
        go.touch()
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], (codes, outs)
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    msg = " ".join(outs[loser].split())
    assert f"being swept by another grouprl arena process (pid {procs[winner].pid})" in msg, msg
    assert not (root / "warm" / ".somekey.tmp-99999").exists()

    def rows(db: Path, table: str) -> dict:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        got = {}
        for cid, step, name, value in con.execute(f"SELECT cell_id, step, name, value FROM {table}"):
            if not name.startswith(("time/", "perf/")):
                got[(cid, step, name)] = value
        cells = {r[0]: r[1:] for r in con.execute("SELECT cell_id, status, attempts FROM cells")}
        con.close()
        return got, cells

    for table in ("metrics", "evals"):
        (want, ref_cells), (got, cells) = rows(ref / "arena.db", table), rows(root / "arena.db", table)
        assert cells == ref_cells == {cid: ("done", 1) for cid in ref_cells}
        assert got == want, table
