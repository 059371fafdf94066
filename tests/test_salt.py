"""SALT: the worked example of salt.md section 5, identity without shared transitions, history keys,
composition with GiGPO, and the transform form."""

import pytest
import torch

from grouprl import Rollouts, compute_advantages
from grouprl.advantages import get
from grouprl.advantages.gigpo import gigpo_terms, state_keys
from grouprl.advantages.salt import salt_edge_ids, salt_refine, transition_keys

# T1: e1 e2 success; T2: e1 e3 fail; T3: e1 e2 success; T4: e4 e5 fail.
SPEC = dict(
    rewards=[1, 1, 0, 0, 1, 1, 0, 0],
    group=[0] * 8,
    trajectory=[1, 1, 2, 2, 3, 3, 4, 4],
    step=[0, 1, 0, 1, 0, 1, 0, 1],
    transition_key=[1, 2, 1, 3, 1, 2, 4, 5],
)
EXPECTED = [1 / 6, 0.5, 1 / 6, -0.5, 1 / 6, 0.5, -0.5, -0.5]


def batch(T=1, **over):
    d = {**SPEC, **over}
    return Rollouts(mask=torch.ones(len(d["rewards"]), T), **d)


def row(out):
    return out[:, 0].double()


def test_spec_example_estimator():
    a = row(compute_advantages("salt", batch(), base="dr_grpo"))  # GRPO mean-norm base: ±0.5
    assert torch.allclose(a, torch.tensor(EXPECTED, dtype=torch.float64), atol=1e-4)
    assert a[0].item() == pytest.approx(0.1667, abs=1e-4)


def test_spec_example_as_transform_and_as_function():
    a = row(compute_advantages("dr_grpo | salt", batch(T=3)))
    assert torch.allclose(a, torch.tensor(EXPECTED, dtype=torch.float64), atol=1e-6)
    base = torch.tensor([0.5, 0.5, -0.5, -0.5, 0.5, 0.5, -0.5, -0.5])
    assert torch.allclose(salt_refine(base, batch()), torch.tensor(EXPECTED, dtype=torch.float64))


def test_history_mode_splits_edges_with_different_pasts():
    # T4 reaches e2 after e4: in state mode it joins T1/T3's e2, in history mode it does not
    b = batch(transition_key=[1, 2, 1, 3, 1, 2, 4, 2])
    s = row(compute_advantages("salt", b, base="dr_grpo"))
    h = row(compute_advantages("salt", b, base="dr_grpo", key="history"))
    assert s[7].item() == pytest.approx((0.5 + 0.5 - 0.5) / 3)
    assert h[7].item() == pytest.approx(-0.5)
    assert h[1].item() == pytest.approx(0.5) and h[0].item() == pytest.approx(1 / 6)
    ids, n = salt_edge_ids(b, "history")
    assert n == 5 and ids[1] == ids[5] and ids[1] != ids[7]


def test_no_shared_transitions_is_identity():
    b = batch(transition_key=list(range(8)))
    for base in ("grpo", "dr_grpo"):
        assert torch.equal(compute_advantages("salt", b, base=base), compute_advantages(base, b))
    tokens = torch.randn(8, 4)
    assert torch.equal(salt_refine(tokens, b).float(), tokens)  # token structure kept exactly


def test_shared_transitions_only_within_a_group():
    b = batch(group=[0, 0, 0, 0, 1, 1, 1, 1], rewards=[1, 1, 0, 0, 1, 1, 0, 0], transition_key=[1, 2, 3, 4, 1, 2, 3, 4])
    assert torch.equal(compute_advantages("salt", b, base="grpo"), compute_advantages("grpo", b))


def test_identical_rewards_give_zero():
    b = batch(rewards=[1] * 8)
    assert torch.equal(compute_advantages("salt", b), torch.zeros(8, 1))


def test_token_level_input_is_shifted_by_the_row_change():
    adv = torch.tensor([[0.5, 0.7], [0.5, 0.5], [-0.5, -0.5], [-0.5, -0.5], [0.5, 0.5], [0.5, 0.5], [-0.5, -0.5], [-0.5, -0.5]])
    out = salt_refine(adv, batch(T=2))
    assert out[0, 1] - out[0, 0] == pytest.approx(0.2)  # within-row structure kept
    assert out[0].mean().item() == pytest.approx((0.6 - 0.5 + 0.5) / 3)


def gigpo_batch():
    return Rollouts(
        rewards=[10, 10, 10, 10, 10, 0, 0, 0],
        group=[0] * 8,
        mask=torch.ones(8, 1),
        trajectory=[0, 0, 1, 1, 1, 2, 2, 2],
        step=[0, 1, 0, 1, 2, 0, 1, 2],
        step_rewards=[0, 10, 0, 0, 10, 0, 0, 0],
        state_key=[0, 1, 0, 3, 1, 0, 3, 3],
        # (s, a, s'): A0 s0->s1; A1, B2 s1->end; B0, C0 s0->s3; B1 s3->s1; C1, C2 s3->s3
        transition_key=[101, 113, 103, 131, 113, 103, 133, 133],
    )


def test_composition_with_gigpo():
    b = gigpo_batch()
    kw = {"mode": "mean_norm", "episode_stats": "row"}
    t = gigpo_terms(b, **kw)
    final = row(compute_advantages("salt", b, base="gigpo", base_kwargs=kw))
    want_final = salt_refine(t.combined(1.0), b)
    assert torch.allclose(final, want_final, atol=1e-5)
    # B0 and C0 share (s0, a, s3): their final advantages are averaged
    assert final[2].item() == pytest.approx((6.6 - 12.425) / 2, abs=1e-4)
    ep = row(compute_advantages("salt", b, base="gigpo", base_kwargs=kw, compose="episode_term"))
    want_ep = salt_refine(t.episode, b) + t.step
    assert torch.allclose(ep, want_ep, atol=1e-5)
    assert ep[2].item() == pytest.approx((3.75 - 6.25) / 2 + 2.85, abs=1e-4)
    with pytest.raises(ValueError, match="needs base='gigpo'"):
        compute_advantages("salt", b, compose="episode_term")


def test_renormalize_option():
    a = row(compute_advantages("salt", batch(), base="dr_grpo", renormalize=True))
    e = torch.tensor(EXPECTED, dtype=torch.float64)
    assert torch.allclose(a, (e - e.mean()) / (e.std() + 1e-6), atol=1e-5)


def test_transition_keys_helper():
    s = ["room", "room", "hall"]
    k = transition_keys(s, ["go north", "go north", "go north"], ["hall", "hall", None])
    assert k[0] == k[1] and k[0] != k[2]
    assert k[0] != state_keys(["room"])[0]
    with pytest.raises(ValueError, match="one of each"):
        transition_keys(s, ["a"], s)


def test_errors():
    with pytest.raises(ValueError, match="needs the batch field"):
        compute_advantages("salt", Rollouts(rewards=[1.0, 0.0], group=[0, 0], mask=torch.ones(2, 1)))
    with pytest.raises(ValueError, match="key="):
        compute_advantages("salt", batch(), key="edges")
    with pytest.raises(ValueError, match="recurse"):
        compute_advantages("salt", batch(), base="salt")
    with pytest.raises(TypeError, match="unknown hyperparameter"):
        compute_advantages("salt", batch(), base="grpo", base_kwargs={"omega": 1.0})
    assert get("salt", base="grpo").needs[-1] == "transition_key"
