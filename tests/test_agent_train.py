"""Agent training loop (env=...): smoke runs per estimator, resume round-trip, self-play, warm start."""

from __future__ import annotations

import json

import pytest
from conftest import require

from grouprl.envs import get_env
from grouprl.train.agent_sft import EXPERTS, expert_turns
from grouprl.train.config import build_config
from grouprl.train.logging import read_jsonl
from grouprl.train import resume_config, train

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
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rows]  # noqa: E731
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

    import grouprl.train.loop as loop_mod

    seen = []
    real = loop_mod.autocast

    def recording(device, precision):
        seen.append((device.type, precision))
        return real(device, precision)

    monkeypatch.setattr(loop_mod, "autocast", recording)
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
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rows]  # noqa: E731
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


# ------------------------------------------------------------------------------------------
# Exact checks of the five estimators through the agent trainer. An untrained model writes no legal
# gridworld move, so every return there is 0; this test environment accepts any text and pays 1 for
# an action whose first character has an even code point, so the sampled episodes differ. Each
# step's batch and advantages are recorded at the trainer's compute_advantages call and the
# advantages and logged metrics are recomputed here, in numpy, from each paper's formula.
import numpy as np  # noqa: E402

from grouprl.envs import ENVS, TextEnv  # noqa: E402


class _ParityEnv(TextEnv):
    name = "_parity"

    def __init__(self, max_steps: int = 3) -> None:
        super().__init__(max_steps=max_steps)

    def _reset(self, seed):
        self.last = "-"

    def _step(self, action):
        self.last = action
        return float(ord(action) % 2 == 0), False, {}

    def _observe(self):
        return f"turn {self.steps}, last {self.last}"

    def valid_actions(self):
        return []

    def parse_action(self, text):
        return text[:1] or None

    @property
    def action_prompt(self):
        return "Write any character."


def _zs(x, eps=1e-6):
    return np.zeros_like(x) if len(x) < 2 or np.all(x == x[0]) else (x - x.mean()) / (x.std(ddof=1) + eps)


def _by(keys, values, f):
    out = np.zeros_like(values)
    for k in {tuple(row) for row in keys}:
        sel = np.all(keys == np.asarray(k), axis=1)
        out[sel] = f(values[sel])
    return out


def _returns(b, gamma):
    """R_t = Σ_{k>=t} γ^{k−t} r_k along each trajectory (GiGPO Eq. 5; MARS with γ = 1)."""
    traj, step, r = b.trajectory.numpy(), b.step.numpy(), b.step_rewards.double().numpy()
    out = np.zeros_like(r)
    for t in np.unique(traj):
        idx = np.flatnonzero(traj == t)
        idx = idx[np.argsort(step[idx])]
        acc = 0.0
        for i in idx[::-1]:
            acc = r[i] + gamma * acc
            out[i] = acc
    return out


def _agent_expected(est, b):
    r, g = b.rewards.double().numpy(), b.group.numpy()
    if est == "grpo":  # arXiv:2402.03300, on the step rows
        return _by(g[:, None], r, _zs)
    if est == "advevo_public":  # arXiv:2510.01586 (proposed reading): R − mean of the (group, role) pool
        return _by(np.stack([g, b.role.numpy()], 1), r, lambda x: x - x.mean())
    if est == "gigpo":  # arXiv:2505.10978 Eq. 8: A^E over trajectories + ω·A^S over anchor states, ω = 1
        traj = b.trajectory.numpy()
        ae = np.zeros_like(r)
        for k in np.unique(g):
            ts = np.unique(traj[g == k])
            ret = np.array([r[traj == t][0] for t in ts])
            z = _zs(ret)
            for t, v in zip(ts, z):
                ae[traj == t] = v
        as_ = _by(np.stack([g, b.state_key.numpy()], 1), _returns(b, 0.95), _zs)
        return ae + as_ - 0.1 * b.extras["invalid_action"].double().numpy()
    if est == "mars":  # arXiv:2510.15414, order "paper": return-to-go (γ = 1), z per (group, agent)
        return _by(np.stack([g, b.agent.numpy()], 1), _returns(b, 1.0), _zs)
    return None  # salt: the generic checks only


@pytest.mark.parametrize("estimator", ["gigpo", "grpo", "salt", "mars", "advevo_public"])
def test_agent_estimators_exact_on_the_trainers_batches(tmp_path, monkeypatch, estimator):
    import grouprl.train.methods as methods_mod

    monkeypatch.setitem(ENVS._items, "_parity", _ParityEnv)
    recs = []
    real = methods_mod.compute_advantages

    def recording(est, batch, **kw):
        adv = real(est, batch, **kw)
        recs.append((batch, adv.detach().double().numpy()))
        return adv

    monkeypatch.setattr(methods_mod, "compute_advantages", recording)
    train(_cfg(tmp_path, estimator, estimator=estimator, env="_parity", group_size=3, instruction="Go."))
    rows = read_jsonl(tmp_path / estimator / "metrics.jsonl")
    assert len(recs) == len(rows) == 2
    varied = False
    for (b, a), row in zip(recs, rows):
        m = b.mask.numpy()
        r, g, traj = b.rewards.double().numpy(), b.group.numpy(), b.trajectory.numpy()
        episode = np.array([r[traj == t][0] for t in np.unique(traj)])
        varied |= len(np.unique(episode)) > 1
        assert row["rows"] == len(r)
        assert row["reward"] == pytest.approx(episode.mean(), abs=1e-6)  # mean episode return
        const = [np.all(r[g == k] == r[g == k][0]) for k in np.unique(g)]
        assert row["frac_constant_groups"] == pytest.approx(np.mean(const), abs=1e-7)
        assert row["adv_abs"] == pytest.approx(np.abs(a * m).sum() / m.sum(), rel=1e-5)
        want = _agent_expected(estimator, b)
        if want is not None:
            np.testing.assert_allclose(a, np.where(m, want[:, None], 0.0), atol=2e-5, rtol=1e-5)
    assert varied  # the check ran on episodes with different returns
