"""SPO (spo.md) and T-PPO's EGAE (tppo-egae.md): the worked examples of §5 and the reductions."""

from __future__ import annotations

import pytest
import torch

from grouprl import Rollouts, compute_advantages
from grouprl.advantages.egae import egae_value_mask, egae_with_returns
from grouprl.advantages.gae import gae_with_returns
from grouprl.advantages.spo import (
    spo_chain_advantages,
    spo_prob_mask,
    spo_segment_ids,
    spo_segment_starts,
    TREE_ADV_METHODS,
    spo_tree_advantages,
)

P = torch.tensor([[0.95, 0.50, 0.99, 0.60, 0.97, 0.30, 0.98, 0.80, 0.99, 0.99]])
M = torch.ones(1, 10, dtype=torch.bool)


# ------------------------------------------------------------------ SPO-chain
def test_cut_points_handcrafted_sequence():
    starts = spo_segment_starts(P, M, interval=2)
    assert starts[0].nonzero().squeeze(1).tolist() == [1, 5]  # cut points c = t − 1 = {0, 4}
    assert spo_segment_starts(P, M, interval=1)[0].nonzero().squeeze(1).tolist() == [1, 3, 5, 7]
    assert spo_segment_starts(P, M, interval=3)[0].nonzero().squeeze(1).tolist() == [1, 7]
    # masked tokens are never candidates; a low first token is a cut at the bare prompt (t = 0)
    p2 = torch.tensor([[0.1, 0.95, 0.2, 0.3, 0.1]])
    m2 = torch.tensor([[1, 1, 1, 0, 1]], dtype=torch.bool)
    assert spo_segment_starts(p2, m2, interval=2)[0].nonzero().squeeze(1).tolist() == [0, 4]
    with pytest.raises(ValueError, match="interval"):
        spo_segment_starts(P, M, interval=0)


def test_chain_worked_example():
    seg = spo_segment_ids(spo_segment_starts(P, M, interval=2), M)
    assert seg[0].tolist() == [0, 1, 1, 1, 1, 2, 2, 2, 2, 2]
    values = torch.tensor([[0.5, 0.25]])  # V(0), V(4)
    adv = spo_chain_advantages(values, seg, torch.tensor([1.0]), M)
    assert torch.allclose(adv, torch.tensor([[0, -0.25, -0.25, -0.25, -0.25, 0.75, 0.75, 0.75, 0.75, 0.75]]))
    b = Rollouts(rewards=[1.0], group=[0], mask=M, token_probs=P,
                 extras={"segment_id": seg, "segment_values": values})
    out = compute_advantages("spo_chain", b, whiten=False)
    assert torch.allclose(out, torch.tensor([[0, -0.25, 0, -0.25, 0, 0.75, 0, 0.75, 0, 0]]), atol=1e-6)
    assert spo_prob_mask(P, M)[0].tolist() == [False, True, False, True, False, True, False, True, False, False]


def test_chain_whitening_over_masked_tokens():
    seg = spo_segment_ids(spo_segment_starts(P, M, interval=2), M)
    b = Rollouts(rewards=[1.0], group=[0], mask=M, token_probs=P,
                 extras={"segment_id": seg, "segment_values": torch.tensor([[0.5, 0.25]])})
    out = compute_advantages("spo_chain", b)
    raw = torch.tensor([-0.25, -0.25, 0.75, 0.75])  # the 4 probability-masked tokens
    expect = (raw - raw.mean()) / torch.sqrt(raw.var() + 1e-8)
    assert torch.allclose(out[0, [1, 3, 5, 7]], expect, atol=1e-5)
    assert out[0, [0, 2, 4, 6, 8, 9]].abs().sum() == 0
    # an empty probability mask falls back to the response mask (all tokens confident)
    b2 = b.replace(token_probs=torch.full((1, 10), 0.95))
    assert compute_advantages("spo_chain", b2).abs().sum() == 0


def test_chain_one_segment_equals_outcome_estimator():
    g = torch.Generator().manual_seed(3)
    B, T = 12, 6
    r = (torch.rand(B, generator=g) > 0.5).float()
    group = torch.arange(B) // 4
    mean = torch.zeros(3).index_add_(0, group, r) / 4
    probs = torch.rand(B, T, generator=g) * 0.5  # every token a decision token
    mask = torch.ones(B, T, dtype=torch.bool)
    seg = torch.ones(B, T, dtype=torch.int64)  # one segment starting at token 0 (cut = bare prompt)
    b = Rollouts(rewards=r, group=group, mask=mask, token_probs=probs,
                 extras={"segment_id": seg, "segment_values": mean[group].unsqueeze(1)})
    a = compute_advantages("spo_chain", b, whiten=False)
    assert torch.allclose(a, compute_advantages("dr_grpo", b), atol=1e-6)


