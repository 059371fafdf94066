"""One loop, two rollout sources: every option works in both modes (task, env=) or is refused at
config load naming the option and the mode; every registered estimator paired with grpo trains (in
the mode whose fields it needs) or is refused for a declared incompatibility.

What each mode provides and does not read is declared in ``grouprl.train.modes``. Here: the
refusals of both modes, and the options honoured in both (ter, rollout_is, mask_truncated, KL and
entropy terms, estimator schedules) checked on the in-loop quantity or against a run without the
option; the task-only options (samplers, credit hooks, overlong shaping, COPO, MaxMin) are checked
in test_methods_train.py, test_sampler_train.py and test_credit_train.py.
"""

from __future__ import annotations

import math

import pytest

from grouprl.advantages.registry import ESTIMATORS
from grouprl.train import ConfigError, build_config, train
from grouprl.train.logging import read_jsonl
from grouprl.train.methods import estimator_takes
from grouprl.train.modes import MODES
from test_train import tiny_overrides

ENV = dict(env="gridworld", model="1M", sft_steps=0, prompts_per_step=2, group_size=2, max_turns=3, history_len=1,
           instruction="Reach G.", max_new_tokens=3, eval_size=2, threads=1, progress=False, tensorboard=False,
           steps=2, lr=1e-3, eval_every=0, save_every=2)


def _env_run(tmp_path, name, **kw):
    train(build_config({**ENV, "out_dir": str(tmp_path), "name": name, **kw}))
    rows = read_jsonl(tmp_path / name / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows)
    return rows


# ------------------------------------------------------------------ refused: (option, value, mode)
# one non-default value per option a mode declares unread (the last test checks the table covers them)
REFUSED = [
    ("env", "task", "gridworld"), ("env", "task_kwargs", {"train_size": 10}), ("env", "sampler", "vade"),
    ("env", "sampler_kwargs", {"max_rounds": 2}), ("env", "credit", "critic"), ("env", "credit_kwargs", {"lr": 0.1}),
    ("env", "kl_in_reward", True), ("env", "reward_fn", "test_train:digit_fraction"),
    ("env", "reward_components", ["task", "task"]), ("env", "reward_models", "/nonexistent"),
    ("env", "overlong_buffer", 2), ("env", "overlong_factor", 0.5), ("env", "reward_timeout_s", 5.0),
    ("env", "failure_reward", -1.0), ("env", "max_failed_reward_steps", 0), ("env", "sft_target_acc", 0.5),
    ("env", "sft_check_every", 50), ("env", "sft_val_size", 100), ("env", "pass_k", 8), ("env", "pass_k_size", 0),
    ("task", "env_kwargs", {"layout": 0}), ("task", "eval_env_kwargs", {"opponent": "random"}),
    ("task", "max_turns", 4), ("task", "history_len", 0), ("task", "instruction", "Go."), ("task", "expert_noise", 0.1),
]
_CHOSEN = {"env": "env runs (env=NAME)", "task": "task runs (no env=)"}


def _mode_cfg(mode: str, tmp_path) -> dict:
    if mode == "env":
        return {**ENV, "out_dir": str(tmp_path)}
    return tiny_overrides(tmp_path)


@pytest.mark.parametrize("mode,option,value", REFUSED, ids=[f"{m}-{o}" for m, o, _ in REFUSED])
def test_unread_option_is_refused_naming_option_and_mode(tmp_path, mode, option, value):
    values = _mode_cfg(mode, tmp_path)
    if mode == "task" and option in values:  # pragma: no cover - the tiny config sets none of them
        pytest.fail(f"{option} is set by the base config")
    with pytest.raises(ConfigError) as err:
        build_config({**values, option: value})
    msg = str(err.value)
    assert f"{option}=" in msg and _CHOSEN[mode] in msg, msg
    assert "Remove" in msg, msg  # says what to do


def test_refusal_table_covers_every_declared_option():
    declared = {(m, o) for m, mode in MODES.items() for o in mode.unread}
    assert declared == {(m, o) for m, o, _ in REFUSED}


