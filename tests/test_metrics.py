"""Metrics: fairness (group-fairness-metrics.md section 5), calibration, ranking accuracy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from grouprl.metrics import (
    balance_score,
    brier_score,
    calibration_report,
    expected_calibration_error,
    fairness_report,
    fairness_summary,
    gini,
    group_table,
    minmax_normalise,
    percentile,
    ranking_accuracy,
    sequence_logprob,
    within_group_pairs,
)

U = [3.2, 4.1, 5.0, 4.4, 6.0]


# ---------------------------------------------------------------- fairness, spec worked example
def test_fairness_spec_example():
    s = fairness_summary(U)
    assert s["total"] == pytest.approx(22.7)
    assert s["worst"] == pytest.approx(3.2)
    assert torch.allclose(minmax_normalise(U), torch.tensor([0, 0.3214, 0.6429, 0.4286, 1], dtype=torch.float64), atol=1e-4)
    assert s["p20"] == pytest.approx(0.2571, abs=1e-4)
    assert s["gini"] == pytest.approx(0.1145, abs=1e-4)


def test_gini_equal_and_one_hot():
    assert gini([2.5] * 7) == 0.0
    for n in (2, 5, 10):
        assert gini([0.0] * (n - 1) + [3.0]) == pytest.approx((n - 1) / n)
    assert gini([0.0, 0.0]) == 0.0


def test_gini_matches_double_sum_definition():
    x = np.random.default_rng(0).uniform(0, 5, 13)
    direct = np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) ** 2 * x.mean())
    assert gini(x.tolist()) == pytest.approx(direct, rel=1e-12)


def test_gini_rejects_negative_and_nan():
    with pytest.raises(ValueError, match="row 1 is -1.0 < 0"):
        gini([1.0, -1.0])
    with pytest.raises(ValueError, match="row 0 is nan"):
        gini([float("nan")])


def test_p20_constant_values_is_one():
    assert percentile([0.4, 0.4, 0.4]) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 20, normalise=False) == pytest.approx(1.8)  # numpy linear
    assert percentile(U, 20, normalise=False) == pytest.approx(float(np.percentile(U, 20)))


def test_group_table_and_report():
    scores = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    groups = ["math", "math", "code", "code", "chat", "math"]
    table, summary = fairness_report(scores, groups)
    assert table.labels == ["math", "code", "chat"]
    assert torch.allclose(table.mean, torch.tensor([1 / 3, 1.0, 0.0], dtype=torch.float64))
    assert table.n.tolist() == [3, 2, 1]
    assert summary["worst"] == 0.0 and summary["gini"] == pytest.approx(gini([1 / 3, 1.0, 0.0]))
    assert "math" in table.format() and table.rows()[1] == {"group": "code", "score": 1.0, "n": 2}
    t = group_table(scores, torch.tensor([5, 5, 2, 2, 9, 5]))
    assert t.labels == [2, 5, 9] and t.n.tolist() == [2, 3, 1]
    with pytest.raises(ValueError, match="lengths differ"):
        group_table(scores, ["a"])


# ---------------------------------------------------------------- calibration, hand-computed
P = [0.1, 0.4, 0.35, 0.8]
Y = [0, 0, 1, 1]


def test_brier_small_table():
    # (0.01 + 0.16 + 0.4225 + 0.04) / 4
    assert brier_score(P, Y) == pytest.approx(0.158125)
    assert brier_score([1.0, 0.0], [1, 0]) == 0.0


def test_ece_small_table():
    # 2 bins: [0, .5) holds p = .1 .4 .35 (mean .28333, y mean 1/3) ; [.5, 1] holds .8 (y 1)
    assert expected_calibration_error(P, Y, n_bins=2) == pytest.approx(0.75 * 0.05 + 0.25 * 0.2)
    # 10 bins: every item alone in its bin -> mean |y - p|
    assert expected_calibration_error(P, Y, n_bins=10) == pytest.approx(np.mean(np.abs(np.array(P) - Y)))
    assert expected_calibration_error([1.0], [1.0], n_bins=10) == 0.0  # p = 1 falls in the last bin


def test_balance_small_table():
    # p < .5: p - y -> 0.1, 0.4, -0.65 ; p >= .5: y - p -> 0.2
    assert balance_score(P, Y) == pytest.approx((0.1 + 0.4 - 0.65 + 0.2) / 4)
    assert balance_score([0.5], [0]) == -0.5 and balance_score([0.5], [1]) == 0.5
    assert balance_score([1.0], [0]) == -1.0


def test_balance_score_properties():
    true_p = torch.tensor([0.1, 0.3, 0.45, 0.55, 0.7, 0.95], dtype=torch.float64)
    # perfectly calibrated: expected gain 0 (fractional outcome = expectation of Bernoulli outcomes)
    assert balance_score(true_p, true_p) == 0.0
    # over-confident (pushed away from 0.5 on the same side): -mean |q - p|
    q = torch.tensor([0.0, 0.2, 0.4, 0.6, 0.9, 1.0], dtype=torch.float64)
    assert balance_score(q, true_p) == pytest.approx(-float((q - true_p).abs().mean()))
    # under-confident (toward 0.5): +mean |q - p|
    q = torch.tensor([0.2, 0.4, 0.49, 0.5, 0.6, 0.8], dtype=torch.float64)
    assert balance_score(q, true_p) == pytest.approx(float((q - true_p).abs().mean()))
    # sampled Bernoulli outcomes of a calibrated predictor: near 0
    g = torch.Generator().manual_seed(0)
    p = torch.rand(20000, generator=g, dtype=torch.float64)
    y = (torch.rand(20000, generator=g, dtype=torch.float64) < p).double()
    assert abs(balance_score(p, y)) < 0.01


def test_calibration_report_and_errors():
    r = calibration_report(P, Y, n_bins=2)
    assert r["n"] == 4 and r["brier"] == pytest.approx(0.158125) and r["ece"] == pytest.approx(0.0875)
    with pytest.raises(ValueError, match="pred row 0 is 1.5, outside"):
        brier_score([1.5], [1])
    with pytest.raises(ValueError, match="n_bins=0"):
        expected_calibration_error(P, Y, 0)


# ---------------------------------------------------------------- ranking accuracy
def test_within_group_pairs_complete():
    g = torch.tensor([2, 0, 2, 1, 0, 2])
    i, j = within_group_pairs(g)
    got = {tuple(sorted(p)) for p in zip(i.tolist(), j.tolist())}
    want = {(a, b) for a, b in itertools.combinations(range(6), 2) if g[a] == g[b]}
    assert got == want and len(i) == len(want)


def test_ranking_accuracy_hand_computed():
    # group A: rewards 1, 0, .5 with log-probs -1, -3, -2: all 3 pairs ordered right
    # group B: rewards 1, 1, 0 with -5, -1, -1: (1 vs 0: -5 < -1 wrong = 0), (1 vs 0: tie = 0.5); equal pair skipped
    r = torch.tensor([1.0, 0.0, 0.5, 1.0, 1.0, 0.0])
    lp = torch.tensor([-1.0, -3.0, -2.0, -5.0, -1.0, -1.0])
    g = torch.tensor([0, 0, 0, 1, 1, 1])
    res = ranking_accuracy(r, lp, g)
    assert res.pairs == 5 and res.accuracy == pytest.approx(3.5 / 5)
    perm = torch.tensor([4, 0, 5, 2, 1, 3])  # row order does not matter
    assert ranking_accuracy(r[perm], lp[perm], g[perm]).accuracy == pytest.approx(0.7)
    assert np.isnan(ranking_accuracy([1.0, 1.0], [0.0, -1.0], [0, 0]).accuracy)


def test_sequence_logprob():
    lp = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -9.0, -9.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    assert sequence_logprob(lp, m).tolist() == [-3.0, -0.5]


# ---------------------------------------------------------------- groupwise regret (arXiv 2310.04652)
# The spec's four rounds: g1 = rounds 1, 2, 4; g2 = rounds 2, 3 (overlapping at round 2). Learner
# losses 0.2, 0.4, 0.5, 0.1: g1 sums to 0.7, g2 to 0.9. Hypothesis h1 = (0.3, 0.3, 0.2, 0.1) sums to
# 0.7 on g1 and 0.5 on g2; h2 = 0.5 everywhere sums to 1.5 and 1.0. Best fixed hypothesis: 0.7 and 0.5,
# so Regret = (0.7 − 0.7, 0.9 − 0.5) = (0, 0.4).
REG_LEARNER = [2, 4, 5, 1]
REG_HYP = [[3, 5], [3, 5], [2, 5], [1, 5]]
REG_MEMBER = [[True, False], [True, True], [False, True], [True, False]]


def test_groupwise_regret_spec_example():
    from grouprl.metrics import groupwise_regret

    # in tenths the sums are integers: exact
    r10 = groupwise_regret(torch.tensor(REG_LEARNER), torch.tensor(REG_HYP), torch.tensor(REG_MEMBER))
    assert r10.dtype == torch.float64 and r10.tolist() == [0.0, 4.0]
    r = groupwise_regret(torch.tensor(REG_LEARNER, dtype=torch.float64) / 10,
                         torch.tensor(REG_HYP, dtype=torch.float64) / 10, torch.tensor(REG_MEMBER))
    assert r.tolist() == pytest.approx([0.0, 0.4], abs=1e-15)


def test_groupwise_regret_matches_definition_and_edge_cases():
    from grouprl.metrics import groupwise_regret

    g = torch.Generator().manual_seed(0)
    T, H, G = 40, 5, 6
    ll, hl = torch.rand(T, generator=g, dtype=torch.float64), torch.rand(T, H, generator=g, dtype=torch.float64)
    mem = torch.rand(T, G, generator=g) < 0.4
    mem[:, 5] = False  # a group without rounds: regret 0
    r = groupwise_regret(ll, hl, mem)
    for j in range(G):
        rows = [t for t in range(T) if mem[t, j]]
        expect = sum(ll[t].item() for t in rows) - min(sum(hl[t, h].item() for t in rows) for h in range(H))
        assert r[j].item() == pytest.approx(expect, abs=1e-12)
    assert r[5].item() == 0.0
    # the learner is a hypothesis: regret >= 0 on every group, 0 exactly where it is the best one
    h = int((mem.double().T @ hl)[0].argmin())  # the best hypothesis on group 0
    r2 = groupwise_regret(hl[:, h], hl, mem)
    best = (mem.double().T @ hl).argmin(dim=1) == h
    assert bool(best.any()) and bool((r2 >= 0).all()) and bool((r2[best] == 0).all()) and bool((r2[~best & mem.any(0)] > 0).all())


def test_groupwise_regret_errors():
    from grouprl.metrics import groupwise_regret

    ll, hl, m = torch.tensor(REG_LEARNER) / 10.0, torch.tensor(REG_HYP) / 10.0, torch.tensor(REG_MEMBER)
    with pytest.raises(ValueError, match=r"learner_loss must be 1-D"):
        groupwise_regret(ll[:, None], hl, m)
    with pytest.raises(ValueError, match=r"hypothesis_loss must be \(T, H\) = \(4, H\)"):
        groupwise_regret(ll, hl[:3], m)
    with pytest.raises(ValueError, match="at least one hypothesis"):
        groupwise_regret(ll, hl[:, :0], m)
    with pytest.raises(ValueError, match=r"membership must be \(T, G\)"):
        groupwise_regret(ll, hl, m[:, 0])
    with pytest.raises(ValueError, match="membership has dtype torch.int64; pass a bool"):
        groupwise_regret(ll, hl, m.long())
    with pytest.raises(ValueError, match="hypothesis_loss row 2, column 1 is nan"):
        groupwise_regret(ll, hl.index_put((torch.tensor(2), torch.tensor(1)), torch.tensor(float("nan"))), m)
    with pytest.raises(ValueError, match="learner_loss row 0 is inf"):
        groupwise_regret(torch.tensor([float("inf"), 0, 0, 0]), hl, m)
