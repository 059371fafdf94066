"""Every outcome-method estimator and loss carries a worked example that runs (for `grouprl explain`)."""

import pytest
import torch

from grouprl import Rollouts, compute_advantages
from grouprl.advantages import ESTIMATORS
from grouprl.losses import run_example

NAMES = ["dapo", "ngrpo", "canon", "canon_anneal", "canon_cosine", "canon_cosine_r", "canon_random",
         "copo", "copo_global", "pshw", "bgae", "maxmin"]

EXPECTED = {  # first row of each example, from the specs' tables
    "ngrpo": 0.7303,  # [1,0,0,1] with one virtual r_max
    "dapo": 1.5,  # [1,−1,−1,−1]
    "canon": 0.8667,  # Example 2, α = 1.2, λ = 1
    "copo": 0.9933,  # prompt A of the COPO batch
    "pshw": 2.076,  # [1,−1,−1,−1]
    "bgae": 3.3052,  # n = 10, one exact match
}


@pytest.mark.parametrize("name", NAMES)
def test_example_runs(name):
    info = ESTIMATORS[name]
    assert info.example and info.paper and "arXiv:" in info.paper
    ex = dict(info.example)
    kwargs = ex.pop("kwargs", {})
    n = len(ex["rewards"])
    ex.setdefault("mask", torch.ones(n, 1))
    out = compute_advantages(name, Rollouts(**ex), **kwargs)
    assert out.shape == (n, 1) and torch.isfinite(out).all()
    if name in EXPECTED:
        assert out[0, 0].item() == pytest.approx(EXPECTED[name], abs=1e-4)


@pytest.mark.parametrize("name", ["ngrpo_clip", "dapo_clip", "copo"])
def test_loss_examples_run(name):
    loss, metrics = run_example(name)
    assert torch.isfinite(loss) and "pg_loss" in metrics


def _degenerate_batch():
    # group 0: identical rewards; group 1: one row; group 2: mixed with an all-masked row; group 3: mixed
    rewards = [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    group = [0, 0, 0, 1, 2, 2, 2, 2, 3, 3, 3]
    mask = torch.ones(11, 3, dtype=torch.bool)
    mask[5] = False
    mask[7, 1:] = False
    return Rollouts(
        rewards=rewards, group=group, mask=mask,
        metric=torch.linspace(0.1, 1.1, 11), entropy=torch.rand(11, 3, generator=torch.Generator().manual_seed(0)),
        answer=[1, 1, 1, 2, 3, 4, 3, 3, 5, 6, 5],
        reward_components=torch.tensor(rewards)[:, None].repeat(1, 2),
    )


@pytest.mark.parametrize("name", NAMES)
def test_degenerate_cases_never_nan(name):
    b = _degenerate_batch()
    out = compute_advantages(name, b)
    assert torch.isfinite(out).all()
    assert out[5].abs().sum() == 0 and out[7, 1:].abs().sum() == 0  # masked tokens exactly 0
    if name not in ("copo", "copo_global"):  # COPO's global advantage is cross-prompt by design
        assert out[3].abs().sum() == 0  # group of one: 0 by default
        assert out[:3].abs().sum() == 0  # identical rewards -> 0 (CANON α = 1)
    one = b.select(torch.tensor([4, 5, 6, 7]))  # a one-prompt batch
    assert torch.isfinite(compute_advantages(name, one)).all()
