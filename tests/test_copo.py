"""COPO: the worked example of copo.md section 5 (all modes and variants), degenerate cases."""

import pytest
import torch

from grouprl import Rollouts, compute_advantages
from grouprl.advantages.copo import answer_entropy, copo_terms, global_reward
from grouprl.rewards.copo import answer_ids, extract_boxed_answer, stable_id

R = [1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 1]
G = [0] * 4 + [1] * 4 + [2] * 4
ANS = [5, 5, 5, 5, 3, 4, 4, 7, 2, 3, 9, 2]


def batch(rewards=R, group=G, answer=ANS):
    return Rollouts(rewards=rewards, group=group, mask=torch.ones(len(rewards), 2), answer=answer)


def per_prompt(x):
    return torch.as_tensor(x)[[0, 4, 8]]


def test_spec_table_quantities():
    t = copo_terms(batch(), k=5, b=1)
    assert torch.allclose(per_prompt(t.entropy), torch.tensor([0.0, 1.5, 1.5], dtype=torch.float64))
    assert torch.allclose(per_prompt(t.global_), torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64), atol=1e-5)
    assert torch.allclose(per_prompt(t.weight), torch.tensor([0.0067, 0.9241, 0.9241], dtype=torch.float64), atol=1e-4)
    assert torch.allclose(t.local[8:], torch.tensor([0.866, -0.866, -0.866, 0.866], dtype=torch.float64), atol=1e-3)
    assert torch.equal(t.local[:8], torch.zeros(8, dtype=torch.float64))


def test_effective_only_soft():
    a = compute_advantages("copo", batch())[:, 0]
    exp = [0.9933] * 4 + [-0.0759] * 4 + [0.8003, -0.8003, -0.8003, 0.8003]
    assert torch.allclose(a, torch.tensor(exp), atol=1e-4)
    assert torch.equal(a, compute_advantages("copo", batch())[:, 1])


def test_effective_soft_with_zero():
    a = compute_advantages("copo", batch(), mode="soft-with-zero")[:, 0]
    exp = [0.9933] * 4 + [-1.0] * 4 + [0.8003, 0.0, 0.0, 0.8003]
    assert torch.allclose(a, torch.tensor(exp), atol=1e-4)


def test_reward_coef_variant():
    b = batch()
    ent = answer_entropy(b.answer, b.group, b.num_groups)
    rg = global_reward(b.rewards, b.group, b.num_groups, ent, reward_coef=True)
    assert torch.allclose(rg, torch.tensor([1.0, 0.0, 0.21875], dtype=torch.float64), atol=1e-6)
    # all answers distinct: c = 1/n
    b2 = batch(rewards=[1, 1, 1, 1], group=[0] * 4, answer=[1, 2, 3, 4])
    e2 = answer_entropy(b2.answer, b2.group, 1)
    assert e2.item() == pytest.approx(2.0)
    assert global_reward(b2.rewards, b2.group, 1, e2, reward_coef=True).item() == pytest.approx(0.25)


@pytest.mark.parametrize("k,b,wa,wbc", [(1, 1, 0.269, 0.622), (1, 0.5, 0.378, 0.731)])
def test_gate_defaults_variants(k, b, wa, wbc):
    t = copo_terms(batch(), k=k, b=b)
    assert torch.allclose(per_prompt(t.weight), torch.tensor([wa, wbc, wbc], dtype=torch.float64), atol=1e-3)


def test_modes():
    b = batch()
    t = copo_terms(b, mode="soft-with-forced")
    assert torch.equal(t.weight[:8], torch.zeros(8, dtype=torch.float64))  # homogeneous groups: global only
    assert torch.allclose(t.weight[8:], torch.full((4,), 0.9241, dtype=torch.float64), atol=1e-4)
    assert torch.equal(copo_terms(b, mode="only-zero").weight, torch.tensor(R, dtype=torch.float64))
    assert torch.equal(copo_terms(b, mode="only-forced").weight, torch.tensor([0.0] * 8 + [1.0] * 4, dtype=torch.float64))
    assert torch.equal(copo_terms(b, mode="only-global").weight, torch.zeros(12, dtype=torch.float64))
    a = compute_advantages("copo", b, mode="no-global")
    assert torch.allclose(a, compute_advantages("grpo", b))
    a = compute_advantages("copo", b, mode="only-global")
    assert torch.allclose(a, compute_advantages("copo_global", b))
    half = compute_advantages("copo", b, mode="only-soft-with-coef", global_loss_coef=0.5)[:4, 0]
    assert torch.allclose(half, torch.full((4,), 0.9933 / 2), atol=1e-4)
    with pytest.raises(ValueError, match="mode="):
        compute_advantages("copo", b, mode="soft with zero")


def test_single_prompt_batch_global_is_zero():
    b = batch(rewards=[1, 0, 0, 1], group=[0] * 4, answer=[1, 2, 1, 1])
    t = copo_terms(b)
    assert torch.equal(t.global_, torch.zeros(4, dtype=torch.float64))
    assert torch.isfinite(compute_advantages("copo", b)).all()


