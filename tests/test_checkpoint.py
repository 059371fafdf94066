"""Checkpoints: exact round trip, clear errors, and a real SIGKILL + resume that is bit-identical."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import json
from pathlib import Path

import pytest
import torch
import yaml

import grouprl
from grouprl.train import CheckpointError, ConfigError, build_config, resume_config, train
from grouprl.train.config import flatten_sections
from grouprl.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from grouprl.train.logging import read_jsonl
from test_reliability import _children as children, wait_gone
from test_train import tiny_overrides

TESTS = Path(__file__).resolve().parent
SRC = Path(grouprl.__file__).resolve().parents[1]


def _model_and_opt(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    model[1].weight = torch.nn.Parameter(model[1].weight)  # plain params
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).square().sum().backward()
        opt.step()
    return model, opt


def test_round_trip_is_exact(tmp_path):
    model, opt = _model_and_opt()
    import numpy as np

    np.random.seed(3)
    state = {"config_hash": "abc", "sampler": {"counts": torch.arange(5), "beta": (1.0, 2.0), "seen": {3: 1}},
             "rng": {"numpy": np.random.get_state()}, "failures_total": 4}
    path = save_checkpoint(tmp_path / "ck", 7, model=model, optimizer=opt, state=state)
    assert path.name == "step_000007" and latest_checkpoint(tmp_path / "ck") == path
    model2, opt2 = _model_and_opt(seed=1)
    got = load_checkpoint(path, model=model2, optimizer=opt2)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for k in s1["state"]:
        for name, v in s1["state"][k].items():
            assert torch.equal(v, s2["state"][k][name])
    assert got["step"] == 7 and got["failures_total"] == 4 and got["config_hash"] == "abc"
    assert torch.equal(got["sampler"]["counts"], torch.arange(5)) and got["sampler"]["beta"] == (1.0, 2.0)
    assert got["sampler"]["seen"] == {3: 1}
    np_state = got["rng"]["numpy"]
    assert np_state[0] == "MT19937" and (np_state[1] == np.random.get_state()[1]).all()


def test_keeps_only_the_last_checkpoints(tmp_path):
    model, opt = _model_and_opt()
    for step in (2, 4, 6):
        save_checkpoint(tmp_path, step, model=model, optimizer=opt, state={}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_000004", "step_000006"]


def test_corrupt_and_missing_files_give_clear_errors(tmp_path):
    model, opt = _model_and_opt()
    path = save_checkpoint(tmp_path, 2, model=model, optimizer=opt, state={})
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model.safetensors is corrupt"):
        load_checkpoint(path, model=model, optimizer=opt)
    path = save_checkpoint(tmp_path, 4, model=model, optimizer=opt, state={})
    (path / "state.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"state.safetensors is missing"):
        load_checkpoint(path, model=model, optimizer=opt)
    path = save_checkpoint(tmp_path, 6, model=model, optimizer=opt, state={})
    (path / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"state.json is corrupt"):
        load_checkpoint(path, model=model, optimizer=opt)
    (tmp_path / "latest").write_text("step_000099\n")
    with pytest.raises(CheckpointError, match=r"points to 'step_000099', which does not exist"):
        latest_checkpoint(tmp_path)
    other = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Linear(16, 2))
    path = save_checkpoint(tmp_path, 8, model=model, optimizer=opt, state={})
    with pytest.raises(CheckpointError, match=r"does not fit this model"):
        load_checkpoint(path, model=other, optimizer=None)


def test_incompatible_run_dir_errors(tmp_path):
    cfg = build_config(tiny_overrides(tmp_path, name="r", steps=2))
    run = Path(train(cfg)["run_dir"])
    with pytest.raises(ConfigError, match=r"already holds a run with a different config.*--resume"):
        train(build_config(tiny_overrides(tmp_path, name="r", steps=2, lr=0.5)))
    with pytest.raises(ConfigError, match=r"cannot change lr"):
        resume_config(run, {"lr": 0.5})
    # a config.yaml edited by hand no longer matches the checkpoints
    text = (run / "config.yaml").read_text().replace("lr: 0.001", "lr: 0.002")
    (run / "config.yaml").write_text(text)
    with pytest.raises(CheckpointError, match=r"different config"):
        train(resume_config(run, {"steps": 3}), resume=run)
    with pytest.raises(ConfigError, match=r"no config.yaml"):
        resume_config(tmp_path / "nowhere", {})


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-c", "from grouprl.cli import main; main()", *args]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{SRC}{os.pathsep}{TESTS}")
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def _strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rows]


def test_sigkill_and_resume_is_bit_identical(tmp_path):
    over = tiny_overrides(tmp_path, steps=10, save_every=2, eval_every=3, kl_coef=0.05, ppo_epochs=2, mini_batches=2)
    words = [f"{k}={v}" for k, v in over.items()]
    # the uninterrupted reference run (in this process: same seed, same single thread)
    full = Path(train(build_config({**over, "name": "full"}))["run_dir"])
    # the same run, killed with SIGKILL twice at different moments, then resumed to the end
    run = tmp_path / "runs" / "killed"
    proc = subprocess.Popen(_cli(["train", "name=killed", *words]), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kills = 0
    for wait_rows in (3, 7):
        deadline = time.time() + 120
        while len(read_jsonl(run / "metrics.jsonl")) < wait_rows and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        if proc.poll() is None:
            time.sleep(0.05 * wait_rows % 0.17)  # somewhere inside a step (maybe inside a checkpoint write)
            workers = children(proc.pid)  # the reward_fn worker
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            assert wait_gone(workers) == [], "a process of the killed run survived it"
        proc = subprocess.Popen(_cli(["train", "--resume", str(run)]), env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert kills >= 1
    a, b = read_jsonl(full / "metrics.jsonl"), read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(1, 11))
    assert _strip(a) == _strip(b)  # every metric, bit for bit (floats are written with repr)
    assert read_jsonl(full / "eval.jsonl") == read_jsonl(run / "eval.jsonl")
    assert read_jsonl(full / "eval_items.jsonl") == read_jsonl(run / "eval_items.jsonl")  # cut back like eval.jsonl
    assert any(r["grad_norm"] > 0 for r in a) and any(r["kl"] > 0 for r in a)  # the runs did learn
    from safetensors.torch import load_file

    wa = load_file(str(latest_checkpoint(full / "checkpoints") / "model.safetensors"))
    wb = load_file(str(latest_checkpoint(run / "checkpoints") / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _as_older_version(run: Path, field: str) -> None:
    """Make ``run`` look written by a version without ``field``: its config.yaml lacks the field and
    its newest checkpoint has the old record (a hash over the fields that version had, no field list)."""
    saved = yaml.safe_load((run / "config.yaml").read_text())
    flat = flatten_sections(saved, where="test")
    old_fields = [f for f in flat if f != field]
    (run / "config.yaml").write_text(yaml.safe_dump({k: flat[k] for k in old_fields}))
    ckpt = latest_checkpoint(run / "checkpoints")
    state_file = ckpt / "state.json"
    record = json.loads(state_file.read_text())
    items = [kv for kv in record["state"]["__dict__"] if kv[0] != "config_fields"]  # (key, value) pairs
    old_hash = build_config({k: flat[k] for k in old_fields}).compat_hash(old_fields)
    record["state"]["__dict__"] = [[k, old_hash if k == "config_hash" else v] for k, v in items]
    state_file.write_text(json.dumps(record))


def test_checkpoint_from_a_version_without_a_field_resumes(tmp_path):
    """A field added after a run was written takes its default on resume; the run continues. The
    old record's hash covers the fields of that version's config.yaml (every version writes all)."""
    run = Path(train(build_config(tiny_overrides(tmp_path, name="old", steps=2)))["run_dir"])
    _as_older_version(run, "max_failed_reward_steps")  # a resumable field: not hashed anyway
    _as_older_version(run, "overlong_factor")  # hashed: the old hash lacks it
    summary = train(resume_config(run, {"steps": 3}), resume=run)
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]
    assert summary["run_dir"] == str(run)


def test_checkpoint_from_a_version_without_a_field_refuses_a_non_default_value(tmp_path):
    run = Path(train(build_config(tiny_overrides(tmp_path, name="old", steps=2)))["run_dir"])
    _as_older_version(run, "overlong_factor")
    cfg = resume_config(run, {"steps": 3}).model_copy(update={"overlong_factor": 0.5})  # not what the run used
    with pytest.raises(CheckpointError, match=r"predates the field\(s\) overlong_factor"):
        train(cfg, resume=run)
