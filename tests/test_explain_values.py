"""`grouprl explain NAME` prints each estimator's worked example: the printed advantages equal values
derived here independently, in numpy float64 from the formula in the estimator's docstring (the
paper's equation, cited per function), not by calling the estimator."""

from __future__ import annotations

import re
from math import comb

import numpy as np
from ref_numpy import per_group as _per_group
from ref_numpy import zscore as _z
import pytest
from typer.testing import CliRunner

from grouprl.advantages import ESTIMATORS
from grouprl.cli import app

runner = CliRunner()
EPS = 1e-6


def _ex(name):
    ex = ESTIMATORS[name].example
    r = np.asarray(ex["rewards"], dtype=np.float64)
    g = np.asarray(ex.get("group", [0] * len(r)))
    m = np.asarray(ex.get("mask", [[1]] * len(r)), dtype=bool)
    return ex, r, g, m


def _whiten_tokens(per_row, m):
    """verl masked_whiten over the trained tokens: (x − mean)/sqrt(var_unbiased + 1e-8)."""
    x = np.broadcast_to(per_row[:, None], m.shape) if per_row.ndim == 1 else per_row
    v = x[m]
    out = (x - v.mean()) / np.sqrt(v.var(ddof=1) + 1e-8)
    return np.where(m, out, 0.0)


def _gae(rewards, values, m, gamma, lam, truncated=None):
    """GAE (arXiv:1506.02438 Eq. 16) over each row's trained tokens (masked tokens skipped), the
    reward on the last trained token, terminal value 0; a truncated row (T-PPO EGAE, arXiv:2506.15050)
    has no reward and bootstraps its last token with its own value."""
    B, T = m.shape
    out = np.zeros((B, T))
    for i in range(B):
        idx = np.flatnonzero(m[i])
        adv = 0.0
        for j in range(len(idx) - 1, -1, -1):
            t = idx[j]
            last = j == len(idx) - 1
            trunc = truncated is not None and truncated[i]
            if last:
                nxt, r = (values[i][t], 0.0) if trunc else (0.0, rewards[i])
            else:
                nxt, r = values[i][idx[j + 1]], 0.0
            delta = r + gamma * nxt - values[i][t]
            adv = delta + (gamma * lam * adv if not last else 0.0)
            out[i, t] = adv
    return out


def grpo():  # DeepSeekMath arXiv:2402.03300, §4.1.2: (r − mean) / (std + ε), std unbiased (verl)
    _, r, g, _ = _ex("grpo")
    return _per_group(r, g, _z)


def dr_grpo():  # arXiv:2503.20783: r − mean
    _, r, g, _ = _ex("dr_grpo")
    return _per_group(r, g, lambda x: x - x.mean())


def rloo():  # arXiv:2402.14740: r_i − mean of the others = n/(n−1)·(r_i − mean)
    _, r, g, _ = _ex("rloo")
    return _per_group(r, g, lambda x: len(x) / (len(x) - 1) * (x - x.mean()))


def dapo():  # arXiv:2503.14476 Eq. 9: GRPO's standardisation on ±1 rewards
    _, r, g, _ = _ex("dapo")
    return _per_group(r, g, _z)


def gpg():  # arXiv:2504.02546 (verl): α·(r − mean_g), α = B / #{r ≠ 0}
    _, r, g, _ = _ex("gpg")
    alpha = len(r) / max(1, int((r != 0).sum()))
    return _per_group(r, g, lambda x: alpha * (x - x.mean()))


def opo():  # arXiv:2505.23585: b = Σ|o_j| r_j / Σ|o_j|, A = r − b on every trained token
    _, r, g, m = _ex("opo")
    L = m.sum(1).astype(float)
    b = np.zeros_like(r)
    for k in np.unique(g):
        s = g == k
        b[s] = (L[s] * r[s]).sum() / L[s].sum()
    return np.where(m, (r - b)[:, None], 0.0)


def remax():  # arXiv:2310.10505: r − r(greedy)
    ex, r, _, _ = _ex("remax")
    return r - np.asarray(ex["reward_baselines"])