def test_chain_layout_errors():
    seg = torch.tensor([[0, 1, 2, 3]])
    with pytest.raises(ValueError, match="row 0"):
        spo_chain_advantages(torch.zeros(1, 2), seg, torch.ones(1), torch.ones(1, 4, dtype=torch.bool))
    b = Rollouts(rewards=[1.0], group=[0], mask=torch.ones(1, 4), token_probs=torch.zeros(1, 4))
    with pytest.raises(ValueError, match="segment_values"):
        compute_advantages("spo_chain", b)


# ------------------------------------------------------------------ SPO-tree
# root(0) -> c1(1), c2(2); c1 -> leaves 3, 4 with rewards 1, 0; c2 -> leaves 5, 6 with rewards 0, 0
PARENT = torch.tensor([-1, 0, 0, 1, 1, 2, 2])
REWARD = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])


def test_tree_rloo_worked_example():
    v, a, keep = spo_tree_advantages(PARENT, REWARD, adv_method="rloo")
    assert torch.allclose(v[:3], torch.tensor([0.25, 0.5, 0.0], dtype=torch.float64))
    assert torch.allclose(a, torch.tensor([0, 0.25, -0.25, 0.5, -0.5, 0, 0], dtype=torch.float64))
    assert keep.tolist() == [False, True, True, True, True, False, False]


def test_tree_grpo_worked_example():
    v, a, keep = spo_tree_advantages(PARENT, REWARD, adv_method="grpo")
    assert torch.allclose(a, torch.tensor([0, 1.0, -1.0, 1.0, -1.0, 0, 0], dtype=torch.float64), atol=1e-6)
    assert keep.tolist() == [False, True, True, True, True, False, False]


def test_tree_unequal_subtrees_and_errors():
    # c1 is an early-stopping leaf (reward 1); c2 has leaves 0, 0, 1: V(root) = (1 + 1/3)/2, not 2/4
    v, a, _ = spo_tree_advantages(torch.tensor([-1, 0, 0, 2, 2, 2]), torch.tensor([0, 1, 0, 0, 0, 1.0]))
    assert v[0].item() == pytest.approx((1 + 1 / 3) / 2)
    with pytest.raises(ValueError, match="cycle"):
        spo_tree_advantages(torch.tensor([1, 0]), torch.zeros(2))
    with pytest.raises(ValueError, match="adv_method"):
        spo_tree_advantages(PARENT, REWARD, adv_method="mean")


EQUAL = [0.1, 0.7, 1 / 3]


def _float_mean_drifts(v: float, n: int) -> bool:
    return sum([v] * n) / n != v


def test_equal_children_float_mean_drifts():
    # why max == min and not the mean: the float mean of equal children can differ from them
    assert _float_mean_drifts(0.1, 3) and _float_mean_drifts(0.7, 3) and _float_mean_drifts(0.1, 6)


@pytest.mark.parametrize("adv_method", sorted(TREE_ADV_METHODS))
@pytest.mark.parametrize("v", EQUAL)
@pytest.mark.parametrize("n", [2, 3, 6])
def test_tree_equal_children_depth1_all_dropped(adv_method, v, n):
    # one root with n leaves of reward v (spo.md §4: every child edge of such a node is dropped)
    parent = torch.tensor([-1] + [0] * n)
    vals, a, keep = spo_tree_advantages(parent, torch.tensor([0.0] + [v] * n, dtype=torch.float64), adv_method=adv_method)
    assert vals[0].item() == v  # exactly the children's value, not their float mean
    assert a.tolist() == [0.0] * (n + 1)
    assert keep.tolist() == [False] * (n + 1)


