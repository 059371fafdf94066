"""The batch (validation, factorisation) and the group kernel."""

import numpy as np
import pytest
import torch

from grouprl import Rollouts, compute_advantages
from grouprl.core import (
    cap_per_group,
    factorize,
    group_stats,
    reverse_discounted_cumsum,
)


def ones(b, t=3):
    return torch.ones(b, t, dtype=torch.bool)


# ---------------------------------------------------------------- factorisation
@pytest.mark.parametrize(
    "labels",
    [
        ["b", "a", "b", "c", "a"],
        np.array(["b", "a", "b", "c", "a"], dtype=object),
        np.array([7, -3, 7, 10**12, -3]),
        torch.tensor([7, -3, 7, 10**12, -3]),
        [("p", 1), ("p", 0), ("p", 1), ("q", 0), ("p", 0)],
    ],
)
def test_factorize_dense_ids_any_label_type(labels):
    ids, n, _ = factorize(labels)
    assert n == 3 and ids.dtype == torch.int64
    assert ids.min() == 0 and ids.max() == 2
    # rows with equal labels share an id, different labels differ
    same = ids[0] == ids[2] and ids[1] == ids[4]
    assert same and len({ids[0].item(), ids[1].item(), ids[3].item()}) == 3


def test_factorize_rejects_float_labels():
    with pytest.raises(ValueError, match="Rollouts.group: dtype torch.float32 is not a valid group label"):
        factorize(torch.tensor([0.5, 1.0]))


def test_string_labels_kept_for_reporting():
    b = Rollouts(rewards=[1, 0, 1], group=["q2", "q1", "q2"], mask=ones(3))
    assert b.num_groups == 2
    assert [b.group_labels[i] for i in b.group.tolist()] == ["q2", "q1", "q2"]
    sub = b.select([1, 2])
    assert [sub.group_labels[i] for i in sub.group.tolist()] == ["q1", "q2"]


# ---------------------------------------------------------------- validation
def test_empty_batch():
    with pytest.raises(ValueError, match="the batch is empty"):
        Rollouts(rewards=[], group=[], mask=torch.ones(0, 2))


def test_nan_reward_names_row():
    with pytest.raises(ValueError, match=r"Rollouts.rewards: row 2 is nan.*Replace failed rewards"):
        Rollouts(rewards=[1.0, 0.0, float("nan")], group=[0, 0, 0], mask=ones(3))


def test_inf_value_names_row():
    values = torch.zeros(3, 3)
    values[1, 2] = float("inf")
    with pytest.raises(ValueError, match=r"Rollouts.values: row 1 is inf"):
        Rollouts(rewards=[1.0, 0.0, 1.0], group=[0, 0, 0], mask=ones(3), values=values)


def test_mask_shape_mismatch():
    with pytest.raises(ValueError, match=r"Rollouts.mask: expected shape \(B, T\) = \(3, T\), got \(2, 3\)"):
        Rollouts(rewards=[1.0, 0.0, 1.0], group=[0, 0, 0], mask=ones(2))


def test_mask_not_binary_names_row():
    m = torch.ones(3, 2)
    m[1, 0] = 0.5
    with pytest.raises(ValueError, match=r"Rollouts.mask: row 1 has values other than 0/1"):
        Rollouts(rewards=[1.0, 0.0, 1.0], group=[0, 0, 0], mask=m)


def test_mask_01_ints_accepted():
    b = Rollouts(rewards=[1.0, 0.0], group=[0, 0], mask=[[1, 0], [1, 1]])
    assert b.mask.dtype == torch.bool and b.lengths.tolist() == [1, 2]


def test_group_length_mismatch():
    with pytest.raises(ValueError, match=r"Rollouts.group: expected shape \(3,\)"):
        Rollouts(rewards=[1.0, 0.0, 1.0], group=[0, 0], mask=ones(3))


def test_rewards_must_be_1d():
    with pytest.raises(ValueError, match=r"Rollouts.rewards: expected shape \(B,\)"):
        Rollouts(rewards=[[1.0], [0.0]], group=[0, 0], mask=ones(2))


def test_token_field_shape():
    with pytest.raises(ValueError, match=r"Rollouts.old_logprobs: expected shape \(B, T\) = \(2, 3\)"):
        Rollouts(rewards=[1.0, 0.0], group=[0, 0], mask=ones(2), old_logprobs=torch.zeros(2, 4))


def test_row_field_shape_and_dtype():
    with pytest.raises(ValueError, match=r"Rollouts.step: expected shape \(2,\)"):
        Rollouts(rewards=[1.0, 0.0], group=[0, 0], mask=ones(2), step=[0, 1, 2])
    with pytest.raises(ValueError, match=r"Rollouts.step: expected integer ids"):
        Rollouts(rewards=[1.0, 0.0], group=[0, 0], mask=ones(2), step=torch.tensor([0.5, 1.0]))
    b = Rollouts(rewards=[1.0, 0.0], group=[0, 0], mask=ones(2), data_group=["math", "code"])
    assert b.data_group.dtype == torch.int64 and b.data_group.tolist() == [0, 1]


