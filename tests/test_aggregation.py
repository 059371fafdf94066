"""Loss aggregation: the five modes, the grpo-family.md section 5 example, empty batches, and
micro-batch invariance of every loss under every mode (gradients w.r.t. log-probs and w.r.t. the
parameters of a tiny model)."""

import warnings

import pytest
import torch

from grouprl.losses import (
    AGG_MODES,
    LOSSES,
    aggregate,
    clip_cov_select,
    example_inputs,
    kl_cov_select,
    normalizers,
    policy_loss,
)

D = torch.float64


# --- grpo-family.md section 5: two responses, A = +1 (2 tokens) and A = -1 (4 tokens), rho = 1 ---
def _section5():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    adv = torch.tensor([[1.0] * 4, [-1.0] * 4], dtype=D)
    lp = torch.full((2, 4), -0.7, dtype=D, requires_grad=True)
    return lp, lp.detach().clone(), adv, mask


@pytest.mark.parametrize(
    "agg, kw, expected",
    [
        ("seq-mean-token-mean", {}, 0.0),
        ("token-mean", {}, 1 / 3),
        ("seq-mean-token-sum-norm", {"norm_const": 8}, 0.125),
    ],
)
def test_grpo_family_section5_aggregation(agg, kw, expected):
    lp, old, adv, mask = _section5()
    loss, _ = policy_loss("ppo_clip", lp, old, adv, mask, agg=agg, **kw)
    assert loss.item() == pytest.approx(expected, abs=1e-4)
    # the same through aggregate on the per-token loss -A
    assert aggregate(-adv, mask, agg, **kw).item() == pytest.approx(expected, abs=1e-4)


def test_section5_other_modes_by_hand():
    _, _, adv, mask = _section5()
    assert aggregate(-adv, mask, "token-sum").item() == pytest.approx(2.0)  # -2 + 4
    assert aggregate(-adv, mask, "seq-mean-token-sum").item() == pytest.approx(1.0)  # (-2 + 4)/2
    # verl < 0.5 divided by the constant only: num_seqs=1 reproduces it
    assert aggregate(-adv, mask, "seq-mean-token-sum-norm", norm_const=8, num_seqs=1).item() == pytest.approx(0.25)


def test_formulas_with_an_empty_row_and_global_counts():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [9.0, 9.0, 9.0]], dtype=D)
    m = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    assert aggregate(x, m, "token-mean").item() == pytest.approx(10 / 4)
    assert aggregate(x, m, "token-sum").item() == pytest.approx(10.0)
    assert aggregate(x, m, "seq-mean-token-sum").item() == pytest.approx((6 + 4) / 2)
    assert aggregate(x, m, "seq-mean-token-mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate(x, m, "seq-mean-token-sum-norm", norm_const=5).item() == pytest.approx(10 / (2 * 5))
    # global normalisers replace the local counts
    assert aggregate(x, m, "token-mean", num_tokens=20).item() == pytest.approx(0.5)
    assert aggregate(x, m, "seq-mean-token-mean", num_seqs=torch.tensor(6.0)).item() == pytest.approx(1.0)
    # a per-sequence loss (B,) is a mean over the valid rows in every mode
    for agg in AGG_MODES:
        assert aggregate(torch.tensor([1.0, 3.0, 100.0]), m, agg, norm_const=1).item() == pytest.approx(2.0)


def test_normalizers():
    m = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0]], dtype=torch.bool)
    n = normalizers(m)
    assert n["num_tokens"].item() == 3 and n["num_seqs"].item() == 2
    assert set(normalizers(m, "token-mean")) == {"num_tokens", "num_seqs"}
    with pytest.raises(ValueError, match="did you mean 'token-mean'"):
        normalizers(m, "token_mean")
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        aggregate(torch.zeros(3, 3), m, "mean")


