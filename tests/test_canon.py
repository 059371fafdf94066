"""CANON: the worked examples of canon.md section 5, the Dr. GRPO identity, schedules, control."""

import pytest
import torch

from grouprl import Rollouts, compute_advantages
from grouprl.advantages.canon import cosine_with_restarts, rank_split


def adv(name, rewards, metric=None, **kw):
    n = len(rewards)
    b = Rollouts(rewards=rewards, group=[0] * n, mask=torch.ones(n, 2), metric=metric)
    out = compute_advantages(name, b, **kw)
    assert torch.equal(out[:, 0], out[:, 1])
    return out[:, 0]


EX1 = ([1, 0, 0, 1], [0.9, 0.3, 0.2, 0.8])
EX2 = ([1, 1, 0, 0, 1, 0], [0.2, 0.9, 0.8, 0.1, 0.3, 0.7])


@pytest.mark.parametrize(
    "lam,expected", [(1.0, [1, -1, -1, 1]), (0.5, [0.5, -0.5, -0.5, 0.5]), (0.0, [0, 0, 0, 0])]
)
def test_example1(lam, expected):
    assert torch.allclose(adv("canon", *EX1, lam=lam), torch.tensor(expected, dtype=torch.float32), atol=1e-6)


@pytest.mark.parametrize(
    "kw,expected",
    [
        ({"lam": 1.0}, [0.6667, 0.3333, -0.6667, -0.3333, 0.6667, -0.6667]),
        ({"lam": 0.5}, [0.5, 0.5, -0.5, -0.5, 0.5, -0.5]),
        ({"lam": 0.0}, [0.3333, 0.6667, -0.3333, -0.6667, 0.3333, -0.3333]),
        ({"lam": 1.0, "alpha": 1.2}, [0.8667, 0.2, -0.8, -0.3333, 0.8667, -0.8]),
    ],
)
def test_example2(kw, expected):
    assert torch.allclose(adv("canon", *EX2, **kw), torch.tensor(expected), atol=1e-4)


def test_example2_released_scale():
    a = adv("canon", *EX2, lam=1.0, norm=8192)
    assert torch.allclose(a * 8192, torch.tensor([0.6667, 0.3333, -0.6667, -0.3333, 0.6667, -0.6667]), atol=1e-4)


def test_example3_odd_group():
    assert torch.allclose(adv("canon", [1, 0, 1], [0.1, 0.2, 0.3]), torch.tensor([0.5, -1.0, 0.0]), atol=1e-6)


def test_example4_identical_rewards_alpha():
    a = adv("canon", [1, 1, 1, 1], [0.1, 0.2, 0.3, 0.4], alpha=1.2, lam=1.0)
    assert torch.allclose(a, torch.tensor([0.2, 0.2, -0.2, -0.2]), atol=1e-5)
    # ties: stable sort, rollout order decides (first two are the low half)
    assert torch.allclose(adv("canon", [1, 1, 1, 1], [0.5] * 4, alpha=1.2), torch.tensor([0.2, 0.2, -0.2, -0.2]), atol=1e-5)
    assert torch.equal(adv("canon", [1, 1, 1, 1], [0.1, 0.2, 0.3, 0.4]), torch.zeros(4))  # α = 1


def test_length_version_mirrors_alpha():
    # r = [1,1,1,1], lengths by metric; α = 1.2 favours the short (low) half in the length version
    a = adv("canon", [1, 1, 1, 1], [10.0, 20.0, 30.0, 40.0], alpha=1.2, condition="length")
    assert torch.allclose(a, torch.tensor([-0.2, -0.2, 0.2, 0.2]), atol=1e-5)
    # Example-1 rewards with lengths as the metric and α = 1: same as the entropy version
    a = adv("canon", [1, 0, 0, 1], [9.0, 3.0, 2.0, 8.0], condition="length")
    assert torch.allclose(a, torch.tensor([1.0, -1, -1, 1]))


