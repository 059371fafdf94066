"""Two-step trainer smoke runs of each outcome-level method by name, and the method hooks' state."""

from __future__ import annotations

import math

import numpy as np
from ref_numpy import per_group as _per_group
from ref_numpy import zscore as _z
import pytest
import torch

from grouprl.train import ConfigError, build_config, train
from grouprl.train.logging import read_jsonl
from grouprl.train.methods import MethodHooks, estimator_takes
from test_train import tiny_overrides


def brevity(example, completion: str) -> float:
    """A second reward function for MaxMin: shorter completions score higher."""
    return 1.0 - len(completion) / 3.0


def _run(tmp_path, name, **kw):
    cfg = build_config(tiny_overrides(tmp_path, name=name, steps=2, eval_every=0, save_every=2, **kw))
    summary = train(cfg)
    rows = read_jsonl(tmp_path / "runs" / name / "metrics.jsonl")
    assert len(rows) == 2
    for r in rows:
        assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"])
    return summary, rows


METHODS = {
    "ngrpo": dict(estimator="ngrpo", loss="ngrpo_clip", sampler="dapo_dynamic",
                  sampler_kwargs={"filter": "all_correct", "max_rounds": 2}),
    "canon": dict(estimator="canon"),
    "canon_cosine": dict(estimator="canon_cosine", estimator_kwargs={"warmup_steps": 1}),
    "pshw": dict(estimator="pshw", ter=True),
    "dapo": dict(estimator="dapo", loss="dapo_clip", agg="token-mean", overlong_buffer=2, mask_truncated=True,
                 sampler="dapo_dynamic", sampler_kwargs={"max_rounds": 2}),
    "bgae": dict(estimator="bgae", estimator_kwargs={"K": 2}),
    "copo": dict(estimator="copo", loss="copo", estimator_kwargs={"k": 5.0, "b": 1.0}),
    "copo_estimator_only": dict(estimator="copo"),
    "maxmin": dict(estimator="maxmin", reward_components=["task", "test_methods_train:brevity"]),
    "rsr": dict(sampler="recent_sample_recovery", sampler_kwargs={"max_rounds": 2}),
}


# ------------------------------------------------------------------------------------------
# Exact checks: every step's batch and advantages are recorded on the trainer's path (the
# MethodHooks.advantages call of grouprl.train.loop) and the logged metrics and the advantages are
# recomputed from them here, in numpy float64, from each paper's formula (not by the estimator).
def _rows(rec):
    b = rec["batch"]
    return b.rewards.double().numpy(), b.group.numpy(), b.mask.numpy()


def _row_adv(rec):
    """The per-row advantage (every trained token of a row carries it); NaN for rows without tokens."""
    a, m = rec["adv"].double().numpy(), rec["batch"].mask.numpy()
    return np.where(m.any(1), a.max(1, where=m, initial=-np.inf), np.nan) if m.any() else np.full(len(m), np.nan)


def _same(got, want, atol=2e-5):
    ok = ~np.isnan(got)
    np.testing.assert_allclose(got[ok], want[ok], atol=atol, rtol=1e-5)


def _grpo_check(rec, rows, cfg):  # DeepSeekMath arXiv:2402.03300 §4.1.2, std unbiased (verl)
    r, g, _ = _rows(rec)
    _same(_row_adv(rec), _per_group(r, g, _z))


def _ngrpo_check(rec, rows, cfg):  # NGRPO arXiv:2509.18851: stats over the group + one virtual r_max = 1
    r, g, _ = _rows(rec)
    want = _per_group(r, g, lambda x: (x - np.append(x, 1.0).mean()) / (np.append(x, 1.0).std(ddof=1) + 1e-6))
    _same(_row_adv(rec), want)
    for k in np.unique(g):  # the all_correct filter of the dynamic sampler
        assert r[g == k].min() < 1.0 - 1e-6