# ------------------------------------------------------------------ refused: fields a mode lacks
@pytest.mark.parametrize("mode,kw,field", [
    ("task", {"estimator": "gigpo"}, "trajectory"),
    ("task", {"method": "gigpo"}, "trajectory"),
    ("task", {"estimator": "0.5*mars + 0.5*grpo"}, "trajectory"),
    ("task", {"estimator": "gae"}, "values"),  # only a credit hook provides values
    ("task", {"estimator": "remax"}, "reward_baselines"),  # no trainer rollout provides them
    ("env", {"estimator": "copo"}, "answer"),
    ("env", {"loss": "copo"}, "answer"),
    ("env", {"estimator": "maxmin"}, "reward_components"),
    ("env", {"estimator": "gae"}, "values"),
])
def test_needed_field_missing_in_mode_is_refused(tmp_path, mode, kw, field):
    with pytest.raises(ConfigError) as err:
        build_config({**_mode_cfg(mode, tmp_path), **kw})
    msg = str(err.value)
    assert f"batch field {field!r}" in msg and _CHOSEN[mode] in msg, msg


def test_gae_needs_a_credit_hook_and_the_message_names_it(tmp_path):
    with pytest.raises(ConfigError, match="set credit=critic"):
        build_config(tiny_overrides(tmp_path, estimator="gae"))
    build_config(tiny_overrides(tmp_path, estimator="gae", credit="critic"))  # provided: loads


