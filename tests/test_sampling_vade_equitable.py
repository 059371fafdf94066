"""VADE (vade.md worked examples) and the equitable samplers (group-fairness-metrics.md 2.2, 5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_sampling_fakes import FakeEnv

from grouprl.sampling import (
    beta_update,
    decay_toward_prior,
    fit_power_law,
    get_sampler,
    greedy_allocation,
    thompson_scores,
    top_k,
)


# ---------------------------------------------------------------- VADE, vade.md section 5
def _posterior():
    rows = np.repeat(np.arange(3), 8)
    correct = np.concatenate([np.r_[np.ones(6), np.zeros(2)], np.ones(8), np.r_[1.0, np.zeros(7)]])
    return beta_update(np.ones(3), np.ones(3), rows, correct)


def test_vade_posterior_worked_example():
    a, b = _posterior()
    assert a.tolist() == [7, 9, 2] and b.tolist() == [3, 1, 8]
    mean = a / (a + b)
    assert np.allclose(mean, [0.7, 0.9, 0.2])
    assert np.allclose(mean * (1 - mean), [0.21, 0.09, 0.16])
    assert np.allclose(thompson_scores(mean, "mixed", 8), [0.942, 0.570, 0.832], atol=1e-3)


def test_vade_thompson_worked_example():
    scores = thompson_scores(np.array([0.62, 0.93, 0.21]))
    assert np.allclose(scores, [0.2356, 0.0651, 0.1659], atol=1e-4)
    assert sorted(top_k(scores, 2, np.random.default_rng(0)).tolist()) == [0, 2]  # {x1, x3}


def test_vade_decay_worked_example():
    a, b = _posterior()
    assert np.allclose(decay_toward_prior(a, 1.0, 0.9), [6.4, 8.2, 1.9])
    assert np.allclose(decay_toward_prior(b, 1.0, 0.9), [2.8, 1.0, 7.3])


def test_top_k_random_tie_break():
    picks = {tuple(top_k(np.zeros(6), 2, np.random.default_rng(s)).tolist()) for s in range(20)}
    assert len(picks) > 3


def test_vade_sampler_update_and_decay_two_scale():
    env = FakeEnv([1.0, 0.0, 1.0, 0.0], group_size=4)
    s = get_sampler("vade", 4, seed=0, fast_decay=0.5, slow_decay=0.5)
    gen, m = s.collect(0, 4, env)  # every prompt once: one epoch -> fast and slow decay
    # after the update alpha = 1 + 4 (always right) or 1; then x0 + 0.5 * 0.5 (x - x0)
    expect_a = np.where(np.array([1.0, 0, 1, 0]) > 0, 1 + 0.25 * 4, 1.0)
    assert np.allclose(s.alpha, expect_a) and np.allclose(s.beta, 1 + 0.25 * 4 - (expect_a - 1))
    assert m["vade_new_prompts"] == 4 and m["frac_zero_adv_groups"] == 1.0
    lp = s.last_predictions
    assert torch.allclose(lp["predicted"], torch.full((4,), 0.5, dtype=torch.float64))
    assert torch.equal(lp["observed"], torch.tensor([1.0, 0, 1, 0], dtype=torch.float64)[lp["prompt_index"]])
    assert m["vade_brier"] == pytest.approx(0.25)


def test_vade_staleness_decay_is_lambda_to_the_age():
    s = get_sampler("vade", 3, decay="staleness", fast_decay=0.8)
    s.alpha[:] = [5.0, 5.0, 5.0]
    s.beta[:] = [3.0, 3.0, 3.0]
    s.last_update[:] = [2, 5, -1]
    s.t = 6
    a, b = s.posterior()
    lam = np.array([0.8**4, 0.8**1, 1.0])
    assert np.allclose(a, 1 + lam * 4) and np.allclose(b, 1 + lam * 2)


def test_vade_staleness_equals_eager_decay_for_one_prompt():
    # one prompt, always selected: lazy lambda^age and per-step decay give the same posterior
    eager = get_sampler("vade", 1, seed=0, fast_decay=0.7, slow_decay=1.0)
    lazy = get_sampler("vade", 1, seed=0, fast_decay=0.7, decay="staleness")
    e1, e2 = FakeEnv([0.5], group_size=8, seed=1), FakeEnv([0.5], group_size=8, seed=1)
    for t in range(5):
        eager.collect(t, 1, e1)
        lazy.collect(t, 1, e2)
    la, lb = lazy.posterior()
    assert np.allclose(la, eager.alpha) and np.allclose(lb, eager.beta)


def test_vade_rewards_mapped_from_range():
    env = FakeEnv([1.0, 0.0], group_size=2, low=-1.0)
    with pytest.raises(ValueError, match="outside reward_range"):
        get_sampler("vade", 2).collect(0, 2, env)
    s = get_sampler("vade", 2, reward_range=(-1, 1), fast_decay=1.0, slow_decay=1.0)
    s.collect(0, 2, env)
    assert s.alpha.tolist() == [3.0, 1.0] and s.beta.tolist() == [1.0, 3.0]


def test_vade_fewer_zero_advantage_groups_than_uniform():
    rng = np.random.default_rng(0)
    probs = np.concatenate([np.zeros(40), np.ones(40), rng.uniform(0.2, 0.8, 20)])  # 20% informative prompts
    out = {}
    for name in ("uniform", "vade"):
        env = FakeEnv(probs, group_size=8, seed=5)
        s = get_sampler(name, 100, seed=1)
        fr = [s.collect(t, 10, env)[1]["frac_zero_adv_groups"] for t in range(60)]
        out[name] = float(np.mean(fr[20:]))
    assert out["uniform"] > 0.7
    assert out["vade"] < out["uniform"] - 0.3, out


# ---------------------------------------------------------------- equitable, spec section 5
def test_power_law_fit_recovers_curve_b():
    n = np.array([50.0, 100, 200, 400, 800])
    a, b = fit_power_law(n, 2.0 * n**-0.3)
    assert a == pytest.approx(2.0, abs=1e-4) and b == pytest.approx(0.3, abs=1e-4)
    with pytest.raises(ValueError, match="two or more sizes"):
        fit_power_law([5, 5], [0.1, 0.2])


def test_greedy_allocation_spec_example():
    a, b, n0 = [1.0, 2.0], [0.5, 0.3], [50, 50]
    ega = greedy_allocation(a, b, n0, 900, 50, "egalitarian")
    uti = greedy_allocation(a, b, n0, 900, 50, "utilitarian")
    final_e, final_u = np.array(n0) + 50 * ega, np.array(n0) + 50 * uti
    assert final_e.tolist() == [50, 950] and final_u.tolist() == [250, 750]
    err = np.array(a) * final_e ** -np.array(b)
    assert np.allclose(err, [0.141, 0.256], atol=1e-3)
    # the true egalitarian optimum (16, 984), max error 0.2530, lies below the pilot of 50
    x = np.arange(1, 1000)
    worst = np.maximum(x**-0.5, 2 * (1000 - x) ** -0.3)
    assert x[worst.argmin()] == 16 and worst.min() == pytest.approx(0.2530, abs=1e-4)
    assert err.max() > worst.min()


def test_greedy_allocation_capacity():
    got = greedy_allocation([1.0, 2.0], [0.5, 0.3], [1, 1], 10, 1, "egalitarian", capacity=[10, 3])
    assert got.tolist() == [7, 3]


def _equitable(name, **kw):
    probs = np.r_[np.full(20, 0.9), np.full(20, 0.2)]  # group "a" easy, group "b" hard
    labels = ["a"] * 20 + ["b"] * 20
    return get_sampler(name, 40, seed=0, prompt_groups=labels, **kw), FakeEnv(probs, group_size=8)


def test_equitable_pilot_then_allocation_respects_budget_and_groups():
    s, env = _equitable("equitable_maxmin")
    for t in range(12):
        gen, m = s.collect(t, 8, env)
        idx = torch.unique(gen.prompt_index)
        assert idx.numel() == 8
        assert m["alloc/a"] + m["alloc/b"] == 8
        assert int((idx < 20).sum()) == m["alloc/a"]
        if t < 3:
            assert m["equitable_pilot"] == 1 and m["alloc/a"] == 4
    assert m["equitable_pilot"] == 0
    assert m["alloc/b"] > m["alloc/a"]  # max-min favours the hard (worse) group
    assert m["alloc/a"] >= 1  # min_per_group


def test_equitable_group_epochs_cover_each_group():
    s, env = _equitable("equitable", pilot_obs=100)  # stay in the equal split
    seen = []
    for t in range(5):
        gen, _ = s.collect(t, 8, env)
        seen += torch.unique(gen.prompt_index).tolist()
    assert sorted(seen) == list(range(40))  # 5 steps x 4 per group = one epoch of each group


def test_equitable_needs_one_label_per_prompt():
    with pytest.raises(ValueError, match="3 labels for 4 prompts"):
        get_sampler("equitable", 4, prompt_groups=["a", "b", "a"])
