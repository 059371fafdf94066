"""The vectorised estimators against plain-Python references (tests/ref_estimators.py) on random
ragged batches, plus hand-computed GAE / REINFORCE++ cases and input errors."""

from __future__ import annotations

import random

import pytest
import torch

import ref_estimators as ref
from grouprl import Rollouts, compute_advantages
from grouprl.advantages import ESTIMATORS
from grouprl.advantages.gae import gae_with_returns

NEW = [
    "rloo",
    "gae",
    "reinforce_pp",
    "reinforce_pp_baseline",
    "remax",
    "opo",
    "gpg",
    "grpo_passk",
    "gdpo",
    "optimal_token_baseline",
]


def random_batch(seed: int, *, gaps: bool = False, max_group: int = 6, T: int = 9):
    """A shuffled batch with string group labels, ragged group sizes (incl. singletons), constant
    groups with non-dyadic rewards, ragged right-padded masks (incl. empty rows unless ``gaps``)
    or masks with gaps inside the response."""
    rng = random.Random(seed)
    rows = []
    for g in range(rng.randint(2, 7)):
        n = rng.randint(1, max_group)
        kind = rng.choice(["binary", "float", "const"])
        c = rng.choice([0.7, 0.1, 1 / 3, -2.5])
        for _ in range(n):
            r = {"binary": float(rng.random() < 0.5), "float": rng.uniform(-2, 2), "const": c}[kind]
            length = rng.randint(1 if gaps else 0, T)
            if gaps:
                m = [0] * T
                start = rng.randint(0, T - length)
                for t in range(start, start + length):
                    m[t] = int(rng.random() < 0.7 or t in (start, start + length - 1))
            else:
                m = [1] * length + [0] * (T - length)
            rows.append((f"prompt-{g}", r, m))
    rng.shuffle(rows)
    labels = [x[0] for x in rows]
    rewards = [x[1] for x in rows]
    mask = [x[2] for x in rows]
    B = len(rows)
    values = [[rng.uniform(-1, 1) for _ in range(T)] for _ in range(B)]
    old_lp = [[-rng.uniform(0.01, 3) for _ in range(T)] for _ in range(B)]
    sum_pi_sq = [[rng.uniform(0.05, 1) for _ in range(T)] for _ in range(B)]
    comps = [[float(rng.random() < 0.5), rng.choice([0.0, 0.5, 1.0]), rng.uniform(0, 1)] for _ in range(B)]
    baselines = [rng.uniform(-1, 1) for _ in range(B)]
    return dict(
        labels=labels, rewards=rewards, mask=mask, values=values, old_lp=old_lp,
        sum_pi_sq=sum_pi_sq, comps=comps, baselines=baselines,
    )


def build(d, **extra) -> Rollouts:
    return Rollouts(
        rewards=d["rewards"],
        group=d["labels"],
        mask=d["mask"],
        values=d["values"],
        old_logprobs=d["old_lp"],
        reward_components=d["comps"],
        reward_baselines=d["baselines"],
        extras={"sum_pi_squared": d["sum_pi_sq"]},
        **extra,
    )


def close(ours: torch.Tensor, expected, atol=1e-5):
    exp = torch.tensor(expected, dtype=torch.float64)
    diff = (ours.double() - exp).abs().max().item()
    assert diff <= atol, f"max |diff| = {diff}"


