"""The trainer's samplers: every grouprl.sampling sampler by name, pickle-free checkpoints of the
dynamic samplers' carried groups, bit-identical resume, and the per-step / per-eval reports."""

from __future__ import annotations

import json
import pytest
import torch

from grouprl.rollout import Generation
from grouprl.sampling import SAMPLERS
from grouprl.train import build_config, resume_config, train
from grouprl.train.logging import read_jsonl
from grouprl.train.sampler import generation_from_state, generation_to_state, get_sampler, load_sampler_state, sampler_state
from test_train import tiny_overrides


def _strip(rows):
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rows]


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_each_sampler_runs_and_reports(tmp_path, name):
    kw = {"max_rounds": 2} if name in ("dapo_dynamic", "recent_sample_recovery") else {}
    cfg = build_config(tiny_overrides(tmp_path, name=name, sampler=name, sampler_kwargs=kw, steps=2, eval_every=1))
    train(cfg)
    rows = read_jsonl(tmp_path / "runs" / name / "metrics.jsonl")
    for r in rows:
        for k in ("sampler/frac_zero_adv_groups", "sampler/gen_rounds", "sampler/wasted_rollouts", "rank/pairs"):
            assert k in r, k
        assert 0.0 <= r["sampler/frac_zero_adv_groups"] <= 1.0
        if r["rank/pairs"] > 0:
            assert 0.0 <= r["rank/acc"] <= 1.0
        if name == "vade":
            assert r["calib/brier"] >= 0 and 0 <= r["calib/ece"] <= 1 and -1 <= r["calib/balance"] <= 1
    evals = read_jsonl(tmp_path / "runs" / name / "eval.jsonl")
    assert len(evals) == 3  # warm start + 2 steps
    for e in evals:
        groups = e["groups"]
        assert [g["group"] for g in groups] == ["add1", "add2", "mul1", "sub2"]  # task=mixed
        accs = [g["acc"] for g in groups]
        assert accs == [e[f"acc/{g['group']}"] for g in groups]
        assert e["group/worst"] == min(accs)
        assert 0.0 <= e["group/gini"] <= 1.0


def test_generation_state_round_trip():
    g = Generation(prompt_ids=torch.tensor([[0, 5], [4, 5]]), prompt_mask=torch.tensor([[False, True], [True, True]]),
                   response_ids=torch.tensor([[1, 2], [3, 0]]), response_mask=torch.tensor([[True, True], [True, False]]),
                   logprobs=torch.tensor([[-0.1, -0.2], [-0.3, 0.0]]), truncated=torch.tensor([True, False]),
                   prompt_index=torch.tensor([7, 7]), pad_id=0, rewards=torch.tensor([1.0, 0.0]),
                   texts=["ab", "c"], extras={"x": torch.tensor([1, 2])})
    back = generation_from_state(generation_to_state(g))
    for f in ("prompt_ids", "response_ids", "logprobs", "rewards", "prompt_index", "truncated"):
        assert torch.equal(getattr(back, f), getattr(g, f))
    assert back.texts == g.texts and back.pad_id == 0 and torch.equal(back.extras["x"], g.extras["x"])


def test_dynamic_carry_checkpoint_resume_is_identical(tmp_path):
    kw = dict(sampler="dapo_dynamic", sampler_kwargs={"leftover": "carry", "oversample": 2.0, "max_rounds": 3},
              steps=4, save_every=2, eval_every=2)
    full = build_config(tiny_overrides(tmp_path, name="full", **kw))
    train(full)
    part = build_config(tiny_overrides(tmp_path, name="part", **{**kw, "steps": 2}))
    train(part)
    run = tmp_path / "runs" / "part"
    state = json.loads((run / "checkpoints" / "step_000002" / "state.json").read_text())
    assert "__generation__" in json.dumps(state)  # the carried groups were stored (as tensors + JSON)
    train(resume_config(run, {"steps": 4}), resume=run)
    assert read_jsonl(run / "metrics.jsonl")[2]["sampler/carried_in_groups"] > 0  # step 3 trained on the carry
    assert _strip(read_jsonl(run / "metrics.jsonl")) == _strip(read_jsonl(tmp_path / "runs" / "full" / "metrics.jsonl"))
    assert read_jsonl(run / "eval.jsonl") == read_jsonl(tmp_path / "runs" / "full" / "eval.jsonl")


def test_sampler_state_without_carry_passes_through():
    s = get_sampler("vade", 5, seed=0)
    d = sampler_state(s)
    t = get_sampler("vade", 5, seed=0)
    load_sampler_state(t, d)
    assert t.state_dict() == s.state_dict()
