"""ReAd: the worked example of read.md section 5 (sequential and joint advantages)."""

import pytest
import torch

from grouprl import Rollouts, compute_advantages
from grouprl.advantages.read import needs_refinement


def batch(q, v, agent, trajectory=None, step=None, **extras):
    n = len(q)
    return Rollouts(
        rewards=[0.0] * n,
        group=[0] * n,
        mask=torch.ones(n, 1),
        trajectory=trajectory or [0] * n,
        step=step or [0] * n,
        agent=agent,
        extras={"q_values": torch.tensor(q), "state_values": torch.tensor(v), **extras},
    )


def adv(b, **kw):
    return compute_advantages("read", b, **kw)[:, 0].double()


def test_spec_example():
    # V(s) = 0.40, Q(s, a1) = 0.60, Q(s, a1, a2) = 0.50
    b = batch([0.6, 0.5], [0.4, 0.4], [0, 1])
    a = adv(b)
    assert a.tolist() == pytest.approx([0.2, -0.1], abs=1e-6)
    assert a.sum().item() == pytest.approx(0.1, abs=1e-6)
    assert adv(b, mode="joint").tolist() == pytest.approx([0.1, 0.1], abs=1e-6)
    # ReAd-S with eps = 0 sends agent 2 back although the joint advantage is positive
    assert needs_refinement(a).tolist() == [False, True]
    assert needs_refinement(adv(b, mode="joint")).tolist() == [False, False]


def test_rows_in_any_order_and_several_decisions():
    # two decisions (steps 0 and 1) of three agents, rows shuffled
    q = {(0, 0): 1.0, (0, 1): 1.5, (0, 2): 1.2, (1, 0): 0.0, (1, 1): -0.5, (1, 2): 0.3}
    v = {0: 0.5, 1: 0.1}
    keys = [(1, 2), (0, 1), (1, 0), (0, 0), (0, 2), (1, 1)]
    b = batch([q[k] for k in keys], [v[k[0]] for k in keys], [k[1] for k in keys], step=[k[0] for k in keys])
    a = adv(b)
    want = {(0, 0): 0.5, (0, 1): 0.5, (0, 2): -0.3, (1, 0): -0.1, (1, 1): -0.5, (1, 2): 0.8}
    assert a.tolist() == pytest.approx([want[k] for k in keys], abs=1e-6)
    joint = adv(b, mode="joint")
    assert joint.tolist() == pytest.approx([0.7 if k[0] == 0 else 0.2 for k in keys], abs=1e-6)


def test_order_field_overrides_agent_ids():
    b = batch([0.5, 0.6], [0.4, 0.4], [0, 1], agent_order=torch.tensor([1, 0]))
    assert adv(b, order_field="agent_order").tolist() == pytest.approx([-0.1, 0.2], abs=1e-6)


def test_single_agent_is_q_minus_v():
    b = batch([0.9, 0.2], [0.5, 0.5], [0, 0], step=[0, 1])
    assert adv(b).tolist() == pytest.approx([0.4, -0.3], abs=1e-6)


def test_errors():
    b = Rollouts(rewards=[0.0], group=[0], mask=torch.ones(1, 1), trajectory=[0], step=[0], agent=[0])
    with pytest.raises(ValueError, match="needs the batch field\\(s\\) 'q_values', 'state_values'.*extras=\\{'q_values'"):
        adv(b)
    with pytest.raises(ValueError, match="rows 0 and 1 have the same decision \\(group, trajectory, step\\) and agent \\(1\\)"):
        adv(batch([0.6, 0.5], [0.4, 0.4], [1, 1]))
    with pytest.raises(ValueError, match="mode="):
        adv(batch([0.6], [0.4], [0]), mode="both")