def ngrpo():  # arXiv:2509.18851: statistics over the group plus k virtual r_max samples
    ex, r, g, _ = _ex("ngrpo")

    def f(x):
        aug = np.concatenate([x, [1.0]])  # r_max = 1, k = 1 (defaults)
        return (x - aug.mean()) / (aug.std(ddof=1) + EPS)

    return _per_group(r, g, f)


def pshw():  # Confucius3-Math arXiv:2506.18330: (R − μ)·(α μ + 1.256), α = −0.256
    _, r, g, _ = _ex("pshw")
    return _per_group(r, g, lambda x: (x - x.mean()) * (-0.256 * x.mean() + 1.256))


def hapo_tlga():  # HAPO arXiv:2509.16591 TLGA: token-weighted mean and population std
    _, r, g, m = _ex("hapo_tlga")
    L = m.sum(1).astype(float)
    mu = (L * r).sum() / L.sum()
    sd = np.sqrt((L * (r - mu) ** 2).sum() / L.sum())
    return np.where(m, ((r - mu) / (sd + EPS))[:, None], 0.0)


def advevo_public():  # AdvEvo-MARL arXiv:2510.01586 (proposed reading): A = R − mean of the role's pool
    _, r, g, _ = _ex("advevo_public")
    return r - r.mean()  # one group, one role


def copo_global():  # COPO arXiv:2508.04138: prompts' accuracies standardised across the batch
    _, r, g, _ = _ex("copo_global")
    acc = np.array([r[g == k].mean() for k in np.unique(g)])
    return _z(acc)[g]


def maxmin():  # MaxMin-RLHF arXiv:2402.08925: GRPO on the component with the lowest mean
    ex, _, g, _ = _ex("maxmin")
    c = np.asarray(ex["reward_components"], dtype=np.float64)
    worst = int(np.argmin(c.mean(0)))
    return _per_group(c[:, worst], g, _z)


def gdpo():  # GDPO arXiv:2601.05242: per-component z in the group, summed, whitened over tokens
    ex, _, g, m = _ex("gdpo")
    c = np.asarray(ex["reward_components"], dtype=np.float64)
    s = sum(_per_group(c[:, k], g, _z) for k in range(c.shape[1]))
    return _whiten_tokens(s, m)[:, 0]


def reinforce_pp_baseline():  # arXiv:2501.03262: r − group mean, tiled, whitened over tokens
    _, r, g, m = _ex("reinforce_pp_baseline")
    return _whiten_tokens(_per_group(r, g, lambda x: x - x.mean()), m)


def reinforce_pp():  # arXiv:2501.03262: discounted reward-to-go (masked tokens carry it), whitened
    ex, r, _, m = _ex("reinforce_pp")
    gamma = ex["kwargs"]["gamma"]
    G = np.zeros(m.shape)
    for i in range(len(r)):
        idx = np.flatnonzero(m[i])
        acc = 0.0
        for j in range(len(idx) - 1, -1, -1):
            acc = (r[i] if j == len(idx) - 1 else 0.0) + gamma * acc
            G[i, idx[j]] = acc
    return _whiten_tokens(G, m)


def gae():
    ex, r, _, m = _ex("gae")
    return _gae(r, np.asarray(ex["values"]), m, ex["kwargs"]["gamma"], ex["kwargs"]["lam"])


def egae():
    ex, r, _, m = _ex("egae")
    return _gae(r, np.asarray(ex["values"]), m, ex["kwargs"]["gamma"], ex["kwargs"]["lam"], ex["truncated"])


def grpo_passk():  # verl grpo_passk (arXiv:2503.19595): the unique best gets (max − second)/(std + ε)
    _, r, g, _ = _ex("grpo_passk")

    def f(x):
        out = np.zeros_like(x)
        srt = np.sort(x)[::-1]
        if srt[0] > srt[1]:
            out[np.argmax(x)] = (srt[0] - srt[1]) / (x.std(ddof=1) + EPS)
        return out

    return _per_group(r, g, f)


