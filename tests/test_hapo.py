"""HAPO (hapo.md): the worked examples of §5, the code/paper sign flag, and the reductions to
GRPO / PPO-clip / a plain softmax with the entropy modulation switched off."""

from __future__ import annotations

import math

import pytest
import torch

from grouprl import Rollouts, compute_advantages
from grouprl.core.entropy import EntropyStats, normalized_entropy
from grouprl.losses import policy_loss, run_example, token_losses
from grouprl.losses.hapo import hapo_clip_ranges, hapo_redistribute
from grouprl.rollout.hapo_temperature import AdaptiveTemperature, logits_entropy

H = torch.tensor([0.05, 0.2, 0.4, 1.0, 2.5])
SIGNED = torch.tensor([-1.0, -0.537, -0.306, 0.0, 1.0])
CODE = torch.tensor([1.0, 0.537, 0.306, 0.0, 1.0])


def tlga(rewards, lengths, **kw):
    T = max(lengths)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    b = Rollouts(rewards=rewards, group=[0] * len(rewards), mask=mask)
    return compute_advantages("hapo_tlga", b, **kw)[:, 0]


# ------------------------------------------------------------------ TLGA
def test_tlga_worked_example():
    a = tlga([1.0, 0, 0, 1], [100, 300, 200, 200])
    assert torch.allclose(a, torch.tensor([1.2910, -0.7746, -0.7746, 1.2910]), atol=1e-4)


def test_tlga_equal_lengths_is_population_std():
    assert torch.allclose(tlga([1.0, 0, 0, 1], [7, 7, 7, 7]), torch.tensor([1.0, -1, -1, 1]), atol=1e-5)


def test_tlga_fallback_to_grpo():
    a = tlga([1.0, 0, 0, 0], [10, 1000, 1000, 1000])
    assert torch.allclose(a, torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=1e-5)
    # without the std the reference code checks the same threshold and falls back to r − mean
    a = tlga([10.0, 0, 0, 0], [1, 1000, 1000, 1000], norm_by_std=False)
    assert torch.allclose(a, torch.tensor([7.5, -2.5, -2.5, -2.5]), atol=1e-5)
    off = tlga([1.0, 0, 0, 0], [10, 1000, 1000, 1000], fallback=None)
    assert off[0].item() == pytest.approx(17.3, abs=0.05)


def test_tlga_identity_equal_lengths_random():
    g = torch.Generator().manual_seed(0)
    B, L = 24, 5
    r = torch.rand(B, generator=g)
    group = torch.arange(B) // 4
    b = Rollouts(rewards=r, group=group, mask=torch.ones(B, L, dtype=torch.bool))
    a = compute_advantages("hapo_tlga", b, fallback=None)
    ref = compute_advantages("grpo", b, ddof=0)
    assert torch.allclose(a, ref, atol=1e-5)


def test_tlga_edge_cases():
    # group of one -> 0; constant group -> 0; all-masked row excluded from the statistics
    mask = torch.tensor([[1, 1], [1, 1], [1, 1], [1, 0], [0, 0], [1, 1]], dtype=torch.bool)
    b = Rollouts(rewards=[1.0, 0.3, 0.3, 1.0, 5.0, 0.0], group=[0, 1, 1, 2, 2, 2], mask=mask)
    a = compute_advantages("hapo_tlga", b)
    assert a[0].abs().sum() == 0 and a[1:3].abs().sum() == 0
    # group 2 without the masked row: r = [1, 0] with L = [1, 2] -> μ = 1/3
    mu = 1 / 3
    sd = math.sqrt((1 * (1 - mu) ** 2 + 2 * mu**2) / 3)
    assert a[3, 0].item() == pytest.approx((1 - mu) / (sd + 1e-6), abs=1e-4)
    assert a[4].abs().sum() == 0
    assert tlga([1.0, 0, 0, 1], [100, 300, 200, 200], norm_by_std=False)[0].item() == pytest.approx(0.625)


# ------------------------------------------------------------------ entropy normalisation
def test_entropy_normalisation_worked_example():
    st = EntropyStats.fit(H, pivot=0.8)
    assert st.q == pytest.approx(0.0, abs=1e-9) and st.s == pytest.approx(1.6275, abs=1e-4)
    assert torch.allclose(normalized_entropy(H), SIGNED, atol=1e-3)
    assert torch.allclose(normalized_entropy(H, code_compat=True), CODE, atol=1e-3)