def test_ragged_per_token_field_rejected():
    with pytest.raises(ValueError, match="ragged"):
        Rollouts(rewards=[1.0, 0.0], group=[0, 0], mask=ones(2), values=[[0.0, 1.0], [0.0]])


def test_missing_field_names_estimator_and_field():
    b = Rollouts(rewards=[1.0, 0.0], group=[0, 0], mask=ones(2))
    from grouprl.advantages import ESTIMATORS, estimator

    if "_needs_values_probe" not in ESTIMATORS:

        @estimator("_needs_values_probe", needs=("rewards", "values"))
        def _probe(batch):
            return batch.rewards

    with pytest.raises(ValueError, match=r"estimator '_needs_values_probe' needs the batch field\(s\) 'values'"):
        compute_advantages("_needs_values_probe", b)


def test_unknown_estimator_lists_close_matches():
    b = Rollouts(rewards=[1.0, 0.0], group=[0, 0], mask=ones(2))
    with pytest.raises(KeyError, match="did you mean 'grpo'"):
        compute_advantages("grpoo", b)


def test_unknown_hparam_lists_close_matches():
    b = Rollouts(rewards=[1.0, 0.0], group=[0, 0], mask=ones(2))
    with pytest.raises(TypeError, match="unknown hyperparameter 'epsilon': did you mean 'eps'"):
        compute_advantages("grpo", b, epsilon=1e-4)


# ---------------------------------------------------------------- group kernel
def test_group_stats_against_numpy():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 17, (500,), generator=g)
    x = torch.randn(500, generator=g, dtype=torch.float64) * 3 + 1
    st = group_stats(x, ids, 17, ddof=1)
    for k in range(17):
        v = x[ids == k].numpy()
        assert st.count[k] == len(v)
        assert st.mean[k].item() == pytest.approx(v.mean())
        assert st.std[k].item() == pytest.approx(v.std(ddof=1) if len(v) > 1 else 0.0)
        assert st.max[k].item() == v.max() and st.min[k].item() == v.min()
    loo = st.loo_mean(x)
    i = 5
    same = (ids == ids[i]).nonzero().squeeze(1)
    others = [x[j].item() for j in same.tolist() if j != i]
    assert loo[i].item() == pytest.approx(sum(others) / len(others))


@pytest.mark.parametrize("c", [0.1, 0.2, 0.3, 0.7, 1 / 3, 0.35, 123.456])
@pytest.mark.parametrize("n", [5, 7, 8, 16])
def test_constant_group_exact_zero_non_dyadic(c, n):
    b = Rollouts(rewards=torch.full((n,), c, dtype=torch.float32), group=[0] * n, mask=ones(n))
    for name in ("grpo", "dr_grpo"):
        assert torch.count_nonzero(compute_advantages(name, b)) == 0


def test_empty_group_ids_have_zero_stats():
    st = group_stats(torch.tensor([1.0, 2.0]), torch.tensor([0, 2]), 3)
    assert st.count.tolist() == [1, 0, 1]
    assert st.mean[1] == 0 and st.max[1] == 0 and st.var[1] == 0


def test_masked_tokens_exactly_zero_and_float32():
    m = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1]], dtype=torch.bool)
    b = Rollouts(rewards=[1.0, 0.0, 0.5, 2.0], group=[0, 0, 0, 0], mask=m)
    a = compute_advantages("grpo", b)
    assert a.dtype == torch.float32 and a.shape == (4, 3)
    assert torch.all(a[~m] == 0)


def test_composition_weighted_sum_and_transforms():
    from grouprl.advantages import get

    b = Rollouts(rewards=[1.0, 0.0, 0.0, 1.0, 3.0, 1.0], group=[0, 0, 0, 0, 1, 1], mask=ones(6, 2))
    g, d = compute_advantages("grpo", b), compute_advantages("dr_grpo", b)
    mix = compute_advantages("0.7*grpo + 0.3*dr_grpo", b)
    assert torch.allclose(mix, 0.7 * g + 0.3 * d)
    obj = compute_advantages(get("grpo") * 0.7 + 0.3 * get("dr_grpo"), b)
    assert torch.equal(mix, obj)
    clipped = compute_advantages("grpo + dr_grpo | clip(0.5)", b)
    assert clipped.abs().max() <= 0.5 and torch.allclose(clipped, (g + d).clamp(-0.5, 0.5))
    w = compute_advantages("dr_grpo | whiten", b)
    assert abs(w[b.mask].double().mean().item()) < 1e-6
    assert w[b.mask].double().std().item() == pytest.approx(1.0, abs=1e-4)
    # hyperparameters go to the terms that accept them
    assert torch.equal(compute_advantages("grpo + dr_grpo", b, eps=1.0),
                       compute_advantages("grpo", b, eps=1.0) + d)
    with pytest.raises(TypeError, match="unknown hyperparameter 'epz'"):
        compute_advantages("grpo + dr_grpo", b, epz=1.0)