def test_metric_from_entropy_and_length_fields():
    ent = torch.tensor([[0.9, 0.9, 0.0], [0.3, 0.3, 0.3], [0.2, 0.0, 0.0], [0.8, 0.8, 0.8]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    b = Rollouts(rewards=[1, 0, 0, 1], group=[0] * 4, mask=mask, entropy=ent)
    a = compute_advantages("canon", b)[:, 0]
    assert torch.allclose(a, torch.tensor([1.0, -1, -1, 1]))
    # length: lengths [2,3,1,3] -> low half {o3, o1}, high {o2, o4}; μ⁻ = 0.5, μ⁺ = 0.5
    a = compute_advantages("canon", b, condition="length")[:, 0]
    assert torch.allclose(a, torch.tensor([0.5, -0.5, -0.5, 0.5]))
    with pytest.raises(ValueError, match="'entropy'"):
        compute_advantages("canon", Rollouts(rewards=[1, 0], group=[0, 0], mask=torch.ones(2, 1)))


def test_all_masked_row_sorts_low():
    ent = torch.tensor([[0.0, 0.0], [0.5, 0.5], [0.6, 0.6], [0.7, 0.7]])
    mask = torch.tensor([[0, 0], [1, 1], [1, 1], [1, 1]], dtype=torch.bool)
    b = Rollouts(rewards=[1, 0, 1, 0], group=[0] * 4, mask=mask, entropy=ent)
    a = compute_advantages("canon", b)
    assert torch.isfinite(a).all() and a[0].abs().sum() == 0
    # masked row 0 (entropy 0) is in C⁻ = {o1, o2}: μ⁻ = 0.5; C⁺ = {o3, o4}: μ⁺ = 0.5
    assert torch.allclose(a[1:, 0], torch.tensor([-0.5, 0.5, -0.5]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dr_grpo_identity_on_random_batches(seed):
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 5, (12,), generator=g) * 2  # even group sizes
    group = torch.repeat_interleave(torch.arange(12), sizes)
    group = group[torch.randperm(group.numel(), generator=g)]
    B = group.numel()
    rewards = torch.randn(B, generator=g)
    metric = torch.rand(B, generator=g)
    b = Rollouts(rewards=rewards, group=group, mask=torch.rand(B, 4, generator=g) > 0.2, metric=metric)
    for cond in ("entropy", "length"):
        a = compute_advantages("canon", b, lam=0.5, alpha=1.0, beta=0.0, condition=cond, norm=8192)
        ref = compute_advantages("dr_grpo", b) / 8192
        assert torch.allclose(a, ref, atol=1e-6)


def test_multi_group_vectorised_matches_per_group():
    g = torch.Generator().manual_seed(3)
    group = torch.randint(0, 5, (30,), generator=g)
    rewards = torch.randint(0, 2, (30,), generator=g).float()
    metric = torch.rand(30, generator=g)
    b = Rollouts(rewards=rewards, group=group, mask=torch.ones(30, 1), metric=metric)
    a = compute_advantages("canon", b, lam=0.3, alpha=1.1, beta=0.05)[:, 0]
    for k in range(5):
        rows = (group == k).nonzero().squeeze(1)
        sub = Rollouts(rewards=rewards[rows], group=[0] * len(rows), mask=torch.ones(len(rows), 1), metric=metric[rows])
        ref = compute_advantages("canon", sub, lam=0.3, alpha=1.1, beta=0.05)[:, 0]
        assert torch.allclose(a[rows], ref, atol=1e-6)


def test_group_of_one_and_one_prompt():
    assert adv("canon", [1.0], [0.3]).item() == 0.0
    assert adv("canon", [1.0], [0.3], singleton="raw", norm=4).item() == 0.25  # code: r/Z
    a = adv("canon", [2.0, 2.0], [0.3, 0.1])
    assert torch.equal(a, torch.zeros(2))


def test_rank_split_odd_and_ties():
    key = torch.tensor([0.5, 0.5, 0.5, 0.1, 0.9], dtype=torch.float64)
    ids = torch.tensor([0, 0, 0, 1, 1])
    high = rank_split(key, ids, 2)
    assert high.tolist() == [False, True, True, False, True]


@pytest.mark.parametrize("t,w", [(0, 0.98), (29, 0.4), (30, 0.4), (50, 0.7), (70, 0.4)])
def test_example5_cosine_restart(t, w):
    assert 1 - cosine_with_restarts(t) == pytest.approx(w, abs=1e-4)


def test_cosine_restart_late_and_reverse():
    assert 1 - cosine_with_restarts(69) == pytest.approx(1.0, abs=1e-3)
    assert cosine_with_restarts(0, max_value=1.0, min_value=0.4) == pytest.approx(1 / 30, abs=1e-4)
    assert cosine_with_restarts(30, max_value=1.0, min_value=0.4) == pytest.approx(1.0)
    assert cosine_with_restarts(69, max_value=1.0, min_value=0.4) == pytest.approx(0.4, abs=1e-3)
    assert cosine_with_restarts(200) == 0.0


def test_scheduled_estimators_use_the_weight():
    # Example 2: inter (λ=1) and intra (λ=0) advantages; a schedule mixes them linearly
    inter = adv("canon", *EX2, lam=1.0)
    intra = adv("canon", *EX2, lam=0.0)
    w = 1 - cosine_with_restarts(50)
    assert torch.allclose(adv("canon_cosine", *EX2, step=50), w * inter + (1 - w) * intra, atol=1e-6)
    w = cosine_with_restarts(50, max_value=1.0, min_value=0.4)
    assert torch.allclose(adv("canon_cosine_r", *EX2, step=50), w * inter + (1 - w) * intra, atol=1e-6)
    w = 0.5  # batch accuracy of Example 2
    assert torch.allclose(adv("canon_anneal", *EX2), w * inter + (1 - w) * intra, atol=1e-6)


def test_random_control():
    # by position: halves {o1, o2} and {o3, o4}; A_i = r_i − mean(other half)
    a = adv("canon_random", [1, 0, 0, 1])
    assert torch.allclose(a, torch.tensor([0.5, -0.5, -0.5, 0.5]))
    a = adv("canon_random", [1, 1, 0, 0])
    assert torch.allclose(a, torch.tensor([1.0, 1.0, -1.0, -1.0]))
    r = torch.arange(8.0)
    x = adv("canon_random", r.tolist(), seed=7)
    assert torch.equal(x, adv("canon_random", r.tolist(), seed=7))  # seeded: reproducible
    # each row is compared with the mean of the other half, whatever the split
    assert torch.isfinite(x).all() and not torch.equal(x, adv("canon_random", r.tolist()))


def test_bad_inputs():
    with pytest.raises(ValueError, match="condition"):
        adv("canon", [1, 0], [0.1, 0.2], condition="entropyy")
    with pytest.raises(ValueError, match="norm"):
        adv("canon", [1, 0], [0.1, 0.2], norm=0)


def test_constant_group_exact_zero_with_unrounded_means():
    # three 0.7's: the float mean 2.1/3 is not exactly 0.7; α = 1, β = 0 must still give exactly 0
    for name, kw in [("canon", {"lam": 1.0}), ("canon", {"lam": 0.3}), ("canon_random", {}), ("canon_anneal", {})]:
        a = adv(name, [0.7] * 7, [0.1, 0.5, 0.3, 0.2, 0.9, 0.4, 0.6], **kw)
        assert torch.equal(a, torch.zeros(7)), name
    # α ≠ 1 on a constant group: A = λ·((1 − α)·r + β) high, λ·((α − 1)·r − β) low, exactly
    a = adv("canon", [0.7] * 4, [0.1, 0.2, 0.3, 0.4], alpha=1.5, beta=0.1, lam=0.5)
    assert torch.allclose(a, torch.tensor([0.5 * (0.35 - 0.1)] * 2 + [0.5 * (-0.35 + 0.1)] * 2), atol=1e-6)
