"""Confucius3-Math PSHW: the worked examples of confucius3.md section 5."""

import pytest
import torch

from grouprl import Rollouts, compute_advantages


def adv(rewards, **kw):
    b = Rollouts(rewards=rewards, group=[0] * len(rewards), mask=torch.ones(len(rewards), 2))
    return compute_advantages("pshw", b, **kw)[:, 0]


@pytest.mark.parametrize(
    "r,expected",
    [
        ([1, -1, -1, 1], [1.256, -1.256, -1.256, 1.256]),
        ([1, -1, -1, -1], [2.076, -0.692, -0.692, -0.692]),
        ([1, 1, 1, -1], [0.564, 0.564, 0.564, -1.692]),
        ([-1, -1, -1, -1], [0, 0, 0, 0]),
        ([1, 1, 1, 1], [0, 0, 0, 0]),
    ],
)
def test_pshw_examples(r, expected):
    assert torch.allclose(adv(r), torch.tensor(expected, dtype=torch.float32), atol=1e-4)


def test_pshw_group_of_one_and_multi_group():
    assert adv([1.0]).item() == 0.0
    b = Rollouts(rewards=[1, -1, -1, -1, 1, 1, 1, -1, 1], group=[0] * 4 + [1] * 4 + [2], mask=torch.ones(9, 1))
    a = compute_advantages("pshw", b)[:, 0]
    assert torch.allclose(a, torch.tensor([2.076, -0.692, -0.692, -0.692, 0.564, 0.564, 0.564, -1.692, 0.0]), atol=1e-4)


def test_pshw_is_weighted_dr_grpo():
    g = torch.Generator().manual_seed(0)
    r = torch.randint(0, 2, (32,), generator=g).float() * 2 - 1
    group = torch.randint(0, 5, (32,), generator=g)
    b = Rollouts(rewards=r, group=group, mask=torch.ones(32, 1))
    a = compute_advantages("pshw", b)[:, 0]
    d = compute_advantages("dr_grpo", b)[:, 0]
    mu = torch.zeros(5).index_add_(0, group, r) / torch.bincount(group, minlength=5)
    assert torch.allclose(a, d * (-0.256 * mu[group] + 1.256), atol=1e-5)
