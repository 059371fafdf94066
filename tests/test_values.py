"""Values that pass a type check and would break a run are refused when the config loads, and the
library keeps its promises about bad input (issue "nothing lost, nothing escapes", items 5, 6, 9;
and every name of a config checked at load, with close matches)."""

from __future__ import annotations

import math
import typing

import pytest
import torch
from typer.testing import CliRunner

from grouprl import Rollouts, compute_advantages
from grouprl.advantages import get, parse
from grouprl.cli import app
from grouprl.losses import policy_loss
from grouprl.train import ConfigError, TrainConfig
from grouprl.train.config import build_config, parse_overrides

runner = CliRunner()


def _cfg(*words: str) -> TrainConfig:
    return build_config(parse_overrides(list(words)))


def _float_fields() -> list[str]:
    out = []
    for name, f in TrainConfig.model_fields.items():
        ann = f.annotation
        if ann is float or float in typing.get_args(ann):
            out.append(name)
    return out


# ----------------------------------------------------------------------------------- item 5
def test_every_float_field_is_found():
    # the list is derived from the model: a new float field is covered by the next test unasked
    assert {"lr", "reward_timeout_s", "entropy_coef", "failure_reward", "norm_const"} <= set(_float_fields())


@pytest.mark.parametrize("field", _float_fields())
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", ".inf"])
def test_every_float_is_finite_at_load(field, value):
    with pytest.raises(ConfigError, match=rf"{field}: .*finite"):
        _cfg(f"{field}={value}")


def test_reward_timeout_is_bounded():
    with pytest.raises(ConfigError, match=r"reward_timeout_s.*more than a day"):
        _cfg("reward_timeout_s=1e9")
    assert _cfg("reward_timeout_s=60").reward_timeout_s == 60


def test_norm_const_is_positive():
    with pytest.raises(ConfigError, match=r"norm_const=0.*positive"):
        _cfg("norm_const=0")


@pytest.mark.parametrize(
    "expr, msg",
    [
        ("1e400*grpo", r"weight of 'grpo' in '1e400\*grpo' is '1e400' = inf; use a finite number"),
        ("grpo | clip(nan)", r"clip's value in 'grpo \| clip\(nan\)' is 'nan' = nan; use a finite number"),
        ("grpo | clip(value=inf)", r"clip's value .* = inf; use a finite number"),
        ("grpo | clip(abc)", r"'abc', not a number"),
        ("grpo | clip(-1)", r"value=-1 .* needs value >= 0"),
        ("grpo | whiten(3)", r"transform 'whiten' takes shift_mean=\.\.\."),
    ],
)
def test_composition_numbers_refused_at_parse(expr, msg):
    with pytest.raises(ValueError, match=msg):
        parse(expr)
    with pytest.raises(ConfigError, match=r"estimator: .*" + msg):
        build_config({"estimator": expr})


def test_composition_error_example_keeps_its_quotes():
    with pytest.raises(ConfigError) as exc:
        build_config({"estimator": "grpo+"})
    assert "write e.g. '0.7*grpo' (got 'grpo+')" in str(exc.value)


def _batch(rewards, group=None):
    n = len(rewards)
    return Rollouts(rewards=rewards, group=group or [0] * n, mask=torch.ones(n, 2, dtype=torch.bool))


