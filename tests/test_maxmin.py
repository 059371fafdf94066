"""MaxMin-RLHF: the worked examples of maxmin-rlhf.md section 5, the K = 1 identity and the EM."""

import math

import pytest
import torch

from grouprl import Rollouts, compute_advantages
from grouprl.advantages.maxmin import worst_group
from grouprl.rewards.maxmin import bt_log_likelihood, e_step, fit_reward_mixture


def test_e_step_example():
    margins = torch.tensor([[2.0, -1.0], [1.0, 0.5]])  # two comparisons of one user, K = 2
    assign, ll = e_step(margins, [7, 7])
    assert math.exp(ll[0, 0]) == pytest.approx(0.644, abs=1e-3)
    assert math.exp(ll[0, 1]) == pytest.approx(0.167, abs=1e-3)
    assert assign.tolist() == [0]


def test_e_step_several_users_and_ties():
    margins = torch.tensor([[2.0, -1.0], [1.0, 0.5], [-3.0, 1.0], [0.0, 0.0]])
    assign, _ = e_step(margins, ["u", "u", "v", "w"])
    assert assign.tolist() == [0, 1, 0]  # tie for w -> lowest index
    ll = bt_log_likelihood(margins, torch.tensor([0, 0, 1, 2]))
    assert ll.shape == (3, 2)
    with pytest.raises(ValueError, match="margins"):
        bt_log_likelihood(margins[:, 0], torch.tensor([0, 0, 1, 2]))


def test_policy_step_example():
    r = torch.tensor([[1.0, 0.5], [0.5, 0.0], [1.0, 0.5], [0.5, 0.0]])  # means 0.75 and 0.25
    vec, u, means = worst_group(r)
    assert u == 1 and torch.equal(vec, r[:, 1])
    assert torch.allclose(means, torch.tensor([0.75, 0.25], dtype=torch.float64))
    vec2, u2, _ = worst_group([r[:, 0], r[:, 1]])  # one reward vector per reward function
    assert u2 == 1 and torch.equal(vec2, r[:, 1])
    b = Rollouts(rewards=[0.0] * 4, group=[0] * 4, mask=torch.ones(4, 2), reward_components=r)
    a = compute_advantages("maxmin", b)
    ref = compute_advantages("grpo", b.replace(rewards=r[:, 1]))
    assert torch.equal(a, ref)


def test_zscore_normalisation_changes_the_pick():
    r = torch.tensor([[10.0, 0.2], [12.0, 0.4], [11.0, 0.3]])
    assert worst_group(r)[1] == 1  # raw scale
    _, u, means = worst_group(r, normalize="zscore", ref_mean=[12.0, 0.1], ref_std=[1.0, 0.1])
    assert u == 0  # model 0 is below its reference mean, model 1 above
    # (11 − 12)/(1 + 1e-6) and (0.3 − 0.1)/(0.1 + 1e-6)
    assert means.tolist() == pytest.approx([-1 / (1 + 1e-6), 0.2 / (0.1 + 1e-6)], rel=1e-6)
    assert worst_group(torch.tensor([[1.0, 1.0]]))[1] == 0  # tie -> lowest index
    with pytest.raises(ValueError, match="ref_mean"):
        worst_group(r, normalize="zscore", ref_mean=[1.0], ref_std=[1.0])


def test_zscore_without_reference_statistics_is_refused():
    # z-scoring with the batch's own statistics makes every mean 0: the pick would be arbitrary
    r = torch.tensor([[10.0, 0.2], [12.0, 0.4], [11.0, 0.3]])
    for kw in ({}, {"ref_mean": [0.0, 0.0]}, {"ref_std": [1.0, 1.0]}):
        with pytest.raises(ValueError, match="needs reference statistics ref_mean and ref_std"):
            worst_group(r, normalize="zscore", **kw)
    b = Rollouts(rewards=[0.0] * 3, group=[0] * 3, mask=torch.ones(3, 1), reward_components=r)
    with pytest.raises(ValueError, match="needs reference statistics"):  # when bound, before any batch
        compute_advantages("maxmin", b, normalize="zscore")
    from grouprl.advantages.registry import parse

    with pytest.raises(ValueError, match="needs reference statistics"):
        parse("0.5*maxmin + 0.5*grpo", normalize="zscore")


@pytest.mark.parametrize("base", ["grpo", "dr_grpo", "ngrpo"])
def test_one_group_equals_plain_step(base):
    g = torch.Generator().manual_seed(0)
    r = torch.randint(0, 2, (24,), generator=g).float()
    group = torch.randint(0, 4, (24,), generator=g)
    b = Rollouts(rewards=r, group=group, mask=torch.rand(24, 3, generator=g) > 0.3, reward_components=r[:, None])
    assert torch.equal(compute_advantages("maxmin", b, base=base), compute_advantages(base, b))
    kw = {"singleton": "raw"}
    assert torch.equal(compute_advantages("maxmin", b, base=base, base_kwargs=kw), compute_advantages(base, b, **kw))


def test_maxmin_errors():
    b = Rollouts(rewards=[0.0, 1.0], group=[0, 0], mask=torch.ones(2, 1), reward_components=[[0.0], [1.0]])
    with pytest.raises(TypeError, match="unknown hyperparameter"):
        compute_advantages("maxmin", b, base_kwargs={"sclae": "none"})
    with pytest.raises(ValueError, match="recurse"):
        compute_advantages("maxmin", b, base="maxmin")
    with pytest.raises(ValueError, match="reward_components"):
        compute_advantages("maxmin", Rollouts(rewards=[0.0], group=[0], mask=torch.ones(1, 1)))


