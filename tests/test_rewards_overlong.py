"""DAPO overlong shaping: the penalty table of grpo-family.md section 5, and overlong filtering."""

import pytest
import torch

from grouprl import Rollouts, compute_advantages
from grouprl.rewards import overlong_filter, overlong_penalty, shape_overlong


@pytest.mark.parametrize("L,p", [(10000, 0.0), (16384, 0.0), (17000, -0.1504), (18432, -0.5), (20480, -1.0)])
def test_penalty_table(L, p):
    for mode in ("paper", "verl"):
        got = overlong_penalty(torch.tensor([L]), max_length=20480, cache_length=4096, mode=mode)
        assert got.item() == pytest.approx(p, abs=1e-4)


def test_beyond_max_paper_floor_vs_verl_ramp():
    L = torch.tensor([22528])
    assert overlong_penalty(L, max_length=20480, cache_length=4096).item() == -1.0
    assert overlong_penalty(L, max_length=20480, cache_length=4096, mode="verl").item() == pytest.approx(-1.5)
    assert overlong_penalty(torch.tensor([18432]), max_length=20480, cache_length=4096, factor=0.5).item() == pytest.approx(-0.25)
    with pytest.raises(ValueError, match="cache_length"):
        overlong_penalty(L, max_length=10, cache_length=20)


def test_shape_overlong_uses_mask_lengths():
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[0, :4] = True
    mask[1, :6] = True
    mask[2, :8] = True
    b = Rollouts(rewards=[1.0, 1.0, -1.0], group=[0, 0, 0], mask=mask)
    s = shape_overlong(b, max_length=8, cache_length=4)
    assert torch.allclose(s.rewards, torch.tensor([1.0, 0.5, -2.0], dtype=s.rewards.dtype))
    s2 = shape_overlong(b, max_length=8, cache_length=4, lengths=torch.tensor([4, 4, 4]))
    assert torch.equal(s2.rewards, b.rewards)


def test_overlong_filter_masks_truncated_rows():
    b = Rollouts(rewards=[1.0, 0.0, 1.0], group=[0, 0, 0], mask=torch.ones(3, 4), truncated=[False, True, False])
    f = overlong_filter(b)
    assert f.mask.sum(1).tolist() == [4, 0, 4]
    a = compute_advantages("grpo", f)
    assert a[1].abs().sum() == 0 and torch.equal(a[0], compute_advantages("grpo", b)[0])  # stats unchanged
    b2 = Rollouts(rewards=[1.0, 0.0], group=[0, 0], mask=torch.tensor([[1, 1, 0], [1, 1, 1]]))
    assert overlong_filter(b2, max_length=3).mask.sum(1).tolist() == [2, 0]
    with pytest.raises(ValueError, match="truncated"):
        overlong_filter(b2)
