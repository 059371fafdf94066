"""Samplers: filters, uniform epochs, DAPO/NGRPO dynamic sampling, RSR, determinism, checkpoints."""

from __future__ import annotations

import copy
import inspect
import json

import numpy as np
import pytest
import torch
from test_sampling_fakes import FakeEnv, FakeGen

from grouprl.sampling import (
    BASE_STATE,
    SAMPLERS,
    EpochOrder,
    NoInformativePrompts,
    all_correct_groups,
    get_sampler,
    informative_groups,
    keep_groups,
)

MIXED = [0.0, 1.0, 0.5, 0.3, 0.0, 0.9, 1.0, 0.6, 0.0, 0.2, 1.0, 0.5, 0.1, 0.0, 0.8, 1.0]
LABELS = ["easy", "hard"] * 8


# ---------------------------------------------------------------- filters
def test_informative_groups_tolerance_float64():
    r = torch.tensor([1.0, 0, 0, 1, 0.7, 0.7, 0.7, 0.7, 1, 1, 1, 1, 0.5, 0.5 + 1e-7, 0.5, 0.5], dtype=torch.float32)
    ids = torch.arange(4).repeat_interleave(4)
    assert informative_groups(r, ids).tolist() == [True, False, False, False]
    assert informative_groups(r, ids, tol=0.0).tolist() == [True, False, False, True]


def test_all_correct_filter_keeps_all_wrong():
    r = torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0, 1, 0, 1, 1])
    ids = torch.arange(3).repeat_interleave(4)
    assert all_correct_groups(r, ids).tolist() == [True, False, False]
    assert keep_groups(r, ids, "all_correct").tolist() == [False, True, True]
    assert keep_groups(r, ids, "mixed").tolist() == [False, False, True]
    with pytest.raises(ValueError, match="filter"):
        keep_groups(r, ids, "nope")


# ---------------------------------------------------------------- registry / errors
def test_registry_and_errors():
    assert set(SAMPLERS) >= {"uniform", "dapo_dynamic", "vade", "recent_sample_recovery", "equitable", "equitable_maxmin"}
    with pytest.raises(KeyError, match="did you mean 'vade'"):
        get_sampler("vad", 4)
    with pytest.raises(ValueError, match="max_round"):
        get_sampler("dapo_dynamic", 4, max_round=3)
    with pytest.raises(ValueError, match="prompts_per_step: expected a positive int"):
        get_sampler("uniform", 4).collect(0, 0, FakeEnv([0.5] * 4))


@pytest.mark.parametrize("name", ["uniform", "vade", "dapo_dynamic", "equitable"])
def test_pool_smaller_than_budget_takes_all(name):
    env = FakeEnv([0.5] * 4, group_size=16)
    s = get_sampler(name, 4, prompt_groups=["a", "b", "a", "b"] if name == "equitable" else None)
    gen, m = s.collect(0, 6, env)
    assert sorted(torch.unique(gen.prompt_index).tolist()) == [0, 1, 2, 3] and m["kept_groups"] == 4
    with pytest.raises(ValueError, match="prompt_groups is required"):
        get_sampler("equitable", 4)


def test_generation_checked():
    s = get_sampler("uniform", 4)
    with pytest.raises(ValueError, match="was not asked for"):
        s.collect(0, 2, lambda idx: FakeGen(torch.tensor([9, 9]), torch.zeros(2)))
    with pytest.raises(ValueError, match="row 1 is nan"):
        s.collect(0, 1, lambda idx: FakeGen(torch.tensor(idx * 2), torch.tensor([0.0, float("nan")])))


# ---------------------------------------------------------------- uniform
def test_epoch_order_no_repeat_across_epochs():
    o = EpochOrder(5, np.random.default_rng(0))
    seen = [o.take(3) for _ in range(10)]
    for s in seen:
        assert len(set(s.tolist())) == 3
    flat = np.concatenate(seen)
    assert sorted(flat[:5].tolist()) == [0, 1, 2, 3, 4]  # the first epoch covers everything


