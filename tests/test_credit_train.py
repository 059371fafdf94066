"""Few-step CPU training runs of the token/segment credit methods (HAPO, SPO-chain, PPO with a
critic, T-PPO's EGAE), their example configs, and a resume with the critic's state."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from test_train import tiny_overrides

from grouprl.models import ValueModel
from grouprl.train import ConfigError, build_config, load_config, train
from grouprl.train.credit import CriticCredit
from grouprl.train.logging import read_jsonl

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

METHODS = {
    "hapo": dict(estimator="hapo_tlga", loss="hapo", credit="hapo", credit_kwargs={"tau": 0.3}),
    "hapo_temperature_only": dict(estimator="grpo", loss="ppo_clip", credit="hapo"),
    "spo_chain": dict(estimator="spo_chain", credit="spo_chain", credit_kwargs={"interval": 1, "samples": 2}),
    "ppo_gae": dict(estimator="gae", estimator_kwargs={"lam": 0.95}, credit="critic"),
    "tppo_egae": dict(estimator="egae", credit="critic"),
    "spo_tree": dict(estimator="spo_tree", credit="spo_tree",
                     credit_kwargs={"branch": [2, 2], "segment_len": 1, "max_edges": 6}),
    "tppo": dict(estimator="egae", credit="tppo", credit_kwargs={"max_total_tokens": 6}),
}


@pytest.mark.parametrize("method", sorted(m for m in METHODS if m != "hapo_temperature_only"))
def test_example_config_loads(method):
    cfg = load_config(EXAMPLES / f"{method}.yaml")
    assert cfg.credit == METHODS[method]["credit"] and cfg.estimator == METHODS[method]["estimator"]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_few_step_run(tmp_path, method):
    cfg = build_config(tiny_overrides(tmp_path, name=method, steps=2, eval_every=0, **METHODS[method]))
    summary = train(cfg)
    rows = read_jsonl(Path(summary["run_dir"]) / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        for k in ("reward", "loss", "grad_norm", "adv_abs"):
            assert math.isfinite(r[k]), (k, r)
    assert any(r["grad_norm"] > 0 for r in rows)
    if method == "hapo":
        assert "hapo_h_mean" in rows[0] and rows[1]["hapo/entropy_scale"] > 0
    if method == "spo_chain":
        assert rows[0]["spo/cut_points_per_response"] > 0 and rows[0]["spo/mc_rollouts"] > 0
    if method == "ppo_gae":  # every response is finished (no bootstrapping): the critic trains every step
        assert rows[0]["value/skipped"] == 0.0 and math.isfinite(rows[0]["value/vf_loss"])
    if method == "spo_tree":
        assert rows[0]["spo_tree/nodes"] > 16 and 0 < rows[0]["spo_tree/edges_kept"] <= 6 * 4


def test_credit_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="critic"):
        build_config(tiny_overrides(tmp_path, credit="critc"))
    # an unknown option is refused when the config loads, with the close match
    with pytest.raises(ConfigError, match="credit_kwargs.taux: credit 'hapo' has no keyword 'taux'; did you mean 'tau'"):
        build_config(tiny_overrides(tmp_path, name="bad", credit="hapo", credit_kwargs={"taux": 1}))
    with pytest.raises(ConfigError, match="credit_kwargs.adv_method: adv_method='mean'; choose one of 'rloo', 'grpo'"):
        build_config(tiny_overrides(tmp_path, estimator="spo_tree", credit="spo_tree", credit_kwargs={"adv_method": "mean"}))
    # T-PPO passes its critic options on: both kinds are accepted
    build_config(tiny_overrides(tmp_path, estimator="egae", credit="tppo", credit_kwargs={"lr": 0.01, "in_flight": 8}))


@pytest.mark.parametrize("estimator", ["grpo", "gae", "0.5*egae + 0.5*gae", "rloo"])
def test_tppo_refuses_an_estimator_that_does_not_bootstrap(tmp_path, estimator):
    """credit=tppo trains on window-truncated rows: the estimator must declare 'bootstraps_truncated' in
    every term (egae does); any other is refused at config load, naming the trait and the fix."""
    with pytest.raises(ConfigError, match=r"credit='tppo' needs an estimator that declares 'bootstraps_truncated'.*Use estimator=egae"):
        build_config(tiny_overrides(tmp_path, estimator=estimator, credit="tppo"))


@pytest.mark.parametrize("kw, msg", [({"in_flight": 0}, "credit_kwargs.in_flight=0: expected an integer >= 1"),
                                     ({"grow": "maybe"}, "credit_kwargs.grow='maybe': credit 'tppo' takes grow: bool"),
                                     ({"max_total_tokens": 2}, "max_total_tokens=2 is below the window"),
                                     ({"max_in_flight": -1}, "credit_kwargs.max_in_flight=-1"),
                                     ({"in_flight": 1}, "credit_kwargs.in_flight=1 is below mini_batches=2")])
def test_tppo_option_errors_at_config_load(tmp_path, kw, msg):
    with pytest.raises(ConfigError, match=re.escape(msg)):
        build_config(tiny_overrides(tmp_path, estimator="egae", credit="tppo", credit_kwargs=kw, mini_batches=2))


def test_critic_filters_finished_rows_by_declared_trait(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    pol = Qwen2ForCausalLM(Qwen2Config(vocab_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       num_key_value_heads=1, intermediate_size=32))
    for est, expect in (("egae", True), ("gae", False), ("0.5*egae + 0.5*gae", True)):
        cfg = build_config(tiny_overrides(tmp_path, estimator=est, credit="critic"))
        assert CriticCredit(cfg, pol).finished_only is expect


def test_value_model_and_critic_state_roundtrip(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    pol = Qwen2ForCausalLM(Qwen2Config(vocab_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       num_key_value_heads=1, intermediate_size=32, max_position_embeddings=32))
    vm = ValueModel(pol)
    pids = torch.tensor([[0, 3, 4], [5, 6, 7]])
    pm = torch.tensor([[False, True, True], [True, True, True]])
    rids = torch.tensor([[1, 2, 0], [3, 4, 5]])
    rm = torch.tensor([[True, True, False], [True, True, True]])
    torch.nn.init.normal_(vm.head.weight)
    v = vm(pids, pm, rids, rm)
    assert v.shape == (2, 3) and v[0, 2] == 0 and bool((v[rm] != 0).all())
    # left padding does not change a row's values
    v1 = vm(pids[:1, 1:], pm[:1, 1:], rids[:1], rm[:1])
    assert torch.allclose(v1, v[:1], atol=1e-5)
    with pytest.raises(ValueError, match="same N rows"):
        vm(pids[:1], pm[:1], rids, rm)
    cfg = build_config(tiny_overrides(tmp_path, estimator="egae", credit="critic"))
    a, b = CriticCredit(cfg, pol), CriticCredit(cfg, pol)
    torch.nn.init.normal_(a.critic.head.weight)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.critic(pids, pm, rids, rm), b.critic(pids, pm, rids, rm)) and b.finished_only


@pytest.mark.parametrize("credit, estimator, kw", [("critic", "gae", {}), ("tppo", "egae", {"max_total_tokens": 6})])
def test_critic_run_resumes(tmp_path, credit, estimator, kw):
    # tppo: windows of 3 tokens up to 6 — the step-1 rows still in flight finish at step 2 and train the critic
    over = tiny_overrides(tmp_path, name="resume", steps=2, save_every=1, eval_every=0, estimator=estimator, credit=credit,
                          credit_kwargs=kw)
    full = train(build_config({**over, "name": "full"}))
    part = train(build_config({**over, "steps": 1}))
    resumed = train(build_config({**over, "steps": 2}), resume=part["run_dir"])
    a = read_jsonl(Path(full["run_dir"]) / "metrics.jsonl")
    b = read_jsonl(Path(resumed["run_dir"]) / "metrics.jsonl")
    assert a[-1]["value/vf_loss"] == pytest.approx(b[-1]["value/vf_loss"], rel=1e-5)
    assert a[-1]["loss"] == pytest.approx(b[-1]["loss"], rel=1e-5)
    if credit == "tppo":  # the in-flight pool came back from the checkpoint
        assert a[-1]["tppo/continued"] == b[-1]["tppo/continued"] > 0


def test_spo_chain_unfinished_reward(tmp_path):
    from grouprl.rollout import Generation
    from grouprl.train.credit import CreditContext, SpoChainCredit

    cfg = build_config(tiny_overrides(tmp_path, estimator="spo_chain", credit="spo_chain"))
    credit = SpoChainCredit(cfg, torch.nn.Linear(1, 1), unfinished_reward=-1.0)
    g = Generation(prompt_ids=torch.ones(2, 1, dtype=torch.int64), prompt_mask=torch.ones(2, 1, dtype=torch.bool),
                   response_ids=torch.ones(2, 2, dtype=torch.int64), response_mask=torch.ones(2, 2, dtype=torch.bool),
                   logprobs=torch.zeros(2, 2), truncated=torch.tensor([True, False]), prompt_index=torch.zeros(2, dtype=torch.int64),
                   pad_id=0)
    ctx = CreditContext(torch.nn.Linear(1, 1), cfg, 2, lambda gen: torch.tensor([0.5, 0.5]), torch.Generator())
    assert credit._score(ctx)(g).tolist() == [-1.0, 0.5]
    assert SpoChainCredit(cfg, torch.nn.Linear(1, 1))._score(ctx)(g).tolist() == [0.5, 0.5]


def test_value_head_is_built_on_the_policy_device():
    """The critic's head sits beside its body (on a GPU the policy is moved before the critic is built);
    checked with torch's meta device, which needs no GPU."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    pol = Qwen2ForCausalLM(Qwen2Config(vocab_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       num_key_value_heads=1, intermediate_size=32)).to("meta")
    vm = ValueModel(pol)
    assert {p.device.type for p in vm.parameters()} == {"meta"}