# ------------------------------------------------------------------ honoured in both modes
def _run(mode: str, root, name: str, **kw) -> list[dict]:
    if mode == "env":
        return _env_run(root, name, **kw)
    train(build_config(tiny_overrides(root, name=name, steps=2, eval_every=0, eval_size=2, pass_k_size=0,
                                      save_every=2, **kw)))
    rows = read_jsonl(root / "runs" / name / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    return rows


@pytest.fixture(scope="module")
def base_rows(tmp_path_factory):
    """A 2-step run without the options, per mode (the same seed as the runs with them)."""
    root = tmp_path_factory.mktemp("base")
    return {mode: _run(mode, root, f"base_{mode}") for mode in ("task", "env")}


def _ter(rows, base):
    for r in rows:  # TER read this step's entropies (token-mean over the loss mask, as the logged entropy)
        assert r["ter/entropy"] == pytest.approx(r["entropy"], rel=1e-5)
        assert r["ter/coef"] != 0.0
    assert "ter/coef" not in base[0]
    assert rows[0]["loss"] != base[0]["loss"]  # the entropy term is in the loss


def _rollout_is(rows, base):
    for r in rows:  # the weights of the recomputed vs the sampling log-probs, truncated at C = 1.5
        assert 0.0 < r["rollout_is/mean"] <= 1.5 and "rollout_is/clipped" in r
    assert "rollout_is/mean" not in base[0]


def _mask_truncated(rows, base):
    # same seed, same first rollout: the truncated rows of step 1 are the base run's; they get no loss
    assert rows[0]["truncated"] == base[0]["truncated"] > 0.0
    if rows[0]["truncated"] == 1.0:  # every row truncated: no token is trained on
        assert rows[0]["grad_norm"] == 0.0 and rows[0]["loss"] == 0.0
    assert base[0]["grad_norm"] > 0.0 and rows[0]["grad_norm"] != base[0]["grad_norm"]


def _kl(rows, base):
    assert all(r["kl"] >= 0.0 for r in rows) and "kl" not in base[0]
    assert rows[0]["loss"] != base[0]["loss"]


HONOURED = [("ter", {"ter": True, "ter_kwargs": {"coef": 0.5, "target": 0.1}}, _ter),
            ("rollout_is", {"rollout_is": "token", "rollout_is_cap": 1.5}, _rollout_is),
            ("mask_truncated", {"mask_truncated": True}, _mask_truncated),
            ("kl_coef", {"kl_coef": 0.1, "entropy_coef": 0.01}, _kl)]


@pytest.mark.parametrize("mode", ["task", "env"])
@pytest.mark.parametrize("option,kw,check", HONOURED, ids=[h[0] for h in HONOURED])
def test_option_is_honoured_in_mode(tmp_path, base_rows, mode, option, kw, check):
    check(_run(mode, tmp_path, f"{option}_{mode}", **kw), base_rows[mode])


def test_schedule_longer_than_the_run_is_refused_at_load(tmp_path):
    with pytest.raises(ConfigError, match="steps=2 \\(the schedule's total_steps\\).*canon_cosine.*Raise steps"):
        build_config(tiny_overrides(tmp_path, steps=2, estimator="canon_cosine"))


def test_env_estimator_schedule_gets_step_and_total_steps(tmp_path, monkeypatch):
    import grouprl.train.methods as methods_mod

    seen = []
    real = methods_mod.compute_advantages

    def recording(est, batch, **kw):
        seen.append((est, kw.get("step"), kw.get("total_steps"), batch.has("trajectory")))
        return real(est, batch, **kw)

    monkeypatch.setattr(methods_mod, "compute_advantages", recording)
    _env_run(tmp_path, "sched", estimator="canon_cosine", estimator_kwargs={"warmup_steps": 1})
    assert seen == [("canon_cosine", 0, 2, True), ("canon_cosine", 1, 2, True)]


def test_schedule_reaches_the_term_of_an_expression(tmp_path, monkeypatch):
    """``step``/``total_steps`` go to a scheduled term inside a composition too (not only to a lone name)."""
    from grouprl.advantages import canon

    seen = []
    real = canon.cosine_with_restarts

    def recording(step, **kw):
        seen.append((step, kw.get("total_steps")))
        return real(step, **kw)

    monkeypatch.setattr(canon, "cosine_with_restarts", recording)
    cfg = build_config(tiny_overrides(tmp_path, name="c", steps=2, eval_every=0, eval_size=2, pass_k_size=0,
                                      estimator="0.5*canon_cosine + 0.5*grpo", estimator_kwargs={"warmup_steps": 1}))
    seen.clear()  # the config check ran the worked example (step 50 of 150)
    train(cfg)
    assert seen == [(0, 2), (1, 2)]


# ------------------------------------------------------------------ every estimator paired with grpo
def _pair_config(tmp_path, name: str):
    """The config of ``0.5*name + 0.5*grpo`` in the mode (and with the credit hook or reward
    components) that its refusal messages point to; ``(None, message)`` when no trainer rollout
    provides a field it needs."""
    expr = f"0.5*{name} + 0.5*grpo"
    # a schedule over the run's 2 steps (total_steps = steps) needs a warm-up shorter than the run
    kw = {"estimator_kwargs": {"warmup_steps": 1}} if estimator_takes(expr, "warmup_steps") else {}
    task = tiny_overrides(tmp_path, name=name, steps=2, eval_every=0, eval_size=2, pass_k_size=0, save_every=2,
                          estimator=expr, **kw)
    env = {**ENV, "out_dir": str(tmp_path / "runs"), "name": name, "estimator": expr, **kw}
    tries = [task, {**task, "credit": "critic"}, {**task, "credit": name}, {**task, "reward_components": ["task", "task"]},
             env]
    messages = []
    for values in tries:
        try:
            return build_config(values), None
        except ConfigError as exc:
            messages.append(str(exc))
        except (KeyError, ValueError) as exc:  # e.g. credit=<an estimator name that is no credit hook>
            messages.append(f"{type(exc).__name__}: {exc}")
    return None, messages


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_every_estimator_paired_with_grpo_trains_or_is_refused(tmp_path, name):
    cfg, messages = _pair_config(tmp_path, name)
    if cfg is None:  # refused everywhere: for a declared field that no trainer rollout provides
        assert any("no trainer rollout provides it" in m and f"estimator {name!r} needs the batch field" in m
                   for m in messages), messages
        return
    train(cfg)
    rows = read_jsonl(tmp_path / "runs" / name / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["adv_abs"]) for r in rows)
