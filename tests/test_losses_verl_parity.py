"""Parity with verl 0.9.1 (``verl.trainer.ppo.core_algos``) where verl is installed: the same loss
value, gradient and metrics for every shared loss and aggregation mode, the KL estimators and the
value loss. Skipped when verl is absent (it is an optional integration, not a dependency)."""

import pytest
from conftest import require
import torch

core = require("verl.trainer.ppo.core_algos")
actor_cfg = require("verl.workers.config.actor")

from grouprl.losses import AGG_MODES, kl_penalty, normalizers, policy_loss, value_loss  # noqa: E402

D = torch.float64
B, T = 6, 7
LENGTHS = [7, 3, 5, 1, 6, 2]  # no empty row: verl's geo_mean counts empty rows in its mean


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(T)[None] < torch.tensor(LENGTHS)[:, None]).to(D)
    old = -torch.rand(B, T, generator=g, dtype=D) * 3
    lp = (old + 0.25 * torch.randn(B, T, generator=g, dtype=D)).requires_grad_(True)
    adv = torch.randn(B, 1, generator=g, dtype=D).expand(B, T).clone()
    adv[1] = torch.randn(T, generator=g, dtype=D)  # a row with per-token advantages
    isw = torch.rand(B, T, generator=g, dtype=D) + 0.5
    return lp, old, adv, mask, isw


def _cfg(**kw):
    pl = actor_cfg.PolicyLossConfig(**kw.pop("policy_loss", {}))
    return actor_cfg.ActorConfig(strategy="fsdp", ppo_micro_batch_size_per_gpu=1, rollout_n=1, policy_loss=pl, **kw)