@pytest.mark.parametrize("adv_method", ["rloo", "grpo"])
@pytest.mark.parametrize("v", [0.1, 0.7, 1 / 3])
def test_spo_tree_equal_children_are_not_trained_on(tmp_path, adv_method, v):
    """In the credit hook: prompt 0's leaves all score v (every node of its tree has equal children, at
    every depth), prompt 1's leaves score by their last token. Scores are float64, so the float mean of
    equal children can drift from them (v = 0.1 or 0.7 with 3 children). No edge of prompt 0 is kept, trained on
    or counted in ``spo_tree/edges_kept``; prompt 1's non-zero edges are."""
    from test_prefix_rollout import base_gen, tiny_model

    from grouprl.advantages.spo import TREE_ADV_METHODS
    from grouprl.train.credit import CreditContext, SpoTreeCredit

    assert adv_method in TREE_ADV_METHODS
    model = tiny_model()
    cfg = build_config(tiny_overrides(tmp_path, estimator="spo_tree", credit="spo_tree", max_new_tokens=6, temperature=2.0))
    credit = SpoTreeCredit(cfg, model, branch=[3, 3], segment_len=1, adv_method=adv_method, max_edges=None)

    def score(g):
        last = g.response_ids.gather(1, (g.lengths - 1).clamp_min(0).unsqueeze(1)).squeeze(1)
        return torch.where(g.prompt_index == 0, torch.tensor(v, dtype=torch.float64), (last % 3).double() / 2)

    ctx = CreditContext(model, cfg, 2, score, torch.Generator().manual_seed(3))
    out = credit.extend_rollout(base_gen(model, n=3, T=6), ctx)
    kept_prompts = out.prompt_index[out.extras["node_advantage"] != 0]
    assert out.prompt_index.tolist().count(0) == 0 and len(out) > 0  # no row of prompt 0's tree
    assert bool((kept_prompts == 1).all())
    assert credit._metrics["spo_tree/edges_kept"] == float(len(out))
    # every leaf scores v: no edge at all; the step falls back to the depth-0 rows with advantage 0 (zero loss)
    credit_all = SpoTreeCredit(cfg, model, branch=[3, 3], segment_len=1, adv_method=adv_method, max_edges=None)
    none = credit_all.extend_rollout(base_gen(model, n=3, T=6), CreditContext(model, cfg, 2, lambda g: torch.full((len(g),), v, dtype=torch.float64),
                                                                        torch.Generator().manual_seed(3)))
    assert credit_all._metrics["spo_tree/edges_kept"] == 0.0 and none.extras["node_advantage"].abs().sum() == 0


