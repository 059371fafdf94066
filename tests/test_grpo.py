"""GRPO / Dr. GRPO: the worked examples of grpo-family.md section 5."""

import pytest
import torch

from grouprl import Rollouts, compute_advantages


def adv(name, rewards, **kw):
    b = Rollouts(rewards=rewards, group=[0] * len(rewards), mask=torch.ones(len(rewards), 2))
    out = compute_advantages(name, b, **kw)
    assert torch.equal(out[:, 0], out[:, 1])
    return out[:, 0]


def test_grpo_1001():
    assert torch.allclose(adv("grpo", [1, 0, 0, 1]), torch.tensor([0.866, -0.866, -0.866, 0.866]), atol=1e-3)


def test_grpo_population_std_gives_unit():
    assert torch.allclose(adv("grpo", [1, 0, 0, 1], ddof=0), torch.tensor([1.0, -1, -1, 1]), atol=1e-5)


def test_grpo_one_of_eight():
    a = adv("grpo", [1, 0, 0, 0, 0, 0, 0, 0])
    assert a[0].item() == pytest.approx(2.4749, abs=1e-4)
    assert torch.allclose(a[1:], torch.full((7,), -0.3536), atol=1e-4)


def test_dr_grpo_examples():
    assert torch.allclose(adv("dr_grpo", [1, 0, 0, 1]), torch.tensor([0.5, -0.5, -0.5, 0.5]))
    a = adv("dr_grpo", [1, 0, 0, 0, 0, 0, 0, 0])
    assert a[0].item() == pytest.approx(0.875) and a[1].item() == pytest.approx(-0.125)


def test_dapo_pm1_rewards():
    assert torch.allclose(adv("grpo", [1, -1, -1, 1]), torch.tensor([0.866, -0.866, -0.866, 0.866]), atol=1e-3)
    assert torch.allclose(adv("grpo", [1, -1, -1, -1]), torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=1e-5)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo"])
def test_constant_group_is_exactly_zero(name):
    assert torch.equal(adv(name, [1, 1, 1, 1]), torch.zeros(4))
    assert torch.equal(adv(name, [0.7] * 8), torch.zeros(8))  # verl 0.9.1: |A| = 0.056 here


def test_singleton_zero_raw_raise():
    assert adv("grpo", [0.5]).item() == 0.0
    assert adv("grpo", [0.5], singleton="raw").item() == 0.5
    assert adv("dr_grpo", [0.5], singleton="raw").item() == 0.5
    with pytest.raises(ValueError, match="row 0 is the only response of its group"):
        adv("grpo", [0.5], singleton="raise")


def test_batch_scale_centres_by_group_divides_by_batch_std():
    b = Rollouts(rewards=[1.0, 0, 2, 0], group=[0, 0, 1, 1], mask=torch.ones(4, 1))
    a = compute_advantages("grpo", b, scale="batch")[:, 0].double()
    centred = torch.tensor([0.5, -0.5, 1.0, -1.0], dtype=torch.float64)
    std = torch.tensor([1.0, 0, 2, 0], dtype=torch.float64).std()
    assert torch.allclose(a, centred / (std + 1e-6), atol=1e-6)