def test_uniform_epochs_and_seed():
    env = FakeEnv(MIXED)
    s = get_sampler("uniform", 16, seed=3)
    chosen = []
    for t in range(4):
        gen, m = s.collect(t, 4, env)
        chosen += torch.unique(gen.prompt_index).tolist()
        assert m["gen_rounds"] == 1 and m["kept_groups"] == 4 and m["wasted_rollouts"] == 0
    assert sorted(chosen) == list(range(16))
    again = get_sampler("uniform", 16, seed=3)
    env2 = FakeEnv(MIXED)
    for t in range(4):
        again.collect(t, 4, env2)
    assert env.calls == env2.calls
    other = FakeEnv(MIXED)
    get_sampler("uniform", 16, seed=4).collect(0, 4, other)
    assert other.calls[0] != env.calls[0]


def test_uniform_frac_zero_adv():
    env = FakeEnv([0.0, 1.0, 0.5, 0.5], group_size=64)
    _, m = get_sampler("uniform", 4).collect(0, 4, env)
    assert m["frac_zero_adv_groups"] == pytest.approx(0.5)


# ---------------------------------------------------------------- dapo_dynamic
def _groups(gen):
    return torch.unique(gen.prompt_index).tolist()


def _rows(gen):
    return 0 if gen is None else int(gen.prompt_index.numel())


@pytest.mark.parametrize("leftover", ["drop", "carry"])
def test_dapo_dynamic_keeps_only_informative_groups(leftover):
    env = FakeEnv(MIXED, group_size=8)
    s = get_sampler("dapo_dynamic", 16, seed=0, leftover=leftover, oversample=2.0)
    for t in range(6):
        rows_in = _rows(s.carry)
        n_calls = len(env.calls)
        gen, m = s.collect(t, 3, env)
        ids = torch.unique(gen.prompt_index, return_inverse=True)[1]
        assert informative_groups(gen.rewards, ids).all()
        assert len(_groups(gen)) == 3 == m["kept_groups"]
        assert gen.prompt_index.numel() == 3 * 8  # whole groups, distinct prompts
        assert m["cap_hit"] == 0 and m["padded_groups"] == 0
        assert m["gen_rounds"] == len(env.calls) - n_calls
        generated_groups = sum(len(c) for c in env.calls[n_calls:])
        assert m["wasted_rollouts"] == generated_groups * 8 + rows_in - 3 * 8 - _rows(s.carry)
        assert m["frac_zero_adv_groups"] == pytest.approx(m["filtered_groups"] / generated_groups)
        if leftover == "drop":
            assert m["carry_groups"] == 0 and m["carried_in_groups"] == 0 and s.carry is None
        else:
            assert m["carry_groups"] == _rows(s.carry) // 8


def test_carry_feeds_next_step_first():
    env = FakeEnv([0.5] * 16, group_size=16)  # nearly every group is informative
    s = get_sampler("dapo_dynamic", 16, seed=1, leftover="carry", oversample=2.0)
    _, m0 = s.collect(0, 4, env)
    carried = set(s.carry.prompt_index.tolist())
    assert m0["carry_groups"] == len(carried) > 0
    gen, m1 = s.collect(1, 4, env)
    assert m1["carried_in_groups"] == min(4, len(carried))
    first_rows = gen.prompt_index[: 16 * m1["carried_in_groups"]].tolist()
    assert set(first_rows) <= carried


def test_ngrpo_filter_keeps_all_wrong_groups():
    env = FakeEnv([0.0] * 8 + [1.0] * 8, group_size=4)
    s = get_sampler("dapo_dynamic", 16, seed=0, filter="all_correct", leftover="carry")
    gen, m = s.collect(0, 4, env)
    assert (gen.rewards == 0).all() and len(_groups(gen)) == 4
    assert all(p < 8 for p in _groups(gen))


def test_dapo_raises_when_no_informative_prompts_left():
    env = FakeEnv([0.0] * 5 + [1.0] * 5, group_size=4)
    s = get_sampler("dapo_dynamic", 10, seed=0, max_rounds=1000, max_passes=None)
    with pytest.raises(NoInformativePrompts, match="no informative prompt left"):
        s.collect(0, 2, env)
    assert len(env.calls) <= 10 // 2 + 1  # one pass over the data, not an endless loop