def _canon_check(rec, rows, cfg):  # CANON arXiv:2509.23962, λ = 1, α = 1, β = 0, Z = 1 (defaults)
    r, g, m = _rows(rec)
    ent = rec["batch"].entropy.double().numpy()
    metric = (ent * m).sum(1) / (m.sum(1) + 1e-8)
    want = np.zeros_like(r)
    for k in np.unique(g):
        idx = np.flatnonzero(g == k)
        order = idx[np.argsort(metric[idx], kind="stable")]
        low, high = order[: len(idx) // 2], order[len(idx) // 2:]
        if np.all(r[idx] == r[idx][0]):
            continue  # a constant group: 0
        want[high] = r[high] - r[low].mean()
        want[low] = r[low] - r[high].mean()
    _same(_row_adv(rec), want)


def _pshw_check(rec, rows, cfg):  # Confucius3-Math arXiv:2506.18330: (R − μ)(−0.256 μ + 1.256)
    r, g, _ = _rows(rec)
    _same(_row_adv(rec), _per_group(r, g, lambda x: (x - x.mean()) * (-0.256 * x.mean() + 1.256)))
    row = rows[rec["step"]]
    # TER: coef·sign(H − 0.55) with H the token-mean entropy (the trainer logs it as "entropy" too)
    assert row["ter/entropy"] == pytest.approx(row["entropy"], abs=1e-5)
    assert row["ter/coef"] == 0.001 * np.sign(row["entropy"] - 0.55)


def _dapo_check(rec, rows, cfg):  # DAPO arXiv:2503.14476 Eq. 13 (overlong shaping) and Eq. 9
    b = rec["batch"]
    r, g, m = _rows(rec)
    trunc = b.truncated.numpy()
    assert not m[trunc].any()  # overlong filtering: truncated rows get no loss
    L = np.where(trunc, cfg.max_new_tokens, m.sum(1))  # a truncated row used all max_new_tokens
    lmax, cache = cfg.max_new_tokens, cfg.overlong_buffer
    pen = np.where(L <= lmax - cache, 0.0, np.where(L <= lmax, (lmax - cache - L) / cache, -1.0))
    # the logged reward is the verifier's, before shaping
    assert (r - pen).mean() == pytest.approx(rows[rec["step"]]["reward"], abs=1e-6)
    _same(_row_adv(rec), _per_group(r, g, _z))


def _bgae_check(rec, rows, cfg):  # SRPO/GREAM arXiv:2510.20815: z-score + pass@K bonus, K = 2 here
    from math import comb

    r, g, _ = _rows(rec)

    def f(x, K=2):
        exact = x == 1.0
        n, c = len(x), int(exact.sum())
        if n < 2:
            return np.zeros_like(x)
        rho = 1 - comb(n - c, K) / comb(n, K)
        sig = np.sqrt(rho * (1 - rho))
        pos = (1 - rho) / (sig + 1e-6)
        neg = (1 - rho - comb(n - c - 1, K - 1) / comb(n - 1, K - 1)) / (sig + 1e-6)
        return _z(x) + np.where(exact, pos, neg)

    _same(_row_adv(rec), _per_group(r, g, f), atol=1e-4)


def _answer_entropy(b):
    ans, g = b.answer.numpy(), b.group.numpy()
    H = np.zeros(len(ans))
    for k in np.unique(g):
        _, counts = np.unique(ans[g == k], return_counts=True)
        p = counts / counts.sum()
        H[g == k] = -(p * np.log2(p)).sum()
    return H


def _copo_loss_check(rec, rows, cfg):  # COPO arXiv:2508.04138: w = sigmoid(k (H_q − b)), k = 5, b = 1
    H = _answer_entropy(rec["batch"])
    w = 1 / (1 + np.exp(-5.0 * (H - 1.0)))
    row = rows[rec["step"]]
    assert row["copo/answer_entropy"] == pytest.approx(H.mean(), abs=1e-6)
    assert row["copo/blend_weight"] == pytest.approx(w.mean(), abs=1e-6)


def _copo_est_check(rec, rows, cfg):  # COPO effective advantage (1 − w) A_glob + w A_loc ("only-soft")
    r, g, _ = _rows(rec)
    H = _answer_entropy(rec["batch"])
    w = 1 / (1 + np.exp(-5.0 * (H - 1.0)))
    ks = np.unique(g)
    glob = _z(np.array([r[g == k].mean() for k in ks]))
    a_glob = glob[np.searchsorted(ks, g)]
    _same(_row_adv(rec), (1 - w) * a_glob + w * _per_group(r, g, _z))


def _maxmin_check(rec, rows, cfg):  # MaxMin-RLHF arXiv:2402.08925: GRPO on the worst component
    b = rec["batch"]
    c = b.reward_components.double().numpy()
    worst = int(np.argmin(c.mean(0)))
    assert rows[rec["step"]]["maxmin/worst_group"] == worst
    # component "task" is the verifier's reward (the logged mean); the batch's reward is the worst-off
    # group's column (maxmin's declared reward_view), which whatever else learns from the reward sees
    assert rows[rec["step"]]["reward"] == pytest.approx(c[:, 0].mean(), abs=1e-6)
    assert np.array_equal(c[:, worst], b.rewards.double().numpy())
    _same(_row_adv(rec), _per_group(c[:, worst], b.group.numpy(), _z))


CHECKS = {
    "ngrpo": _ngrpo_check, "canon": _canon_check, "pshw": _pshw_check, "dapo": _dapo_check, "bgae": _bgae_check,
    "copo": _copo_loss_check, "copo_estimator_only": _copo_est_check, "maxmin": _maxmin_check, "rsr": _grpo_check,
    "canon_cosine": None,  # the cosine-restart mix: only the generic checks below
}


@pytest.fixture
def recorded(monkeypatch):
    recs = []
    original = MethodHooks.advantages

    def advantages(self, batch, step):
        adv = original(self, batch, step)
        recs.append({"batch": batch, "step": step, "adv": adv.detach().cpu()})
        return adv

    monkeypatch.setattr(MethodHooks, "advantages", advantages)
    return recs


def test_every_method_has_a_check():
    assert set(CHECKS) == set(METHODS)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_trains_and_its_numbers_are_exact(tmp_path, method, recorded):
    _summary, rows = _run(tmp_path, method, **METHODS[method])
    cfg = build_config(tiny_overrides(tmp_path, name=method, steps=2, **METHODS[method]))
    assert [rec["step"] for rec in recorded] == [0, 1]
    for rec in recorded:
        b, row = rec["batch"], rows[rec["step"]]
        r, g, m = _rows(rec)
        # generic, every method: the logged group diagnostics and |A| from the recorded batch
        const = [np.all(r[g == k] == r[g == k][0]) for k in np.unique(g)]
        assert row["frac_constant_groups"] == pytest.approx(np.mean(const), abs=1e-7)
        trunc = b.truncated.numpy()
        n_tok = np.where(trunc & ~m.any(1), cfg.max_new_tokens, m.sum(1)).sum()  # the sampled mask
        a = rec["adv"].double().numpy()
        assert row["adv_abs"] == pytest.approx(np.abs(a * m).sum() / n_tok, rel=1e-5, abs=1e-7)
        assert np.all(a[~m] == 0)
        if CHECKS[method] is not None:
            CHECKS[method](rec, rows, cfg)
    if method == "pshw":
        assert all("ter/coef" in r for r in rows)
    if method == "maxmin":  # exact values in the loop: tests/test_maxmin_pipeline.py
        for r in rows:  # the logged pick is the argmin of the logged group means (lowest index on ties)
            assert r["maxmin/worst_group"] == (0.0 if r["maxmin/F_0"] <= r["maxmin/F_1"] else 1.0)


def test_schedule_gets_step(tmp_path):
    assert estimator_takes("canon_cosine", "step") and not estimator_takes("grpo", "step")
    cfg = build_config(tiny_overrides(tmp_path, estimator="canon_cosine", steps=150))
    hooks = MethodHooks(cfg, None)
    from grouprl.core import Rollouts

    b = Rollouts(rewards=torch.tensor([1.0, 0.0, 1.0, 0.5]), group=torch.tensor([0, 0, 1, 1]),
                 mask=torch.ones(4, 2, dtype=torch.bool), entropy=torch.rand(4, 2))
    from grouprl.advantages import compute_advantages

    for step in (0, 40, 120):
        want = compute_advantages("canon_cosine", b, step=step, total_steps=cfg.steps)
        assert torch.equal(hooks.advantages(b, step), want)


def test_overlong_shaping_and_filter(tmp_path):
    from grouprl.core import Rollouts

    cfg = build_config(tiny_overrides(tmp_path, overlong_buffer=2, overlong_factor=1.0, mask_truncated=True))
    hooks = MethodHooks(cfg, None)
    mask = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 1]], dtype=torch.bool)
    b = Rollouts(rewards=torch.ones(4), group=torch.zeros(4, dtype=torch.long), mask=mask,
                 truncated=torch.tensor([False, False, False, True]))
    out = hooks.prepare(b, ["a"] * 4, [None] * 4)
    # L_max = 3, L_cache = 2: lengths 1, 2, 3 -> 0, -0.5, -1 (ramp (L_max - L_cache - |y|)/L_cache)
    assert torch.allclose(out.rewards, torch.tensor([1.0, 0.5, 0.0, 0.0]))
    assert not out.mask[3].any() and out.mask[2].all()


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="overlong_buffer"):
        MethodHooks(build_config(tiny_overrides(tmp_path, overlong_buffer=9)), None)
    with pytest.raises(ValueError, match="reward_components"):
        MethodHooks(build_config(tiny_overrides(tmp_path, estimator="maxmin")), None)
    with pytest.raises(ConfigError):
        build_config(tiny_overrides(tmp_path, overlong_buffer=-1))


def test_ter_state_round_trip(tmp_path):
    cfg = build_config(tiny_overrides(tmp_path, ter=True, ter_kwargs={"target": 0.5, "coef": 0.01}))
    a = MethodHooks(cfg, None)
    ent, m = torch.full((2, 3), 0.9), torch.ones(2, 3, dtype=torch.bool)
    a.before_update(ent, m, {})
    assert a.entropy_coef(0.0) == pytest.approx(-0.01)  # H above target: push entropy down
    b = MethodHooks(cfg, None)
    b.load_state_dict(a.state_dict())
    assert b.entropy_coef(0.1) == a.entropy_coef(0.1) and b.state_dict() == a.state_dict()
