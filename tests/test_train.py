"""Few-step training runs on a tiny model, reward failures, config parsing and validation."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from grouprl.advantages.registry import ESTIMATORS
from grouprl.train import ConfigError, TrainConfig, build_config, load_config, parse_overrides, train
from grouprl.train.logging import read_jsonl


def tiny_model_dir(root: Path) -> Path:
    """A 1-layer Qwen2 with the package's char tokenizer, saved as a local HF checkpoint."""
    from grouprl.models import build_tokenizer, save_pretrained

    path = root / "tiny-model"
    if (path / "config.json").exists():
        return path
    tok = build_tokenizer("char")
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=64, max_position_embeddings=64,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    save_pretrained(Qwen2ForCausalLM(cfg), tok, str(path))
    return path


def tiny_overrides(root: Path, **kw) -> dict:
    """A config that runs a step in well under a second."""
    d = dict(reward_fn="test_train:digit_fraction", out_dir=str(root / "runs"), model=str(tiny_model_dir(root)), task="mixed", sft_steps=3,
             sft_batch_size=8, steps=3, prompts_per_step=4, group_size=4, max_new_tokens=3, eval_every=2,
             eval_size=8, pass_k=2, pass_k_size=4, save_every=2, threads=1, progress=False, tensorboard=False,
             micro_batch_size=8, lr=1e-3)
    d.update(kw)
    return d


def digit_fraction(example, completion: str) -> float:
    """A lenient verifier: varied rewards from an untrained model, so advantages are non-zero."""
    return sum(c.isdigit() for c in completion) / 3.0


_CALLS = {"n": 0}


def flaky(example, completion: str) -> float:
    """Raises, returns NaN or hangs on some calls."""
    _CALLS["n"] += 1
    k = _CALLS["n"] % 4
    if k == 0:
        raise RuntimeError("verifier bug")
    if k == 1:
        return float("nan")
    if k == 2 and _CALLS["n"] < 8:
        time.sleep(3.0)  # past reward_timeout_s
    return 1.0


