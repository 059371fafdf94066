"""Policy losses: hand-computed per-token values and gradients, KL estimators, entropy, IS weights,
metrics and error messages."""

import math
import pathlib

import pytest
import torch

import grouprl.losses as L
from grouprl.core import UnknownName
from grouprl.losses import (
    KL_TYPES,
    LOSSES,
    clip_cov_select,
    example_inputs,
    kl_cov_select,
    kl_penalty,
    policy_loss,
    register_loss,
    rollout_is,
    rollout_is_weights,
    run_example,
    token_losses,
    value_loss,
)

D = torch.float64


def t(x):
    return torch.tensor(x, dtype=D)


def leaf(x):
    return torch.tensor(x, dtype=D, requires_grad=True)


def grad(loss, x):
    return torch.autograd.grad(loss, x)[0]


def ones(B, T):
    return torch.ones(B, T, dtype=torch.bool)


# --- PPO clip ---------------------------------------------------------------------------------
def test_ppo_clip_per_token_values_and_gradients():
    ex = example_inputs("ppo_clip")  # ratios 1.5, 0.7, 1.0 (A=+1); 0.5, 1.1, 4.0 (A=-1); eps .2/.28, c=3
    lp = ex["logprobs"]
    per_tok, maps = token_losses("ppo_clip", lp, ex["old_logprobs"], ex["advantages"], ex["mask"], **ex["kwargs"])
    expected = t([[-1.28, -0.7, -1.0], [0.8, 1.1, 3.0]])  # 1.5 capped at 1.28; 0.5 floored at .8; 4 dual-capped at 3
    assert torch.allclose(per_tok, expected, atol=1e-12)
    # d loss / d log pi = -A*rho where nothing binds, 0 where a clip (or the dual cap) binds
    g = grad(per_tok.sum(), lp)
    assert torch.allclose(g, t([[0.0, -0.7, -1.0], [0.0, 1.1, 0.0]]), atol=1e-12)
    assert maps["clipfrac_high"].tolist() == [[True, False, False], [False, False, False]]
    assert maps["clipfrac_low"].tolist() == [[False, False, False], [True, False, False]]
    assert maps["clipfrac_dual"].tolist() == [[False, False, False], [False, False, True]]
    loss, m = policy_loss("ppo_clip", lp, ex["old_logprobs"], ex["advantages"], ex["mask"], **ex["kwargs"])
    assert loss.item() == pytest.approx(1.92 / 6)
    assert m["clipfrac"].item() == pytest.approx(2 / 6) and m["clipfrac_dual"].item() == pytest.approx(1 / 6)


def test_ppo_clip_without_dual_clip_and_symmetric_eps():
    lp = leaf([[math.log(4.0), math.log(1.25)]])
    adv = t([[-1.0, 1.0]])
    per_tok, _ = token_losses("ppo_clip", lp, torch.zeros(1, 2, dtype=D), adv, ones(1, 2))
    # eps_high=None -> 0.2: ratio 1.25 > 1.2 is clipped for A>0; ratio 4 with A<0 is unbounded without c
    assert torch.allclose(per_tok, t([[4.0, -1.2]]))
    assert torch.allclose(grad(per_tok.sum(), lp), t([[4.0, 0.0]]))


def test_ppo_clip_trl_delta_caps_the_unclipped_ratio():
    lp = leaf([[math.log(3.0), math.log(3.0)]])
    per_tok, _ = token_losses("ppo_clip", lp, torch.zeros(1, 2, dtype=D), t([[-1.0, 1.0]]), ones(1, 2), delta=2.0)
    # A<0: max(min(3,2)*1, clip(3)*1) = 2 (zero gradient); A>0: max(-2, -1.2) = -1.2
    assert torch.allclose(per_tok, t([[2.0, -1.2]]))
    assert torch.allclose(grad(per_tok.sum(), lp), torch.zeros(1, 2, dtype=D))


def test_log_ratio_is_clamped_at_20():
    per_tok, _ = token_losses("ppo_clip", t([[30.0]]), t([[0.0]]), t([[-1.0]]), ones(1, 1))
    assert per_tok.item() == pytest.approx(math.exp(20.0))


def test_ratio_one_is_the_plain_policy_gradient_for_every_ratio_loss():
    lp = leaf([[-0.5, -1.5], [-2.0, -0.1]])
    adv = t([[1.0, 1.0], [-2.0, -2.0]])
    for name in ("ppo_clip", "sapo", "cispo", "gspo"):
        loss, _ = policy_loss(name, lp, lp.detach(), adv, ones(2, 2), respect_agg=True)
        assert torch.allclose(grad(loss, lp), -adv / 4), name