def test_em_recovers_two_populations():
    g = torch.Generator().manual_seed(0)
    true = torch.tensor([[3.0, 0.0], [0.0, 3.0]], dtype=torch.float64)  # sentiment vs conciseness
    users = torch.arange(12).repeat_interleave(30)  # 12 users x 30 comparisons
    pop = (torch.arange(12) >= 8).long()  # 8 majority users, 4 minority
    x = torch.randn(users.numel(), 2, generator=g, dtype=torch.float64)
    p = torch.sigmoid((x * true[pop[users]]).sum(1))
    win = torch.rand(users.numel(), generator=g, dtype=torch.float64) < p
    d = torch.where(win[:, None], x, -x)  # preferred minus rejected features
    fit = fit_reward_mixture(d, users, 2, seed=1, m_steps=40, lr=1.0)
    a = fit.assignment
    assert fit.converged
    # the clustering equals the true populations up to a label swap
    assert torch.equal(a, pop) or torch.equal(a, 1 - pop)
    k_major = int(a[0])
    assert fit.theta[k_major, 0] > 1.0 and abs(float(fit.theta[k_major, 1])) < 0.8
    assert fit.rewards(torch.eye(2, dtype=torch.float64)).shape == (2, 2)


def test_em_empty_cluster_keeps_theta_without_reseed():
    d = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    init = torch.tensor([[1.0, 0.0], [-5.0, 3.0]], dtype=torch.float64)
    with pytest.warns(UserWarning, match=r"cluster\(s\) \[1\] of K=2 ended with no users"):
        fit = fit_reward_mixture(d, [0, 1], 2, init=init, iters=3, reseed_empty=False)
    assert fit.assignment.tolist() == [0, 0]
    assert torch.equal(fit.theta[1], init[1])
    assert fit.empty == (1,) and fit.reseeds == 0


def test_em_reseeds_an_empty_cluster():
    # user 0 agrees with model 0 on (1, 0); user 1's comparisons are (0.2, 0): a worse fit per
    # comparison under model 0 (log σ(0.2) < log σ(1)), so user 1 re-seeds the empty cluster 1
    d = torch.tensor([[1.0, 0.0], [0.2, 0.0]], dtype=torch.float64)
    init = torch.tensor([[1.0, 0.0], [-5.0, 3.0]], dtype=torch.float64)
    fit = fit_reward_mixture(d, [0, 1], 2, init=init, iters=1)
    assert fit.reseeds == 1 and fit.empty == ()
    # one M-step of 200 gradient steps on user 1's comparison alone moved θ_1 off its initial value
    assert not torch.equal(fit.theta[1], init[1])
    with pytest.warns(UserWarning, match="no users"):  # more clusters than users: nothing to re-seed with
        assert fit_reward_mixture(d[:1], [0], 2, seed=0).empty == (1,)


def _population(n_major: int, n_minor: int, seed: int, n_cmp: int = 30):
    """Users of two populations, 30 BT comparisons each on 2-d features: the majority values
    feature 0 (θ = (3, 0)), the minority feature 1 (θ = (0, 3))."""
    g = torch.Generator().manual_seed(seed)
    true = torch.tensor([[3.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    n = n_major + n_minor
    users = torch.arange(n).repeat_interleave(n_cmp)
    pop = (torch.arange(n) >= n_major).long()
    x = torch.randn(users.numel(), 2, generator=g, dtype=torch.float64)
    p = torch.sigmoid((x * true[pop[users]]).sum(1))
    win = torch.rand(users.numel(), generator=g, dtype=torch.float64) < p
    return torch.where(win[:, None], x, -x), users, pop


@pytest.mark.parametrize("n_major,n_minor", [(7, 3), (8, 4)])
def test_em_does_not_collapse_on_20_seeds(n_major, n_minor):
    # without re-seeding, a single restart put every user into one cluster on 4 (7:3) and 6 (8:4)
    # of these 20 seeds (measured before the change); now every seed recovers both populations
    collapsed = 0
    for seed in range(20):
        d, users, pop = _population(n_major, n_minor, seed)
        a = fit_reward_mixture(d, users, 2, seed=seed).assignment
        collapsed += int(a.unique().numel() < 2)
        assert torch.equal(a, pop) or torch.equal(a, 1 - pop), seed
    assert collapsed == 0


@pytest.mark.filterwarnings("ignore:fit_reward_mixture")
def test_em_restarts_keep_the_best_likelihood():
    d, users, pop = _population(7, 3, 3)
    one = [fit_reward_mixture(d, users, 2, seed=s, reseed_empty=False) for s in range(4)]
    best = fit_reward_mixture(d, users, 2, seed=0, restarts=4, reseed_empty=False)
    assert best.restart_objectives == tuple(f.objective for f in one)
    i = max(range(4), key=lambda r: one[r].objective)
    assert best.best_restart == i and best.objective == one[i].objective
    assert torch.equal(best.theta, one[i].theta)
    # the objective is the hard-EM log-likelihood Σ_h log Π_n σ(θ_{u(h)}·d_n)
    want = torch.nn.functional.logsigmoid((d * best.theta[best.assignment[users]]).sum(1)).sum()
    assert best.objective == pytest.approx(float(want), rel=1e-12)
