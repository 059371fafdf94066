"""GiGPO: the worked examples of gigpo.md section 5, edge cases, state hashing, and a plain-Python
reference on random batches."""

import math
import random

import numpy as np
import pytest
import torch

from grouprl import Rollouts, compute_advantages
from grouprl.advantages.gigpo import gigpo_terms, similarity_keys, state_keys

# Spec example: A = s0 -> 0, s1 -> 10; B = s0, s3, s1 (10 at the end); C = s0, s3, s3 (timeout).
SPEC = dict(
    rewards=[10, 10, 10, 10, 10, 0, 0, 0],
    group=[0] * 8,
    trajectory=[0, 0, 1, 1, 1, 2, 2, 2],
    step=[0, 1, 0, 1, 2, 0, 1, 2],
    step_rewards=[0, 10, 0, 0, 10, 0, 0, 0],
    state_key=[0, 1, 0, 3, 1, 0, 3, 3],
)


def spec_batch(perm=None, **over):
    d = {**SPEC, **over}
    if perm is not None:
        d = {k: [v[i] for i in perm] for k, v in d.items()}
    n = len(d["rewards"])
    return Rollouts(mask=torch.ones(n, 2), **d)


def adv(batch, **kw):
    out = compute_advantages("gigpo", batch, **kw)
    assert torch.equal(out[:, 0], out[:, -1])
    return out[:, 0].double()


def close(x, y, tol=1e-4):
    return torch.allclose(torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64), atol=tol)


def test_step_returns_of_the_example():
    t = gigpo_terms(spec_batch(), gamma=0.95)
    assert close(t.step_returns, [9.5, 10, 9.025, 9.5, 10, 0, 0, 0])


def test_code_variant_episode_term():
    t = gigpo_terms(spec_batch(), mode="mean_norm", episode_stats="row")
    assert close(t.episode, [3.75] * 5 + [-6.25] * 3)
    t = gigpo_terms(spec_batch(), mode="mean_std_norm", episode_stats="row")
    assert close(t.episode, [0.7246] * 5 + [-1.2076] * 3)


def test_paper_variant_episode_term():
    t = gigpo_terms(spec_batch(), mode="mean_norm", episode_stats="trajectory")
    assert close(t.episode, [3.3333] * 5 + [-6.6667] * 3)
    t = gigpo_terms(spec_batch(), mode="mean_std_norm", episode_stats="trajectory")
    assert close(t.episode, [0.5774] * 5 + [-1.1547] * 3)


def test_step_groups_mean_norm():
    t = gigpo_terms(spec_batch(), mode="mean_norm")
    # rows A0 A1 B0 B1 B2 C0 C1 C2; s0: 3.325, 2.85, -6.175; s1: 0, 0; s3: 6.3333, -3.1667, -3.1667
    assert close(t.step, [3.325, 0, 2.85, 6.3333, 0, -6.175, -3.1667, -3.1667])
    assert t.num_step_groups == 3


def test_final_table_code_variant():
    a = adv(spec_batch(), mode="mean_norm", episode_stats="row")
    assert close(a, [7.075, 3.75, 6.6, 10.0833, 3.75, -12.425, -9.4167, -9.4167])
    a = adv(spec_batch(), mode="mean_std_norm", episode_stats="row")
    assert close(a, [1.3457, 0.7246, 1.2570, 1.8793, 0.7246, -2.3612, -1.7850, -1.7850])


def test_final_paper_variant_is_paper_episode_plus_step_terms():
    step = [3.325, 0, 2.85, 6.3333, 0, -6.175, -3.1667, -3.1667]
    ep = [3.3333] * 5 + [-6.6667] * 3
    a = adv(spec_batch(), mode="mean_norm")  # episode_stats="trajectory" is the default
    assert close(a, [e + s for e, s in zip(ep, step)])
    # mean_std_norm: paper episode term + the std-mode step term read off the code-variant table
    step_std = [1.3457 - 0.7246, 0.0, 1.2570 - 0.7246, 1.8793 - 0.7246, 0.0, -2.3612 + 1.2076, -1.7850 + 1.2076, -1.7850 + 1.2076]
    a = adv(spec_batch(), mode="mean_std_norm")
    assert close(a, [e + s for e, s in zip([0.5774] * 5 + [-1.1547] * 3, step_std)], tol=2e-4)