def test_diagnostics_count_singletons_and_dead_groups():
    b = Rollouts(rewards=[1.0, 0.0, 0.7, 0.7, 0.5], group=[0, 0, 1, 1, 2], mask=ones(5))
    _, info = compute_advantages("grpo", b, return_info=True)
    assert info["num_groups"].item() == 3
    assert info["num_singleton_groups"].item() == 1
    assert info["num_constant_groups"].item() == 2


def test_cap_per_group():
    """SPO-tree's edge cap: at most k of the kept rows per group, a different random subset per seed."""
    keep = torch.tensor([1, 1, 1, 0, 1, 0, 1, 1, 1, 1], dtype=torch.bool)
    group = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    seen = torch.zeros(10)
    for s in range(40):
        out = cap_per_group(keep, group, 2, torch.Generator().manual_seed(s))
        assert not bool((out & ~keep).any())
        counts = torch.zeros(3, dtype=torch.int64).index_add_(0, group, out.long())
        assert counts.tolist() == [2, 1, 2]
        seen += out
    assert bool((seen[keep] > 0).all())  # every kept row is chosen sometimes: a random subset
    assert cap_per_group(keep, group, 0).sum() == 0 and torch.equal(cap_per_group(keep, group, 4), keep)
    with pytest.raises(ValueError, match=r"\(N,\)"):
        cap_per_group(keep, group[:3], 2)
    with pytest.raises(ValueError, match="k >= 0"):
        cap_per_group(keep, group, -1)


# ---------------------------------------------------------------- the discounted scan
def _plain_scan(x: torch.Tensor, d) -> torch.Tensor:
    """The reference: the recurrence y_t = x_t + d·y_{t+1}, one time step at a time, in float64."""
    x = x.double()
    d = torch.as_tensor(d, dtype=torch.float64)
    y = torch.zeros_like(x)
    run = torch.zeros(x.shape[:-1], dtype=torch.float64)
    for t in reversed(range(x.shape[-1])):
        run = x[..., t] + d * run
        y[..., t] = run
    return y


@pytest.mark.parametrize("T", [0, 1, 5, 32, 33, 100, 1100])
@pytest.mark.parametrize("d", [0.0, 0.5, 0.9405, 1.0])
def test_discounted_scan_matches_the_plain_recurrence(T, d):
    x = torch.randn(3, T, generator=torch.Generator().manual_seed(T))
    expected = _plain_scan(x, d)
    got = reverse_discounted_cumsum(x, d)
    assert got.shape == x.shape and got.dtype == x.dtype
    scale = max([1.0, *expected.abs().flatten().tolist()])
    assert torch.allclose(got.double(), expected, rtol=0, atol=1e-5 * scale)
    assert torch.allclose(reverse_discounted_cumsum(x, d, sign=-1.0), -got)
    # float64 in: float64 out, to float64 rounding (GiGPO's and MARS's returns, ReMax's return-to-go)
    got64 = reverse_discounted_cumsum(x.double(), d)
    assert got64.dtype == torch.float64
    assert torch.allclose(got64, expected, rtol=0, atol=1e-12 * scale)


def test_discounted_scan_per_row_discount_batch_dims_and_out():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 70, generator=g, dtype=torch.float64)
    d = torch.tensor([0.0, 0.5, 0.95, 1.0], dtype=torch.float64)  # one discount per row (GAE's γλ with a per-row λ)
    got = reverse_discounted_cumsum(x, d)
    for b in range(4):
        assert torch.allclose(got[b], _plain_scan(x[b], float(d[b])), rtol=1e-12, atol=1e-12)
    x3 = torch.randn(2, 3, 40, generator=g, dtype=torch.float64)  # any leading dimensions
    assert torch.allclose(reverse_discounted_cumsum(x3, 0.9), _plain_scan(x3, 0.9), rtol=1e-12, atol=1e-12)
    out = torch.empty(2, 64, dtype=torch.float64)
    x2 = torch.randn(2, 64, generator=g, dtype=torch.float64)
    res = reverse_discounted_cumsum(x2, 0.7, out=out)
    assert torch.allclose(out, _plain_scan(x2, 0.7), rtol=1e-12, atol=1e-12) and res.data_ptr() == out.data_ptr()
    with pytest.raises(ValueError, match="per-row d"):
        reverse_discounted_cumsum(x, d[:2])