SEEDS = range(12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("singleton", ["zero", "raw"])
def test_group_estimators_match_reference(seed, singleton):
    d = random_batch(seed)
    b = build(d)
    R, L, M = d["rewards"], d["labels"], d["mask"]
    close(compute_advantages("rloo", b, singleton=singleton), ref.rloo(R, L, M, singleton))
    close(compute_advantages("opo", b, singleton=singleton), ref.opo(R, L, M, singleton))
    close(compute_advantages("gpg", b, singleton=singleton), ref.gpg(R, L, M, singleton), atol=1e-4)
    close(
        compute_advantages("reinforce_pp_baseline", b, singleton=singleton),
        ref.reinforce_pp_baseline(R, L, M, singleton),
    )
    close(
        compute_advantages("reinforce_pp_baseline", b, singleton=singleton, whiten=False),
        ref.reinforce_pp_baseline(R, L, M, singleton, do_whiten=False),
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("scale", [True, False])
def test_grpo_passk_matches_reference(seed, scale):
    d = random_batch(seed)
    b = build(d)
    close(compute_advantages("grpo_passk", b, scale=scale), ref.grpo_passk(d["rewards"], d["labels"], d["mask"], scale))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mode", ["normalize_then_sum", "sum_then_normalize"])
def test_gdpo_matches_reference(seed, mode):
    d = random_batch(seed)
    b = build(d)
    w = [1.0, 0.5, 2.0]
    for singleton in ("zero", "raw"):
        close(
            compute_advantages("gdpo", b, mode=mode, weights=w, singleton=singleton),
            ref.gdpo(d["comps"], d["labels"], d["mask"], w, mode, singleton=singleton),
        )
    close(
        compute_advantages("gdpo", b, mode=mode, whiten=True),
        ref.gdpo(d["comps"], d["labels"], d["mask"], [1, 1, 1], mode, do_whiten=True),
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gaps", [False, True])
@pytest.mark.parametrize("gamma,lam", [(0.99, 0.95), (1.0, 1.0), (0.9, 0.0), (0.0, 0.5)])
def test_gae_matches_reference_loop(seed, gaps, gamma, lam):
    d = random_batch(seed, gaps=gaps)
    b = build(d)
    tr = ref.token_rewards_of(d["rewards"], d["mask"])
    exp_adv, exp_ret = ref.gae(tr, d["values"], d["mask"], gamma, lam)
    raw_adv, _ = ref.gae(tr, d["values"], d["mask"], gamma, lam, do_whiten=False)
    adv, ret = gae_with_returns(b, gamma=gamma, lam=lam)
    close(adv, exp_adv, atol=2e-5)
    close(ret, exp_ret)
    close(compute_advantages("gae", b, gamma=gamma, lam=lam, whiten=False), raw_adv)
    close(compute_advantages("gae", b, gamma=gamma, lam=lam), exp_adv, atol=2e-5)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gaps", [False, True])
def test_token_rewards_field_is_used(seed, gaps):
    """With token_rewards (rewards on several tokens, also on masked ones, which are ignored)."""
    d = random_batch(seed, gaps=gaps)
    rng = random.Random(seed + 100)
    tr = [[rng.choice([0.0, 0.0, rng.uniform(-1, 1)]) for _ in row] for row in d["mask"]]
    b = build(d, token_rewards=tr)
    tr_trained = [[x if m else 0.0 for x, m in zip(r, mrow)] for r, mrow in zip(tr, d["mask"])]
    close(compute_advantages("gae", b, gamma=0.97, lam=0.9), ref.gae(tr_trained, d["values"], d["mask"], 0.97, 0.9)[0], atol=2e-5)
    close(compute_advantages("reinforce_pp", b, gamma=0.95), ref.reinforce_pp(tr_trained, d["mask"], 0.95), atol=2e-5)
    close(compute_advantages("remax", b), ref.remax(tr_trained, d["baselines"], d["mask"]))
    if not gaps:
        close(
            compute_advantages("optimal_token_baseline", b),
            ref.optimal_token_baseline(tr_trained, d["labels"], d["mask"], d["old_lp"], d["sum_pi_sq"]),
        )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gaps", [False, True])
@pytest.mark.parametrize("gamma", [1.0, 0.99, 0.5])
def test_reinforce_pp_matches_reference(seed, gaps, gamma):
    d = random_batch(seed, gaps=gaps)
    b = build(d)
    tr = ref.token_rewards_of(d["rewards"], d["mask"])
    close(compute_advantages("reinforce_pp", b, gamma=gamma), ref.reinforce_pp(tr, d["mask"], gamma), atol=2e-5)
    close(compute_advantages("reinforce_pp", b, gamma=gamma, whiten=False), ref.reinforce_pp(tr, d["mask"], gamma, False))


@pytest.mark.parametrize("seed", SEEDS)
def test_remax_matches_reference(seed):
    d = random_batch(seed)
    b = build(d)
    tr = ref.token_rewards_of(d["rewards"], d["mask"])
    close(compute_advantages("remax", b), ref.remax(tr, d["baselines"], d["mask"]))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("zero_tail", [True, False])
def test_optimal_token_baseline_matches_reference(seed, zero_tail):
    d = random_batch(seed)
    b = build(d)
    tr = ref.token_rewards_of(d["rewards"], d["mask"])
    expected = ref.optimal_token_baseline(tr, d["labels"], d["mask"], d["old_lp"], d["sum_pi_sq"], zero_tail)
    close(compute_advantages("optimal_token_baseline", b, handle_zero_tail=zero_tail), expected)


def test_optimal_token_baseline_rollout_is_weights_scale_w():
    """With IS weights rho, W is built from w * rho^2: rho = 1 changes nothing, a uniform rho = 2
    scales numerator and denominator alike; rho = 2 on one row moves the baseline."""
    d = random_batch(3)
    base = compute_advantages("optimal_token_baseline", build(d))
    ones = [[1.0] * len(r) for r in d["mask"]]
    b1 = Rollouts(**{**_fields(d), "extras": {"sum_pi_squared": d["sum_pi_sq"], "rollout_is_weights": ones}})
    assert torch.allclose(compute_advantages("optimal_token_baseline", b1), base, atol=1e-6)
    twos = [[2.0] * len(r) for r in d["mask"]]
    b2 = Rollouts(**{**_fields(d), "extras": {"sum_pi_squared": d["sum_pi_sq"], "rollout_is_weights": twos}})
    # a uniform factor cancels in the ratio (up to eps)
    assert torch.allclose(compute_advantages("optimal_token_baseline", b2), base, atol=1e-5)
    one_row = [[2.0 if i == 0 else 1.0] * len(r) for i, r in enumerate(d["mask"])]
    b3 = Rollouts(**{**_fields(d), "extras": {"sum_pi_squared": d["sum_pi_sq"], "rollout_is_weights": one_row}})
    assert not torch.allclose(compute_advantages("optimal_token_baseline", b3), base, atol=1e-4)


def _fields(d):
    return dict(rewards=d["rewards"], group=d["labels"], mask=d["mask"], old_logprobs=d["old_lp"])


# ------------------------------------------------------------------ hand-computed cases
def test_gae_hand_computed_with_masked_gap():
    """gamma .99, lam .95. Row 0: V = [.5, .6, .8], reward 1 on the last token.
    delta2 = 1 - .8 = .2; delta1 = .99*.8 - .6 = .192; delta0 = .99*.6 - .5 = .094;
    A2 = .2, A1 = .192 + .9405*.2 = .3801, A0 = .094 + .9405*.3801 = .45148405.
    Row 1: mask [1, 0, 1] (an observation token in the middle), V = [.3, 9, .2], reward 0:
    the gap is skipped: delta2 = -.2, A2 = -.2; delta0 = .99*.2 - .3 = -.102,
    A0 = -.102 + .9405*(-.2) = -.2901."""
    b = Rollouts(
        rewards=[1.0, 0.0],
        group=[0, 1],
        mask=[[1, 1, 1], [1, 0, 1]],
        values=[[0.5, 0.6, 0.8], [0.3, 9.0, 0.2]],
    )
    adv, ret = gae_with_returns(b, gamma=0.99, lam=0.95, whiten=False)
    expected = torch.tensor([[0.45148405, 0.3801, 0.2], [-0.2901, 0.0, -0.2]])
    assert torch.allclose(adv, expected, atol=1e-6)
    assert torch.allclose(ret, expected + torch.tensor([[0.5, 0.6, 0.8], [0.3, 0.0, 0.2]]), atol=1e-6)
    # whitened: over the 5 trained tokens
    vals = torch.tensor([0.45148405, 0.3801, 0.2, -0.2901, -0.2], dtype=torch.float64)
    w = (vals - vals.mean()) / torch.sqrt(vals.var() + 1e-8)
    white = compute_advantages("gae", b, gamma=0.99, lam=0.95)
    assert torch.allclose(white[b.mask].double(), w, atol=1e-6)
    assert white[1, 1].item() == 0.0


def test_gae_gamma_lam_one_is_return_minus_value():
    """gamma = lam = 1: A_t = (sum of rewards from t on) - V_t, returns = reward-to-go."""
    tr = [[0.5, 0.0, 1.0, 2.0], [1.0, -1.0, 3.0, 0.0]]
    mask = [[1, 1, 1, 1], [1, 1, 1, 0]]
    V = [[0.1, 0.2, 0.3, 0.4], [1.0, 2.0, 3.0, 4.0]]
    b = Rollouts(rewards=[0.0, 0.0], group=[0, 0], mask=mask, values=V, token_rewards=tr)
    adv, ret = gae_with_returns(b, gamma=1.0, lam=1.0, whiten=False)
    togo = torch.tensor([[3.5, 3.0, 3.0, 2.0], [3.0, 2.0, 3.0, 0.0]])
    assert torch.allclose(ret, togo)
    assert torch.allclose(adv, (togo - torch.tensor(V)) * torch.tensor(mask))


def test_gae_lam_zero_is_one_step_td():
    b = Rollouts(rewards=[1.0], group=[0], mask=[[1, 1, 1]], values=[[0.5, 0.25, 0.75]])
    adv, _ = gae_with_returns(b, gamma=0.5, lam=0.0, whiten=False)
    assert torch.allclose(adv, torch.tensor([[0.5 * 0.25 - 0.5, 0.5 * 0.75 - 0.25, 1.0 - 0.75]]))


def test_reinforce_pp_hand_computed():
    """gamma .9, reward 1 on the last trained token: G = [.81, .9, 1] for a full row of 3; a row
    with a gap [1, 0, 1] skips it: G = [.9, -, 1]."""
    b = Rollouts(rewards=[1.0, 1.0], group=[0, 0], mask=[[1, 1, 1], [1, 0, 1]])
    g = compute_advantages("reinforce_pp", b, gamma=0.9, whiten=False)
    assert torch.allclose(g, torch.tensor([[0.81, 0.9, 1.0], [0.9, 0.0, 1.0]]))


def test_rloo_and_opo_worked_examples():
    b = Rollouts(rewards=[1, 0, 0, 1], group=[0, 0, 0, 0], mask=torch.ones(4, 1))
    # leave-one-out: 1 - 1/3 = 2/3, 0 - 2/3
    assert torch.allclose(compute_advantages("rloo", b)[:, 0], torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]))
    # OPO with lengths 4, 2, 1: b = (4*1 + 2*0 + 1*1)/7 = 5/7
    b = Rollouts(rewards=[1, 0, 1], group=[0, 0, 0], mask=[[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    a = compute_advantages("opo", b)
    assert torch.allclose(a[:, 0], torch.tensor([2 / 7, -5 / 7, 2 / 7]))


def test_gpg_alpha_counts_nonzero_rewards_in_the_batch():
    # 8 rows, 1 non-zero reward: alpha = 8; group 0 = [1, 0, 0, 0]: mean .25 -> 8 * [.75, -.25, ...]
    b = Rollouts(rewards=[1, 0, 0, 0, 0, 0, 0, 0], group=[0, 0, 0, 0, 1, 1, 1, 1], mask=torch.ones(8, 1))
    a = compute_advantages("gpg", b)[:, 0]
    assert torch.allclose(a, torch.tensor([6.0, -2, -2, -2, 0, 0, 0, 0]))


def test_grpo_passk_examples_and_singletons():
    b = Rollouts(rewards=[1.0, 0.5, 0.0, 0.5], group=[0, 0, 0, 0], mask=torch.ones(4, 1))
    std = torch.tensor([1.0, 0.5, 0.0, 0.5]).std().item()
    a = compute_advantages("grpo_passk", b)[:, 0]
    assert torch.allclose(a, torch.tensor([0.5 / (std + 1e-6), 0, 0, 0]))
    assert torch.allclose(compute_advantages("grpo_passk", b, scale=False)[:, 0], torch.tensor([0.5, 0, 0, 0]))
    tie = Rollouts(rewards=[1.0, 1.0, 0.0], group=[0, 0, 0], mask=torch.ones(3, 1))
    assert torch.equal(compute_advantages("grpo_passk", tie), torch.zeros(3, 1))
    single = Rollouts(rewards=[1.0, 1.0, 0.0], group=[0, 1, 1], mask=torch.ones(3, 1))
    assert compute_advantages("grpo_passk", single)[0, 0].item() == 0.0
    with pytest.raises(ValueError, match="row 0 is the only response of its group"):
        compute_advantages("grpo_passk", single, singleton="raise")
    with pytest.raises(ValueError, match="singleton='raw'"):
        compute_advantages("grpo_passk", single, singleton="raw")


def test_gdpo_preserves_reward_combinations_grpo_collapses():
    """The GDPO paper's point: two binary rewards, GRPO on the sum maps (1,0) and (0,1) to the same
    value as each other; GDPO keeps them distinct from (1,1) and (0,0) and orders them."""
    comps = [[1, 1], [1, 0], [0, 0], [0, 0]]
    b = Rollouts(rewards=[0] * 4, group=[0] * 4, mask=torch.ones(4, 1), reward_components=comps)
    a = compute_advantages("gdpo", b, whiten=False)[:, 0]
    col0 = torch.tensor([1.0, 1, 0, 0])
    col1 = torch.tensor([1.0, 0, 0, 0])
    z = lambda x: (x - x.mean()) / (x.std() + 1e-6)  # noqa: E731
    assert torch.allclose(a, z(col0) + z(col1), atol=1e-6)
    with pytest.raises(ValueError, match="weights has 3 entries"):
        compute_advantages("gdpo", b, weights=[1, 1, 1])
    with pytest.raises(ValueError, match="mode="):
        compute_advantages("gdpo", b, mode="nope")


def test_remax_scalar_reward():
    b = Rollouts(rewards=[1.0, 0.0], group=[0, 0], mask=[[1, 1, 0], [1, 1, 1]], reward_baselines=[0.25, 0.5])
    assert torch.allclose(compute_advantages("remax", b), torch.tensor([[0.75, 0.75, 0.0], [-0.5, -0.5, -0.5]]))


# ------------------------------------------------------------------ errors, registry, examples
def test_missing_fields_name_the_field():
    b = Rollouts(rewards=[1.0, 0.0], group=[0, 0], mask=torch.ones(2, 3))
    for name, field in [("gae", "values"), ("remax", "reward_baselines"), ("gdpo", "reward_components"),
                        ("optimal_token_baseline", "old_logprobs")]:
        with pytest.raises(ValueError, match=field):
            compute_advantages(name, b)


def test_bad_discounts_raise():
    b = Rollouts(rewards=[1.0], group=[0], mask=torch.ones(1, 2), values=torch.zeros(1, 2))
    with pytest.raises(ValueError, match="gamma=1.5"):
        compute_advantages("gae", b, gamma=1.5)
    with pytest.raises(ValueError, match="lam=-0.1"):
        compute_advantages("gae", b, lam=-0.1)
    with pytest.raises(ValueError, match="gamma=2.0"):
        compute_advantages("reinforce_pp", b, gamma=2.0)


@pytest.mark.parametrize("name", NEW)
def test_registered_with_paper_doc_and_runnable_example(name):
    info = ESTIMATORS[name]
    assert info.paper and "=" in info.doc
    ex = dict(info.example)
    kwargs = ex.pop("kwargs", {})
    ex.setdefault("mask", [[1]] * len(ex["rewards"]))
    out = compute_advantages(name, Rollouts(**ex), **kwargs)
    assert out.shape == torch.as_tensor(ex["mask"]).shape
    assert torch.isfinite(out).all() and bool((out != 0).any())


@pytest.mark.parametrize("gaps", [False, True])
def test_row_blocks_do_not_change_the_result(gaps):
    """Blocks of rows (cache-sized) combine their whitening statistics exactly."""
    from grouprl.advantages._returns import discounted_advantages

    d = random_batch(5, gaps=gaps, T=40)
    b = build(d)
    kw = dict(gamma=0.99, lam=0.95, values=b.values, rewards=b.rewards, whiten=True, with_returns=True)
    one_adv, one_ret = discounted_advantages(b.mask, **kw)
    many_adv, many_ret = discounted_advantages(b.mask, block_elems=40 * 3, **kw)  # 3 rows a block
    assert torch.allclose(one_adv, many_adv, atol=1e-6)
    assert torch.allclose(one_ret, many_ret, atol=1e-6)


def test_mask_helpers():
    from grouprl.advantages._masks import Compaction, row_lengths

    gen = torch.Generator().manual_seed(0)
    m = torch.rand(37, 11, generator=gen) < 0.6
    assert torch.equal(row_lengths(m, block_elems=11 * 4), m.sum(1))
    right = torch.arange(11) < torch.randint(0, 12, (37,), generator=gen).unsqueeze(1)
    assert Compaction.of(right).right_padded
    assert not Compaction.of(right | (torch.arange(11) == 10)).right_padded or bool(right[:, -1].all())
    c = Compaction.of(m)
    x = torch.randn(37, 11, generator=gen)
    packed = c.pack(x)
    for i in range(37):  # each row's trained tokens, in order, then zeros
        n = int(m[i].sum())
        assert torch.equal(packed[i, :n], x[i][m[i]]) and bool((packed[i, n:] == 0).all())
    assert torch.equal(c.unpack(packed), x * m)


@pytest.mark.parametrize("T", [150, 1100])
@pytest.mark.parametrize("gaps", [False, True])
def test_gae_and_reinforce_pp_long_responses(T, gaps):
    """Long rows exercise the chunked scan (T > 32) and its recursion (T > 32 * 32)."""
    d = random_batch(T, gaps=gaps, T=T, max_group=3)
    b = build(d)
    tr = ref.token_rewards_of(d["rewards"], d["mask"])
    exp_adv, exp_ret = ref.gae(tr, d["values"], d["mask"], 0.99, 0.95)
    adv, ret = gae_with_returns(b, gamma=0.99, lam=0.95)
    close(adv, exp_adv, atol=5e-5)
    close(ret, exp_ret, atol=5e-5)
    close(compute_advantages("reinforce_pp", b, gamma=0.999, whiten=False), ref.reinforce_pp(tr, d["mask"], 0.999, False), atol=5e-5)


# ------------------------------------------------------------------ the one name resolver
def test_resolve_names_expressions_and_estimators():
    from grouprl.advantages import Estimator, get, resolve
    from grouprl.core import UnknownName

    one = resolve("grpo", eps=1e-4)
    assert isinstance(one, Estimator) and [(w, i.name, k) for w, i, k in one.terms] == [(1.0, "grpo", {"eps": 1e-4})]
    two = resolve("0.7*grpo + 0.3*rloo | clip(3)")
    assert [(w, i.name) for w, i, _ in two.terms] == [(0.7, "grpo"), (0.3, "rloo")] and two.transforms == [("clip", {"value": 3.0})]
    est = get("rloo")
    assert resolve(est) is est
    with pytest.raises(UnknownName, match="did you mean 'grpo'"):
        resolve("grpoo")
    with pytest.raises(UnknownName, match="did you mean 'rloo'"):
        resolve("0.5*grpo + 0.5*rlooo")
    with pytest.raises(TypeError, match="unknown hyperparameter 'epss'"):
        resolve("grpo", epss=1e-4)
    with pytest.raises(TypeError, match="bind them with"):
        resolve(est, eps=1e-4)
    with pytest.raises(TypeError, match="not int"):
        resolve(3)