def test_omega_scales_the_step_term():
    a0 = adv(spec_batch(), mode="mean_norm", omega=0.0)
    a2 = adv(spec_batch(), mode="mean_norm", omega=2.0)
    t = gigpo_terms(spec_batch(), mode="mean_norm")
    assert close(a0, t.episode) and close(a2, t.episode + 2 * t.step)


def test_row_order_and_trajectory_labels_do_not_matter():
    perm = [5, 2, 7, 0, 4, 1, 6, 3]
    a = adv(spec_batch(), mode="mean_std_norm")
    b = adv(spec_batch(perm), mode="mean_std_norm")
    assert close(b, a[perm], 1e-6)
    relabelled = spec_batch(trajectory=[7, 7, -3, -3, -3, 100, 100, 100], step=[2, 5, 0, 4, 9, 1, 2, 3])
    assert close(adv(relabelled, mode="mean_std_norm"), a, 1e-6)


def test_two_groups_do_not_mix_and_labels_can_repeat_across_groups():
    d = {k: v + v for k, v in SPEC.items()}
    d["group"] = [0] * 8 + [1] * 8
    b = Rollouts(mask=torch.ones(16, 1), **d)  # trajectory labels 0..2 reused by group 1, same state keys
    a = compute_advantages("gigpo", b, mode="mean_norm", episode_stats="row")[:, 0].double()
    assert close(a[:8], a[8:], 1e-6)
    assert close(a[:8], [7.075, 3.75, 6.6, 10.0833, 3.75, -12.425, -9.4167, -9.4167])


def test_no_repeated_states_equals_episode_term():
    b = spec_batch(state_key=list(range(8)))
    for mode in ("mean_norm", "mean_std_norm"):
        for stats in ("row", "trajectory"):
            t = gigpo_terms(b, mode=mode, episode_stats=stats)
            assert torch.equal(t.step, torch.zeros(8, dtype=torch.float64))
            assert close(adv(b, mode=mode, episode_stats=stats), t.episode, 1e-6)
    # and the paper form then is GRPO over trajectories
    grpo = compute_advantages("grpo", Rollouts(rewards=[10, 10, 0], group=[0, 0, 0], mask=torch.ones(3, 1)))[:, 0]
    assert close(adv(b)[[0, 2, 5]], grpo, 1e-5)


def test_single_member_step_groups_are_zero():
    b = spec_batch(state_key=[0, 1, 0, 3, 1, 0, 3, 42])  # C2's state is new
    t = gigpo_terms(b, mode="mean_std_norm")
    assert t.step[7].item() == 0.0


def test_episode_group_of_one_row():
    b = Rollouts(rewards=[10.0], group=[0], mask=torch.ones(1, 1), trajectory=[0], step=[0], step_rewards=[10.0], state_key=[5])
    assert adv(b).item() == 0.0
    assert adv(b, singleton="raw").item() == pytest.approx(10.0)  # reference code: A^E = raw score
    assert adv(b, singleton="raw", episode_stats="row").item() == pytest.approx(10.0)
    with pytest.raises(ValueError, match="alone in its episode group"):
        adv(b, singleton="raise")


def test_single_trajectory_with_several_rows():
    b = Rollouts(rewards=[10.0, 10.0], group=[0, 0], mask=torch.ones(2, 1), trajectory=[0, 0], step=[0, 1], step_rewards=[0.0, 10.0], state_key=[1, 2])
    assert torch.equal(adv(b, episode_stats="row"), torch.zeros(2, dtype=torch.float64))  # code: all rows equal
    assert close(adv(b, episode_stats="trajectory", singleton="raw"), [10.0, 10.0])  # paper N = 1 branch


