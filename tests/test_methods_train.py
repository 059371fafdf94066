"""Two-step trainer smoke runs of each outcome-level method by name, and the method hooks' state."""

from __future__ import annotations

import math

import pytest
import torch

from grouprl.train import ConfigError, build_config, train
from grouprl.train.logging import read_jsonl
from grouprl.train.methods import MethodHooks, estimator_takes
from test_train import tiny_overrides


def brevity(example, completion: str) -> float:
    """A second reward function for MaxMin: shorter completions score higher."""
    return 1.0 - len(completion) / 3.0


def _run(tmp_path, name, **kw):
    cfg = build_config(tiny_overrides(tmp_path, name=name, steps=2, eval_every=0, save_every=2, **kw))
    summary = train(cfg)
    rows = read_jsonl(tmp_path / "runs" / name / "metrics.jsonl")
    assert len(rows) == 2
    for r in rows:
        assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"])
    return summary, rows


METHODS = {
    "ngrpo": dict(estimator="ngrpo", loss="ngrpo_clip", sampler="dapo_dynamic",
                  sampler_kwargs={"filter": "all_correct", "max_rounds": 2}),
    "canon": dict(estimator="canon"),
    "canon_cosine": dict(estimator="canon_cosine", estimator_kwargs={"warmup_steps": 1}),
    "pshw": dict(estimator="pshw", ter=True),
    "dapo": dict(estimator="dapo", loss="dapo_clip", agg="token-mean", overlong_buffer=2, mask_truncated=True,
                 sampler="dapo_dynamic", sampler_kwargs={"max_rounds": 2}),
    "bgae": dict(estimator="bgae", estimator_kwargs={"K": 2}),
    "copo": dict(estimator="copo", loss="copo", estimator_kwargs={"k": 5.0, "b": 1.0}),
    "copo_estimator_only": dict(estimator="copo"),
    "maxmin": dict(estimator="maxmin", reward_components=["task", "test_methods_train:brevity"]),
    "rsr": dict(sampler="recent_sample_recovery", sampler_kwargs={"max_rounds": 2}),
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_smoke(tmp_path, method):
    _summary, rows = _run(tmp_path, method, **METHODS[method])
    if method == "pshw":
        assert all("ter/coef" in r for r in rows)
    if method == "copo":
        assert all(0.0 <= r["copo/blend_weight"] <= 1.0 for r in rows)
    if method == "maxmin":  # exact values in the loop: tests/test_maxmin_pipeline.py
        for r in rows:  # the logged pick is the argmin of the logged group means (lowest index on ties)
            assert r["maxmin/worst_group"] == (0.0 if r["maxmin/F_0"] <= r["maxmin/F_1"] else 1.0)


def test_schedule_gets_step(tmp_path):
    assert estimator_takes("canon_cosine", "step") and not estimator_takes("grpo", "step")
    cfg = build_config(tiny_overrides(tmp_path, estimator="canon_cosine", steps=150))
    hooks = MethodHooks(cfg, None)
    from grouprl.core import Rollouts

    b = Rollouts(rewards=torch.tensor([1.0, 0.0, 1.0, 0.5]), group=torch.tensor([0, 0, 1, 1]),
                 mask=torch.ones(4, 2, dtype=torch.bool), entropy=torch.rand(4, 2))
    from grouprl.advantages import compute_advantages

    for step in (0, 40, 120):
        want = compute_advantages("canon_cosine", b, step=step, total_steps=cfg.steps)
        assert torch.equal(hooks.advantages(b, step), want)


def test_overlong_shaping_and_filter(tmp_path):
    from grouprl.core import Rollouts

    cfg = build_config(tiny_overrides(tmp_path, overlong_buffer=2, overlong_factor=1.0, mask_truncated=True))
    hooks = MethodHooks(cfg, None)
    mask = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 1]], dtype=torch.bool)
    b = Rollouts(rewards=torch.ones(4), group=torch.zeros(4, dtype=torch.long), mask=mask,
                 truncated=torch.tensor([False, False, False, True]))
    out = hooks.prepare(b, ["a"] * 4, [None] * 4)
    # L_max = 3, L_cache = 2: lengths 1, 2, 3 -> 0, -0.5, -1 (ramp (L_max - L_cache - |y|)/L_cache)
    assert torch.allclose(out.rewards, torch.tensor([1.0, 0.5, 0.0, 0.0]))
    assert not out.mask[3].any() and out.mask[2].all()


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="overlong_buffer"):
        MethodHooks(build_config(tiny_overrides(tmp_path, overlong_buffer=9)), None)
    with pytest.raises(ValueError, match="reward_components"):
        MethodHooks(build_config(tiny_overrides(tmp_path, estimator="maxmin")), None)
    with pytest.raises(ConfigError):
        build_config(tiny_overrides(tmp_path, overlong_buffer=-1))


def test_ter_state_round_trip(tmp_path):
    cfg = build_config(tiny_overrides(tmp_path, ter=True, ter_kwargs={"target": 0.5, "coef": 0.01}))
    a = MethodHooks(cfg, None)
    ent, m = torch.full((2, 3), 0.9), torch.ones(2, 3, dtype=torch.bool)
    a.before_update(ent, m, {})
    assert a.entropy_coef(0.0) == pytest.approx(-0.01)  # H above target: push entropy down
    b = MethodHooks(cfg, None)
    b.load_state_dict(a.state_dict())
    assert b.entropy_coef(0.1) == a.entropy_coef(0.1) and b.state_dict() == a.state_dict()