# --- GSPO -------------------------------------------------------------------------------------
def test_gspo_value_is_the_sequence_ratio():
    ex = example_inputs("gspo")
    per_tok, maps = token_losses("gspo", ex["logprobs"], ex["old_logprobs"], ex["advantages"], ex["mask"])
    # row 0: log-ratios +0.1, -0.1 -> s = 1 -> -A; row 1: mean 0.2 -> s = e^0.2 > 1 + 4e-4 -> clipped
    assert torch.allclose(per_tok[0, :2], t([-1.0, -1.0]))
    assert torch.allclose(per_tok[1], torch.full((3,), -(1 + 4e-4), dtype=D))
    assert maps["clipfrac_high"][1].all()
    loss, _ = run_example("gspo")
    assert loss.item() == pytest.approx((-1.0 - 1.0004) / 2)


def test_gspo_negative_advantage_lower_clip_zeroes_the_row_gradient():
    # mean log-ratio -0.2 -> s = e^-0.2 < 1 - 3e-4 with A < 0: the whole row is clipped
    lp = leaf([[-1.1, -1.3], [-1.0, -1.0]])
    old = t([[-1.0, -1.0], [-1.0, -1.0]])
    adv = t([[-1.0, -1.0], [-1.0, -1.0]])
    per_tok, maps = token_losses("gspo", lp, old, adv, ones(2, 2))
    assert torch.allclose(per_tok[0], torch.full((2,), 1 - 3e-4, dtype=D))
    assert torch.allclose(per_tok[1], torch.ones(2, dtype=D))  # s = 1, inside
    assert maps["clipfrac_low"].tolist() == [[True, True], [False, False]]
    g = grad(per_tok.sum(), lp)
    assert torch.equal(g[0], torch.zeros(2, dtype=D)) and torch.allclose(g[1], torch.ones(2, dtype=D))


def test_gspo_gradient_equals_the_sequence_level_objective():
    """With seq-mean-token-mean, the stop-gradient injection has exactly the value and gradient of
    J = (1/G) sum_i s_i A_i with s_i = exp(mean_t log rho): d/d log pi_it = -A_i s_i / (G |y_i|)."""
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    old = -torch.rand(3, 4, generator=g, dtype=D)
    lp = (old + 0.1 * torch.randn(3, 4, generator=g, dtype=D)).requires_grad_(True)
    adv = t([[1.0] * 4, [-0.5] * 4, [2.0] * 4])
    loss, _ = policy_loss("gspo", lp, old, adv, mask, eps_low=10.0, eps_high=10.0)  # nothing clipped
    Lrow = mask.sum(1).to(D)
    s = torch.exp(((lp - old) * mask).sum(1) / Lrow)
    direct = (-adv[:, 0] * s).mean()
    assert loss.item() == pytest.approx(direct.item(), abs=1e-12)
    g_loss, g_direct = grad(loss, lp), grad(direct, lp)
    assert torch.allclose(g_loss, g_direct, atol=1e-12)
    assert torch.allclose(g_loss, (-adv[:, 0] * s / (3 * Lrow)).detach()[:, None] * mask, atol=1e-12)
    # verl 0.9.1 applies the caller's agg: token-mean gives -A_i s_i / N_tok per token
    loss_tm, _ = policy_loss("gspo", lp, old, adv, mask, eps_low=10.0, eps_high=10.0, respect_agg=True)
    assert torch.allclose(grad(loss_tm, lp), (-adv[:, 0] * s / 9).detach()[:, None] * mask, atol=1e-12)


# --- CISPO ------------------------------------------------------------------------------------
def test_cispo_values_and_gradients():
    ex = example_inputs("cispo")  # ratios 0.5, 1.0, 6.0; A = +1, -1, +1; cap 1 + 4 = 5
    lp = ex["logprobs"]
    per_tok, maps = token_losses("cispo", lp, ex["old_logprobs"], ex["advantages"], ex["mask"], **ex["kwargs"])
    w = t([[0.5, 1.0, 5.0]])
    assert torch.allclose(per_tok, -w * ex["advantages"] * lp.detach())
    # every token keeps a gradient, weighted by the clipped IS weight
    assert torch.allclose(grad(per_tok.sum(), lp), -w * ex["advantages"])
    assert maps["clipfrac_high"].tolist() == [[False, False, True]]
    per_tok, maps = token_losses("cispo", lp, ex["old_logprobs"], ex["advantages"], ex["mask"], eps_low=0.2, eps_high=0.2)
    assert torch.allclose(grad(per_tok.sum(), lp), -t([[0.8, 1.0, 1.2]]) * ex["advantages"])
    assert maps["clipfrac_low"].tolist() == [[True, False, False]]