# ------------------------------------------------------------------ T-PPO in the loop, exact values
def _record_tppo(monkeypatch) -> list[dict]:
    """Per step: the rows trained on, their advantages and loss mask (as update_policy receives them),
    and the batch / pool / metrics the T-PPO hook saw after the update."""
    import grouprl.train.loop as loop_mod
    import grouprl.train.task_source as source_mod
    from grouprl.train.credit import TppoCredit

    steps: list[dict] = []
    update = loop_mod.update_policy

    def recording_update(model, optimizer, gen, cfg, **kw):
        steps.append({"gen": gen, "adv": kw["adv"].detach().clone(), "loss_mask": kw["loss_mask"].clone()})
        return update(model, optimizer, gen, cfg, **kw)

    after = TppoCredit.after_update

    def recording_after(self, batch, gen, ctx):
        out = after(self, batch, gen, ctx)
        steps[-1].update(values=batch.values.clone(), rewards=batch.rewards.clone(), truncated=batch.truncated.clone(),
                         pool=self.pool, pool_born=self.pool_born.clone(), metrics=dict(out))
        return out

    evaluate = source_mod.evaluate

    def recording_evaluate(*a, **kw):
        steps.append({"eval_max_new_tokens": kw["max_new_tokens"]})
        return evaluate(*a, **kw)

    monkeypatch.setattr(loop_mod, "update_policy", recording_update)
    monkeypatch.setattr(TppoCredit, "after_update", recording_after)
    monkeypatch.setattr(source_mod, "evaluate", recording_evaluate)
    return steps