def test_invalid_action_penalty_after_discounting():
    inv = torch.tensor([0, 0, 0, 1, 0, 0, 0, 0], dtype=torch.bool)
    b = spec_batch()
    b = b.replace(extras={"invalid_action": inv})
    t = gigpo_terms(b, mode="mean_norm", episode_stats="row")
    t0 = gigpo_terms(spec_batch(), mode="mean_norm", episode_stats="row")
    # step return of B1 drops by 0.1, B0's is unchanged (not discounted back)
    assert close(t.step_returns - t0.step_returns, [0, 0, 0, -0.1, 0, 0, 0, 0], 1e-9)
    # row statistics: score of B1 is 9.9, mean over rows = 6.2375
    assert t.episode[3].item() == pytest.approx(9.9 - 6.2375)
    assert t.episode[0].item() == pytest.approx(10 - 6.2375)
    off = gigpo_terms(b, mode="mean_norm", episode_stats="row", invalid_penalty=0.0)
    assert close(off.episode, t0.episode, 1e-12)
    # paper statistics: trajectory values unpenalised, only the flagged row shifts
    tp = gigpo_terms(b, mode="mean_norm")
    assert close(tp.episode, [3.3333, 3.3333, 3.3333, 3.2333, 3.3333, -6.6667, -6.6667, -6.6667])


def test_normalize_by_length():
    t = gigpo_terms(spec_batch(), mode="mean_norm", normalize_by_length=True)
    # scores 10/2, 10/3, 0/3 per trajectory; mean 25/9
    assert close(t.episode[[0, 2, 5]], [5 - 25 / 9, 10 / 3 - 25 / 9, -25 / 9])


def test_bad_input():
    with pytest.raises(ValueError, match="rows 0 and 1 have the same trajectory and step"):
        adv(spec_batch(step=[0, 0, 0, 1, 2, 0, 1, 2]))
    with pytest.raises(ValueError, match="rewards differ between the rows of its trajectory"):
        adv(spec_batch(rewards=[10, 9, 10, 10, 10, 0, 0, 0]))
    adv(spec_batch(rewards=[10, 9, 10, 10, 10, 0, 0, 0]), episode_stats="row")  # allowed there
    with pytest.raises(ValueError, match="mode="):
        adv(spec_batch(), mode="std")
    with pytest.raises(ValueError, match="needs the batch field"):
        compute_advantages("gigpo", Rollouts(rewards=[1.0], group=[0], mask=torch.ones(1, 1)))
    with pytest.raises(ValueError, match="invalid_action"):
        adv(spec_batch().replace(extras={"invalid_action": torch.full((8,), 2)}))


# --------------------------------------------------------------------------- plain-Python reference
def reference_gigpo(rows, gamma, mode, stats, penalty, omega, eps=1e-6):
    def mstd(vals):
        m = sum(vals) / len(vals)
        s = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        return m, s

    by_traj = {}
    for i, r in enumerate(rows):
        by_traj.setdefault((r["g"], r["traj"]), []).append(i)
    ret = [0.0] * len(rows)
    for idx in by_traj.values():
        idx.sort(key=lambda i: rows[i]["step"])
        acc = 0.0
        for i in reversed(idx):
            acc = rows[i]["r"] + gamma * acc
            ret[i] = acc
    pen = [penalty * rows[i]["inv"] for i in range(len(rows))]
    ret = [ret[i] - pen[i] for i in range(len(rows))]
    score = [rows[i]["R"] - pen[i] for i in range(len(rows))]
    a_e = [0.0] * len(rows)
    for g in {r["g"] for r in rows}:
        members = [i for i, r in enumerate(rows) if r["g"] == g]
        if stats == "row":
            vals = [score[i] for i in members]
        else:
            vals = [rows[idx[0]]["R"] for (gg, _), idx in by_traj.items() if gg == g]
        m, s = mstd(vals)
        for i in members:
            base = score[i] if stats == "row" else rows[i]["R"]
            d = 0.0 if len(set(vals)) == 1 else base - m
            a_e[i] = d / (s + eps) if mode == "mean_std_norm" else d
            if stats == "trajectory":
                a_e[i] -= pen[i]
            if len(vals) == 1:
                a_e[i] = 0.0
    a_s = [0.0] * len(rows)
    buckets = {}
    for i, r in enumerate(rows):
        buckets.setdefault((r["g"], r["key"]), []).append(i)
    for members in buckets.values():
        vals = [ret[i] for i in members]
        m, s = mstd(vals)
        for i in members:
            d = 0.0 if len(set(vals)) == 1 else ret[i] - m
            a_s[i] = d / (s + eps) if mode == "mean_std_norm" else d
    return [a_e[i] + omega * a_s[i] for i in range(len(rows))]


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_matches_reference(seed):
    rng = random.Random(seed)
    rows = []
    for g in range(rng.randint(1, 4)):
        for traj in range(rng.randint(1, 5)):
            T = rng.randint(1, 6)
            steps = rng.sample(range(20), T)
            rs = [rng.choice([0.0, 0.0, 1.0, -0.5]) for _ in range(T)]
            R = sum(rs)
            for st, r in zip(steps, rs):
                rows.append(dict(g=g, traj=traj, step=st, r=r, R=R, key=rng.randint(0, 4), inv=int(rng.random() < 0.2)))
    rng.shuffle(rows)
    b = Rollouts(
        rewards=[r["R"] for r in rows],
        group=[r["g"] for r in rows],
        mask=torch.ones(len(rows), 1),
        trajectory=[r["traj"] for r in rows],
        step=[r["step"] for r in rows],
        step_rewards=[r["r"] for r in rows],
        state_key=[r["key"] for r in rows],
        extras={"invalid_action": torch.tensor([r["inv"] for r in rows])},
    )
    for mode in ("mean_norm", "mean_std_norm"):
        for stats in ("row", "trajectory"):
            gamma = rng.choice([1.0, 0.95, 0.5])
            want = reference_gigpo(rows, gamma, mode, stats, 0.1, 0.7)
            got = compute_advantages("gigpo", b, gamma=gamma, mode=mode, episode_stats=stats, omega=0.7)[:, 0]
            assert close(got, want, 1e-4), (mode, stats, gamma)