# --- SAPO -------------------------------------------------------------------------------------
def test_sapo_gate_values_gradient_and_forced_aggregation():
    ex = example_inputs("sapo")  # ratios 1.5, 1 (A=+1, tau 1); 0.5 (A=-1, tau 1.05), masked
    lp, old, adv, mask = ex["logprobs"], ex["old_logprobs"], ex["advantages"], ex["mask"]
    per_tok, _ = token_losses("sapo", lp, old, adv, mask)
    sig = lambda x: 1 / (1 + math.exp(-x))
    f_pos, f_one, f_neg = sig(0.5) * 4, sig(0.0) * 4, sig(1.05 * -0.5) * 4 / 1.05
    assert torch.allclose(per_tok[0], t([-f_pos, -f_one]))
    assert per_tok[1, 0].item() == pytest.approx(f_neg)
    # gradient: d/dlogpi of -f(rho)*A = -A * f'(rho) * rho, f'(rho) = 4 sig (1 - sig)
    g = grad(per_tok[0].sum() + per_tok[1, 0], lp)
    fp = lambda tau, r: 4 * sig(tau * (r - 1)) * (1 - sig(tau * (r - 1)))
    assert torch.allclose(g, t([[-fp(1, 1.5) * 1.5, -1.0], [fp(1.05, 0.5) * 0.5, 0.0]]))
    # SAPO always aggregates seq-mean-token-mean (verl): the caller's agg is ignored ...
    seq_mean = ((-f_pos - f_one) / 2 + f_neg) / 2
    tok_mean = (-f_pos - f_one + f_neg) / 3
    for agg in ("token-mean", "seq-mean-token-sum"):
        assert policy_loss("sapo", lp, old, adv, mask, agg=agg)[0].item() == pytest.approx(seq_mean)
    # ... unless respect_agg=True
    assert policy_loss("sapo", lp, old, adv, mask, agg="token-mean", respect_agg=True)[0].item() == pytest.approx(tok_mean)


# --- GMPO -------------------------------------------------------------------------------------
def test_gmpo_geometric_mean_clipping_and_gradient():
    ex = example_inputs("gmpo")  # row 0 (A=+1): log-ratios .6 -> .4, 0; row 1 (A=-1): -.2, -.6 -> -.4
    lp, old, adv, mask = ex["logprobs"], ex["old_logprobs"], ex["advantages"], ex["mask"]
    per_seq, maps = token_losses("gmpo", lp, old, adv, mask)
    assert torch.allclose(per_seq, t([-math.exp(0.2), math.exp(-0.3)]))
    assert maps["clipfrac"].tolist() == [[True, False], [False, True]]
    for agg in L.AGG_MODES:  # sequence-level: a mean over rows whatever agg is
        loss, _ = policy_loss("gmpo", lp, old, adv, mask, agg=agg, norm_const=3)
        assert loss.item() == pytest.approx((-math.exp(0.2) + math.exp(-0.3)) / 2)
    # d loss/d log pi_it = -A_i R_i / (|o_i| G) on unclipped tokens, 0 on clipped ones
    loss, _ = policy_loss("gmpo", lp, old, adv, mask)
    assert torch.allclose(grad(loss, lp), t([[0.0, -math.exp(0.2) / 4], [math.exp(-0.3) / 4, 0.0]]))
    # A > 0: a ratio below the range is not clipped (only the upper bound binds), and vice versa
    per_seq, _ = token_losses("gmpo", t([[-0.9]]), t([[0.0]]), t([[1.0]]), ones(1, 1))
    assert per_seq.item() == pytest.approx(-math.exp(-0.9))


# --- GPG and DRO ------------------------------------------------------------------------------
def test_gpg_is_plain_reinforce():
    ex = example_inputs("gpg")
    lp, adv, mask = ex["logprobs"], ex["advantages"], ex["mask"]
    loss, _ = policy_loss("gpg", lp, ex["old_logprobs"], adv, mask)
    assert loss.item() == pytest.approx((0.5 + 2.0 - 0.5) / 3)
    assert torch.allclose(grad(loss, lp), -adv * mask / 3)


