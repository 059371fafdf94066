"""The warm start shipped inside the package, how a config picks it, and what a run records of it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from grouprl import warmstarts
from grouprl.train import ConfigError, build_config, train
from grouprl.train.logging import read_jsonl
from grouprl.train.task_source import eval_subset, load_initial_model, load_task, make_guard, shipped_warm_start

from test_train import tiny_overrides


def test_the_default_warm_start_is_shipped_and_passes_its_checksums():
    ws = warmstarts.get("add3r-1M")
    assert (ws.task, ws.model) == ("add3r", "1M")
    warmstarts.verify(ws)  # every file of the manifest, SHA-256
    assert set(ws.manifest["files"]) >= {"model.safetensors", "config.json", "tokenizer.json"}
    assert ws.manifest["sft"]["val_acc"] >= ws.manifest["sft"]["target_acc"]
    with pytest.raises(warmstarts.WarmStartError, match="no shipped warm start 'add9'"):
        warmstarts.get("add9")


def test_a_corrupt_or_missing_file_is_refused(tmp_path):
    ws = warmstarts.get("add3r-1M")
    copy = tmp_path / ws.name
    shutil.copytree(ws.path, copy)
    bad = warmstarts.WarmStart(ws.name, copy, ws.manifest)
    warmstarts.verify(bad)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(warmstarts.WarmStartError, match="model.safetensors does not match its SHA-256"):
        warmstarts.verify(bad)
    shutil.copy2(ws.path / "model.safetensors", copy / "model.safetensors")
    (copy / "tokenizer.json").unlink()
    with pytest.raises(warmstarts.WarmStartError, match="tokenizer.json is missing"):
        warmstarts.verify(bad)


def test_fits_names_the_reason():
    ws = warmstarts.get("add3r-1M")
    assert ws.fits("add3r", "1M", {}) is None
    assert ws.fits("add3r", "1M", {"train_size": 5000}) is None  # the pool size does not touch the eval split
    assert ws.fits("add2r", "1M", {}) == "it is for task 'add3r', not 'add2r'"
    assert ws.fits("add3r", "5M", {}) == "it is for model '1M', not '5M'"
    assert "eval_size" in ws.fits("add3r", "1M", {"eval_size": 50, "train_size": 10})
    assert warmstarts.find("add3r", "1M") is ws or warmstarts.find("add3r", "1M").name == ws.name
    assert warmstarts.find("add2", "1M") is None


@pytest.mark.parametrize(
    "over, expected",
    [
        ({}, "add3r-1M"),                              # the default config
        ({"task_kwargs": {"train_size": 1000}}, "add3r-1M"),
        ({"sft_steps": 500}, None),                    # a changed SFT setting asks for SFT
        ({"sft_target_acc": 0.0}, None),
        ({"warm_start": "sft"}, None),
        ({"task": "add2"}, None),                      # nothing shipped for it: SFT
        ({"model": "5M"}, None),
        ({"init": "/some/dir"}, None),
        ({"warm_start": "shipped", "sft_steps": 10}, "add3r-1M"),  # explicit: the SFT fields are unused
    ],
)
def test_which_configs_start_from_the_shipped_warm_start(over, expected):
    ws = shipped_warm_start(build_config(over))
    assert (ws.name if ws is not None else None) == expected


def test_warm_start_config_errors_at_load():
    with pytest.raises(ConfigError, match="warm_start=shipped: no shipped warm start fits task=add2 model=1M"):
        build_config({"warm_start": "shipped", "task": "add2"})
    with pytest.raises(ConfigError, match="warm_start=shipped and init are both set"):
        build_config({"warm_start": "shipped", "init": "/x"})
    with pytest.raises(ConfigError, match="no warm start is shipped for environments"):
        build_config({"warm_start": "shipped", "env": "gridworld"})
    with pytest.raises(ConfigError, match="warm_start"):
        build_config({"warm_start": "pretrained"})


def test_shipped_model_reproduces_its_recorded_heldout_accuracy(tmp_path):
    """The loaded checkpoint scores the accuracy its manifest records on the task's 1,000 held-out
    prompts (greedy; within 0.005, i.e. 5 prompts, for argmax ties on other CPUs' kernels)."""
    torch.set_num_threads(1)
    cfg = build_config({"out_dir": str(tmp_path)})
    task = load_task(cfg)
    model, tok = load_initial_model(cfg, task, tmp_path)
    assert not (tmp_path / "sft").exists()  # no SFT ran
    examples = eval_subset(task, cfg.eval_size)
    assert len(examples) == 1000
    from grouprl.train.data import evaluate, step_generator

    model.eval()
    ev = evaluate(model, tok, examples, make_guard(cfg, task), max_new_tokens=cfg.max_new_tokens, pass_k=4,
                  pass_k_size=0, temperature=1.0, top_p=1.0, generator=step_generator(0, 0, 5))
    ws = warmstarts.get("add3r-1M")
    assert ev["n"] == ws.manifest["heldout_n"] == 1000
    assert ev["acc"] == pytest.approx(ws.manifest["heldout_greedy_acc"], abs=0.005)


def test_a_run_records_its_warm_start_and_eval_size(tmp_path):
    """A short default-config run from the shipped warm start: summary.json says where RL started
    (with the checkpoint's SHA-256), every eval row records the n it scored, no SFT directory."""
    over = dict(out_dir=str(tmp_path), name="ws", steps=1, prompts_per_step=2, group_size=2, eval_size=40,
                pass_k_size=4, pass_k=2, threads=1, progress=False, tensorboard=False)
    summary = train(build_config(over))
    run = tmp_path / "ws"
    assert summary["warm_start"] == {"source": "shipped", "name": "add3r-1M",
                                     "sha256": warmstarts.get("add3r-1M").manifest["files"]["model.safetensors"]}
    assert summary["sft_steps_run"] == 0 and summary["sft_seconds"] is None and not (run / "sft").exists()
    rows = read_jsonl(run / "eval.jsonl")
    assert [r["n"] for r in rows] == [40, 40] and [r["n_sampled"] for r in rows] == [4, 4]
    assert summary["eval_n"] == 40
    assert summary["versions"]["torch"] == torch.__version__.split("+")[0] or summary["versions"]["torch"] == torch.__version__


def test_eval_size_larger_than_the_eval_set_is_said_and_n_is_true(tmp_path):
    from rich.console import Console

    console = Console(record=True, width=200)
    over = tiny_overrides(tmp_path, name="big-eval", steps=1, eval_size=10_000, task="add1", pass_k_size=0,
                          sft_target_acc=0.0)
    train(build_config(over), console=console)
    rows = read_jsonl(tmp_path / "runs" / "big-eval" / "eval.jsonl")
    assert {r["n"] for r in rows} == {20}  # add1 holds 100 pairs, a fifth of them held out
    assert "eval_size=10000, but task add1 holds 20 held-out examples" in " ".join(console.export_text().split())


def test_sft_records_its_duration_and_shows_progress(tmp_path):
    from rich.console import Console

    console = Console(record=True, width=200, force_terminal=False)
    over = tiny_overrides(tmp_path, name="sft-time", steps=1, sft_steps=3, progress=True)
    summary = train(build_config(over), console=console)
    log = read_jsonl(tmp_path / "runs" / "sft-time" / "sft" / "sft_log.jsonl")
    assert summary["warm_start"] == {"source": "sft"}
    assert summary["sft_seconds"] == log[-1]["time/elapsed"] > 0
    assert [r["time/elapsed"] for r in log] == sorted(r["time/elapsed"] for r in log)
    text = console.export_text()
    assert "SFT to val acc 0.4 (cap)" in text and "3/3" in text and "loss" in text


def test_one_group_table_says_so():
    from grouprl.train.reports import format_group_table

    one = {"groups": [{"group": "add3r", "acc": 0.09, "n": 1000}], "group/worst": 0.09, "group/p20": 1.0,
           "group/gini": 0.0}
    text = format_group_table(0, one)
    assert "one group" in text and "p20" not in text
    two = {"groups": [{"group": "a", "acc": 0.2, "n": 5}, {"group": "b", "acc": 0.6, "n": 5}], "group/worst": 0.2,
           "group/p20": 0.2, "group/gini": 0.25}
    assert "worst 0.200  p20 0.200  gini 0.250" in format_group_table(0, two)


def test_run_report_and_plot_of_one_training_run(tmp_path):
    from typer.testing import CliRunner

    from grouprl.cli import app

    over = tiny_overrides(tmp_path, name="rep", steps=2, eval_every=1, sft_steps=2, sft_target_acc=0.9,
                          sft_check_every=1, sft_val_size=8)
    train(build_config(over))
    run = tmp_path / "runs" / "rep"
    res = CliRunner().invoke(app, ["report", str(run)])
    assert res.exit_code == 0, res.output
    html = (run / "report" / "report.html").read_text()
    md = (run / "report" / "report.md").read_text()
    evals = read_jsonl(run / "eval.jsonl")
    assert len(evals) == 3 and all(r["n"] == 8 for r in evals)
    # the evaluation table: one row per eval with its n; the warm-start warning; config and versions
    for e in evals:
        assert f"| {e['step']} | 8 | {e['acc']:.3f} |" in md
    assert "Warning: warm start missed its SFT target" in md
    assert "## Config" in md and "| sft_target_acc | `0.9` |" in md
    assert "## Versions" in md and f"| torch | {json.loads((run / 'summary.json').read_text())['versions']['torch']} |" in md
    assert '<img src="figures/curves.png"' in html and (run / "report" / "figures" / "curves.png").stat().st_size > 1000


def test_list_shows_the_shipped_warm_starts():
    from typer.testing import CliRunner

    from grouprl.cli import app

    res = CliRunner().invoke(app, ["list", "--markdown"])
    assert res.exit_code == 0, res.output
    ws = warmstarts.get("add3r-1M")
    row = (f"| add3r-1M | add3r | 1M | {ws.manifest['heldout_greedy_acc']:.3f} (n=1000) | {ws.manifest['command']} |")
    assert "Shipped warm starts (1)" in res.output and row in res.output


def test_sampled_evaluation_uses_evenly_spaced_examples():
    """pass@k and sampled accuracy are measured on pass_k_size examples spread over the whole held-out
    split (its first examples alone are one corner of it: 0+260=, 1+396=, ... for add3r)."""
    from grouprl.train.data import evenly_spaced, evaluate, step_generator

    assert evenly_spaced(1000, 5) == [0, 250, 500, 749, 999]
    assert evenly_spaced(3, 10) == [0, 1, 2] and evenly_spaced(7, None) == list(range(7)) and evenly_spaced(5, 0) == []
    cfg = build_config({})
    task = load_task(cfg)
    model, tok = load_initial_model(cfg, task, Path("/nonexistent-unused"))
    seen = []

    class Guard:  # records which examples the sampled pass scored (rows repeat pass_k times)
        def score_batch(self, examples, texts):
            seen.append([e.prompt for e in examples])
            return torch.zeros(len(examples)), torch.zeros(len(examples), dtype=torch.bool)

    ex = task.eval_examples[:10]
    ev = evaluate(model, tok, ex, Guard(), max_new_tokens=2, pass_k=2, pass_k_size=4, temperature=1.0, top_p=1.0,
                  generator=step_generator(0, 0, 5))
    assert ev["n"] == 10 and ev["n_sampled"] == 4
    assert seen[-1] == [ex[i].prompt for i in (0, 3, 6, 9) for _ in range(2)]
