"""GREAM SRPO: RSVR rewards and BGAE advantages, the worked examples of srpo-gream.md section 5."""

import pytest
import torch

from grouprl import Rollouts, compute_advantages
from grouprl.rewards.rsvr import code_tensor, parse_item_code, rsvr_reward, rsvr_scores

GOLD = "<|a_1|><|b_2|><|c_3|><|d_4|>"


def direct(levels):
    return "".join(f"<|{x}|>" for x in levels)


@pytest.mark.parametrize(
    "pred,score",
    [
        (["a_1", "b_2", "c_3", "d_4"], 1.0),
        (["a_1", "b_2", "c_9", "d_4"], 0.707),
        (["a_1", "b_7", "c_3", "d_4"], 0.5),
        (["a_9", "b_2", "c_3", "d_4"], 0.0),
        (["a_1", "b_2", "c_3", "d_5"], 0.866),
    ],
)
def test_rsvr_table(pred, score):
    s, exact = rsvr_reward(direct(pred), GOLD, mode="direct")
    assert s == pytest.approx(score) and exact == (score == 1.0)
    text = f"<think>hmm</think><answer>{direct(pred)}</answer>"
    assert rsvr_reward(text, GOLD)[0] == pytest.approx(score)


def test_rsvr_format_gate():
    assert rsvr_reward("<answer>" + GOLD + "</answer>", GOLD) == (0.0, False)  # no <think>
    assert rsvr_reward("<think>x</think><answer>a_1 b_2</answer>", GOLD) == (0.0, False)
    assert rsvr_reward("<|a_1|><|b_2|><|c_3|>", GOLD, mode="direct") == (0.0, False)  # 3 tokens
    assert parse_item_code("<think></think><answer>" + GOLD + "</answer>") == ["a_1", "b_2", "c_3", "d_4"]
    assert rsvr_reward(direct(["a_1", "b_2", "c_3", "d_4", "e_5"]), GOLD, mode="direct")[0] == pytest.approx(0.95)
    with pytest.raises(ValueError, match="mode"):
        parse_item_code(GOLD, mode="cot")


def test_rsvr_vectorised_matches_table():
    gold = code_tensor([[1, 2, 3, 4]] * 6)
    pred = code_tensor([[1, 2, 3, 4], [1, 2, 9, 4], [1, 7, 3, 4], [9, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 4]])
    ok = torch.tensor([True, True, True, True, True, False])
    s, exact = rsvr_scores(pred, gold, ok)
    assert torch.allclose(s, torch.tensor([1.0, 0.707, 0.5, 0.0, 0.866, 0.0]))
    assert exact.tolist() == [True, False, False, False, False, False]
    s5, e5 = rsvr_scores(code_tensor([[1, 2, 3, 4, 5]]), code_tensor([[1, 2, 3, 4, -1]]))
    assert s5.item() == pytest.approx(0.95) and not e5.item()


def adv(rewards, **kw):
    b = Rollouts(rewards=rewards, group=[0] * len(rewards), mask=torch.ones(len(rewards), 1))
    return compute_advantages("bgae", b, **kw)[:, 0]


def test_bgae_one_exact():
    a = adv([1, 0.707, 0.5] + [0] * 7)
    assert torch.allclose(a, torch.tensor([3.3052, 1.1622, 0.6096] + [-0.7253] * 7), atol=1e-4)
    rs = compute_advantages("grpo", Rollouts(rewards=[1, 0.707, 0.5] + [0] * 7, group=[0] * 10, mask=torch.ones(10, 1)))
    assert torch.allclose(rs[:, 0], torch.tensor([2.0805, 1.2983, 0.7456] + [-0.5892] * 7), atol=1e-4)
    bonus = a - rs[:, 0]
    assert torch.allclose(bonus, torch.tensor([1.2247] + [-0.1361] * 9), atol=1e-4)


def test_bgae_two_exact():
    a = adv([1, 1] + [0] * 8)
    assert torch.allclose(a, torch.tensor([2.6045] * 2 + [-0.6511] * 8), atol=1e-4)


def test_bgae_no_exact_is_grpo():
    a = adv([0.5, 0.707] + [0] * 8)
    assert torch.allclose(a, torch.tensor([1.4639, 2.2629] + [-0.4659] * 8), atol=1e-4)


def test_bgae_exact_flags_from_extras():
    r = [0.9, 0.707, 0.5] + [0] * 7
    b = Rollouts(rewards=r, group=[0] * 10, mask=torch.ones(10, 1), extras={"exact_match": torch.tensor([1] + [0] * 9)})
    a = compute_advantages("bgae", b)[:, 0]
    rs = compute_advantages("grpo", b)[:, 0]
    assert torch.allclose(a - rs, torch.tensor([1.2247] + [-0.1361] * 9), atol=1e-4)
    bad = Rollouts(rewards=r, group=[0] * 10, mask=torch.ones(10, 1), extras={"exact_match": torch.tensor([2] + [0] * 9)})
    with pytest.raises(ValueError, match="row 0"):
        compute_advantages("bgae", bad)


def test_bgae_degenerate():
    assert torch.equal(adv([1.0] * 10), torch.zeros(10))  # c = n
    assert torch.equal(adv([0.5] * 10), torch.zeros(10))  # identical, c = 0
    assert adv([1.0]).item() == 0.0  # group of one: A^rs 0, bonus guarded
    assert adv([1.0], singleton="raw").item() == 1.0
    a = adv([1.0, 0.0, 0.0])  # n < K: bonus 0 by default (the code divides 0 by 0)
    rs = compute_advantages("grpo", Rollouts(rewards=[1.0, 0, 0], group=[0] * 3, mask=torch.ones(3, 1)))[:, 0]
    assert torch.allclose(a, rs)
    c = adv([1.0, 0.0, 0.0], small_group="clamp")  # K_eff = n = 3: ρ = 1, bonus 0
    assert torch.allclose(c, rs)
    c = adv([1.0, 0.0, 0.0, 0.0, 0.0], K=8, small_group="clamp")  # K_eff = 5 = n: ρ = 1
    assert torch.isfinite(c).all()
    # K = 1: ρ = c/n; the bonus is the pass@1 form (rows with success_reward=2 have no exact match)
    k1 = adv([1.0, 0.0, 0.0, 0.0], K=1) - adv([1.0, 0.0, 0.0, 0.0], K=1, success_reward=2.0)
    rho, s = 0.25, (0.25 * 0.75) ** 0.5
    assert torch.allclose(k1, torch.tensor([(1 - rho) / (s + 1e-6)] + [(1 - rho - 1) / (s + 1e-6)] * 3), atol=1e-4)


def test_bgae_multi_group_matches_per_group():
    g = torch.Generator().manual_seed(1)
    group = torch.randint(0, 4, (40,), generator=g)
    levels = torch.tensor([0.0, 0.5, 0.707, 1.0])
    r = levels[torch.randint(0, 4, (40,), generator=g)]
    b = Rollouts(rewards=r, group=group, mask=torch.ones(40, 1))
    a = compute_advantages("bgae", b)[:, 0]
    for q in range(4):
        rows = (group == q).nonzero().squeeze(1)
        assert torch.allclose(a[rows], adv(r[rows].tolist()), atol=1e-6)