def test_dro_values_gradient_and_required_beta():
    ex = example_inputs("dro")  # lp -0.8, -1.5; old -1, -1; A +1, -1; beta .1
    lp = ex["logprobs"]
    per_tok, _ = token_losses("dro", lp, ex["old_logprobs"], ex["advantages"], ex["mask"], beta=0.1)
    assert torch.allclose(per_tok, t([[-(-0.8 - 0.05 * 0.04), -(1.5 - 0.05 * 0.25)]]))
    assert torch.allclose(grad(per_tok.sum(), lp), t([[-(1 - 0.1 * 0.2), -(-1 - 0.1 * -0.5)]]))
    with pytest.raises(ValueError, match="dro needs beta > 0"):
        policy_loss("dro", lp, ex["old_logprobs"], ex["advantages"], ex["mask"])


# --- Clip-Cov and KL-Cov ----------------------------------------------------------------------
def test_clip_cov_selection_by_hand():
    ex = example_inputs("clip_cov")
    lp, old, adv, mask = ex["logprobs"], ex["old_logprobs"], ex["advantages"], ex["mask"]
    # mean A = 0, mean log pi = -6.2/6; cov = A*(lp + 1.0333): in (1, 5) at (0,0) 1.867, (0,2) 1.667, (1,0) 2.933
    cov = L.token_covariance(lp, adv, mask)
    assert torch.allclose(cov, adv * (lp.detach() + 6.2 / 6))
    candidates = {(0, 0), (0, 2), (1, 0)}
    seen = set()
    for seed in range(12):
        sel = clip_cov_select(lp, old, adv, mask, clip_cov_ratio=0.2, seed=seed)  # k = max(1, floor(1.2)) = 1
        picked = {tuple(i) for i in sel.nonzero().tolist()}
        assert len(picked) == 1 and picked <= candidates
        assert torch.equal(sel, clip_cov_select(lp, old, adv, mask, clip_cov_ratio=0.2, seed=seed))  # deterministic
        seen |= picked
    assert seen == candidates  # uniform choice among the candidates: all of them show up
    sel = clip_cov_select(lp, old, adv, mask, clip_cov_ratio=0.5, generator=torch.Generator().manual_seed(1))
    assert sel.sum().item() == 3  # k = 3 = every candidate
    # the selected tokens have zero loss and zero gradient; the others are plain PPO-clip
    per_tok, maps = token_losses("clip_cov", lp, old, adv, mask, selected=sel)
    ppo, _ = token_losses("ppo_clip", lp, old, adv, mask)
    assert torch.allclose(per_tok, torch.where(sel, torch.zeros_like(ppo), ppo))
    assert torch.equal(grad(per_tok.sum(), lp) == 0, sel)
    assert torch.equal(maps["covfrac"], sel)
    loss, m = run_example("clip_cov")
    assert m["covfrac"].item() == pytest.approx(1 / 6)


def test_clip_cov_skips_tokens_ppo_already_clips():
    lp = t([[math.log(2.0), -3.0, -0.2]])
    adv = t([[2.0, 2.0, 2.0]])
    sel = clip_cov_select(lp, torch.zeros(1, 3, dtype=D) + t([[0.0, -3.0, -0.2]]), adv, ones(1, 3),
                          clip_cov_ratio=1.0, clip_cov_lb=-100, clip_cov_ub=100, seed=0)
    assert sel.tolist() == [[False, True, True]]  # token 0 has ratio 2 > 1.2 with A > 0


def test_kl_cov_top_covariance_token_gets_the_abs_kl_penalty():
    ex = example_inputs("kl_cov")
    lp, old, adv, mask = ex["logprobs"], ex["old_logprobs"], ex["advantages"], ex["mask"]
    # mean log pi = -6.1/6; cov = A*(lp + 1.01667): the largest is (1,0): -2*(-2.4 + 1.01667) = 2.767
    sel = kl_cov_select(lp, adv, mask, kl_cov_ratio=0.2)
    assert sel.nonzero().tolist() == [[1, 0]]
    assert kl_cov_select(lp, adv, mask, kl_cov_ratio=0.34).nonzero().tolist() == [[0, 0], [1, 0]]  # k = 2
    per_tok, maps = token_losses("kl_cov", lp, old, adv, mask, kl_cov_ratio=0.2, ppo_kl_coef=1.0)
    rho = torch.exp(lp.detach() - old)
    expected = -adv * rho
    expected[1, 0] += 0.1  # |log rho| = |-2.4 + 2.5|
    assert torch.allclose(per_tok, expected)
    g = grad(per_tok.sum(), lp)
    assert g[1, 0].item() == pytest.approx(2 * math.exp(0.1) + 1.0)  # -A*rho + coef*sign(log rho)
    assert g[0, 0].item() == pytest.approx(-2 * math.exp(-0.1))
    assert maps["covfrac"].sum().item() == 1