def _egae_reference(values: list[float], reward: float, in_flight: bool, lam: float) -> list[float]:
    """EGAE (γ = 1) from its equations, one row: δ_t = r_t + V_{t+1} − V_t; after the last token V := V_{l−1}
    for an in-flight row (its reward unused), else 0 with the reward at the last token; Â_t = Σ_k λ^k δ_{t+k}."""
    L = len(values)
    nxt = values[1:] + [values[-1] if in_flight else 0.0]
    r = [0.0] * (L - 1) + [0.0 if in_flight else reward]
    delta = [r[t] + nxt[t] - values[t] for t in range(L)]
    return [sum(lam**k * delta[t + k] for k in range(L - t)) for t in range(L)]


@pytest.mark.parametrize("lam_alpha", [None, 0.5])
def test_tppo_loop_exact_windows(tmp_path, monkeypatch, lam_alpha):
    """4 steps, 16 sequences in flight (4 prompts × 4), windows of 3 tokens up to 9: checks, at every step,
    the row count, which rows are continued, the window loss mask, the in-flight flag, the EGAE advantages
    (fixed λ = 0.95, or λ = 1 − 1/(αL) with α = 0.5) and the critic's value tokens against values computed
    here from the rules, and that a response reaching 9 tokens without EOS is scored by the verifier."""
    from test_train import digit_fraction

    from grouprl.models import build_tokenizer
    from grouprl.train.data import decode_responses

    steps = _record_tppo(monkeypatch)
    est_kw = {} if lam_alpha is None else {"lam_alpha": lam_alpha}
    cfg = build_config(tiny_overrides(tmp_path, name="tppo_exact", steps=4, eval_every=0, estimator="egae",
                                      estimator_kwargs=est_kw, credit="tppo", credit_kwargs={"max_total_tokens": 9},
                                      temperature=1.5))
    summary = train(cfg)
    evals = [st.pop("eval_max_new_tokens") for st in steps if "eval_max_new_tokens" in st]
    steps[:] = [st for st in steps if st]
    assert evals and set(evals) == {9}  # evaluations generate whole responses (max_total_tokens), not a window
    rows = read_jsonl(Path(summary["run_dir"]) / "metrics.jsonl")
    tok = build_tokenizer("char")
    eos = tok.eos_token_id
    N, window, total = 16, 3, 9
    assert len(steps) == 4
    prev_live = None
    n_finished_at_max = n_continued = 0
    for s, st in enumerate(steps):
        gen = st["gen"]
        L = gen.lengths
        last = gen.response_ids.gather(1, (L - 1).clamp_min(0).unsqueeze(1)).squeeze(1)
        ended = (L > 0) & (last == eos)
        live = ~ended & (L < total)
        assert len(gen) == N and rows[s]["tppo/rows"] == N  # the fixed in-flight count, exactly
        n_cont = 0 if prev_live is None else len(prev_live)
        assert rows[s]["tppo/continued"] == n_cont and rows[s]["tppo/new"] == N - n_cont
        n_continued += n_cont
        start = torch.zeros(N, dtype=torch.int64)
        if prev_live is not None:  # the first rows continue last step's in-flight rows, in order, from their prefix
            for i, (p_ids, r_ids) in enumerate(prev_live):
                assert torch.equal(gen.prompt_ids[i][gen.prompt_mask[i]], p_ids)
                assert torch.equal(gen.response_ids[i, : len(r_ids)], r_ids)
                start[i] = len(r_ids)
                assert len(r_ids) < L[i] <= len(r_ids) + window
        assert bool((L - start <= window).all())
        expect_mask = gen.response_mask & (torch.arange(gen.response_mask.shape[1])[None, :] >= start[:, None])
        assert torch.equal(st["loss_mask"], expect_mask)
        assert torch.equal(st["truncated"], live)
        for i in range(N):
            n = int(L[i])
            lam = 0.95 if lam_alpha is None else max(0.0, 1 - 1 / (lam_alpha * n))
            ref = _egae_reference(st["values"][i, :n].double().tolist(), float(st["rewards"][i]), bool(live[i]), lam)
            assert st["adv"][i, :n].tolist() == pytest.approx(ref, abs=2e-5), (s, i)
        # the critic trains on the rows finished in this step, all their tokens; skipped when none finished
        fin_tokens = int(L[~live].sum())
        if fin_tokens:
            assert rows[s]["value/skipped"] == 0.0 and rows[s]["value/tokens"] == fin_tokens
        else:
            assert rows[s]["value/skipped"] == 1.0
        at_max = ~ended & (L >= total)
        assert rows[s]["tppo/finished_at_max"] == int(at_max.sum())
        texts = decode_responses(tok, gen)
        for i in at_max.nonzero().squeeze(1).tolist():
            assert float(st["rewards"][i]) == pytest.approx(digit_fraction(None, texts[i]), abs=1e-6)
        n_finished_at_max += int(at_max.sum())
        prev_live = [(gen.prompt_ids[i][gen.prompt_mask[i]], gen.response_ids[i, : int(L[i])]) for i in live.nonzero().squeeze(1).tolist()]
        assert rows[s]["tppo/in_flight"] == len(prev_live) and len(st["pool"]) == len(prev_live)
    assert n_continued > 0 and n_finished_at_max > 0  # both mechanisms were exercised on this seed
    # and the advantages were not all zero: a trained critic's values entered the bootstrap of in-flight rows
    assert any(bool((st["adv"][st["truncated"]] != 0).any()) for st in steps)


