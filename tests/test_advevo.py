"""AdvEvo-MARL public baseline: the worked example of advevo-public-baseline.md section 5."""

import pytest
import torch

from grouprl import Rollouts, compute_advantages

# Defenders D1, D2 (one functional group), K = 2 rollouts: D1 (1, 0), D2 (1, 1).
SPEC = dict(rewards=[1, 0, 1, 1], group=[0, 0, 0, 0], role=[0, 0, 0, 0], agent=[1, 1, 2, 2])


def adv(**kw):
    over = kw.pop("batch", {})
    d = {**SPEC, **over}
    b = Rollouts(mask=torch.ones(len(d["rewards"]), 2), **d)
    return compute_advantages("advevo_public", b, **kw)[:, 0].double()


def test_public_baseline():
    assert torch.allclose(adv(), torch.tensor([0.25, -0.75, 0.25, 0.25], dtype=torch.float64))


def test_per_agent_contrast():
    assert torch.allclose(adv(baseline="agent"), torch.tensor([0.5, -0.5, 0.0, 0.0], dtype=torch.float64))


def test_functional_groups_have_separate_baselines():
    # attackers (role 1) with returns (0, 0, 1, 1) do not move the defenders' baseline
    b = {k: v + v for k, v in SPEC.items()}
    b["rewards"] = [1, 0, 1, 1, 0, 0, 1, 1]
    b["role"] = [0, 0, 0, 0, 1, 1, 1, 1]
    b["agent"] = [1, 1, 2, 2, 3, 3, 4, 4]
    a = adv(batch=b)
    assert torch.allclose(a[:4], torch.tensor([0.25, -0.75, 0.25, 0.25], dtype=torch.float64))
    assert torch.allclose(a[4:], torch.tensor([-0.5, -0.5, 0.5, 0.5], dtype=torch.float64))


def test_scope_and_scale():
    b = {"rewards": [1, 0, 0, 0], "group": [0, 0, 1, 1], "role": [0, 0, 0, 0], "agent": [1, 1, 1, 1]}
    assert torch.allclose(adv(batch=b), torch.tensor([0.5, -0.5, 0.0, 0.0], dtype=torch.float64))
    assert torch.allclose(adv(batch=b, scope="batch"), torch.tensor([0.75, -0.25, -0.25, -0.25], dtype=torch.float64))
    s = torch.tensor([1.0, 0, 1, 1]).std().item()
    assert torch.allclose(adv(scale=True), torch.tensor([0.25, -0.75, 0.25, 0.25], dtype=torch.float64) / (s + 1e-6))


def test_edge_cases():
    assert torch.equal(adv(batch={"rewards": [1, 1, 1, 1]}), torch.zeros(4, dtype=torch.float64))
    one = Rollouts(rewards=[3.0], group=[0], role=[0], mask=torch.ones(1, 1))
    assert compute_advantages("advevo_public", one).item() == 0.0
    with pytest.raises(ValueError, match="needs the batch field 'agent'"):
        compute_advantages("advevo_public", one, baseline="agent")
    with pytest.raises(ValueError, match="needs the batch field"):
        compute_advantages("advevo_public", Rollouts(rewards=[3.0], group=[0], mask=torch.ones(1, 1)))
