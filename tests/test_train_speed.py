"""The faster trainer step computes what the slower one did: old_logprobs=auto (the update forward's
own log-probs as the old ones), the shared prompt forward, trimmed padding, logits on response
positions only, and the fsync-at-checkpoint metrics writer."""

from __future__ import annotations

import ast
import inspect

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from grouprl.advantages.registry import ESTIMATORS
from grouprl.rollout import Generation, response_logprobs, sample
from grouprl.train import build_config, train
from grouprl.train.logging import JsonlWriter, read_jsonl
from grouprl.train.loop import _forward_logprobs, old_logprobs_source, update_policy

from test_train import tiny_overrides

V, PAD, EOS = 24, 0, 2
PROMPTS = [[1, 5, 6], [1, 7], [1, 8, 9, 10, 11], [1]]


def tiny_model(seed: int = 0, **kw) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=64, max_position_embeddings=128,
                      pad_token_id=PAD, eos_token_id=EOS, bos_token_id=1, **kw)
    return Qwen2ForCausalLM(cfg)


def _gen(model, num_samples=3, seed=0, max_new_tokens=7) -> Generation:
    return sample(model, PROMPTS, eos_id=EOS, pad_id=PAD, max_new_tokens=max_new_tokens, num_samples=num_samples,
                  temperature=3.0, generator=torch.Generator().manual_seed(seed))


def _grads(model, gen, rows, *, share, weights, temperature=3.0):
    """Log-probs, entropies and the parameter gradient of a loss that uses both."""
    model.zero_grad(set_to_none=True)
    lp, ent = response_logprobs(model, gen.prompt_ids[rows], gen.prompt_mask[rows], gen.response_ids[rows],
                                gen.response_mask[rows], temperature=temperature, return_entropy=True,
                                share_prompts=share)
    ((lp * weights[rows]).sum() + 0.3 * ent.sum()).backward()
    return lp.detach(), ent.detach(), [p.grad.clone() for p in model.parameters()]


# ------------------------------------------------------------------ the shared prompt forward
def test_shared_prompt_forward_equals_the_per_row_forward_values_and_gradients():
    model = tiny_model().train()
    gen = _gen(model)
    assert len(gen) == 12 and bool((gen.lengths < gen.lengths.max()).any())  # ragged responses
    w = torch.randn(gen.response_ids.shape, generator=torch.Generator().manual_seed(1))
    for rows in (torch.arange(12), torch.tensor([7, 0, 3, 11, 1, 6, 8, 2])):  # in order, and shuffled
        a = _grads(model, gen, rows, share=False, weights=w)
        b = _grads(model, gen, rows, share=True, weights=w)
        torch.testing.assert_close(b[0], a[0], atol=2e-6, rtol=0)
        torch.testing.assert_close(b[1], a[1], atol=2e-6, rtol=0)
        for ga, gb in zip(a[2], b[2]):
            torch.testing.assert_close(gb, ga, atol=1e-6, rtol=1e-5)


def test_shared_prompt_forward_runs_the_prompts_once():
    model = tiny_model().train()
    gen = _gen(model)
    widths = []
    hook = model.model.layers[0].mlp.register_forward_hook(lambda m, i, o: widths.append(tuple(i[0].shape[:2])))
    response_logprobs(model, gen.prompt_ids, gen.prompt_mask, gen.response_ids, gen.response_mask)
    hook.remove()
    T = gen.response_ids.shape[1]
    assert widths == [(4, 5), (12, T - 1)]  # 4 distinct prompts once, then the 12 responses (last token not fed)


def test_no_sharing_with_dropout_or_distinct_prompts():
    calls = []
    model = tiny_model(attention_dropout=0.1).train()
    gen, one = _gen(model), _gen(model, num_samples=1)
    hook = model.model.layers[0].mlp.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    response_logprobs(model, gen.prompt_ids, gen.prompt_mask, gen.response_ids, gen.response_mask)
    assert calls == [12]  # dropout in training mode: one forward per row (one dropout mask per row)
    calls.clear()
    model.eval()
    response_logprobs(model, gen.prompt_ids, gen.prompt_mask, gen.response_ids, gen.response_mask)
    assert calls == [4, 12]  # eval mode: no dropout, shared
    calls.clear()
    response_logprobs(model, one.prompt_ids, one.prompt_mask, one.response_ids, one.response_mask)
    hook.remove()
    assert calls == [4]  # every prompt distinct: a single per-row forward


