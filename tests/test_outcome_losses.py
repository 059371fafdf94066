"""Method-specific loss parts: NGRPO's asymmetric clip, COPO's blended surrogate, Confucius3 TER."""

import math

import pytest
import torch

from grouprl import Rollouts
from grouprl.advantages.copo import copo_terms
from grouprl.losses import LOSSES, normalizers, policy_loss, run_example, token_losses
from grouprl.losses.ter import TargetedEntropyRegularizer, ter_loss


# ------------------------------------------------------------------------------------ NGRPO
def test_ngrpo_clip_example_and_equivalence():
    loss, _ = token_losses("ngrpo_clip", **{k: v for k, v in _ex("ngrpo_clip").items()})
    # A=+1: ρ 1.3 -> capped 1.24, ρ 0.8 -> 0.8; A=−1: ρ 1.3 -> 1.3 (min picks the worse), ρ 0.8 -> 0.84
    assert torch.allclose(loss, torch.tensor([[-1.24, -0.8], [1.3, 0.84]], dtype=loss.dtype), atol=1e-6)
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(6, 5, generator=g, dtype=torch.float64) * 0.3
    old = torch.zeros(6, 5, dtype=torch.float64)
    adv = torch.randn(6, 5, generator=g, dtype=torch.float64)
    mask = torch.rand(6, 5, generator=g) > 0.2
    a, _ = policy_loss("ngrpo_clip", lp, old, adv, mask)
    b, _ = policy_loss("ppo_clip", lp, old, adv, mask, eps_low=0.16, eps_high=0.24)
    assert torch.equal(a, b)
    c, _ = policy_loss("ppo_clip", lp, old, adv, mask, eps_low=0.16, eps_high=0.24, clip_ratio_c=3.0)
    assert LOSSES["ngrpo_clip"].defaults["clip_ratio_c"] is None  # no dual clip
    assert torch.isfinite(c)


def _ex(name):
    from grouprl.losses import example_inputs

    ex = example_inputs(name)
    kw = ex.pop("kwargs")
    return {**ex, **kw}


# ------------------------------------------------------------------------------------ COPO
def test_copo_example_equals_effective_advantage():
    loss, metrics = run_example("copo")
    # ρ = 1: token loss −A_eff; prompt A: −0.9933, prompt C (correct row): −0.8003
    assert loss.item() == pytest.approx(-(0.9933 + 0.8003) / 2, abs=1e-4)
    per_tok, _ = token_losses("copo", **_ex("copo"))
    assert torch.allclose(per_tok[:, 0], torch.tensor([-0.9933, -0.8003], dtype=per_tok.dtype), atol=1e-4)


def test_copo_loss_on_spec_batch_and_limits():
    R = [1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 1]
    b = Rollouts(rewards=R, group=[0] * 4 + [1] * 4 + [2] * 4, mask=torch.ones(12, 3),
                 answer=[5, 5, 5, 5, 3, 4, 4, 7, 2, 3, 9, 2])
    t = copo_terms(b, mode="soft-with-zero")
    lp = torch.zeros(12, 3, dtype=torch.float64, requires_grad=True)
    old = torch.zeros(12, 3, dtype=torch.float64)
    tok, _ = token_losses("copo", lp, old, t.local, b.mask, global_advantages=t.global_, blend_weight=t.weight)
    assert torch.allclose(tok[:, 0], -t.effective, atol=1e-6)
    # w = 1 everywhere -> the local PPO-clip loss with dual clip 3; w = 0 -> the global one
    g = torch.Generator().manual_seed(1)
    lp2 = (torch.randn(12, 3, generator=g, dtype=torch.float64) * 0.5).requires_grad_(True)
    one, _ = policy_loss("copo", lp2, old, t.local, b.mask, global_advantages=t.global_, blend_weight=torch.ones(12))
    ref, _ = policy_loss("ppo_clip", lp2, old, t.local, b.mask, eps_low=0.2, eps_high=0.2, clip_ratio_c=3.0)
    assert torch.allclose(one, ref)
    zero, _ = policy_loss("copo", lp2, old, t.local, b.mask, global_advantages=t.global_, blend_weight=torch.zeros(12))
    refg, _ = policy_loss("ppo_clip", lp2, old, t.global_, b.mask, eps_low=0.2, eps_high=0.2, clip_ratio_c=3.0)
    assert torch.allclose(zero, refg)
    zero.backward()
    assert torch.isfinite(lp2.grad).all()


def test_copo_loss_bad_inputs():
    lp = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="blend_weight row 1"):
        policy_loss("copo", lp, lp, torch.ones(2), torch.ones(2, 2, dtype=torch.bool),
                    global_advantages=torch.zeros(2), blend_weight=torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="global_advantages is not finite at row 0"):
        policy_loss("copo", lp, lp, torch.ones(2), torch.ones(2, 2, dtype=torch.bool),
                    global_advantages=torch.tensor([math.nan, 0.0]), blend_weight=torch.ones(2))
    with pytest.raises(ValueError, match="shape"):
        policy_loss("copo", lp, lp, torch.ones(2), torch.ones(2, 2, dtype=torch.bool),
                    global_advantages=torch.zeros(3), blend_weight=torch.ones(2))