@pytest.mark.parametrize("grow", [True, False])
def test_tppo_max_in_flight_drops_the_oldest(tmp_path, monkeypatch, grow):
    """max_in_flight = 5: of the rows still in flight after a step, the 5 most recently started are kept
    (ties: the later rows); grow=True adds 16 new rows every step, grow=False keeps 16 rows in all."""
    steps = _record_tppo(monkeypatch)
    cfg = build_config(tiny_overrides(tmp_path, name="tppo_cap", steps=3, eval_every=0, estimator="egae", credit="tppo",
                                      credit_kwargs={"max_total_tokens": 12, "max_in_flight": 5, "grow": grow},
                                      temperature=1.5))
    train(cfg)
    steps[:] = [st for st in steps if "gen" in st]
    born_prev: list[int] = []
    dropped_old = 0
    for s, st in enumerate(steps):
        gen = st["gen"]
        n_cont = len(born_prev)
        assert len(gen) == (n_cont + 16 if grow else 16)
        born = born_prev + [s] * (len(gen) - n_cont)
        assert st["pool_born"].tolist() == [born[i] for i in _kept_rows(st["truncated"], born, 5)]
        kept = _kept_rows(st["truncated"], born, 5)
        assert torch.equal(st["pool"].response_ids, gen.response_ids[kept][:, : st["pool"].response_ids.shape[1]])
        live = st["truncated"].nonzero().squeeze(1).tolist()
        dropped_old += sum(1 for i in live if i not in kept and born[i] < s)
        born_prev = [born[i] for i in kept]
    if grow:
        assert dropped_old > 0  # older rows were dropped while newer ones were kept


def _kept_rows(live: torch.Tensor, born: list[int], cap: int) -> list[int]:
    """The rows kept in flight: the live rows, oldest dropped first (by start step, then row order)."""
    idx = live.nonzero().squeeze(1).tolist()
    order = sorted(idx, key=lambda i: (born[i], i))
    return sorted(order[max(0, len(order) - cap):])