def test_all_padding_columns_are_trimmed_without_changing_values():
    model = tiny_model().eval()
    gen = _gen(model)
    rows = torch.nonzero(gen.lengths < gen.lengths.max()).squeeze(1)[:2]  # short rows: trailing pad columns
    P, T = gen.prompt_ids.shape[1], gen.response_ids.shape[1]
    wide_p = torch.cat([torch.full((len(rows), 3), PAD), gen.prompt_ids[rows]], 1)  # 3 more leading pad columns
    wide_m = torch.cat([torch.zeros(len(rows), 3, dtype=torch.bool), gen.prompt_mask[rows]], 1)
    with torch.no_grad():
        lp, ent = response_logprobs(model, wide_p, wide_m, gen.response_ids[rows], gen.response_mask[rows],
                                    temperature=3.0, return_entropy=True)
        ids = torch.cat([gen.prompt_ids[rows], gen.response_ids[rows]], 1)
        attn = torch.cat([gen.prompt_mask[rows], gen.response_mask[rows]], 1)
        pos = (attn.long().cumsum(1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=attn.long(), position_ids=pos).logits
        ref = (logits[:, P - 1:-1] / 3.0).log_softmax(-1)
    assert lp.shape == (len(rows), T) and ent.shape == (len(rows), T)
    m = gen.response_mask[rows]
    want = ref.gather(2, gen.response_ids[rows, :, None]).squeeze(2).masked_fill(~m, 0)
    torch.testing.assert_close(lp, want, atol=2e-6, rtol=0)
    assert (lp[~m] == 0).all() and (ent[~m] == 0).all()


def test_response_mask_with_gaps_is_respected_when_shared():
    """Masked tokens inside a response (e.g. an observation span) stay invisible to later tokens."""
    model = tiny_model().eval()
    gen = _gen(model, max_new_tokens=6)
    mask = gen.response_mask.clone()
    mask[:, 1] = False  # a gap after the first token
    out = {}
    for share in (False, True):
        with torch.no_grad():
            out[share] = response_logprobs(model, gen.prompt_ids, gen.prompt_mask, gen.response_ids, mask,
                                           return_entropy=True, share_prompts=share)
    torch.testing.assert_close(out[True][0], out[False][0], atol=2e-6, rtol=0)
    torch.testing.assert_close(out[True][1], out[False][1], atol=2e-6, rtol=0)


def test_entropy_without_grad_is_a_constant_with_the_same_values():
    model = tiny_model().train()
    gen = _gen(model)
    lp, ent = response_logprobs(model, gen.prompt_ids, gen.prompt_mask, gen.response_ids, gen.response_mask,
                                return_entropy=True, entropy_grad=False)
    assert lp.requires_grad and not ent.requires_grad
    with torch.no_grad():
        _, ent2 = response_logprobs(model, gen.prompt_ids, gen.prompt_mask, gen.response_ids, gen.response_mask,
                                    return_entropy=True)
    torch.testing.assert_close(ent, ent2, atol=1e-6, rtol=0)


def test_prefill_once_per_prompt_gives_the_recomputed_logprobs():
    model = tiny_model().eval()
    gen = _gen(model, num_samples=4)
    with torch.no_grad():
        lp, _ = response_logprobs(model, gen.prompt_ids, gen.prompt_mask, gen.response_ids, gen.response_mask,
                                  temperature=3.0, share_prompts=False)
    torch.testing.assert_close(gen.logprobs, lp, atol=2e-5, rtol=0)


# ------------------------------------------------------------------ old_logprobs=auto
def _update_cfg(**kw):
    base = dict(ppo_epochs=1, mini_batches=1, micro_batch_size=5, temperature=3.0, grad_clip=0.0, lr=1e-2)
    base.update(kw)
    return build_config(base)


def _one_update(mode: str, micro_batch_size: int = 5):
    cfg = _update_cfg(micro_batch_size=micro_batch_size)
    model = tiny_model().train()
    gen = _gen(model)
    adv = torch.randn(len(gen), generator=torch.Generator().manual_seed(2))[:, None] * gen.response_mask
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the weights stay, the gradient is kept
    rows = torch.arange(len(gen))
    old = None if mode == "update" else _forward_logprobs(model, gen, rows, cfg, entropy=False)[0]
    record: dict = {}
    sums, norms, n = update_policy(model, opt, gen, cfg, old_lp=old, adv=adv, loss_mask=gen.response_mask,
                                   ref_lp=None, generator=torch.Generator().manual_seed(3), norm_const=7.0,
                                   record=record)
    return sums, norms, n, [p.grad.clone() for p in model.parameters()], record, model, gen


@pytest.mark.parametrize("micro_batch_size", [5, 12])
def test_update_with_its_own_logprobs_has_the_recompute_gradient(micro_batch_size):
    a = _one_update("recompute", micro_batch_size)
    b = _one_update("update", micro_batch_size)
    assert a[2] == b[2] == 1
    for ga, gb in zip(a[3], b[3]):
        torch.testing.assert_close(gb, ga, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(b[1]), torch.tensor(a[1]), atol=1e-6, rtol=1e-5)
    assert b[0]["clipfrac"] == 0.0 and b[0]["ppo_kl"] == 0.0  # the ratio is exactly 1
    torch.testing.assert_close(torch.tensor(b[0]["loss"]), torch.tensor(a[0]["loss"]), atol=1e-6, rtol=1e-5)
    # the recorded log-probs and entropies are those of a no-grad forward of the same policy
    rec, model, gen = b[4], b[5], b[6]
    lp, ent = _forward_logprobs(model, gen, torch.arange(len(gen)), _update_cfg(), entropy=True)
    torch.testing.assert_close(rec["logprobs"], lp, atol=2e-6, rtol=0)
    torch.testing.assert_close(rec["entropy"], ent, atol=2e-6, rtol=0)
    assert not rec["logprobs"].requires_grad and not rec["entropy"].requires_grad


def test_update_with_its_own_logprobs_refuses_several_optimizer_steps():
    model = tiny_model().train()
    gen = _gen(model)
    for kw in (dict(ppo_epochs=2), dict(mini_batches=2)):
        with pytest.raises(ValueError, match="ppo_epochs=1 and mini_batches=1"):
            update_policy(model, torch.optim.SGD(model.parameters(), lr=0.0), gen, _update_cfg(**kw), old_lp=None,
                          adv=torch.zeros(gen.response_mask.shape), loss_mask=gen.response_mask, ref_lp=None,
                          generator=torch.Generator().manual_seed(0), norm_const=7.0)


@pytest.mark.parametrize("kw, want", [
    ({}, "update"),
    ({"estimator": "0.5*grpo + 0.5*rloo | clip(3)"}, "update"),
    ({"ppo_epochs": 2}, "recompute"),
    ({"mini_batches": 2}, "recompute"),
    ({"kl_coef": 0.01}, "recompute"),
    ({"rollout_is": "token"}, "recompute"),
    ({"ter": True}, "recompute"),
    ({"credit": "hapo"}, "recompute"),
    ({"estimator": "canon"}, "recompute"),  # reads the old entropies when the batch has no metric
    ({"old_logprobs": "recompute"}, "recompute"),
    ({"old_logprobs": "sampling"}, "sampling"),
])
def test_old_logprobs_source(kw, want):
    assert old_logprobs_source(build_config(kw)) == want


def test_old_logprobs_source_of_an_estimator_that_needs_them():
    # optimal_token_baseline needs old_logprobs (and sum_pi_squared, which no trainer rollout provides,
    # so its config is refused at load: tests/test_modes.py); the decision reads the declaration
    cfg = build_config({}).model_copy(update={"estimator": "optimal_token_baseline"})
    assert old_logprobs_source(cfg) == "recompute"


def test_every_estimator_that_reads_old_policy_fields_is_resolved_to_recompute():
    """A guard for new estimators: any whose module reads batch.entropy / old_logprobs / ref_logprobs
    must declare it in its registry entry's ``needs`` or ``optional``."""
    fields = {"entropy", "old_logprobs", "ref_logprobs"}
    for name, info in ESTIMATORS.items():
        tree = ast.parse(inspect.getsource(inspect.getmodule(info.fn)))
        reads = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in fields
                 and isinstance(n.value, ast.Name) and n.value.id == "batch"}
        reads |= {n.args[0].value for n in ast.walk(tree)
                  if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in ("get", "has")
                  and n.args and isinstance(n.args[0], ast.Constant) and n.args[0].value in fields}
        assert reads <= set(info.needs) | set(info.optional), f"{name} reads {reads} without declaring it"