def test_group_of_one_and_masked_rows():
    mask = torch.ones(5, 2, dtype=torch.bool)
    mask[1] = False
    b = Rollouts(rewards=[1, 0, 1, 1, 0], group=[0, 0, 0, 1, 2], mask=mask, answer=[1, 2, 1, 7, 8])
    t = copo_terms(b, k=5, b=1)
    assert t.local[3].item() == 0.0 and t.local[4].item() == 0.0
    assert t.weight[3].item() == pytest.approx(torch.sigmoid(torch.tensor(-5.0)).item(), abs=1e-6)  # H = 0
    assert copo_terms(b, singleton="raw").local[3].item() == 1.0
    a = compute_advantages("copo", b)
    assert torch.isfinite(a).all() and a[1].abs().sum() == 0


def test_all_same_rewards_everywhere():
    b = batch(rewards=[1] * 12)
    assert torch.equal(compute_advantages("copo", b), torch.zeros(12, 2))


def test_needs_answer():
    b = Rollouts(rewards=[1, 0], group=[0, 0], mask=torch.ones(2, 1))
    with pytest.raises(ValueError, match="'answer'"):
        compute_advantages("copo", b)


def test_answer_entropy_multi_group_vectorised():
    g = torch.Generator().manual_seed(0)
    group = torch.randint(0, 6, (50,), generator=g)
    ans = torch.randint(0, 4, (50,), generator=g) * 10**15
    h = answer_entropy(ans, group, 6)
    for q in range(6):
        a = ans[group == q]
        _, counts = torch.unique(a, return_counts=True)
        p = counts.double() / a.numel()
        assert h[q].item() == pytest.approx(-(p * torch.log2(p)).sum().item(), abs=1e-12)


def test_answer_extraction_and_ids():
    assert extract_boxed_answer("so \\boxed{\\frac{1}{2}} done") == "\\frac{1}{2}"
    assert extract_boxed_answer("first \\boxed{3} then \\boxed{ 4 }") == "4"
    assert extract_boxed_answer("the answer is 42.") == "42"
    assert extract_boxed_answer("no idea") == ""
    ids = answer_ids(["\\boxed{5}", "it is 5", "\\boxed{6}", "", "nothing"])
    assert ids.dtype == torch.int64
    assert ids[0] == ids[1] and ids[0] != ids[2] and ids[3] == ids[4]
    assert answer_ids(["a", "a "], extractor=None).unique().numel() == 2
    # "the same in every process": two interpreters with different hash seeds agree with this one
    # (and with blake2b-64, little-endian, signed, computed here independently)
    import ast
    import hashlib
    import os
    import subprocess
    import sys

    want = [stable_id(w) for w in ("5", "\\frac{1}{2}", "")]
    assert want[0] == int.from_bytes(hashlib.blake2b(b"5", digest_size=8).digest(), "little", signed=True)
    code = "from grouprl.rewards.copo import stable_id; print([stable_id(w) for w in ('5', '\\\\frac{1}{2}', '')], hash('5'))"
    outs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
        ids, h = out.rsplit(" ", 1)
        assert ast.literal_eval(ids) == want, seed
        outs.append(int(h))
    assert outs[0] != outs[1]  # the children really had different hash seeds: hash() differs, the ids do not
    assert answer_ids(["x"], extractor=lambda s: "same")[0] == stable_id("same")
    with pytest.raises(ValueError, match="row 1"):
        answer_ids(["ok", 3])


def test_copo_in_an_expression_gets_its_answers_and_trains(tmp_path):
    """The trainer fills ``answer`` because the estimator declares it in ``needs``, not by its name:
    an expression with copo trains (it stopped at step 1 when only estimator='copo' got answers)."""
    from grouprl.train import build_config, train
    from grouprl.train.logging import read_jsonl
    from test_train import tiny_overrides

    summary = train(build_config(tiny_overrides(tmp_path, name="mix", steps=2, estimator="0.5*copo + 0.5*grpo")))
    rows = read_jsonl(tmp_path / "runs" / "mix" / "metrics.jsonl")
    assert summary["steps"] == 2 and [r["step"] for r in rows] == [1, 2]


def test_copo_loss_declares_what_a_trainer_supplies():
    """The copo loss's registry entry says what it takes beyond advantages: the answer field, an
    inputs hook (copo_terms) and the estimator whose hyperparameters that hook takes."""
    from grouprl.losses import LOSSES
    from grouprl.losses.copo import copo_loss_inputs

    info = LOSSES["copo"]
    assert info.needs == ("answer",) and info.inputs is copo_loss_inputs and info.inputs_hparams_from == "copo"
    assert all(LOSSES[n].inputs is None and LOSSES[n].needs == () for n in LOSSES if n != "copo")
    batch = Rollouts(rewards=[1.0, 0.0, 1.0, 1.0], group=[0, 0, 1, 1], mask=torch.ones(4, 2, dtype=torch.bool),
                     answer=torch.tensor([1, 2, 1, 1]))
    got = copo_loss_inputs(batch)
    t = copo_terms(batch)
    assert torch.equal(got.advantages, (t.local.float().unsqueeze(1) * batch.mask).float())
    rows = torch.tensor([2, 0])
    kw = got.for_rows(rows)
    assert torch.equal(kw["global_advantages"], t.global_.float()[rows])
    assert torch.equal(kw["blend_weight"], t.weight.float()[rows]) and kw["global_loss_coef"] == t.global_coef
    assert got.metrics == {"copo/blend_weight": float(t.weight.mean()), "copo/answer_entropy": float(t.entropy.mean())}