def test_entropy_stats_state_roundtrip_and_mask():
    st = EntropyStats.fit(torch.tensor([[0.05, 0.2, 0.4], [1.0, 2.5, 99.0]]),
                          torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool))
    other = EntropyStats()
    other.load_state_dict(st.state_dict())
    assert torch.allclose(other.normalize(H), SIGNED, atol=1e-3)  # 99.0 was masked out
    with pytest.raises(ValueError, match="missing"):
        other.load_state_dict({"q": 0.0})


# ------------------------------------------------------------------ clip ranges and redistribution
def test_clip_ranges_worked_example():
    el, eh = hapo_clip_ranges(normalized_entropy(H), 0.2, 0.2, 1.0)
    assert torch.allclose(el, torch.tensor([0.4, 0.307, 0.261, 0.2, 0.2]), atol=1e-3)
    assert torch.allclose(eh, torch.full((5,), 0.2).index_put((torch.tensor([4]),), torch.tensor(0.4)), atol=1e-3)
    el, eh = hapo_clip_ranges(normalized_entropy(H, code_compat=True), 0.2, 0.2, 1.0)
    assert torch.allclose(el, torch.full((5,), 0.2), atol=1e-6)
    assert torch.allclose(eh, torch.tensor([0.4, 0.307, 0.261, 0.2, 0.4]), atol=1e-3)


def test_redistribution_worked_example():
    h = normalized_entropy(H)
    el, eh = hapo_clip_ranges(h, 0.2, 0.2, 1.0)
    rho = torch.tensor([1.0, 1.2, 1.0, 1.0, 1.3])
    a = hapo_redistribute(torch.ones(5), rho, h, el, eh, 1.0)
    assert torch.allclose(a, torch.tensor([0.0, 1.0, 0.694, 1.0, 2.0]), atol=1e-3)


def test_hapo_loss_worked_example_through_registry():
    loss, m = run_example("hapo")  # A' = [0, 1, .694, 1, 2], ρ = [1, 1.2, 1, 1, 1.3]
    # token-mean of −min(ρA', clip(ρ)A'): ρ = 1.2 < 1 + 0.2 unclipped; ρ = 1.3 < 1.4 unclipped
    expect = -(0 + 1.2 * 1 + 0.6940 + 1 + 1.3 * 2) / 5
    assert loss.item() == pytest.approx(expect, abs=1e-3)
    assert m["hapo_redistributed"].item() == pytest.approx(3 / 5)


def test_hapo_code_compat_flag_changes_the_loss():
    ex_lp = torch.tensor([[0.0, math.log(0.75), 0.0, 0.0, 0.0]])
    kw = dict(token_entropy=H[None], agg="token-mean")
    a = policy_loss("hapo", ex_lp, torch.zeros(1, 5), -torch.ones(1, 5), torch.ones(1, 5, dtype=torch.bool), **kw)[0]
    b = policy_loss("hapo", ex_lp, torch.zeros(1, 5), -torch.ones(1, 5), torch.ones(1, 5, dtype=torch.bool),
                    code_compat=True, **kw)[0]
    assert a.item() != pytest.approx(b.item())


def test_hapo_loss_identity_without_modulation():
    g = torch.Generator().manual_seed(1)
    B, T = 6, 9
    lp = (torch.randn(B, T, generator=g) * 0.3 - 1).requires_grad_(True)
    old = lp.detach() + torch.randn(B, T, generator=g) * 0.3
    adv = torch.randn(B, T, generator=g)
    mask = torch.rand(B, T, generator=g) > 0.2
    ent = torch.rand(B, T, generator=g) * 3
    l1, _ = policy_loss("hapo", lp, old, adv, mask, token_entropy=ent, adv_beta=0.0, clip_alpha=0.0)
    l2, _ = policy_loss("ppo_clip", lp, old, adv, mask, eps_low=0.2, eps_high=0.2, clip_ratio_c=10.0)
    g1 = torch.autograd.grad(l1, lp)[0]
    g2 = torch.autograd.grad(l2, lp)[0]
    assert torch.allclose(l1, l2, atol=1e-6) and torch.allclose(g1, g2, atol=1e-6)
    l3, _ = policy_loss("hapo", lp, old, adv, mask, token_entropy=ent)
    assert not torch.allclose(l1, l3)