def test_compute_advantages_never_returns_non_finite():
    b = _batch([1.0, 0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="finite"):
        get("grpo") * float("inf")
    # each step finite, the product of two scales not: named, not returned
    est = get("grpo").then("scale", value=1e38).then("scale", value=1e38)
    with pytest.raises(FloatingPointError, match=r"grpo \| scale.*non-finite advantage at row 0"):
        compute_advantages(est, b)
    # a float64 advantage that is finite but overflows the float32 output
    with pytest.raises(FloatingPointError, match=r"'rloo' produced a non-finite advantage at row 0"):
        compute_advantages("rloo", _batch([1e308, -1e308, 0.0]))


def test_grpo_huge_rewards_exact_and_rloo_raises():
    # mean 0; unbiased var = (1e616 + 1e616 + 0) / 2 = 1e616, std 1e308: z = +1, -1, 0 (the sums
    # overflow float64, the scaled computation does not). RLOO's 3/2 * (±1e308) = ±1.5e308 is not a
    # float32: it raises naming the row. Both either give the exact value or refuse; neither is silent.
    b = _batch([1e308, -1e308, 0.0])
    adv = compute_advantages("grpo", b)
    assert adv[:, 0].tolist() == [1.0, -1.0, 0.0]
    assert compute_advantages("grpo", b, scale="batch")[:, 0].tolist() == [1.0, -1.0, 0.0]
    with pytest.raises(FloatingPointError, match="row 0"):
        compute_advantages("rloo", b)
    # normal rewards take the unscaled path: bit-identical to the textbook formula
    r = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    want = ((r - r.mean()) / (r.std() + 1e-6)).to(torch.float32)
    assert torch.equal(compute_advantages("grpo", _batch(r.tolist()))[:, 0], want)


def test_eps_range_and_type():
    b = _batch([1.0, 0.0])
    with pytest.raises(ValueError, match=r"eps=-0.4: .*>= 0"):
        compute_advantages("grpo", b, eps=-0.4)
    with pytest.raises(TypeError, match=r"eps='abc'"):
        compute_advantages("grpo", b, eps="abc")
    assert compute_advantages("grpo", b, eps=0.0)[:, 0].tolist() == pytest.approx([math.sqrt(0.5), -math.sqrt(0.5)])


# ------------------------------------------------------------- keywords checked at load
@pytest.mark.parametrize(
    "words, msg",
    [
        (["estimator_kwargs.eps=abc"], r"estimator_kwargs.eps='abc': estimator 'grpo' takes eps: float"),
        (["estimator_kwargs.epz=1"], r"estimator_kwargs.epz: estimator 'grpo' has no keyword 'epz'; did you mean 'eps'"),
        (["estimator=dr_grpo", "estimator_kwargs.eps=1e-5"], r"estimator 'dr_grpo' has no keyword 'eps'; it takes singleton"),
        (["estimator_kwargs.ddof=1.5"], r"estimator_kwargs.ddof=1.5: estimator 'grpo' takes ddof: int"),
        (["loss_kwargs.eps_high=x"], r"loss_kwargs.eps_high='x': policy loss 'ppo_clip' takes eps_high"),
        (["loss_kwargs.eps_hi=0.2"], r"loss_kwargs.eps_hi: .*did you mean 'eps_high'"),
        (["loss_kwargs.clip_ratio_c=inf"], r"loss_kwargs.clip_ratio_c=.*finite"),
        (["sampler=vade", "sampler_kwargs.score=1"], r"sampler_kwargs.score=1: sampler 'vade' takes score: str"),
        (["sampler=vade", "sampler_kwargs.alpha=1"], r"sampler_kwargs.alpha: sampler 'vade' has no keyword 'alpha'; did you mean 'alpha0'"),
        (["credit=critic", "credit_kwargs.epochs=two"], r"credit_kwargs.epochs='two': credit 'critic' takes epochs: int"),
        (["credit=tppo", "credit_kwargs.lrr=0.1"], r"credit_kwargs.lrr: credit 'tppo' has no keyword 'lrr'; did you mean 'lr'"),
        (["ter_kwargs.coef=x"], r"ter_kwargs.coef='x'"),
    ],
)
def test_keywords_checked_against_signatures(words, msg):
    with pytest.raises(ConfigError, match=msg):
        _cfg(*words)


@pytest.mark.parametrize(
    "words, msg",
    [
        (["estimator_kwargs.eps=-0.4"], r"estimator_kwargs \{'eps': -0.4\}: estimator 'grpo' refuses them: eps=-0.4"),
        (["estimator_kwargs.scale=grp"], r"estimator 'grpo' refuses them: grpo: scale='grp'"),
        (["estimator=0.5*grpo+0.5*rloo", "estimator_kwargs.singleton=nope"], r"estimator_kwargs \{.singleton.: .nope.\}: estimator .grpo. refuses them: grpo: singleton=.nope."),
        (["loss_kwargs.eps_low=-1"], r"loss_kwargs \{'eps_low': -1.0\}: policy loss 'ppo_clip' refuses them"),
        (["sampler=vade", "sampler_kwargs.fast_decay=2"], r"sampler 'vade' refuses them: vade: fast_decay=2.0 must lie in \[0, 1\]"),
        (["sampler=dapo_dynamic", "sampler_kwargs.filter=al"], r"sampler 'dapo_dynamic' refuses them: filter: unknown 'al'"),
    ],
)
def test_keyword_ranges_checked_at_load(words, msg):
    # each callable refuses its own bad values; the config runs it once on its worked example
    with pytest.raises(ConfigError, match=msg):
        _cfg(*words)


def test_good_keywords_pass_the_load_probe():
    _cfg("estimator=canon_cosine", "estimator_kwargs.warmup_steps=1")
    _cfg("estimator=maxmin", "estimator_kwargs.normalize=zscore", "estimator_kwargs.ref_mean=[0.5, 0.5]",
         "estimator_kwargs.ref_std=[0.2, 0.2]", "reward_components=[task, pkg.mod:brevity]")
    _cfg("sampler=vade", "sampler_kwargs.fast_decay=0.5", "loss_kwargs.eps_high=0.28")


def test_keywords_coerced_to_their_annotation():
    cfg = _cfg("estimator=0.5*grpo+0.5*rloo", "estimator_kwargs.eps=1e-5", "sampler=vade", "sampler_kwargs.alpha0=2")
    assert cfg.estimator_kwargs == {"eps": 1e-5} and type(cfg.estimator_kwargs["eps"]) is float
    assert cfg.sampler_kwargs == {"alpha0": 2.0}
    cfg = _cfg("estimator=egae", "credit=tppo", "credit_kwargs.lr=1e-3")  # tppo needs a bootstrapping estimator
    assert cfg.credit_kwargs == {"lr": 1e-3} and type(cfg.credit_kwargs["lr"]) is float


def test_cli_bad_keyword_is_a_message_and_leaves_no_run_dir(tmp_path):
    out = tmp_path / "runs"
    res = runner.invoke(app, ["train", "estimator_kwargs.eps=abc", f"out_dir={out}", "name=r"], terminal_width=200)
    assert res.exit_code != 0
    assert "estimator_kwargs.eps='abc'" in res.output and "Traceback" not in res.output
    assert not out.exists()


# ------------------------------------------------------------------ names checked at load
@pytest.mark.parametrize(
    "words, msg",
    [
        (["sampler=vad"], r"sampler: unknown sampler 'vad': did you mean 'vade'"),
        (["credit=hap"], r"credit: unknown credit 'hap': did you mean 'hapo'"),
        (["task=add3x"], r"unknown task 'add3x': did you mean 'add3'"),
        (["task=mix:add1,adx2"], r"unknown task 'adx2': did you mean 'add2'"),
        (["env=gridwrld"], r"env: unknown environment 'gridwrld': did you mean 'gridworld'"),
        (["model=1m"], r"model '1m' is neither a preset nor a directory: did you mean '1M'"),
        (["model=/no/such/checkpoint"], r"model '/no/such/checkpoint' is neither a preset nor a directory"),
        (["reward_fn=score"], r"reward_fn='score' is not 'module:function'"),
        (["reward_fn=my mod:score"], r"reward_fn='my mod:score' is not 'module:function'"),
        (["reward_components=[task, brevity]"], r"reward_components\[1\]='brevity' is not 'module:function'"),
        (["kl_type=k4"], r"kl_type: unknown KL estimator 'k4'"),
        (["loss=ppo_clipp"], r"loss: unknown policy loss 'ppo_clipp'"),
        (["estimator=grpp"], r"estimator: unknown estimator 'grpp'"),
    ],
)
def test_every_name_checked_at_load(words, msg):
    with pytest.raises(ConfigError, match=msg):
        _cfg(*words)


def test_rg_task_needs_a_dataset():
    with pytest.raises(ConfigError, match=r"'rg:' needs a reasoning-gym dataset name"):
        build_config({"task": "rg:"})


def test_good_names_load(tmp_path):
    cfg = _cfg("task=mix:add1,sub2", "reward_fn=pkg.mod:score", "estimator=maxmin", "reward_components=[task, pkg.mod:brevity]",
               f"model={tmp_path}")
    assert cfg.model == str(tmp_path)
    # env runs do not read task=: a task set beside env= is refused, not ignored (tests/test_modes.py)
    with pytest.raises(ConfigError, match="task='no_such_task' with env runs"):
        _cfg("env=gridworld", "task=no_such_task")
    assert _cfg("init=/ckpt/checked/when/the/run/starts", "model=ignored_with_init").model == "ignored_with_init"


def test_cli_typo_fails_before_any_work(tmp_path):
    out = tmp_path / "runs"
    res = runner.invoke(app, ["train", "sampler=vad", f"out_dir={out}"], terminal_width=200)
    assert res.exit_code != 0 and "did you mean 'vade'" in res.output and "Traceback" not in res.output
    assert not out.exists()


# ----------------------------------------------------------------------- group_size = 1
@pytest.mark.parametrize("est", ["grpo", "rloo", "dr_grpo", "0.5*grpo + 0.5*rloo"])
def test_group_of_one_refused_for_group_relative_estimators(est):
    with pytest.raises(ConfigError, match=r"group_size=1: estimator .* advantage of 0, .*group_size >= 2"):
        build_config({"group_size": 1, "estimator": est})


def test_group_of_one_allowed_when_it_has_a_signal():
    # singleton="raw" gives a group of one its raw reward (verl's behaviour): a real signal
    assert build_config({"group_size": 1, "estimator_kwargs": {"singleton": "raw"}}).group_size == 1
    with pytest.raises(ConfigError, match=r"group_size=1: estimator 'rloo' refuses one-response groups"):
        build_config({"group_size": 1, "estimator": "rloo", "estimator_kwargs": {"singleton": "raise"}})


# ------------------------------------------------------------------------ item 6: library
@pytest.mark.parametrize("bad", [2.0, 0.5, -1.0, float("nan")])
def test_policy_loss_refuses_a_mask_that_is_not_0_1(bad):
    lp = torch.zeros(2, 3, requires_grad=True)
    mask = torch.ones(2, 3)
    mask[1, 2] = bad
    with pytest.raises(ValueError, match=r"mask has the value .* at row 1 \(token 2\)"):
        policy_loss("ppo_clip", lp, lp.detach(), torch.ones(2, 3), mask)
    # 0/1 floats and ints are fine and equal the bool mask
    ok = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    a = policy_loss("ppo_clip", lp, lp.detach(), torch.ones(2, 3), ok)[0]
    b = policy_loss("ppo_clip", lp, lp.detach(), torch.ones(2, 3), ok.bool())[0]
    assert torch.equal(a, b)


def test_policy_loss_names_nan_logprobs():
    lp = torch.zeros(2, 2)
    lp[0, 1] = float("nan")
    lp.requires_grad_(True)
    mask = torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"^logprobs is NaN at row 0 \(token 1\)"):
        policy_loss("ppo_clip", lp, torch.zeros(2, 2), torch.ones(2, 2), mask)
    with pytest.raises(ValueError, match=r"^old_logprobs is NaN at row 0 \(token 1\)"):
        policy_loss("ppo_clip", torch.zeros(2, 2, requires_grad=True), lp.detach(), torch.ones(2, 2), mask)
    # a NaN on a masked (padding) token is harmless, as documented
    mask[0, 1] = False
    assert torch.isfinite(policy_loss("ppo_clip", lp, torch.zeros(2, 2), torch.ones(2, 2), mask)[0])


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(group=None), r"Rollouts.group: got NoneType"),
        (dict(group=3), r"Rollouts.group: got int"),
        (dict(rewards=["a", "b"]), r"Rollouts.rewards: got text \(e.g. 'a'\)"),
        (dict(rewards=["1.0", "0"]), r"Rollouts.rewards: got text"),
        (dict(rewards=None), r"Rollouts.rewards is None"),
        (dict(mask=None), r"Rollouts.mask is None"),
    ],
)
def test_rollouts_name_the_field(kw, msg):
    base = dict(rewards=[1.0, 0.0], group=[0, 0], mask=torch.ones(2, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match=msg):
        Rollouts(**{**base, **kw})