def test_sum_norm_default_constant_is_T_with_a_warning():
    _, _, adv, mask = _section5()
    with pytest.warns(UserWarning, match="norm_const"):
        out = aggregate(-adv, mask, "seq-mean-token-sum-norm")
    assert out.item() == pytest.approx(2 / (2 * 4))
    lp, old, adv, mask = _section5()
    with pytest.warns(UserWarning, match="norm_const"):
        loss, _ = policy_loss("ppo_clip", lp, old, adv, mask, agg="seq-mean-token-sum-norm")
    assert loss.item() == pytest.approx(0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        policy_loss("ppo_clip", lp, old, adv, mask, agg="seq-mean-token-sum-norm", norm_const=4)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("agg", AGG_MODES)
def test_all_masked_micro_batch_is_zero_not_nan(name, agg):
    ex = example_inputs(name)
    B, T = ex["mask"].shape
    lp = torch.full((B, T), float("nan"), dtype=D, requires_grad=True)  # padding may hold anything
    old = torch.full((B, T), -float("inf"), dtype=D)
    mask = torch.zeros(B, T, dtype=torch.bool)
    kw = {k: v for k, v in ex["kwargs"].items()}
    for norms in ({}, {"num_tokens": 10, "num_seqs": 3}):
        loss, metrics = policy_loss(
            name, lp, old, ex["advantages"], mask, agg=agg, norm_const=5, ref_logprobs=old, kl_coef=0.1, **norms, **kw
        )
        (g,) = torch.autograd.grad(loss, lp)
        assert loss.item() == 0.0 and torch.equal(g, torch.zeros_like(g))
        assert all(torch.isfinite(v) for v in metrics.values())


# --- micro-batch invariance -------------------------------------------------------------------
B, T, V, H = 7, 5, 6, 4
LENGTHS = [5, 3, 0, 0, 4, 1, 2]  # rows 2 and 3 are empty: the split (2, 4) is an all-masked micro-batch
SPLITS = [
    [(0, 7)],
    [(0, 1), (1, 2), (2, 4), (4, 7)],
    [(0, 3), (3, 7)],
    [(0, 5), (5, 6), (6, 7)],
]
HPARAMS = {
    "ppo_clip": {"eps_low": 0.2, "eps_high": 0.28, "clip_ratio_c": 3.0},
    "gspo": {"eps_low": 0.05, "eps_high": 0.1},
    "cispo": {"eps_low": 0.2, "eps_high": 0.2},
    "sapo": {},
    "gmpo": {"eps_low": 0.2},
    "gpg": {},
    "dro": {"beta": 0.3},
    "clip_cov": {"clip_cov_lb": 0.0, "clip_cov_ub": 5.0},
    "kl_cov": {"ppo_kl_coef": 0.5},
}


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(B, T, H, generator=g, dtype=D)
    tokens = torch.randint(0, V, (B, T), generator=g)
    mask = torch.arange(T)[None, :] < torch.tensor(LENGTHS)[:, None]
    W0 = torch.randn(H, V, generator=g, dtype=D)
    W = (W0 + 0.3 * torch.randn(H, V, generator=g, dtype=D)).requires_grad_(True)
    old = _model(W0, X, tokens)[0].detach()
    ref = _model(W0 + 0.2 * torch.randn(H, V, generator=g, dtype=D), X, tokens)[0].detach()
    adv = torch.randn(B, 1, generator=g, dtype=D).expand(B, T).clone() * mask
    adv[0, 2:] += 0.5  # one row with per-token advantages
    isw = torch.rand(B, T, generator=g, dtype=D) + 0.5
    return X, tokens, mask, W, old, ref, adv, isw


def _model(W, X, tokens):
    logits = X @ W
    logp_all = torch.log_softmax(logits, dim=-1)
    lp = logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return lp, entropy


def _selection(name, lp_full, old, adv, mask):
    if name == "clip_cov":
        return clip_cov_select(lp_full, old, adv, mask, clip_cov_ratio=0.2, clip_cov_lb=0.0, seed=3)
    if name == "kl_cov":
        return kl_cov_select(lp_full, adv, mask, kl_cov_ratio=0.2)
    return None


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("agg", AGG_MODES)
def test_micro_batch_invariance(name, agg):
    assert set(HPARAMS) == set(LOSSES), "add the new loss to HPARAMS"
    X, tokens, mask, W, old, ref, adv, isw = _data()
    norms = {**normalizers(mask, agg), "norm_const": 8}
    lp_model, _ = _model(W, X, tokens)
    sel = _selection(name, lp_model.detach(), old, adv, mask)
    lp_leaf = lp_model.detach().clone().requires_grad_(True)

    def run(lp, ent, rows):
        a, b = rows
        kw = dict(HPARAMS[name])
        if sel is not None:
            kw["selected"] = sel[a:b]
        return policy_loss(
            name, lp, old[a:b], adv[a:b], mask[a:b], agg=agg, **norms,
            ref_logprobs=ref[a:b], kl_coef=0.05, kl_type="k3", entropy=ent, entropy_coef=0.01,
            rollout_is_weights=isw[a:b], **kw,
        )

    reference = None
    for split in SPLITS:
        total_leaf = torch.zeros((), dtype=D)
        total_W = torch.zeros((), dtype=D)
        metric_sums: dict[str, torch.Tensor] = {}
        for a, b in split:
            lp_mb, ent_mb = _model(W, X[a:b], tokens[a:b])
            loss_leaf, _ = run(lp_leaf[a:b], ent_mb.detach(), (a, b))
            loss_W, metrics = run(lp_mb, ent_mb, (a, b))
            total_leaf = total_leaf + loss_leaf
            total_W = total_W + loss_W
            for k, v in metrics.items():
                metric_sums[k] = metric_sums.get(k, 0) + v
        g_leaf = torch.autograd.grad(total_leaf, lp_leaf)[0]
        g_W = torch.autograd.grad(total_W, W)[0]
        assert torch.isfinite(g_leaf).all() and torch.isfinite(g_W).all()
        assert torch.count_nonzero(g_W) > 0
        got = (total_W.detach(), g_leaf, g_W, metric_sums)
        if reference is None:
            reference = got
            continue
        assert torch.allclose(got[0], reference[0], atol=1e-6, rtol=0)
        assert torch.allclose(got[1], reference[1], atol=1e-6, rtol=0)
        assert torch.allclose(got[2], reference[2], atol=1e-6, rtol=0)
        for k, v in reference[3].items():
            assert torch.allclose(got[3][k], v, atol=1e-6, rtol=0), k


def test_local_counts_are_not_invariant():
    """Without global normalisers token-mean depends on the split (verl #5625): the test above can fail."""
    X, tokens, mask, W, old, ref, adv, isw = _data()
    lp = _model(W, X, tokens)[0].detach().requires_grad_(True)
    full = torch.autograd.grad(policy_loss("ppo_clip", lp, old, adv, mask)[0], lp)[0]
    parts = sum(policy_loss("ppo_clip", lp[a:b], old[a:b], adv[a:b], mask[a:b])[0] for a, b in [(0, 1), (1, 7)])
    split = torch.autograd.grad(parts, lp)[0]
    assert not torch.allclose(full, split, atol=1e-6)


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 6), min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 8), max_size=4),
    agg=st.sampled_from(AGG_MODES),
    seed=st.integers(0, 2**16),
)
def test_aggregate_is_additive_over_any_split(lengths, cuts, agg, seed):
    g = torch.Generator().manual_seed(seed)
    Bh, Th = len(lengths), 6
    mask = torch.arange(Th)[None, :] < torch.tensor(lengths)[:, None]
    x = torch.randn(Bh, Th, generator=g, dtype=D, requires_grad=True)
    norms = {**normalizers(mask), "norm_const": 6}
    full = aggregate(x, mask, agg, **norms)
    bounds = sorted({0, Bh, *[c for c in cuts if c <= Bh]})
    parts = sum(aggregate(x[a:b], mask[a:b], agg, **norms) for a, b in zip(bounds, bounds[1:]))
    assert torch.allclose(parts, full, atol=1e-12)
    assert torch.allclose(torch.autograd.grad(parts, x)[0], torch.autograd.grad(full, x)[0], atol=1e-12)


def test_half_precision_is_reduced_in_float32():
    x = torch.full((1, 1000), 1.0, dtype=torch.bfloat16)
    m = torch.ones(1, 1000, dtype=torch.bool)
    assert aggregate(x, m, "token-mean", num_tokens=1000).item() == 1.0
    assert aggregate(x, m, "token-sum").item() == 1000.0  # bf16 would stop counting at 256


def test_norm_const_validation():
    x, m = torch.ones(1, 2), torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="norm_const must be a finite number > 0"):
        aggregate(x, m, "seq-mean-token-sum-norm", norm_const=0)
    with pytest.raises(ValueError, match="norm_const must be a scalar"):
        aggregate(x, m, "seq-mean-token-sum-norm", norm_const=torch.ones(2))
    assert aggregate(x, m, "seq-mean-token-sum-norm", norm_const=torch.tensor(4.0)).item() == 0.5