# (our name, our kwargs, verl loss_mode, verl config)
CASES = [
    ("ppo_clip", dict(eps_low=0.2, eps_high=0.28, clip_ratio_c=3.0), "vanilla",
     dict(clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0)),
    ("gspo", dict(eps_low=0.03, eps_high=0.04, respect_agg=True), "gspo",
     dict(clip_ratio=0.03, clip_ratio_low=0.03, clip_ratio_high=0.04)),
    ("cispo", dict(eps_low=0.2, eps_high=0.28), "cispo", dict(clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.28)),
    ("sapo", dict(tau_pos=1.0, tau_neg=1.05), "sapo", dict(tau_pos=1.0, tau_neg=1.05)),
    ("gmpo", dict(eps_low=0.2, eps_high=0.28), "geo_mean", dict(clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.28)),
    ("gpg", dict(), "gpg", dict()),
    ("dro", dict(beta=0.3), "dro", dict(policy_loss=dict(dro_beta=0.3))),
    ("kl_cov", dict(kl_cov_ratio=0.1, ppo_kl_coef=0.5), "kl_cov", dict(policy_loss=dict(kl_cov_ratio=0.1, ppo_kl_coef=0.5))),
    # clip_cov picks a random subset in verl; with a ratio of 1 every candidate is picked, deterministic
    ("clip_cov", dict(clip_cov_ratio=1.0, clip_cov_lb=0.0, clip_cov_ub=0.5, seed=0), "clip_cov",
     dict(clip_ratio=0.2, policy_loss=dict(clip_cov_ratio=1.0, clip_cov_lb=0.0, clip_cov_ub=0.5))),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("with_isw", [False, True])
def test_loss_value_gradient_and_metrics_match_verl(case, agg, with_isw):
    name, ours_kw, mode, cfg_kw = case
    lp, old, adv, mask, isw = _data()
    w = isw if with_isw else None
    verl_loss, verl_metrics = core.get_policy_loss_fn(mode)(
        old, lp, adv, mask, loss_agg_mode=agg, config=_cfg(**cfg_kw), rollout_is_weights=w
    )
    loss, metrics = policy_loss(name, lp, old, adv, mask.bool(), agg=agg, norm_const=T, rollout_is_weights=w, **ours_kw)
    # verl divides row sums by (L_i + 1e-8) in seq-mean-token-mean and geo_mean: rtol 1e-7
    assert loss.item() == pytest.approx(verl_loss.item(), rel=1e-7, abs=1e-10)
    g_verl = torch.autograd.grad(verl_loss, lp)[0] * mask
    g_ours = torch.autograd.grad(loss, lp)[0]
    assert torch.allclose(g_ours, g_verl, rtol=1e-7, atol=1e-10)
    # verl's masked_mean divides by (count + 1e-8): metrics agree to ~1e-9
    if mode in ("vanilla", "gspo", "cispo", "sapo", "geo_mean", "dro"):
        assert metrics["ppo_kl"].item() == pytest.approx(verl_metrics["actor/ppo_kl"], abs=1e-8)
    if mode in ("vanilla", "gspo", "cispo"):
        assert metrics["clipfrac"].item() == pytest.approx(verl_metrics["actor/pg_clipfrac"], abs=1e-8)
    if mode == "vanilla":
        assert metrics["clipfrac_dual"].item() == pytest.approx(verl_metrics["actor/pg_clipfrac_lower"], abs=1e-8)
    if mode == "clip_cov":
        assert metrics["covfrac"].item() == pytest.approx(verl_metrics["actor/pg_clipfrac"], abs=1e-8)
        assert metrics["covfrac"].item() > 0


@pytest.mark.parametrize("agg", AGG_MODES)
def test_global_batch_info_matches_our_global_normalisers(agg):
    lp, old, adv, mask, _ = _data(1)
    n = normalizers(mask.bool())
    info = dict(dp_size=2, batch_num_tokens=int(n["num_tokens"]), global_batch_size=int(n["num_seqs"]), loss_scale_factor=11)
    cfg = _cfg(clip_ratio=0.2, clip_ratio_c=3.0, global_batch_info=info)
    for a, b in [(0, 2), (2, 6)]:
        verl_loss, _ = core.get_policy_loss_fn("vanilla")(old[a:b], lp[a:b], adv[a:b], mask[a:b], loss_agg_mode=agg, config=cfg)
        ours, _ = policy_loss("ppo_clip", lp[a:b], old[a:b], adv[a:b], mask[a:b].bool(), agg=agg, clip_ratio_c=3.0,
                              norm_const=11, dp_size=2, **n)
        assert ours.item() == pytest.approx(verl_loss.item(), rel=1e-7, abs=1e-10)


@pytest.mark.parametrize("kind", ["kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3", "k1+", "k3+", "abs+", "low_var_kl+"])
def test_kl_estimators_match_verl(kind):
    g = torch.Generator().manual_seed(2)
    ref = -torch.rand(3, 5, generator=g, dtype=D) * 4
    lp = (ref + 2.0 * torch.randn(3, 5, generator=g, dtype=D)).requires_grad_(True)
    lp_big = torch.tensor([[30.0, -30.0]], dtype=D, requires_grad=True)  # exercises the k3 clamps
    for x, r in ((lp, ref), (lp_big, torch.zeros(1, 2, dtype=D))):
        a, b = kl_penalty(x, r, kind), core.kl_penalty(x, r, kind)
        assert torch.allclose(a, b, atol=1e-12)
        assert torch.allclose(torch.autograd.grad(a.sum(), x)[0], torch.autograd.grad(b.sum(), x)[0], atol=1e-12)


@pytest.mark.parametrize("agg", AGG_MODES)
def test_value_loss_matches_verl(agg):
    g = torch.Generator().manual_seed(3)
    _, _, _, mask, _ = _data()
    old_v = torch.randn(B, T, generator=g, dtype=D)
    v = (old_v + 0.4 * torch.randn(B, T, generator=g, dtype=D)).requires_grad_(True)
    ret = torch.randn(B, T, generator=g, dtype=D)
    verl_loss, verl_clipfrac = core.compute_value_loss(v, ret, old_v, mask, cliprange_value=0.2, loss_agg_mode=agg)
    ours, m = value_loss(v, old_v, ret, mask.bool(), clip_range=0.2, agg=agg, norm_const=T)
    assert ours.item() == pytest.approx(verl_loss.item(), rel=1e-7, abs=1e-10)
    assert m["vf_clipfrac"].item() == pytest.approx(verl_clipfrac.item(), abs=1e-8)
    gv = torch.autograd.grad(verl_loss, v)[0] * mask
    assert torch.allclose(torch.autograd.grad(ours, v)[0], gv, rtol=1e-7, atol=1e-10)