@pytest.mark.parametrize("adv_method", sorted(TREE_ADV_METHODS))
@pytest.mark.parametrize("v", EQUAL)
def test_tree_equal_children_depth2_and_3(adv_method, v):
    # depth 2: root(0) -> c1(1), c2(2); c1 -> leaves 3, 4, 5 all v; c2 -> leaves 6, 7 with rewards 0, 1
    parent = torch.tensor([-1, 0, 0, 1, 1, 1, 2, 2])
    r = torch.tensor([0, 0, 0, v, v, v, 0, 1], dtype=torch.float64)
    vals, a, keep = spo_tree_advantages(parent, r, adv_method=adv_method)
    assert vals[1].item() == v and vals[2].item() == 0.5 and vals[0].item() == (v + 0.5) / 2
    assert a[3:6].tolist() == [0.0] * 3 and keep.tolist() == [False, True, True, False, False, False, True, True]
    div = 1.0 if adv_method == "rloo" else abs(v - 0.5) / 2 + 1e-8  # population std of {v, 0.5}
    assert a[1].item() == pytest.approx((v - (v + 0.5) / 2) / div, rel=1e-12)
    assert a[6].item() == pytest.approx(-0.5 / (1.0 if adv_method == "rloo" else 0.5 + 1e-8), rel=1e-12)
    # depth 3: root(0) -> a(1), b(2: a leaf of reward v); a -> a1(3), a2(4); a1 -> 5, 6, 7; a2 -> 8, 9, 10, all v:
    # every inner node has equal children (a1, a2 = v exactly; then a = v, b = v), so no edge is kept
    parent = torch.tensor([-1, 0, 0, 1, 1, 3, 3, 3, 4, 4, 4])
    r = torch.tensor([0, 0, v, 0, 0] + [v] * 6, dtype=torch.float64)
    vals, a, keep = spo_tree_advantages(parent, r, adv_method=adv_method)
    assert vals.tolist() == [v] * 11
    assert a.tolist() == [0.0] * 11 and not bool(keep.any())


# ------------------------------------------------------------------ EGAE
V = torch.tensor([[0.2, 0.3, 0.5, 0.4]])


def egae_batch(truncated: bool, values=V, reward=0.0, mask=None):
    mask = torch.ones_like(values, dtype=torch.bool) if mask is None else mask
    return Rollouts(rewards=[reward] * values.shape[0], group=list(range(values.shape[0])), mask=mask,
                    values=values, truncated=[truncated] * values.shape[0])


def test_egae_worked_example_truncated():
    a = compute_advantages("egae", egae_batch(True, reward=1.0), gamma=1.0, lam=0.95)  # reward unused
    assert torch.allclose(a, torch.tensor([[0.1998, 0.105, -0.1, 0.0]]), atol=1e-4)


def test_egae_worked_example_finished():
    a = compute_advantages("egae", egae_batch(False, reward=1.0), gamma=1.0, lam=0.95)
    assert torch.allclose(a, torch.tensor([[0.7142, 0.6465, 0.47, 0.6]]), atol=1e-4)


def test_egae_equals_gae_on_complete_responses():
    g = torch.Generator().manual_seed(4)
    B, T = 9, 7
    values = torch.rand(B, T, generator=g)
    mask = torch.arange(T)[None, :] < torch.randint(1, T + 1, (B,), generator=g)[:, None]
    b = Rollouts(rewards=torch.rand(B, generator=g), group=torch.arange(B), mask=mask, values=values,
                 truncated=torch.zeros(B, dtype=torch.bool))
    for kw in ({"gamma": 1.0, "lam": 0.95, "whiten": False}, {"gamma": 0.9, "lam": 0.8, "whiten": True}):
        a1, r1 = egae_with_returns(b, **kw)
        a2, r2 = gae_with_returns(b, **kw)
        assert torch.allclose(a1, a2, atol=1e-6) and torch.allclose(r1, r2, atol=1e-6)


def test_egae_bootstrap_with_discount_and_value_mask():
    # γ < 1: δ_{l−1} = γ V_{l−1} − V_{l−1}
    b = egae_batch(True)
    a = compute_advantages("egae", b, gamma=0.5, lam=1.0)
    v = V[0]
    d = torch.tensor([0.5 * v[1] - v[0], 0.5 * v[2] - v[1], 0.5 * v[3] - v[2], 0.5 * v[3] - v[3]])
    expect = torch.stack([sum(0.5**k * d[t + k] for k in range(4 - t)) for t in range(4)])
    assert torch.allclose(a[0], expect, atol=1e-6)
    vm = egae_value_mask(torch.ones(2, 3, dtype=torch.bool), torch.tensor([True, False]))
    assert vm.tolist() == [[False] * 3, [True] * 3]
    with pytest.raises(ValueError, match="truncated"):
        compute_advantages("egae", Rollouts(rewards=[1.0], group=[0], mask=torch.ones(1, 4), values=V))