def _params(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    ckpts = sorted((run_dir / "checkpoints").glob("step_*"))
    return load_file(str(ckpts[-1] / "model.safetensors"))


@pytest.mark.parametrize(
    "estimator, extra",
    [("grpo", {}), ("dr_grpo", {"agg": "seq-mean-token-sum-norm"}), ("rloo", {})],
)
def test_few_step_run(tmp_path, estimator, extra):
    assert estimator in ESTIMATORS
    cfg = build_config(tiny_overrides(tmp_path, name=estimator, estimator=estimator, **extra))
    summary = train(cfg)
    run = Path(summary["run_dir"])
    for f in ("config.yaml", "metrics.jsonl", "eval.jsonl", "summary.json", "sft/config.json", "checkpoints/latest"):
        assert (run / f).exists(), f
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        for k in ("reward", "acc", "frac_constant_groups", "entropy", "clipfrac", "grad_norm", "time/rollout",
                  "time/logprobs", "time/advantages", "time/update", "perf/rollout_tok_s", "reward_failures"):
            assert k in r and r[k] is not None and math.isfinite(r[k]), (k, r)
    assert any(r["grad_norm"] > 0 for r in rows)  # the policy received a gradient
    assert [e["step"] for e in read_jsonl(run / "eval.jsonl")] == [0, 2, 3]
    # the final weights differ from the warm start
    from grouprl.models import load_pretrained

    sft_model, _ = load_pretrained(str(run / "sft"))
    final = _params(run)
    assert any(not torch.equal(v, final[k]) for k, v in sft_model.state_dict().items())
    assert json.loads((run / "summary.json").read_text())["estimator"] == estimator
    if estimator == "grpo":  # the learning-curve PNG
        from grouprl.train.plot import plot_run

        png = plot_run(run)
        assert png == run / "curves.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_kl_to_reference_in_loss_and_in_reward(tmp_path):
    s1 = train(build_config(tiny_overrides(tmp_path, name="kl-loss", kl_coef=0.1, steps=2)))
    rows = read_jsonl(Path(s1["run_dir"]) / "metrics.jsonl")
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # step 1: policy == reference
    assert rows[1]["kl"] > 0
    s2 = train(build_config(tiny_overrides(tmp_path, name="kl-reward", kl_coef=0.1, kl_in_reward=True, steps=2)))
    assert read_jsonl(Path(s2["run_dir"]) / "metrics.jsonl")[1]["kl"] > 0


def test_failing_reward_function_is_counted_not_fatal(tmp_path):
    _CALLS["n"] = 0
    cfg = build_config(tiny_overrides(tmp_path, name="flaky", reward_fn="test_train:flaky", steps=1, reward_timeout_s=0.2, failure_reward=-1.0,
                                      eval_size=2, pass_k_size=0))
    summary = train(cfg)
    rows = read_jsonl(Path(summary["run_dir"]) / "metrics.jsonl")
    assert len(rows) == 1
    assert rows[0]["reward_failures"] >= 8  # raises + NaNs (+ timeouts) among 16 rows
    assert rows[0]["reward_failures_total"] == rows[0]["reward_failures"]
    assert math.isfinite(rows[0]["reward"]) and rows[0]["reward"] < 1.0  # failures scored -1


# ---------------------------------------------------------------------------- config
def test_override_syntaxes():
    got = parse_overrides(["estimator=grpo", "--model", "5M", "--lr=3e-4", "--kl_in_reward",
                           "estimator_kwargs.eps=1e-5", "--group-size", "4"])
    assert got == {"estimator": "grpo", "model": "5M", "lr": "3e-4", "kl_in_reward": got["kl_in_reward"],
                   "estimator_kwargs": {"eps": "1e-5"}, "group_size": 4}
    cfg = build_config(got)
    assert cfg.model == "5M" and cfg.lr == 3e-4 and cfg.kl_in_reward is True and cfg.group_size == 4
    assert cfg.estimator_kwargs == {"eps": "1e-5"}


def test_unknown_key_suggests_close_matches():
    with pytest.raises(ConfigError, match=r"unknown config key 'estimater'.*estimator"):
        build_config({"estimater": "grpo"})
    with pytest.raises(ConfigError, match=r"unknown config key 'group'.*group_size"):
        build_config(parse_overrides(["group=8"]))


def test_bad_values_name_the_field():
    with pytest.raises(ConfigError, match=r"lr: .*greater than 0"):
        build_config({"lr": -1})
    with pytest.raises(ConfigError, match=r"steps: .*integer"):
        build_config(parse_overrides(["steps=many"]))
    with pytest.raises(ConfigError, match=r"estimator: unknown estimator 'grpoo'.*grpo"):
        build_config({"estimator": "grpoo"})
    with pytest.raises(ConfigError, match=r"loss: unknown policy loss 'ppo'.*ppo_clip"):
        build_config({"loss": "ppo"})
    with pytest.raises(ConfigError, match=r"agg: unknown aggregation"):
        build_config({"agg": "mean"})
    with pytest.raises(ConfigError, match=r"--steps needs a value"):
        build_config(parse_overrides(["--steps"]))


def test_yaml_config_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("estimator: grpo\nsteps: 7\nestimator_kwargs: {eps: 0.001}\n")
    cfg = load_config(p, parse_overrides(["steps=9", "estimator_kwargs.ddof=0"]))
    assert cfg.estimator == "grpo" and cfg.steps == 9
    assert cfg.estimator_kwargs == {"eps": 0.001, "ddof": 0}
    with pytest.raises(ConfigError, match="estimator_kwargs: estimator 'grpo' got an unknown hyperparameter 'std_ddof'"):
        load_config(p, parse_overrides(["estimator_kwargs.std_ddof=0"]))  # refused at load, not at step 1
    with pytest.raises(ConfigError, match="reward_fn: cannot import"):
        train(build_config({"reward_fn": "no_such_module_xyz:f", "out_dir": str(tmp_path), "progress": False}))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    assert TrainConfig().compat_hash() == TrainConfig(steps=5, progress=False).compat_hash()
    assert TrainConfig().compat_hash() != TrainConfig(lr=1e-3).compat_hash()


def test_cli_train_reports_config_errors(tmp_path):
    from typer.testing import CliRunner

    from grouprl.cli import app

    res = CliRunner().invoke(app, ["train", "estimater=grpo"])
    assert res.exit_code == 2 and "estimator" in res.output


def test_cli_sft_then_train_from_it(tmp_path):
    from typer.testing import CliRunner

    from grouprl.cli import app

    over = tiny_overrides(tmp_path, steps=1, eval_size=4, pass_k_size=0)
    words = [f"{k}={v}" for k, v in over.items() if k not in ("steps",)]
    out = tmp_path / "warm"
    res = CliRunner().invoke(app, ["sft", "--out", str(out), *words])
    assert res.exit_code == 0, res.output
    assert (out / "config.json").exists() and json.loads((out / "sft_eval.json").read_text())["steps"] == 3
    res = CliRunner().invoke(app, ["train", f"init={out}", "name=from-init", "steps=1", *words])
    assert res.exit_code == 0, res.output
    run = tmp_path / "runs" / "from-init"
    assert not (run / "sft").exists()  # started from init, no SFT of its own
    assert len(read_jsonl(run / "metrics.jsonl")) == 1
    res = CliRunner().invoke(app, ["train", "init=/no/such/dir", "name=bad-init", *words])
    assert res.exit_code == 2 and "init" in res.output


def test_sft_target_missed_is_warned_and_recorded(tmp_path):
    from rich.console import Console

    console = Console(record=True, width=200)
    cfg = build_config(tiny_overrides(tmp_path, name="target", steps=1, sft_steps=2, sft_target_acc=0.9,
                                      sft_check_every=1, sft_val_size=8))
    summary = train(cfg, console=console)
    log = read_jsonl(tmp_path / "runs" / "target" / "sft" / "sft_log.jsonl")
    assert [r["step"] for r in log] == [0, 1] and all("val_acc" in r for r in log)
    assert summary["sft_steps_run"] == 2 and summary["sft_missed_target"] is True
    assert summary["sft_val_acc"] == log[-1]["val_acc"] < 0.9
    assert "sft_target_acc=0.9" in " ".join(console.export_text().split())