def test_dapo_ends_step_when_too_few_informative_prompts_exist():
    # prompts 0 and 1 are never informative, so a batch of 4 can never fill: no endless loop
    env = FakeEnv([0.0, 1.0, 0.5, 0.5], group_size=32)
    s = get_sampler("dapo_dynamic", 4, seed=0, max_rounds=None)
    gen, m = s.collect(0, 4, env)
    assert m["cap_hit"] == 1 and m["gen_rounds"] == 2  # two passes over the data
    assert m["padded_groups"] == 2 and sorted(_groups(gen)) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="both None"):
        get_sampler("dapo_dynamic", 4, max_rounds=None, max_passes=None)


def test_dapo_cap_pad_partial_raise():
    probs = [0.0] * 15 + [0.5]  # only prompt 15 is informative (G = 32: constant with prob 2^-31)
    # pad: fills the batch with filtered groups, reports the cap
    s = get_sampler("dapo_dynamic", 16, seed=0, max_rounds=2)
    env = FakeEnv(probs, group_size=32)
    gen, m = s.collect(0, 4, env)
    drew_15 = 15 in sum(env.calls, [])
    assert m["cap_hit"] == 1 and m["gen_rounds"] == 2
    assert m["kept_groups"] == 4 and len(_groups(gen)) == 4
    assert m["padded_groups"] == 4 - int(drew_15)
    assert (15 in _groups(gen)) == drew_15
    # raise: verl behaviour
    s = get_sampler("dapo_dynamic", 16, seed=0, max_rounds=2, on_cap="raise")
    with pytest.raises(RuntimeError, match="max_rounds=2"):
        s.collect(0, 4, FakeEnv(probs, group_size=32))
    # partial: only the kept groups (here: none or prompt 15)
    for seed in range(4):
        s = get_sampler("dapo_dynamic", 16, seed=seed, max_rounds=2, on_cap="partial")
        env = FakeEnv(probs, group_size=32)
        if 15 in np.concatenate([s.order.perm[:8]]).tolist():
            gen, m = s.collect(0, 4, env)
            assert _groups(gen) == [15] and m["padded_groups"] == 0 and m["kept_groups"] == 1
        else:
            with pytest.raises(NoInformativePrompts, match="kept no group"):
                s.collect(0, 4, env)


def test_rsr_recovers_surplus():
    env = FakeEnv([0.5] * 16, group_size=16)
    s = get_sampler("recent_sample_recovery", 16, seed=2, oversample=2.0)
    _, m0 = s.collect(0, 4, env)
    assert m0["recovered_groups"] == 0 and m0["carry_groups"] > 0
    _, m1 = s.collect(1, 4, env)
    assert m1["recovered_groups"] > 0
    with pytest.raises(ValueError, match="leftover"):
        get_sampler("recent_sample_recovery", 16, leftover="drop")


# ---------------------------------------------------------------- determinism and checkpoints
HP = {
    "uniform": {},
    "dapo_dynamic": {"oversample": 2.0},
    "dapo_carry": {"oversample": 2.0, "leftover": "carry"},
    "recent_sample_recovery": {"oversample": 1.5},
    "vade": {},
    "vade_staleness": {"decay": "staleness", "candidates": 2.0},
    "equitable": {},
    "equitable_maxmin": {},
}


def _make(key, seed=7):
    name = {"dapo_carry": "dapo_dynamic", "vade_staleness": "vade"}.get(key, key)
    groups = LABELS if name.startswith("equitable") else None
    return get_sampler(name, 16, seed=seed, prompt_groups=groups, **HP[key])


@pytest.mark.parametrize("key", list(HP))
def test_deterministic_under_seed(key):
    runs = []
    for _ in range(2):
        env = FakeEnv(MIXED, group_size=4)
        s = _make(key)
        for t in range(5):
            s.collect(t, 4, env)
        runs.append(env.calls)
    assert runs[0] == runs[1]


