"""NGRPO advantage calibration: the worked examples of ngrpo.md section 5, degenerate cases, k = 0."""

import pytest
import torch

from grouprl import Rollouts, compute_advantages


def adv(rewards, **kw):
    b = Rollouts(rewards=rewards, group=[0] * len(rewards), mask=torch.ones(len(rewards), 2))
    out = compute_advantages("ngrpo", b, **kw)
    assert torch.equal(out[:, 0], out[:, 1])
    return out[:, 0]


@pytest.mark.parametrize(
    "rewards,expected",
    [
        ([1, 0, 0, 1], [0.7303, -1.0954, -1.0954, 0.7303]),
        ([0, 0, 0, 0], [-0.4472] * 4),
        ([1, 1, 1, 0], [0.4472, 0.4472, 0.4472, -1.7889]),
        ([1, 0, 0, 0, 0, 0, 0, 0], [1.7638] + [-0.5040] * 7),
        ([0] * 8, [-0.3333] * 8),
    ],
)
def test_spec_examples(rewards, expected):
    assert torch.allclose(adv(rewards), torch.tensor(expected), atol=1e-4)


def test_all_correct_is_exactly_zero():
    assert torch.equal(adv([1, 1, 1, 1]), torch.zeros(4))
    assert torch.equal(adv([1.0] * 8, k=3), torch.zeros(8))


def test_group_of_one():
    assert adv([0.0]).item() == 0.0
    assert adv([1.0], singleton="raw").item() == 1.0  # the code skips the virtual sample: A = r
    assert adv([0.0], singleton="raw").item() == 0.0
    with pytest.raises(ValueError, match="only response"):
        adv([1.0], singleton="raise")


def test_k0_equals_grpo_on_random_batches():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        B = 40
        rewards = torch.randint(0, 3, (B,), generator=g).float() / 2
        group = torch.randint(0, 7, (B,), generator=g)
        b = Rollouts(rewards=rewards, group=group, mask=torch.rand(B, 5, generator=g) > 0.3)
        for ddof in (0, 1):
            a = compute_advantages("ngrpo", b, k=0, ddof=ddof)
            ref = compute_advantages("grpo", b, ddof=ddof)
            assert torch.allclose(a, ref, atol=1e-6)


def test_population_std_and_k2():
    # R' = [1,0,0,1,1,1], mu' = 2/3, population std = sqrt(2/9)
    a = adv([1, 0, 0, 1], k=2, ddof=0)
    s = (2 / 9) ** 0.5
    assert torch.allclose(a, torch.tensor([1 / 3, -2 / 3, -2 / 3, 1 / 3]) / (s + 1e-6), atol=1e-5)


def test_pm1_rewards_with_rmax_one():
    # ±1 rewards, r_max = +1 (proposed reading): same shape as the 0/1 case scaled by 2 / 2
    assert torch.allclose(adv([1, -1, -1, 1]), adv([1, 0, 0, 1]), atol=1e-5)


def test_multi_group_masked_rows_one_prompt():
    mask = torch.tensor([[1, 1], [0, 0], [1, 0], [0, 0]], dtype=torch.bool)
    b = Rollouts(rewards=[0.0, 0.0, 1.0, 1.0], group=[0, 0, 1, 1], mask=mask)
    out = compute_advantages("ngrpo", b)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[0], torch.tensor([-0.5774, -0.5774]), atol=1e-4)  # [0,0]+1: mu'=1/3
    assert out[1].abs().sum() == 0 and out[3].abs().sum() == 0  # masked rows stay 0
    assert out[2, 0].item() == 0.0  # all-correct group


def test_bad_k():
    b = Rollouts(rewards=[1.0, 0.0], group=[0, 0], mask=torch.ones(2, 1))
    with pytest.raises(ValueError, match="k="):
        compute_advantages("ngrpo", b, k=-1)


def test_reward_above_rmax_raises():
    b = Rollouts(rewards=[2.0, 0.0], group=[0, 0], mask=torch.ones(2, 1))
    with pytest.raises(ValueError, match="row 0 has reward 2 > r_max=1"):
        compute_advantages("ngrpo", b)
    assert torch.isfinite(compute_advantages("ngrpo", b, r_max=2.0)).all()