def test_value_targets_monte_carlo_and_finished_only():
    """The critic's targets with λ = 1 are Monte-Carlo returns R_t = Â_t + V_t: the outcome reward on
    every token of a finished row; T-PPO's filter drops the truncated row, whose EGAE target is the
    bootstrap V(s_{l−1}) = 0.4 on every token."""
    from grouprl.advantages.value_targets import value_targets

    values = torch.cat([V, V])
    b = Rollouts(rewards=[1.0, 0.0], group=[0, 1], mask=torch.ones(2, 4, dtype=torch.bool), values=values,
                 truncated=[False, True])
    ret, vmask = value_targets(b, gamma=1.0, lam=1.0)
    assert torch.allclose(ret, torch.tensor([[1.0] * 4, [0.0] * 4]), atol=1e-6) and bool(vmask.all())
    ret, vmask = value_targets(b, gamma=1.0, lam=1.0, finished_only=True)
    assert torch.allclose(ret, torch.tensor([[1.0] * 4, [0.4] * 4]), atol=1e-6)
    assert vmask.tolist() == [[True] * 4, [False] * 4]
    # GAE's own returns (λ < 1) are what the trainer regressed on before this function existed
    assert torch.equal(value_targets(b, gamma=0.9, lam=0.8)[0], gae_with_returns(b, gamma=0.9, lam=0.8, whiten=False)[1])
    with pytest.raises(ValueError, match="values="):
        value_targets(Rollouts(rewards=[1.0], group=[0], mask=torch.ones(1, 4)))
    with pytest.raises(ValueError, match="truncated="):
        value_targets(Rollouts(rewards=[1.0], group=[0], mask=torch.ones(1, 4), values=V), finished_only=True)


# ------------------------------------------------------------------ length-adaptive λ (T-PPO §2.2, VAPO)
def test_length_adaptive_lam_values():
    from grouprl.advantages.egae import length_adaptive_lam

    # λ = 1 − 1/(α L): α = 0.05 and L = 40 -> 0.5; L = 200 -> 0.9; L = 20 -> 0; L < 20 -> below 0, clamped to 0
    lam = length_adaptive_lam(torch.tensor([40, 200, 20, 3, 0]), 0.05)
    assert lam.tolist() == pytest.approx([0.5, 0.9, 0.0, 0.0, 0.0], abs=1e-15)
    assert length_adaptive_lam(torch.tensor([4]), 5.0).item() == 1 - 1 / 20
    with pytest.raises(ValueError, match="lam_alpha=0.0"):
        length_adaptive_lam(torch.tensor([4]), 0.0)


def test_egae_length_adaptive_worked_example_and_per_row():
    # the spec's truncated example (L = 4) with α = 5: λ = 1 − 1/(5·4) = 0.95, the example's λ
    a = compute_advantages("egae", egae_batch(True), gamma=1.0, lam_alpha=5.0)
    assert torch.allclose(a, torch.tensor([[0.1998, 0.105, -0.1, 0.0]]), atol=1e-4)
    # rows of different lengths get their own λ: each row equals a one-row EGAE with λ = 1 − 1/(α L)
    g = torch.Generator().manual_seed(2)
    B, T = 6, 70  # longer than one 32-token chunk of the scan
    values = torch.rand(B, T, generator=g)
    lengths = torch.tensor([70, 45, 33, 21, 5, 64])
    mask = torch.arange(T)[None, :] < lengths[:, None]
    trunc = torch.tensor([True, False, True, False, True, False])
    b = Rollouts(rewards=torch.rand(B, generator=g), group=torch.arange(B), mask=mask, values=values, truncated=trunc)
    alpha = 0.05
    a = compute_advantages("egae", b, lam_alpha=alpha)
    for i in range(B):
        L = int(lengths[i])
        lam = max(0.0, 1 - 1 / (alpha * L))
        # independent: δ_t = r_t + V_{t+1} − V_t, V after the last token = V_{L−1} if truncated else 0, r at EOS
        v = values[i, :L].double().tolist()
        nxt = v[1:] + [v[-1] if trunc[i] else 0.0]
        r = [0.0] * L
        if not trunc[i]:
            r[-1] = float(b.rewards[i])
        delta = [r[t] + nxt[t] - v[t] for t in range(L)]
        expect = [sum(lam**k * delta[t + k] for k in range(L - t)) for t in range(L)]
        assert a[i, :L].tolist() == pytest.approx(expect, abs=2e-5), i
        assert bool((a[i, L:] == 0).all())