@pytest.mark.parametrize("key", list(HP))
def test_state_round_trip_continues_identically(key):
    env = FakeEnv(MIXED, group_size=4)
    s = _make(key)
    for t in range(3):
        s.collect(t, 4, env)
    state = s.state_dict()
    carry = state.pop("carry", None)
    state = json.loads(json.dumps(state))  # everything but the carried generation is JSON
    if "carry_chunk" in state:
        state["carry"] = copy.deepcopy(carry)
    env_state, n_before = env.state(), len(env.calls)
    for t in range(3, 7):
        s.collect(t, 4, env)
    uninterrupted = env.calls[n_before:]

    fresh = _make(key)
    fresh.load_state_dict(state)
    env2 = FakeEnv(MIXED, group_size=4)
    env2.restore(env_state)
    for t in range(3, 7):
        fresh.collect(t, 4, env2)
    assert len(uninterrupted) >= 4
    assert env2.calls == uninterrupted


def test_state_dict_rejects_other_sampler():
    with pytest.raises(ValueError, match="saved by sampler 'uniform'"):
        get_sampler("vade", 16).load_state_dict(get_sampler("uniform", 16).state_dict())


def test_carry_buffer_is_bounded():
    env = FakeEnv([0.5] * 32, group_size=16)
    s = get_sampler("dapo_dynamic", 32, seed=0, leftover="carry", oversample=4.0, max_carry_groups=3)
    for t in range(3):
        _, m = s.collect(t, 4, env)
        assert m["carry_groups"] <= 3 and _rows(s.carry) == 16 * m["carry_groups"]
    unbounded = get_sampler("dapo_dynamic", 32, seed=0, leftover="carry", oversample=4.0)
    _, m = unbounded.collect(0, 4, FakeEnv([0.5] * 32, group_size=16))
    assert m["carry_groups"] == 4  # default bound: prompts_per_step


def test_filter_reads_a_named_metric():
    env = FakeEnv([0.5] * 8, group_size=16)

    def generate(idx):  # shaped rewards always spread; the accuracy field decides
        g = env(idx)
        g.acc = (g.prompt_index % 2).to(torch.float32)  # odd prompts all right, even all wrong
        g.rewards = g.rewards + 0.01 * torch.arange(g.rewards.numel())
        return g

    s = get_sampler("dapo_dynamic", 8, seed=0, metric="acc", filter="all_correct", max_rounds=2, on_cap="partial")
    gen, m = s.collect(0, 4, generate)
    assert all(p % 2 == 0 for p in _groups(gen)) and m["kept_groups"] == 4
    with pytest.raises(ValueError, match="metric='nope' needs gen.nope"):
        get_sampler("dapo_dynamic", 8, metric="nope").collect(0, 2, generate)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_declares_its_inputs_and_carried_state(name):
    """Each registered sampler's ``carries`` is exactly what its checkpoint holds beyond the base
    state (before and after steps), and ``needs`` says whether it reads ``prompt_groups``: one that
    declares it refuses to be built without, one that does not is built without (the trainer passes
    exactly what is declared)."""
    cls = SAMPLERS[name]
    assert set(cls.needs) <= {"prompt_groups", "rewards"}, cls.needs
    n = 16
    groups = ["a", "b"] * (n // 2) if "prompt_groups" in cls.needs else None
    kw = {"group_size": 4} if "group_size" in inspect.signature(cls.__init__).parameters else {}
    s = get_sampler(name, n, seed=0, prompt_groups=groups, **kw)
    env = FakeEnv([0.1 + 0.05 * i for i in range(n)], group_size=4)
    declared = set(BASE_STATE) | set(cls.carries)
    assert set(s.state_dict()) == declared
    for step in range(3):
        s.collect(step, 4, env)
        assert set(s.state_dict()) == declared
    if "prompt_groups" in cls.needs:
        with pytest.raises(ValueError, match="prompt_groups"):
            get_sampler(name, n, seed=0, **kw)
