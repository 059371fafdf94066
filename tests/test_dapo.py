"""DAPO's advantage: the ±1 examples of grpo-family.md section 5."""

import torch

from grouprl import Rollouts, compute_advantages


def adv(rewards, **kw):
    b = Rollouts(rewards=rewards, group=[0] * len(rewards), mask=torch.ones(len(rewards), 1))
    return compute_advantages("dapo", b, **kw)[:, 0]


def test_dapo_examples():
    assert torch.allclose(adv([1, -1, -1, 1]), torch.tensor([0.866, -0.866, -0.866, 0.866]), atol=1e-3)
    assert torch.allclose(adv([1, -1, -1, -1]), torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=1e-5)
    assert torch.equal(adv([1, 1, 1, 1]), torch.zeros(4))
    assert adv([1.0]).item() == 0.0 and adv([1.0], singleton="raw").item() == 1.0