def bgae():  # SRPO/GREAM arXiv:2510.20815: z-score plus the pass@K bonus (K = 4) on exact matches
    _, r, g, _ = _ex("bgae")
    n, K = len(r), 4
    exact = r == 1.0
    c = int(exact.sum())
    rho = 1 - comb(n - c, K) / comb(n, K)
    sigma = np.sqrt(rho * (1 - rho))
    pos = (1 - rho) / (sigma + EPS)
    neg = (1 - rho - comb(n - c - 1, K - 1) / comb(n - 1, K - 1)) / (sigma + EPS)
    return _z(r) + np.where(exact, pos, neg)


def canon():  # CANON arXiv:2509.23962, entropy version, Z = 1: halves by a stable sort of the metric
    ex, r, _, _ = _ex("canon")
    lam, alpha = ex["kwargs"]["lam"], ex["kwargs"]["alpha"]
    order = np.argsort(np.asarray(ex["metric"]), kind="stable")
    low = np.zeros(len(r), bool)
    low[order[: len(r) // 2]] = True
    mu_lo, mu_hi = r[low].mean(), r[~low].mean()
    hi_adv = lam * (r - alpha * mu_lo) + (1 - lam) * (r - mu_hi)
    lo_adv = lam * (alpha * r - mu_hi) + (1 - lam) * (r - mu_lo)
    return np.where(low, lo_adv, hi_adv)


DERIVED = {f.__name__: f for f in (grpo, dr_grpo, rloo, dapo, gpg, opo, remax, ngrpo, pshw, hapo_tlga, advevo_public,
                                  copo_global, maxmin, gdpo, reinforce_pp_baseline, reinforce_pp, gae, egae,
                                  grpo_passk, bgae, canon)}

# Worked examples not re-derived here (their module tests hold the paper's numbers); for these the
# test checks that the printed values are the estimator's own, to the printed precision.
NOT_DERIVED = {
    "canon_anneal": "schedule over batch accuracy: test_canon.py",
    "canon_cosine": "cosine schedule of the mix: test_canon.py",
    "canon_cosine_r": "cosine schedule of the mix: test_canon.py",
    "canon_random": "random regrouping: test_canon.py",
    "copo": "entropy-blended local/global advantage: test_copo.py",
    "gigpo": "episode and step groups: test_gigpo.py",
    "mars": "turn-level returns: test_mars.py",
    "salt": "rollout-tree refinement: test_salt.py",
    "spo_chain": "segment values: test_spo_egae.py",
    "spo_tree": "tree node advantages: test_spo_egae.py",
    "optimal_token_baseline": "verl's optimal token baseline: test_estimators.py",
}


def _printed(name) -> np.ndarray:
    res = runner.invoke(app, ["explain", name], terminal_width=200)
    assert res.exit_code == 0, res.output
    tail = res.output.split("worked example", 1)[1].rsplit("advantage", 1)[1]
    return np.array([float(x) for x in re.findall(r"[+-]\d+\.\d{4}", tail)])


def test_every_example_is_derived_or_listed():
    with_example = {n for n, i in ESTIMATORS.items() if i.example and not n.startswith("_")}
    assert not set(DERIVED) & set(NOT_DERIVED)
    assert with_example == set(DERIVED) | set(NOT_DERIVED), with_example ^ (set(DERIVED) | set(NOT_DERIVED))


@pytest.mark.parametrize("name", sorted(DERIVED))
def test_explain_prints_the_independently_derived_values(name):
    want = np.asarray(DERIVED[name](), dtype=np.float64).reshape(-1)
    got = _printed(name)
    assert got.shape == want.shape, (got, want)
    np.testing.assert_allclose(got, np.round(want, 4), atol=1.01e-4, rtol=0)


@pytest.mark.parametrize("name", sorted(NOT_DERIVED))
def test_explain_prints_the_estimators_own_values(name):
    from grouprl.advantages import compute_advantages
    from grouprl.advantages.registry import example_batch

    batch, kw = example_batch(ESTIMATORS[name].example)
    adv = compute_advantages(name, batch, **kw)
    want = (adv[:, 0] if adv.shape[1] == 1 else adv).reshape(-1).double().numpy()
    np.testing.assert_allclose(_printed(name), want, atol=1.01e-4, rtol=0)