def test_hapo_loss_needs_entropy_and_ignores_padding():
    mask = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    with pytest.raises(ValueError, match="token_entropy"):
        token_losses("hapo", torch.zeros(1, 3), torch.zeros(1, 3), torch.ones(1, 3), mask)
    ent = torch.tensor([[0.5, 1.0, float("nan")]])
    loss, _ = policy_loss("hapo", torch.zeros(1, 3), torch.zeros(1, 3), torch.ones(1, 3), mask, token_entropy=ent)
    assert torch.isfinite(loss)


# ------------------------------------------------------------------ adaptive temperature
def _logits_with_entropy(targets):
    """One row of logits per target entropy (a 2-way split found by bisection, padded with -inf)."""
    rows = []
    for h in targets:
        lo, hi = 0.0, 0.5
        for _ in range(60):
            p = (lo + hi) / 2
            e = -(p * math.log(p) + (1 - p) * math.log(1 - p)) if 0 < p < 1 else 0.0
            lo, hi = (p, hi) if e < h else (lo, p)
        rows.append(None if h > math.log(2) else p)
    V = 16
    out = torch.full((len(targets), V), float("-inf"))
    for i, (h, p) in enumerate(zip(targets, rows)):
        if p is None:  # h > log 2: uniform over k tokens, then a bisection on a tilt
            k = V
            lo, hi = 0.0, 20.0
            for _ in range(60):
                t = (lo + hi) / 2
                x = -t * torch.arange(k, dtype=torch.float64)
                e = float(-(x.softmax(0) * x.log_softmax(0)).sum())
                lo, hi = (t, hi) if e > h else (lo, t)
            out[i] = (-(lo + hi) / 2 * torch.arange(k)).float()
        else:
            out[i, 0], out[i, 1] = math.log(1 - p), math.log(p)
    return out


def test_adaptive_temperature_worked_example_both_signs():
    logits = _logits_with_entropy(H.tolist())
    assert torch.allclose(logits_entropy(logits), H, atol=1e-4)
    proc = AdaptiveTemperature(tau=0.05)
    assert torch.allclose(proc.temperatures(logits), torch.ones(5))  # first step: fixed T₀
    proc.update(H)
    assert torch.allclose(proc.temperatures(logits), torch.tensor([0.95, 0.973, 0.985, 1.0, 1.05]), atol=1e-3)
    code = AdaptiveTemperature(tau=0.05, code_compat=True)
    code.load_state_dict(proc.state_dict())
    assert torch.allclose(code.temperatures(logits), torch.tensor([1.05, 1.027, 1.015, 1.0, 1.05]), atol=1e-3)


def test_adaptive_temperature_is_a_logits_processor():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(7, 11, generator=g) * 3
    proc = AdaptiveTemperature(tau=0.3)
    proc.update(torch.rand(50, generator=g) * 2)
    out = proc(logits)
    p = out.softmax(-1)
    assert out.shape == logits.shape and torch.allclose(p.sum(-1), torch.ones(7)) and bool((p >= 0).all())
    # the argmax (order of tokens) is preserved: a per-row positive temperature
    assert torch.equal(out.argsort(-1), logits.argsort(-1))
    # rows independent: changing row 3 leaves the others as they were
    other = logits.clone()
    other[3] = torch.randn(11, generator=g)
    out2 = proc(other)
    keep = torch.arange(7) != 3
    assert torch.equal(out2[keep], out[keep])
    # row-by-row equals batched
    assert torch.allclose(torch.cat([proc(logits[i : i + 1]) for i in range(7)]), out)
    # modulation off: the plain T₀ softmax
    plain = AdaptiveTemperature(tau=0.0, base=0.7)
    plain.load_state_dict(proc.state_dict())
    assert torch.allclose(plain(logits), logits / 0.7)
    with pytest.raises(ValueError, match="tau"):
        AdaptiveTemperature(tau=1.5)