# --------------------------------------------------------------------------- state keys
def test_state_keys_canonical():
    obs = ["a room", "a room", "b", {"x": 1, "y": [1, 2]}, {"y": (1, 2), "x": 1}, np.arange(4).reshape(2, 2), np.arange(4).reshape(2, 2), 3, 3.0, None]
    k = state_keys(obs).tolist()
    assert k[0] == k[1] and k[0] != k[2]
    assert k[3] == k[4]  # dict order and list/tuple do not matter
    assert k[5] == k[6]
    assert k[7] != k[8]  # int 3 and float 3.0 are different observations
    assert state_keys(torch.arange(4).reshape(2, 2).numpy()[None]).shape == (1,)
    with pytest.raises(ValueError, match="observation 1 has type object"):
        state_keys(["ok", object()])


def test_state_keys_stable_across_processes():
    # Golden values: blake2b of the canonical encoding does not depend on the process's hash salt
    # (Python's hash() of a str changes with PYTHONHASHSEED); checked under PYTHONHASHSEED 0 and 7.
    assert state_keys(["go north", {"b": 2, "a": (1,)}]).tolist() == [431253530277543260, -728943782222982372]


def test_similarity_keys():
    obs = ["You are in the kitchen. A knife is here.", "You are in the kitchen. A knife is here!", "A garden.", "You are in the kitchen. A knife is here."]
    k = similarity_keys(obs, threshold=0.95).tolist()
    assert k[0] == k[1] == k[3] and k[2] != k[0]
    assert k[0] == state_keys([obs[0]]).item()  # a cluster's key is its representative's key
    k2 = similarity_keys(obs, groups=[0, 1, 0, 0]).tolist()
    assert k2[1] == state_keys([obs[1]]).item()  # alone in group 1: its own representative
    assert k2[0] == k2[3] == state_keys([obs[0]]).item()
    with pytest.raises(ValueError, match="threshold"):
        similarity_keys(obs, threshold=1.0)


@pytest.mark.parametrize("name", ["gigpo", "salt", "mars", "advevo_public"])
def test_registered_examples_run(name):
    from grouprl.advantages import ESTIMATORS

    ex = dict(ESTIMATORS[name].example)
    kwargs = ex.pop("kwargs", {})
    b = Rollouts(mask=torch.ones(len(ex["rewards"]), 1), **ex)
    out = compute_advantages(name, b, **kwargs)
    assert out.shape == (len(ex["rewards"]), 1) and bool(torch.isfinite(out).all()) and bool(out.abs().sum() > 0)