def test_cov_losses_need_no_host_sync_and_handle_empty_masks():
    z = torch.zeros(2, 3, dtype=torch.bool)
    assert not clip_cov_select(t([[0.0] * 3] * 2), t([[0.0] * 3] * 2), t([[1.0] * 3] * 2), z, seed=0).any()
    assert not kl_cov_select(t([[0.0] * 3] * 2), t([[1.0] * 3] * 2), z).any()


# --- KL estimators ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind, closed_form",
    [
        ("k1", lambda d: d),
        ("kl", lambda d: d),
        ("abs", lambda d: d.abs()),
        ("k2", lambda d: 0.5 * d * d),
        ("mse", lambda d: 0.5 * d * d),
        ("k3", lambda d: torch.exp(-d) + d - 1),
        ("low_var_kl", lambda d: torch.exp(-d) + d - 1),
    ],
)
def test_kl_estimators_closed_forms_and_straight_through(kind, closed_form):
    ref = t([[-1.0, -2.0, -0.5, -3.0]])
    lp = leaf([[-1.3, -1.0, -0.5, -4.0]])
    d = lp.detach() - ref
    assert torch.allclose(kl_penalty(lp, ref, kind), closed_form(d))
    plus = kl_penalty(lp, ref, kind + "+")
    assert torch.allclose(plus, closed_form(d))  # value of the estimator ...
    assert torch.allclose(grad(plus.sum(), lp), d)  # ... gradient of k2: d/dlogpi 0.5 d^2 = d
    assert kind in KL_TYPES and kind + "+" in KL_TYPES


def test_k3_clamps_and_monte_carlo_unbiasedness():
    # inner difference clamped to [-20, 20], result to [-10, 10]
    assert kl_penalty(t([[0.0]]), t([[50.0]]), "k3").item() == pytest.approx(10.0)
    # d = 50: x = -50 -> -20, e^-20 + 20 - 1 = 19.0 -> 10
    assert kl_penalty(t([[50.0]]), t([[0.0]]), "k3").item() == pytest.approx(10.0)
    assert kl_penalty(t([[9.0]]), t([[0.0]]), "k3").item() == pytest.approx(math.exp(-9) + 9 - 1)
    assert kl_penalty(t([[3.0]]), t([[0.0]]), "k3").item() == pytest.approx(math.exp(-3) + 3 - 1)
    # E_{x~p}[k1] = E_{x~p}[k3] = KL(p||q) for two categoricals (exact expectation over the support)
    p = t([0.5, 0.3, 0.2])
    q = t([0.2, 0.2, 0.6])
    kl = (p * (p / q).log()).sum()
    for kind in ("k1", "k3"):
        assert (p * kl_penalty(p.log(), q.log(), kind)).sum().item() == pytest.approx(kl.item())
    with pytest.raises(ValueError, match="did you mean .*'k3'"):
        kl_penalty(p.log(), q.log(), "k4")