# ------------------------------------------------------------------------------------ TER
@pytest.mark.parametrize("H,term,sign", [(0.80, 0.00025, 1.0), (0.30, 0.00025, -1.0), (0.55, 0.0, 0.0)])
def test_ter_table(H, term, sign):
    ent = torch.full((2, 3), H, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(2, 3, dtype=torch.bool)
    t, met = ter_loss(ent, mask)
    assert t.item() == pytest.approx(term, abs=1e-9)
    assert met["entropy"].item() == pytest.approx(H)
    t.backward()
    # d term / d H = 0.001·sign(H − 0.55); with token-mean each of the 6 tokens gets 1/6 of it
    assert torch.allclose(ent.grad, torch.full((2, 3), 0.001 * sign / 6, dtype=torch.float64))


def test_ter_no_valid_tokens_is_skipped():
    t, _ = ter_loss(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool))
    assert t.item() == 0.0  # not 0.00055
    r = TargetedEntropyRegularizer()
    assert r.update(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool)) == 0.0


def test_ter_microbatch_gradient_matches_full_batch():
    g = torch.Generator().manual_seed(0)
    ent = (torch.rand(8, 6, generator=g, dtype=torch.float64) * 1.5).requires_grad_(True)
    mask = torch.rand(8, 6, generator=g) > 0.3
    full, _ = ter_loss(ent, mask)
    full.backward()
    g_full = ent.grad.clone()
    ent.grad = None
    r = TargetedEntropyRegularizer()
    norms = normalizers(mask)
    r.update(ent, mask, **norms)
    total = sum(r.loss(ent[i : i + 2], mask[i : i + 2], **norms) for i in range(0, 8, 2))
    total.backward()
    assert torch.allclose(ent.grad, g_full)
    # through policy_loss's entropy term: loss − entropy_coef·agg(H) adds the same gradient
    ent.grad = None
    lp = torch.zeros(8, 6, dtype=torch.float64)
    for i in range(0, 8, 2):
        loss, _ = policy_loss("ppo_clip", lp[i : i + 2], lp[i : i + 2], torch.zeros(2, 6), mask[i : i + 2],
                              entropy=ent[i : i + 2], entropy_coef=r.entropy_coef, **norms)
        loss.backward()
    assert torch.allclose(ent.grad, g_full)


def test_ter_state_round_trip_continues_identically():
    g = torch.Generator().manual_seed(2)
    batches = [(torch.rand(4, 5, generator=g, dtype=torch.float64) * (0.4 + 0.3 * k), torch.rand(4, 5, generator=g) > 0.2) for k in range(4)]
    a = TargetedEntropyRegularizer(target=0.55, coef=0.001)
    for ent, m in batches[:2]:
        a.update(ent, m)
    b = TargetedEntropyRegularizer(target=0.1, coef=0.5)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    for ent, m in batches[2:]:
        assert a.update(ent, m) == b.update(ent, m)
        assert torch.equal(a.loss(ent, m), b.loss(ent, m))
    assert a.state_dict() == b.state_dict() and a.steps == 4
    with pytest.raises(ValueError, match="state_dict lacks"):
        b.load_state_dict({"target": 0.5})


# ------------------------------------------------------------------------------------ DAPO
def test_dapo_clip_example_and_equivalence():
    loss, _ = token_losses("dapo_clip", **_ex("dapo_clip"))
    assert torch.allclose(loss, torch.tensor([[-1.28, -0.7], [1.5, 0.8]], dtype=loss.dtype), atol=1e-6)
    g = torch.Generator().manual_seed(3)
    lp = torch.randn(5, 4, generator=g, dtype=torch.float64) * 0.3
    adv = torch.randn(5, 4, generator=g, dtype=torch.float64)
    mask = torch.rand(5, 4, generator=g) > 0.2
    a, _ = policy_loss("dapo_clip", lp, torch.zeros_like(lp), adv, mask)
    b, _ = policy_loss("ppo_clip", lp, torch.zeros_like(lp), adv, mask, eps_low=0.2, eps_high=0.28)
    assert torch.equal(a, b)


def test_dapo_loss_aggregation_table():
    # o1: A = +1, 2 tokens; o2: A = −1, 4 tokens; ρ = 1 so the per-token loss is −A
    lp = torch.zeros(2, 4, dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    tm, _ = policy_loss("dapo_clip", lp, lp, adv, mask, agg="token-mean")
    sm, _ = policy_loss("dapo_clip", lp, lp, adv, mask, agg="seq-mean-token-mean")
    dr, _ = policy_loss("dapo_clip", lp, lp, adv, mask, agg="seq-mean-token-sum-norm", norm_const=8)
    assert tm.item() == pytest.approx(1 / 3, abs=1e-4)
    assert sm.item() == pytest.approx(0.0, abs=1e-12)
    assert dr.item() == pytest.approx(0.125, abs=1e-4)
