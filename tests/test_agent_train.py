"""Agent training loop (env=...): smoke runs per estimator, resume round-trip, self-play, warm start."""

from __future__ import annotations

import json

import pytest
from conftest import require

from grouprl.envs import get_env
from grouprl.train.agent_sft import EXPERTS, expert_turns
from grouprl.train.config import build_config
from grouprl.train.logging import read_jsonl
from grouprl.train.loop import resume_config, train

BASE = dict(env="gridworld", model="1M", sft_steps=0, prompts_per_step=2, group_size=2, max_turns=3, history_len=1,
            instruction="Reach G.", max_new_tokens=3, eval_size=2, threads=1, progress=False, tensorboard=False,
            steps=2, lr=1e-3)


def _cfg(tmp_path, name, **kw):
    return build_config({**BASE, "out_dir": str(tmp_path), "name": name, **kw})


@pytest.mark.parametrize("estimator", ["gigpo", "grpo", "salt", "mars", "advevo_public"])
def test_two_step_smoke(tmp_path, estimator):
    summary = train(_cfg(tmp_path, estimator, estimator=estimator))
    rows = read_jsonl(tmp_path / estimator / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["model_calls"] <= 3 and r["rows"] <= 2 * 2 * 3 for r in rows)
    assert summary["estimator"] == estimator and summary["final_success"] is not None


def test_gigpo_is_default_for_env_runs(tmp_path):
    train(build_config({**BASE, "out_dir": str(tmp_path), "name": "d", "steps": 1}))
    assert "estimator: gigpo" in (tmp_path / "d" / "config.yaml").read_text()


def test_resume_round_trip(tmp_path):
    train(_cfg(tmp_path, "full", steps=3, save_every=1))
    train(_cfg(tmp_path, "part", steps=1, save_every=1))
    train(resume_config(tmp_path / "part", {"steps": 3}), resume=tmp_path / "part")
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]  # noqa: E731
    assert strip(read_jsonl(tmp_path / "part" / "metrics.jsonl")) == strip(read_jsonl(tmp_path / "full" / "metrics.jsonl"))
    part_eval = [r for r in read_jsonl(tmp_path / "part" / "eval.jsonl") if r["step"] != 1]  # the 1-step run's final eval
    assert part_eval == read_jsonl(tmp_path / "full" / "eval.jsonl")


def test_mars_selfplay_tictactoe(tmp_path):
    summary = train(_cfg(tmp_path, "ttt", env="tictactoe", estimator="mars", max_turns=4, instruction="Play."))
    rows = read_jsonl(tmp_path / "ttt" / "metrics.jsonl")
    assert len(rows) == 2 and summary["env"] == "tictactoe"


def test_sft_warm_start_runs(tmp_path):
    train(_cfg(tmp_path, "sft", sft_steps=2, sft_batch_size=4, steps=1))
    assert (tmp_path / "sft" / "sft" / "config.json").is_file()


def test_expert_solves_gridworld_without_noise():
    pairs = expert_turns(lambda: get_env("gridworld"), "gridworld", [0, 1, 2, 3], noise=0.0, max_turns=20,
                         history_len=0, instruction="", seed=0)
    for s in range(4):  # replay the expert: it reaches G on every layout
        env = get_env("gridworld")
        env.reset(seed=s)
        for _ in range(20):
            _o, r, term, trunc, info = env.step(EXPERTS["gridworld"](env))
            if term or trunc:
                break
        assert info["success"], s
    assert all(a in ("up", "down", "left", "right") for _, a in pairs)


def test_unknown_expert_and_bad_env(tmp_path):
    with pytest.raises(ValueError, match="no scripted expert"):
        expert_turns(lambda: get_env("sokoban"), "sokoban", [0], noise=0, max_turns=2, history_len=0,
                     instruction="", seed=0)
    with pytest.raises(Exception, match="gridwrold|gridworld"):
        train(_cfg(tmp_path, "bad", env="gridwrold"))


# ---------------------------------------------------------------- device, precision, LoRA (as the task loop)
def test_agent_loop_bf16_autocast_on_cpu(tmp_path, monkeypatch):
    import math

    import grouprl.train.agent_loop as agent_loop

    seen = []
    real = agent_loop.autocast

    def recording(device, precision):
        seen.append((device.type, precision))
        return real(device, precision)

    monkeypatch.setattr(agent_loop, "autocast", recording)
    train(_cfg(tmp_path, "bf16", device="cpu", precision="bf16"))
    rows = read_jsonl(tmp_path / "bf16" / "metrics.jsonl")
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    # rollout, old log-probs and update of each step (and the evaluations) ran under bf16 autocast
    assert seen and set(seen) == {("cpu", "bf16")} and len(seen) >= 2 * 3


