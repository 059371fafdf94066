"""Property tests (hypothesis) that hold for the estimators whatever the batch."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grouprl import Rollouts, compute_advantages
from grouprl.advantages import ESTIMATORS

# derandomize: the same examples every run (a CI without flakes); max_examples keeps it fast.
SETTINGS = settings(
    max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
T = 6

# Dyadic rewards (k/4) keep shifts and scalings exact in floating point.
dyadic = st.integers(-8, 8).map(lambda k: k / 4)


@st.composite
def batches(draw, min_rows: int = 1):
    sizes = draw(st.lists(st.integers(1, 5), min_size=1, max_size=5))
    labels = [g for g, n in enumerate(sizes) for _ in range(n)]
    B = len(labels)
    rewards = draw(st.lists(dyadic, min_size=B, max_size=B))
    lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
    gaps = draw(st.lists(st.lists(st.booleans(), min_size=T, max_size=T), min_size=B, max_size=B))
    mask = [[int(t < n and (t == 0 or t == n - 1 or not gap[t])) for t in range(T)] for n, gap in zip(lengths, gaps)]
    floats = st.floats(-1, 1, allow_nan=False, width=32)
    grid = st.lists(st.lists(floats, min_size=T, max_size=T), min_size=B, max_size=B)
    comps = draw(st.lists(st.lists(dyadic, min_size=2, max_size=2), min_size=B, max_size=B))
    return dict(
        rewards=rewards,
        group=labels,
        mask=mask,
        values=draw(grid),
        old_logprobs=[[-abs(x) - 0.01 for x in row] for row in draw(grid)],
        reward_components=comps,
        reward_baselines=draw(st.lists(dyadic, min_size=B, max_size=B)),
        metric=draw(st.lists(dyadic, min_size=B, max_size=B)),
        role=draw(st.lists(st.integers(0, 1), min_size=B, max_size=B)),
        truncated=draw(st.lists(st.booleans(), min_size=B, max_size=B)),
        answer=draw(st.lists(st.integers(0, 2), min_size=B, max_size=B)),
        extras={"sum_pi_squared": [[abs(x) for x in row] for row in draw(grid)]},
    )


def make(d, **changes) -> Rollouts:
    return Rollouts(**{**d, **changes})


def permuted(d, perm):
    out = {}
    for k, v in d.items():
        if k == "extras":
            out[k] = {name: [x[i] for i in perm] for name, x in v.items()}
        else:
            out[k] = [v[i] for i in perm]
    return out


# (name, kwargs) pairs: every registered estimator that can take the generic property batch
# (rewards, group, mask, values, old_logprobs, reward_components, reward_baselines, metric, role,
# truncated, answer, extras.sum_pi_squared) is run on it by the permutation and masking tests.
ALL = [
    ("grpo", {}),
    ("dr_grpo", {}),
    ("rloo", {}),
    ("rloo", {"singleton": "raw"}),
    ("opo", {}),
    ("gpg", {}),
    ("grpo_passk", {}),
    ("reinforce_pp_baseline", {}),
    ("gdpo", {}),
    ("gdpo", {"mode": "sum_then_normalize"}),
    ("remax", {}),
    ("gae", {"gamma": 0.99, "lam": 0.95}),
    ("reinforce_pp", {"gamma": 0.9}),
    ("optimal_token_baseline", {}),
    ("advevo_public", {}),
    ("bgae", {}),
    ("copo", {}),
    ("copo_global", {}),
    ("dapo", {}),
    ("egae", {}),
    ("hapo_tlga", {}),
    ("maxmin", {}),
    ("ngrpo", {"r_max": 2.0}),  # the batch's rewards reach 2; NGRPO needs r_max >= every reward
    ("pshw", {}),
]

# Estimators the generic batch cannot exercise, each with the reason (and where it is tested).
EXCLUDED = {
    "canon": "splits each group by a stable sort of the entropy metric; ties keep row order (the paper's "
    "halves), so permuting tied rows changes the split: test_canon.py",
    "canon_anneal": "as canon (stable-sort halves): test_canon.py",
    "canon_cosine": "as canon (stable-sort halves): test_canon.py",
    "canon_cosine_r": "as canon (stable-sort halves): test_canon.py",
    "canon_random": "random regrouping drawn in row order: not permutation-equivariant by design; test_canon.py",
    "gigpo": "needs consistent trajectories, steps and state keys (an episode structure): test_gigpo.py",
    "mars": "needs trajectories with per-step rewards (turn structure): test_mars.py",
    "read": "needs trajectories, steps and agents (multi-agent turns): test_read.py",
    "salt": "needs trajectories, steps and transition keys (a rollout tree): test_salt.py",
    "spo_chain": "needs segment ids and values from SPO's chain rollout: test_spo_egae.py",
    "spo_tree": "needs node advantages and segment starts from SPO's tree rollout: test_spo_egae.py",
}


def test_every_registered_estimator_is_covered_or_excluded_with_a_reason():
    registered = {n for n in ESTIMATORS if not n.startswith("_")}  # "_": tests' own temporary estimators
    covered = {n for n, _ in ALL}
    assert not covered & set(EXCLUDED), "an estimator is both covered and excluded"
    undecided = registered - covered - set(EXCLUDED)
    assert not undecided, f"new estimator(s) {sorted(undecided)}: add them to ALL or to EXCLUDED with the reason"
    assert not (covered | set(EXCLUDED)) - registered, "ALL/EXCLUDED name an estimator that is not registered"
    assert all(len(reason) > 20 for reason in EXCLUDED.values())


@SETTINGS
@given(batches(), st.randoms(use_true_random=False))
def test_permuting_rows_permutes_outputs(d, rnd):
    B = len(d["rewards"])
    perm = list(range(B))
    rnd.shuffle(perm)
    base, moved = make(d), make(permuted(d, perm))
    for name, kw in ALL:
        a = compute_advantages(name, base, **kw)
        b = compute_advantages(name, moved, **kw)
        assert torch.allclose(a[perm], b, atol=1e-5), name


CENTRED = [
    ("grpo", {}),
    ("dr_grpo", {}),
    ("rloo", {}),
    ("opo", {}),
    ("grpo_passk", {}),
    ("reinforce_pp_baseline", {"whiten": False}),
]


@SETTINGS
@given(batches(), st.integers(-12, 12).map(lambda k: k / 2), st.data())
def test_shifting_a_groups_rewards_changes_nothing_for_mean_centred(d, c, data):
    g = data.draw(st.sampled_from(sorted(set(d["group"]))))
    shifted = [r + c if lab == g else r for r, lab in zip(d["rewards"], d["group"])]
    for name, kw in CENTRED:
        a = compute_advantages(name, make(d), **kw)
        b = compute_advantages(name, make(d, rewards=shifted), **kw)
        assert torch.allclose(a, b, atol=1e-6), name
    # gdpo: shift one component within one group
    comps = [[x + c if lab == g else x, y] for (x, y), lab in zip(d["reward_components"], d["group"])]
    for mode in ("normalize_then_sum", "sum_then_normalize"):
        a = compute_advantages("gdpo", make(d), mode=mode)
        b = compute_advantages("gdpo", make(d, reward_components=comps), mode=mode)
        assert torch.allclose(a, b, atol=1e-5), mode


@SETTINGS
@given(batches(), st.sampled_from([0.25, 0.5, 2.0, 8.0]))
def test_scaling_rewards_changes_nothing_for_std_normalised(d, c):
    scaled = [r * c for r in d["rewards"]]
    # eps = 0: the invariance is exact up to rounding (constant groups are 0 by the max == min
    # test, not by eps); with eps > 0 it fails for groups whose std is comparable to eps.
    for name, kw in [("grpo", {"eps": 0.0}), ("grpo_passk", {"eps": 0.0})]:
        a = compute_advantages(name, make(d), **kw)
        b = compute_advantages(name, make(d, rewards=scaled), **kw)
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), name
    # gdpo before whitening (whitening a near-constant batch would amplify rounding)
    comps = [[x * c, y] for x, y in d["reward_components"]]
    a = compute_advantages("gdpo", make(d), whiten=False, eps=0.0)
    b = compute_advantages("gdpo", make(d, reward_components=comps), whiten=False, eps=0.0)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


CONSTANT_ZERO = [
    ("grpo", {}),
    ("dr_grpo", {}),
    ("rloo", {}),
    ("opo", {}),
    ("gpg", {}),
    ("grpo_passk", {}),
    ("reinforce_pp_baseline", {"whiten": False}),
    ("gdpo", {"whiten": False}),
    ("gdpo", {"mode": "sum_then_normalize"}),
]


@SETTINGS
@given(batches(), st.floats(-10, 10, allow_nan=False), st.data())
def test_constant_groups_give_exactly_zero(d, c, data):
    """Any constant (also non-dyadic, where float rounding would leak) gives exactly 0."""
    g = data.draw(st.sampled_from(sorted(set(d["group"]))))
    rewards = [c if lab == g else r for r, lab in zip(d["rewards"], d["group"])]
    comps = [[c, -c] if lab == g else x for x, lab in zip(d["reward_components"], d["group"])]
    b = make(d, rewards=rewards, reward_components=comps)
    rows = torch.tensor([lab == g for lab in d["group"]])
    for name, kw in CONSTANT_ZERO:
        a = compute_advantages(name, b, **kw)
        assert bool((a[rows] == 0).all()), name


@SETTINGS
@given(batches())
def test_masked_tokens_are_exactly_zero(d):
    b = make(d)
    for name, kw in ALL:
        a = compute_advantages(name, b, **kw)
        assert a.dtype == torch.float32 and a.shape == b.mask.shape
        assert bool((a[~b.mask] == 0).all()), name
        assert bool(torch.isfinite(a).all()), name


@SETTINGS
@given(batches())
def test_whitened_estimators_have_zero_mean_unit_variance(d):
    b = make(d)
    n = int(b.mask.sum())
    for name, kw in [("gae", {"gamma": 0.99, "lam": 0.95}), ("reinforce_pp", {}), ("reinforce_pp_baseline", {}), ("gdpo", {})]:
        a = compute_advantages(name, b, **kw)[b.mask].double()
        raw = compute_advantages(name, b, **kw, whiten=False)[b.mask].double()
        assert abs(a.mean().item()) < 1e-5, name
        if n > 1 and raw.var().item() > 1e-4:  # var/(var + 1e-8) is then within 1e-4 of 1
            assert abs(a.var().item() - 1.0) < 1e-3, name


def test_the_coverage_guard_fails_on_an_undecided_estimator(monkeypatch):
    monkeypatch.setitem(ESTIMATORS._items, "zz_new_estimator", ESTIMATORS["grpo"])
    with pytest.raises(AssertionError, match="zz_new_estimator"):
        test_every_registered_estimator_is_covered_or_excluded_with_a_reason()
