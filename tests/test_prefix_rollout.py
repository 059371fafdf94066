"""Continuing generation from prefixes of earlier responses, MC prefix values, and the HAPO
temperature processor inside ``sample``."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from grouprl.rollout import sample
from grouprl.rollout.hapo_temperature import AdaptiveTemperature
from grouprl.rollout.prefix import continue_from, mc_values, prefix_values

V, PAD, EOS = 24, 0, 2
PROMPTS = [[1, 5, 6], [1, 7]]


def tiny_model(seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=V, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=64, max_position_embeddings=128,
                      pad_token_id=PAD, eos_token_id=EOS, bos_token_id=1)
    return Qwen2ForCausalLM(cfg).eval()


def base_gen(model, n=2, T=8, seed=0):
    return sample(model, PROMPTS, eos_id=EOS, pad_id=PAD, max_new_tokens=T, num_samples=n, temperature=2.0,
                  generator=torch.Generator().manual_seed(seed))


def test_continuations_start_with_their_prefix_and_match_sample():
    model = tiny_model()
    gen = base_gen(model)
    rows = torch.tensor([0, 2, 1, 0])
    lengths = torch.tensor([2, 0, 3, 2])  # prefix 3 duplicates prefix 0
    L = gen.lengths
    lengths = torch.minimum(lengths, L[rows])
    cont = continue_from(model, gen, rows, lengths, num_samples=3, eos_id=EOS, max_new_tokens=5,
                         generator=torch.Generator().manual_seed(1), temperature=2.0)
    assert len(cont) == 12 and cont.extras["prefix_index"].tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    for j in range(4):
        r, Lp = int(rows[j]), int(lengths[j])
        for k in range(3):
            i = 3 * j + k
            assert cont.response_ids[i, :Lp].tolist() == gen.response_ids[r, :Lp].tolist()
            assert torch.equal(cont.prompt_ids[i], gen.prompt_ids[r])
            assert int(cont.lengths[i]) <= Lp + 5
    # a duplicated prefix shares the same continuations
    assert torch.equal(cont.response_ids[0:3], cont.response_ids[9:12])
    # the same as sampling the explicit prefixes (deduplicated, prefix-major) with the same generator
    toks = []
    for j in range(3):
        r, Lp = int(rows[j]), int(lengths[j])
        toks.append(gen.prompt_ids[r][gen.prompt_mask[r]].tolist() + gen.response_ids[r, :Lp].tolist())
    ref = sample(model, toks, eos_id=EOS, pad_id=PAD, max_new_tokens=5, num_samples=3, temperature=2.0,
                 generator=torch.Generator().manual_seed(1))
    for j in range(3):
        Lp = int(lengths[j])
        for k in range(3):
            i = 3 * j + k
            n = int(ref.lengths[i])
            assert cont.response_ids[i, Lp : Lp + n].tolist() == ref.response_ids[i, :n].tolist()
            assert torch.allclose(cont.logprobs[i, Lp : Lp + n], ref.logprobs[i, :n])
    # a prefix that ends in EOS is complete: not continued, not truncated
    eos_row = int((gen.response_ids[:, 0] == EOS).nonzero()[0, 0])
    done = continue_from(model, gen, torch.tensor([eos_row]), torch.tensor([1]), num_samples=2, eos_id=EOS,
                         max_new_tokens=5)
    assert done.lengths.tolist() == [1, 1] and not bool(done.truncated.any())


def test_budget_cuts_and_flags_truncated():
    model = tiny_model()
    gen = base_gen(model)
    cont = continue_from(model, gen, torch.tensor([0, 1]), torch.tensor([1, 1]), num_samples=4, eos_id=EOS,
                         max_new_tokens=6, budget=torch.tensor([0, 2]), generator=torch.Generator().manual_seed(2))
    pre_eos = gen.response_ids[0, 0] == EOS
    assert (cont.lengths[:4] == 1).all()
    assert bool(cont.truncated[:4].all()) != bool(pre_eos)
    assert (cont.lengths[4:] <= 3).all()
    with pytest.raises(ValueError, match="prefix 0"):
        continue_from(model, gen, torch.tensor([0]), torch.tensor([99]), num_samples=1, eos_id=EOS, max_new_tokens=2)


def test_mc_value_is_one_when_the_verifier_always_succeeds():
    model = tiny_model()
    gen = base_gen(model, n=1, T=6)
    target = int(gen.response_ids[0, 0])

    def verifier(g):  # success iff the response starts with `target`
        return (g.response_ids[:, 0] == target).float()

    vals, cont = mc_values(model, gen, torch.tensor([0, 0]), torch.tensor([1, 0]), verifier, num_samples=16,
                           eos_id=EOS, max_new_tokens=4, temperature=1.0, generator=torch.Generator().manual_seed(3))
    assert vals[0].item() == 1.0  # the prefix already contains the deciding token
    assert 0.0 <= vals[1].item() < 1.0  # from the bare prompt, a random model rarely picks it every time
    assert torch.equal(cont.rewards, verifier(cont))


def test_prefix_values_means_and_empty():
    v = prefix_values(torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 2, 2]), 3)
    assert v.tolist() == [0.5, 0.0, 1.0]


def test_sample_with_adaptive_temperature_processor():
    model = tiny_model()
    proc = AdaptiveTemperature(tau=0.0)  # modulation off: identical to plain T₀ sampling
    a = sample(model, PROMPTS, eos_id=EOS, pad_id=PAD, max_new_tokens=6, num_samples=2,
               generator=torch.Generator().manual_seed(4), logits_processor=proc)
    b = sample(model, PROMPTS, eos_id=EOS, pad_id=PAD, max_new_tokens=6, num_samples=2,
               generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.response_ids, b.response_ids) and torch.allclose(a.logprobs, b.logprobs)
    proc = AdaptiveTemperature(tau=0.5)
    proc.update(torch.rand(40) * 3)
    c = sample(model, PROMPTS, eos_id=EOS, pad_id=PAD, max_new_tokens=6, num_samples=2,
               generator=torch.Generator().manual_seed(4), logits_processor=proc)
    assert not torch.allclose(c.logprobs[c.response_mask][:3], b.logprobs[b.response_mask][:3])


def test_tree_rollout_structure():
    from grouprl.rollout.tree import tree_rollout

    model = tiny_model()
    first = base_gen(model, n=3, T=9)
    tree = tree_rollout(model, first, branch=(2, 2), segment_len=2, max_new_tokens=9, eos_id=EOS,
                        temperature=2.0, generator=torch.Generator().manual_seed(5))
    g, parent, depth, start, leaf = tree.gen, tree.parent, tree.depth, tree.segment_start, tree.leaf
    L = g.lengths
    n0 = len(first)
    assert (depth[:n0] == 0).all() and (parent[:n0] == -1).all() and (L[:n0] <= 2).all()
    for d in (1, 2):
        at = (depth == d).nonzero().squeeze(1)
        expandable = ((depth == d - 1) & ~leaf).nonzero().squeeze(1)
        assert at.numel() == 2 * expandable.numel()
        assert torch.equal(parent[at], expandable.repeat_interleave(2))
        for i in at.tolist():
            p = int(parent[i])
            assert int(start[i]) == int(L[p])
            assert g.response_ids[i, : L[p]].tolist() == g.response_ids[p, : L[p]].tolist()
            assert torch.equal(g.prompt_ids[i], g.prompt_ids[p])
            if d == 1:
                assert int(L[i]) <= int(L[p]) + 2  # a middle segment adds at most M tokens
    assert leaf[depth == 2].all()
    # a node is a leaf before the last depth iff it ended with EOS or used the whole budget
    mid = depth < 2
    ended = (g.response_ids.gather(1, (L - 1).clamp_min(0).unsqueeze(1)).squeeze(1) == EOS) | (L >= 9)
    assert torch.equal(leaf[mid], ended[mid])


def test_spo_tree_estimator_example():
    from grouprl import Rollouts, compute_advantages

    b = Rollouts(rewards=[0.5, 0.0], group=[0, 0], mask=torch.ones(2, 3), token_probs=[[0.5, 0.95, 0.3], [0.2, 0.4, 0.99]],
                 extras={"node_advantage": [0.25, -0.25], "segment_start": [1, 0]})
    a = compute_advantages("spo_tree", b, whiten=False)
    # row 0: segment = tokens 1, 2; token 1 is confident (p > 0.9): only token 2 keeps +0.25
    assert torch.allclose(a, torch.tensor([[0.0, 0.0, 0.25], [-0.25, -0.25, 0.0]]))