def test_kl_term_in_the_loss():
    lp = leaf([[-1.0, -2.0], [-0.5, -0.1]])
    ref = t([[-1.2, -2.0], [-0.4, -0.3]])
    adv = t([[1.0, 1.0], [0.0, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    base, _ = policy_loss("ppo_clip", lp, lp.detach(), adv, mask)
    loss, m = policy_loss("ppo_clip", lp, lp.detach(), adv, mask, ref_logprobs=ref, kl_coef=0.1, kl_type="k3")
    k3 = (torch.exp(ref - lp.detach()) - (ref - lp.detach()) - 1)[mask].sum() / 3
    assert m["kl"].item() == pytest.approx(k3.item())
    assert loss.item() == pytest.approx(base.item() + 0.1 * k3.item())
    with pytest.raises(ValueError, match="needs ref_logprobs"):
        policy_loss("ppo_clip", lp, lp.detach(), adv, mask, kl_coef=0.1)
    # metric without penalty
    loss0, m0 = policy_loss("ppo_clip", lp, lp.detach(), adv, mask, ref_logprobs=ref)
    assert loss0.item() == pytest.approx(base.item()) and m0["kl"].item() == pytest.approx(k3.item())


# --- entropy and IS weights ------------------------------------------------------------------
def test_entropy_bonus_lowers_the_loss_and_pushes_entropy_up():
    lp = leaf([[-1.0, -2.0]])
    ent = leaf([[0.7, 1.3]])
    adv = t([[1.0, 1.0]])
    base, _ = policy_loss("ppo_clip", lp, lp.detach(), adv, ones(1, 2))
    loss, m = policy_loss("ppo_clip", lp, lp.detach(), adv, ones(1, 2), entropy=ent, entropy_coef=0.01)
    assert m["entropy"].item() == pytest.approx(1.0)
    assert loss.item() == pytest.approx(base.item() - 0.01 * 1.0)
    assert torch.allclose(grad(loss, ent), t([[-0.005, -0.005]]))  # gradient descent raises entropy


def test_rollout_is_weights_multiply_the_per_token_loss():
    lp = leaf([[-1.0, -2.0, -0.3]])
    adv = t([[1.0, -1.0, 2.0]])
    w = t([[0.5, 2.0, 1.0]])
    loss, _ = policy_loss("ppo_clip", lp, lp.detach(), adv, ones(1, 3), rollout_is_weights=w)
    assert loss.item() == pytest.approx((-0.5 + 2.0 - 2.0) / 3)
    assert torch.allclose(grad(loss, lp), -w * adv / 3)
    # sequence-level losses use the geometric mean of the row's weights: (0.5 * 2 * 1)^(1/3) = 1
    loss, _ = policy_loss("gmpo", lp, lp.detach(), adv, ones(1, 3), rollout_is_weights=w)
    assert loss.item() == pytest.approx(-(2.0 / 3))
    loss, _ = policy_loss("gmpo", lp, lp.detach(), adv, ones(1, 3), rollout_is_weights=t([[0.5, 4.0, 4.0]]))
    assert loss.item() == pytest.approx(-(2.0 / 3) * 2.0)


# --- metrics, examples, API errors ------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_examples_and_metric_tensors(name):
    info = LOSSES[name]
    assert info.example and info.paper and info.summary
    ex = example_inputs(name)
    ent = torch.rand_like(ex["old_logprobs"]).requires_grad_(True)
    loss, metrics = policy_loss(
        name, ex["logprobs"], ex["old_logprobs"], ex["advantages"], ex["mask"],
        ref_logprobs=ex["old_logprobs"] - 0.1, kl_coef=0.01, entropy=ent, entropy_coef=0.01, **ex["kwargs"],
    )
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.requires_grad
    for k in ("pg_loss", "clipfrac", "clipfrac_low", "clipfrac_high", "ppo_kl", "kl", "entropy"):
        assert k in metrics
    for k, v in metrics.items():
        assert isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad, k


def test_advantages_per_row_are_broadcast():
    lp = leaf([[-1.0, -2.0], [-0.5, -0.1]])
    a, _ = policy_loss("ppo_clip", lp, lp.detach(), t([1.0, -2.0]), ones(2, 2))
    b, _ = policy_loss("ppo_clip", lp, lp.detach(), t([[1.0, 1.0], [-2.0, -2.0]]), ones(2, 2))
    assert a.item() == pytest.approx(b.item())


def test_unknown_loss_and_hparam_messages():
    lp = leaf([[-1.0]])
    with pytest.raises(UnknownName, match="did you mean 'ppo_clip'"):
        policy_loss("ppo_clp", lp, lp.detach(), t([[1.0]]), ones(1, 1))
    with pytest.raises(TypeError, match="unknown hyperparameter 'eps_hgh': did you mean 'eps_high'"):
        policy_loss("ppo_clip", lp, lp.detach(), t([[1.0]]), ones(1, 1), eps_hgh=0.28)
    with pytest.raises(TypeError, match="'gpg' got an unknown hyperparameter 'eps_low': it takes no hyperparameters"):
        policy_loss("gpg", lp, lp.detach(), t([[1.0]]), ones(1, 1), eps_low=0.2)
    with pytest.raises(TypeError, match="'kl_coeff': did you mean 'kl_coef'"):
        policy_loss("ppo_clip", lp, lp.detach(), t([[1.0]]), ones(1, 1), kl_coeff=0.1)
    with pytest.raises(TypeError, match="'zzz': it takes clip_ratio_c, delta, eps_high"):
        policy_loss("ppo_clip", lp, lp.detach(), t([[1.0]]), ones(1, 1), zzz=0.1)
    with pytest.raises(TypeError, match="did you mean 'tau_pos'"):
        policy_loss("sapo", lp, lp.detach(), t([[1.0]]), ones(1, 1), tau_po=1.0)
    with pytest.raises(ValueError, match="did you mean 'token-mean'"):
        policy_loss("ppo_clip", lp, lp.detach(), t([[1.0]]), ones(1, 1), agg="token_mean")


def test_nan_advantage_names_the_row_and_masked_nan_is_ignored():
    lp = leaf([[-1.0, -2.0], [-0.5, -0.1], [-1.0, -1.0]])
    adv = t([[1.0, 1.0], [0.5, 0.5], [float("nan"), 1.0]])
    with pytest.raises(ValueError, match="advantages has NaN at row 2"):
        policy_loss("ppo_clip", lp, lp.detach(), adv, ones(3, 2))
    mask = torch.tensor([[1, 1], [1, 1], [0, 1]], dtype=torch.bool)
    loss, _ = policy_loss("ppo_clip", lp, lp.detach(), adv, mask)
    assert torch.isfinite(loss) and torch.isfinite(grad(loss, lp)).all()
    with pytest.raises(ValueError, match="infinite value at row 0"):
        policy_loss("gpg", lp, lp.detach(), t([[float("inf"), 0], [0, 0], [0, 0]]), ones(3, 2))


def test_shape_errors_name_the_field():
    lp = leaf([[-1.0, -2.0]])
    with pytest.raises(ValueError, match="old_logprobs has shape"):
        policy_loss("ppo_clip", lp, t([[-1.0]]), t([[1.0, 1.0]]), ones(1, 2))
    with pytest.raises(ValueError, match="mask has shape"):
        policy_loss("ppo_clip", lp, lp.detach(), t([[1.0, 1.0]]), ones(2, 2))
    with pytest.raises(ValueError, match="logprobs must be a float"):
        policy_loss("ppo_clip", t([-1.0]), t([-1.0]), t([1.0]), torch.ones(1, dtype=torch.bool))


def test_register_a_new_loss():
    @register_loss("test_linear", paper="test", example={"logprobs": [[-1.0]], "old_logprobs": [[-1.0]], "advantages": [[2.0]]})
    def test_linear(logprobs, old_logprobs, advantages, mask, *, scale: float = 1.0):
        """A test loss."""
        return -scale * advantages * logprobs, {}

    try:
        loss, _ = run_example("test_linear", scale=3.0)
        assert loss.item() == pytest.approx(6.0)
        with pytest.raises(ValueError, match="already registered"):
            register_loss("test_linear")(lambda *a: None)
        with pytest.raises(ValueError, match="level="):
            register_loss("x", level="segment")
    finally:
        LOSSES._items.pop("test_linear")


def test_no_item_calls_in_the_package():
    src = pathlib.Path(L.__file__).parent
    offenders = [p.name for p in src.glob("*.py") if ".item()" in p.read_text()]
    assert offenders == []


# --- value loss -------------------------------------------------------------------------------
def test_value_loss_clipped_as_verl():
    v = leaf([[1.5, 0.0, 2.0]])
    old_v = t([[1.0, 0.0, 0.0]])
    ret = t([[0.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    loss, m = value_loss(v, old_v, ret, mask, clip_range=0.2)
    # token 0: unclipped (1.5)^2 = 2.25, clipped (1.2)^2 = 1.44 -> 2.25; token 1: 1 and 1 -> 1
    assert loss.item() == pytest.approx(0.5 * (2.25 + 1.0) / 2)
    assert m["vf_clipfrac"].item() == 0.0
    assert torch.allclose(grad(loss, v), t([[0.5 * 2 * 1.5 / 2, 0.5 * 2 * -1.0 / 2, 0.0]]))
    # the clipped error is the larger one when the value moved past the clip range towards the target
    # (moved towards the target past V_old + 0.2): 0.5 * max(0.2^2, (2 - 1.2)^2), zero gradient
    v2 = leaf([[1.8, 0.0]])
    loss2, m2 = value_loss(v2, t([[1.0, 0.0]]), t([[2.0, 0.0]]), ones(1, 2), clip_range=0.2, agg="token-sum")
    assert loss2.item() == pytest.approx(0.5 * (0.8**2 + 0.0))
    assert m2["vf_clipfrac"].item() == pytest.approx(0.5)
    assert grad(loss2, v2)[0, 0].item() == 0.0
    loss3, _ = value_loss(v2, t([[1.0, 0.0]]), t([[2.0, 0.0]]), ones(1, 2), clip_range=None, agg="token-sum")
    assert loss3.item() == pytest.approx(0.5 * 0.2**2)


def test_dp_size_scales_the_loss_not_the_metrics_and_tensor_coefficients():
    lp = leaf([[-1.0, -2.0]])
    adv = t([[1.0, -1.0]])
    ref = t([[-1.5, -1.5]])
    a, ma = policy_loss("gpg", lp, lp.detach(), adv, ones(1, 2), ref_logprobs=ref, kl_coef=0.1)
    b, mb = policy_loss("gpg", lp, lp.detach(), adv, ones(1, 2), ref_logprobs=ref, kl_coef=torch.tensor(0.1), dp_size=4)
    assert b.item() == pytest.approx(4 * a.item())
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


# ---------------------------------------------------------------- rollout importance weights (grouprl.losses.importance)
def test_rollout_is_weights_token_and_sequence():
    old = torch.tensor([[0.0, math.log(3.0), math.log(0.5)], [math.log(1.5), 5.0, 0.0]])
    samp = torch.zeros(2, 3)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    w, m = rollout_is_weights(old, samp, mask, level="token", cap=2.0)
    assert torch.allclose(w, torch.tensor([[1.0, 2.0, 0.5], [1.5, 0.0, 0.0]]), atol=1e-6)
    assert m["rollout_is/clipped"] == pytest.approx(1 / 4)
    assert m["rollout_is/mean"] == pytest.approx((1 + 2 + 0.5 + 1.5) / 4, abs=1e-6)
    ws, ms = rollout_is_weights(old, samp, mask, level="sequence", cap=2.0)
    # row 0: exp(log 3 + log .5) = 1.5 on every valid token; row 1: 1.5 (the masked 5.0 ignored)
    assert torch.allclose(ws, torch.tensor([[1.5, 1.5, 1.5], [1.5, 0.0, 0.0]]), atol=1e-6)
    assert ms["rollout_is/clipped"] == 0.0
    ws, ms = rollout_is_weights(old, samp, mask, level="sequence", cap=1.2)
    assert torch.allclose(ws[0], torch.full((3,), 1.2))
    assert ms["rollout_is/clipped"] == 1.0
    with pytest.raises(ValueError, match="same"):
        rollout_is_weights(old, samp[:, :2], mask)
    with pytest.raises(ValueError, match=r"\(B, T\)"):  # one row without its batch dimension
        rollout_is_weights(old[0], samp[0], mask[0])
    with pytest.raises(ValueError, match="level"):
        rollout_is_weights(old, samp, mask, level="row")
    with pytest.raises(ValueError, match="cap"):
        rollout_is_weights(old, samp, mask, cap=0.0)


def test_rollout_is_switch_and_weighted_loss():
    """The rollout_is switch; the weights multiply the PPO-clip token loss inside policy_loss."""
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(4, 5, generator=g) * 0.3
    old = lp + torch.randn(4, 5, generator=g) * 0.3
    samp = old + torch.randn(4, 5, generator=g) * 1.5
    adv = torch.randn(4, 5, generator=g)
    mask = torch.ones(4, 5, dtype=torch.bool)
    assert rollout_is(old, samp, mask, level="none", cap=2.0) == (None, {})
    with pytest.raises(ValueError, match="sampling log-probs"):
        rollout_is(old, None, mask, level="token", cap=2.0)
    w, metrics = rollout_is(old, samp, mask, level="token", cap=2.0)
    assert metrics["rollout_is/clipped"] > 0  # the noise is large enough to hit the cap
    loss, _ = policy_loss("ppo_clip", lp, old, adv, mask, rollout_is_weights=w)
    tok, _ = token_losses("ppo_clip", lp, old, adv, mask)
    assert torch.allclose(loss, (tok * w).mean(), atol=1e-6)
