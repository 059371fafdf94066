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