def test_agent_loop_auto_device_is_the_cpu_path(tmp_path):
    import torch

    if torch.cuda.is_available():  # pragma: no cover - CPU-only CI
        pytest.skip("auto picks CUDA here")
    train(_cfg(tmp_path, "auto", device="auto", precision="auto"))
    train(_cfg(tmp_path, "cpu", device="cpu", precision="fp32"))
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]  # noqa: E731
    assert strip(read_jsonl(tmp_path / "auto" / "metrics.jsonl")) == strip(read_jsonl(tmp_path / "cpu" / "metrics.jsonl"))
    assert read_jsonl(tmp_path / "auto" / "eval.jsonl") == read_jsonl(tmp_path / "cpu" / "eval.jsonl")


def test_agent_loop_lora_trains_only_adapters(tmp_path):
    require("peft")
    from test_device import assert_adapters_trained_base_frozen

    train(_cfg(tmp_path, "lora", model="tiny", lora_rank=4, lora_alpha=8, lora_target_modules=["q_proj", "v_proj"],
               lr=1e-2, steps=1, save_every=1))  # gigpo: the invalid-action penalty gives a gradient
    assert_adapters_trained_base_frozen(tmp_path / "lora" / "checkpoints" / "step_000001")


def test_eval_env_kwargs_evaluate_selfplay_against_a_fixed_opponent(tmp_path):
    train(_cfg(tmp_path, "vs", env="tictactoe", estimator="mars", max_turns=5, instruction="Play.", steps=1,
               eval_size=4, env_kwargs={"invalid_penalty": -1.0}, eval_env_kwargs={"opponent": "random"}))
    ev = read_jsonl(tmp_path / "vs" / "eval.jsonl")
    assert [e["step"] for e in ev] == [0, 1]
    for e in ev:
        for mode in ("greedy", "sampled"):
            rates = [e[f"{mode}_{k}"] for k in ("win_rate", "draw_rate", "loss_rate")]
            assert all(0 <= r <= 1 for r in rates) and sum(rates) <= 1 + 1e-9
            assert e[f"{mode}_success"] == e[f"{mode}_win_rate"]  # vs an opponent, success = a win
            # the invalid-move penalty lowers the return but not the outcome rates
            assert e[f"{mode}_return"] <= e[f"{mode}_win_rate"] - e[f"{mode}_loss_rate"] + 1e-9
    rows = read_jsonl(tmp_path / "vs" / "metrics.jsonl")
    assert rows[0]["rows"] > 0  # training stays self-play: both players' moves are rows


def test_agent_runs_summary_mean_and_standard_error(tmp_path, capsys):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "agent_runs.py"
    spec = importlib.util.spec_from_file_location("agent_runs", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name, accs, succ in (("a", [0.2, 0.6], [0.1, 0.3, 0.5]), ("b", [0.4, 1.0], [0.3, 0.5, 0.7])):
        d = tmp_path / name
        d.mkdir()
        (d / "eval.jsonl").write_text("".join(json.dumps({"step": 3 * i, "acc": a, "sampled_success": a}) + "\n"
                                              for i, a in enumerate(accs)))
        (d / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "success": s, "invalid_rate": 0.0,
                                                             "time/step": 1.0}) + "\n" for i, s in enumerate(succ)))
    mod.main([f"m={tmp_path / 'a'},{tmp_path / 'b'}", "--block", "2", "--png", str(tmp_path / "c.png")])
    out = capsys.readouterr().out
    assert "| 3 | 0.800 ± 0.200 | 0.800 ± 0.200 |" in out  # mean of 0.6 and 1.0, SE = std/sqrt(2) = 0.2
    assert "| success | 0.300 ± 0.100 | 0.600 ± 0.100 |" in out  # blocks of 2 steps: (0.2, 0.4), then (0.5, 0.7)
    assert (tmp_path / "c.png").stat().st_size > 0


def test_agent_example_configs_load_and_build_their_envs():
    import pathlib

    from grouprl.train.config import load_config

    paths = sorted((pathlib.Path(__file__).resolve().parents[1] / "examples" / "agents").glob("*.yaml"))
    assert len(paths) >= 2
    for path in paths:
        cfg = load_config(path)
        assert cfg.env is not None, path.name
        get_env(cfg.env, **cfg.env_kwargs).reset(seed=0)
        get_env(cfg.env, **{**cfg.env_kwargs, **cfg.eval_env_kwargs}).reset(seed=1_000_000)
