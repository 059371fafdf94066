"""Rollout: KV-cached batched sampling and teacher-forced log-probs."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from grouprl.rollout import Generation, left_pad, response_logprobs, sample, top_p_filter

V, PAD, EOS = 24, 0, 2


def tiny_model(seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=64, max_position_embeddings=128,
                      pad_token_id=PAD, eos_token_id=EOS, bos_token_id=1)
    return Qwen2ForCausalLM(cfg).eval()


PROMPTS = [[1, 5, 6], [1, 7], [1, 8, 9, 10, 11], [1]]


def _sample(model, seed=0, **kw):
    args = dict(eos_id=EOS, pad_id=PAD, max_new_tokens=12, num_samples=3, temperature=3.0,
                generator=torch.Generator().manual_seed(seed), return_entropy=True)
    args.update(kw)
    return sample(model, PROMPTS, **args)


def test_shapes_order_and_eos_stop():
    gen = _sample(tiny_model())
    N = len(PROMPTS) * 3
    assert gen.response_ids.shape[0] == N and gen.prompt_ids.shape == (N, 5)
    assert gen.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    # left padding: the real prompt tokens sit at the right end
    assert gen.prompt_ids[3].tolist() == [PAD, PAD, PAD, 1, 7]
    assert gen.prompt_mask[3].tolist() == [False, False, False, True, True]
    L = gen.lengths
    assert bool(gen.truncated.any()) and bool((~gen.truncated).any())  # temperature 3: some rows stop early
    ids, m = gen.response_ids, gen.response_mask
    for r in range(N):
        row = ids[r, : L[r]].tolist()
        if gen.truncated[r]:
            assert L[r] == 12 and EOS not in row
        else:
            assert row[-1] == EOS and EOS not in row[:-1]  # stops at the first EOS
        assert (ids[r, L[r]:] == PAD).all() and not m[r, L[r]:].any() and m[r, : L[r]].all()
    assert (gen.logprobs[~m] == 0).all() and (gen.logprobs[m] < 0).all()
    assert (gen.entropy[~m] == 0).all() and (gen.entropy[m] > 0).all()


def test_logprobs_equal_teacher_forced_recompute():
    model = tiny_model()
    for top_p in (1.0, 0.8):
        gen = _sample(model, top_p=top_p)
        lp, ent = response_logprobs(model, gen.prompt_ids, gen.prompt_mask, gen.response_ids, gen.response_mask,
                                    temperature=3.0, return_entropy=True)
        torch.testing.assert_close(lp, gen.logprobs, atol=2e-5, rtol=0)
        torch.testing.assert_close(ent, gen.entropy, atol=2e-5, rtol=0)


def test_recompute_does_not_depend_on_padding_width():
    model = tiny_model()
    gen = _sample(model)
    wide = Generation.concat([gen, gen.select([0])])  # same rows, re-padded inside a bigger batch
    lp, _ = response_logprobs(model, wide.prompt_ids, wide.prompt_mask, wide.response_ids, wide.response_mask,
                              temperature=3.0)
    torch.testing.assert_close(lp[: len(gen), : gen.logprobs.shape[1]], gen.logprobs, atol=2e-5, rtol=0)


def test_determinism_under_seed():
    model = tiny_model()
    a, b, c = _sample(model, seed=3), _sample(model, seed=3), _sample(model, seed=4)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.response_ids[:, :4], c.response_ids[:, :4])


def test_greedy_is_argmax_and_deterministic():
    model = tiny_model()
    g1 = sample(model, PROMPTS, eos_id=EOS, pad_id=PAD, max_new_tokens=6, greedy=True)
    g2 = sample(model, PROMPTS, eos_id=EOS, pad_id=PAD, max_new_tokens=6, greedy=True)
    assert torch.equal(g1.response_ids, g2.response_ids)
    # every greedy token is the argmax of the teacher-forced distribution
    ids = torch.cat([g1.prompt_ids, g1.response_ids], 1)
    attn = torch.cat([g1.prompt_mask, g1.response_mask], 1)
    pos = (attn.long().cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attn.long(), position_ids=pos).logits[:, g1.prompt_ids.shape[1] - 1 : -1]
    m = g1.response_mask
    assert torch.equal(logits.argmax(-1)[m], g1.response_ids[m])


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(top_p_filter(logits, 0.7))
    assert kept.tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.01)).sum() == 1  # the top token always survives
    model = tiny_model()
    gen = _sample(model, top_p=0.3, temperature=1.0)
    lp_full, _ = response_logprobs(model, gen.prompt_ids, gen.prompt_mask, gen.response_ids, gen.response_mask)
    assert torch.allclose(lp_full, gen.logprobs, atol=2e-5)


def test_generation_select_concat_roundtrip():
    gen = _sample(tiny_model())
    gen.rewards = torch.arange(len(gen), dtype=torch.float32)
    parts = [gen.select(torch.arange(0, 5)), gen.select(torch.arange(5, len(gen)))]
    back = Generation.concat(parts)
    for f in ("prompt_ids", "prompt_mask", "logprobs", "truncated", "prompt_index", "rewards"):
        assert torch.equal(getattr(back, f), getattr(gen, f)), f
    T = gen.response_ids.shape[1]
    assert torch.equal(back.response_ids[:, :T], gen.response_ids)


def test_bad_input_raises():
    model = tiny_model()
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        left_pad([[1], []], PAD)
    with pytest.raises(ValueError, match="temperature"):
        sample(model, PROMPTS, eos_id=EOS, pad_id=PAD, max_new_tokens=2, temperature=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        sample(model, PROMPTS, eos_id=EOS, pad_id=PAD, max_new_tokens=0)