def test_rollout_is_with_auto_is_allowed_and_with_sampling_refused():
    assert build_config({"rollout_is": "token"}).old_logprobs == "auto"
    with pytest.raises(Exception, match="old_logprobs=recompute"):
        build_config({"rollout_is": "token", "old_logprobs": "sampling"})


def test_training_run_auto_matches_recompute(tmp_path):
    """Two RL steps with the default (auto: no old-policy forward) and with old_logprobs=recompute:
    the same trajectory, to fp32 rounding (the rollouts are the same tokens)."""
    rows = {}
    for mode in ("auto", "recompute"):
        train(build_config(tiny_overrides(tmp_path, name=mode, old_logprobs=mode, steps=2, eval_every=0,
                                          save_every=10, sft_steps=0)))
        rows[mode] = read_jsonl(tmp_path / "runs" / mode / "metrics.jsonl")
    assert len(rows["auto"]) == len(rows["recompute"]) == 2
    for a, b in zip(rows["auto"], rows["recompute"]):
        assert a["time/logprobs"] < b["time/logprobs"]
        for k in ("reward", "response_len", "entropy", "adv_abs", "grad_norm", "loss", "pg_loss", "rank/pairs"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k
        assert a["ppo_kl"] == 0.0 and abs(b["ppo_kl"]) < 1e-6


# ------------------------------------------------------------------ metrics writer
def test_jsonl_writer_without_per_line_fsync_flushes_every_line(tmp_path, monkeypatch):
    import grouprl.train.logging as logging

    synced = []
    monkeypatch.setattr(logging.os, "fsync", lambda fd: synced.append(fd))
    w = JsonlWriter(tmp_path / "m.jsonl", fsync_every_line=False)
    w.write({"step": 1, "x": 0.5})
    assert read_jsonl(tmp_path / "m.jsonl") == [{"step": 1, "x": 0.5}] and synced == []  # flushed, not synced
    w.sync()
    assert len(synced) == 1
    w.close()
    w.close()  # closing twice is harmless
    assert len(synced) == 2
    w2 = JsonlWriter(tmp_path / "n.jsonl")
    w2.write({"step": 1})
    assert len(synced) == 3  # the default still fsyncs every line
    w2.close()
