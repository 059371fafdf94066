"""COPO and HAPO inside verl 0.9.1's actor update path (issue 16, item 3), on the CPU.

What runs is verl's own code from the legacy trainer's ``_update_actor`` on: ``DataProto.to_tensordict``,
``left_right_2_no_padding``, ``tensordict_utils.make_iterator`` (shuffled mini-batches),
``prepare_micro_batches`` (dynamic, uneven micro-batches, or fixed-size ones), and
``verl.workers.utils.losses.ppo_loss`` called as verl's engine calls its loss function
(``loss_function(model_output=, data=micro_batch, dp_group=)``, with ``functools.partial(ppo_loss,
config=actor_config)`` bound as verl's actor worker binds it), with a backward per micro-batch.
Two stages:

* a stand-in model (a leaf tensor of per-token log-probs and entropies in verl's nested
  no-padding layout), which lets the tests compare losses and gradients exactly;
* verl's ``FSDPEngineWithLMHead.forward_backward_batch`` and ``forward_step`` (its
  ``prepare_model_inputs`` / ``prepare_model_outputs``, log-probs and entropies from the logits)
  around a tiny Qwen2 built from a config, in a one-process gloo group, without FSDP wrapping
  (``use_remove_padding=False``; the device query is redirected to the CPU).

Stand-ins: ``RayPPOTrainer._update_actor`` (the lines of verl's legacy one that build the actor's
TensorDict; importing ``verl.trainer.ppo.ray_trainer`` needs torchdata, cachetools, uvicorn, fastapi
and more) and the worker loop around the engine (``TrainingWorker.train_mini_batch``: its iterator
and per-mini-batch keys). No Ray, no FSDP sharding, no optimizer step, no GPU.
"""

from __future__ import annotations

import functools
import itertools
import os
import types

import numpy as np
import pytest
import torch
from conftest import require

require("verl")
require("verl.workers.utils.losses")

from verl.protocol import DataProto  # noqa: E402
from verl.utils import tensordict_utils as tu  # noqa: E402
from verl.workers.config import ActorConfig  # noqa: E402
from verl.workers.config.actor import PolicyLossConfig  # noqa: E402
from verl.workers.engine.utils import prepare_micro_batches  # noqa: E402
from verl.workers.utils import losses as verl_losses  # noqa: E402

from grouprl.advantages.copo import copo_terms  # noqa: E402
from grouprl.core import Rollouts  # noqa: E402
from grouprl.integrations import verl as gv  # noqa: E402
from grouprl.losses import policy_loss  # noqa: E402

gv.register_all()
gv.install_loss_passthrough()  # verl.workers.utils.losses is imported: patched now

# verl 0.9.1 legacy RayPPOTrainer._update_actor, the lines that build what the actor receives
FAKE_TRAINER = '''
from verl.protocol import DataProto
from verl.utils import tensordict_utils as tu
from verl.workers.utils.padding import left_right_2_no_padding


def compute_advantage(data, adv_estimator, gamma=1.0, lam=1.0, num_repeat=1, norm_adv_by_std_in_grpo=True,
                      config=None):
    raise AssertionError("not called here")


class RayPPOTrainer:
    def __init__(self, config, actor_rollout_wg):
        self.config = config
        self.actor_rollout_wg = actor_rollout_wg

    def _update_actor(self, batch):
        batch.meta_info["multi_turn"] = False
        batch.meta_info["temperature"] = 1.0
        batch_td = batch.to_tensordict()
        batch_td = left_right_2_no_padding(batch_td)
        calculate_entropy = self.config.actor_rollout_ref.actor.calculate_entropy or (
            self.config.actor_rollout_ref.actor.entropy_coeff != 0.0
        )
        ppo_mini_batch_size = self.config.actor_rollout_ref.actor.ppo_mini_batch_size
        ppo_mini_batch_size = ppo_mini_batch_size * self.config.actor_rollout_ref.rollout.n
        tu.assign_non_tensor(
            batch_td,
            calculate_entropy=calculate_entropy,
            global_batch_size=ppo_mini_batch_size,
            mini_batch_size=ppo_mini_batch_size,
            epochs=self.config.actor_rollout_ref.actor.ppo_epochs,
            seed=self.config.actor_rollout_ref.actor.data_loader_seed,
            dataloader_kwargs={"shuffle": self.config.actor_rollout_ref.actor.shuffle},
            compute_loss=True,
        )
        metrics = self.actor_rollout_wg.update_actor(batch_td)
        return DataProto.from_single_dict(data={}, meta_info={"metrics": {f"actor/{k}": v for k, v in metrics.items()}})
'''

B, P, T = 8, 3, 5
PROMPT_LEN = torch.tensor([3, 2, 3, 1, 3, 2, 3, 3])
RESP_LEN = torch.tensor([5, 3, 4, 2, 5, 5, 1, 3])
ANSWER = np.array([7, 7, 3, 7, 1, 2, 1, 1])  # prompt a: 3 of 4 agree; prompt b: split
SCORE = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0])


class Policy:
    """The 'model': per-token log-probs and entropies of the responses, (B, T) leaves."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.old = torch.randn(B, T, generator=g) - 1.5
        self.lp = (self.old + 0.25 * torch.randn(B, T, generator=g)).requires_grad_()
        self.ent = (0.1 + 2.0 * torch.rand(B, T, generator=g)).requires_grad_()

    def output(self, micro_batch, calculate_entropy: bool) -> dict:
        """verl's model output for ``micro_batch``: nested over prompt+response, the log-prob of
        response token t at sequence position prompt_len - 1 + t (verl's one-token shift)."""
        rows = micro_batch["row_id"].long()

        def nested(x):
            seqs = []
            for r in rows.tolist():
                p, n = int(PROMPT_LEN[r]), int(RESP_LEN[r])
                seqs.append(torch.cat([x.new_zeros(p - 1), x[r, :n], x.new_zeros(1)]))
            return torch.nested.as_nested_tensor(seqs, layout=torch.jagged)

        out = {"log_probs": nested(self.lp)}
        if calculate_entropy:
            out["entropy"] = nested(self.ent)
        return out


def step_batch(answer=True) -> DataProto:
    """The DataProto at the legacy trainer's actor update: left/right padded prompts and responses,
    old log-probs, the estimator's advantages, token_level_rewards, uid and (COPO) answer ids, plus a
    row id that lets the stand-in model find each micro-batch row."""
    g = torch.Generator().manual_seed(1)
    attn = torch.zeros(B, P + T, dtype=torch.long)
    for b in range(B):
        attn[b, P - PROMPT_LEN[b]: P] = 1
        attn[b, P: P + RESP_LEN[b]] = 1
    ids = torch.randint(3, 50, (B, P + T), generator=g) * attn
    mask = attn[:, P:].clone()
    tlr = torch.zeros(B, T)
    tlr[torch.arange(B), RESP_LEN - 1] = SCORE
    policy = Policy()
    non_tensors = {"uid": np.array(["a"] * 4 + ["b"] * 4, dtype=object)}
    if answer:
        non_tensors["answer"] = ANSWER
    return DataProto.from_dict(
        tensors={
            "input_ids": ids, "attention_mask": attn, "position_ids": (attn.cumsum(1) - 1).clamp_min(0),
            "prompts": ids[:, :P], "responses": ids[:, P:], "response_mask": mask,
            "old_log_probs": policy.old * mask, "advantages": torch.randn(B, T, generator=g) * mask,
            "token_level_rewards": tlr, "row_id": torch.arange(B, dtype=torch.float32),
        },
        non_tensors=non_tensors,
    )


class Worker:
    """Stand-in for verl's actor worker: train_mini_batch's iterator and forward_backward_batch's
    micro-batches and normalisers, around verl's own ppo_loss bound as its worker binds it."""

    def __init__(self, actor_config: ActorConfig, policy: Policy, max_token_len: int = 14) -> None:
        from verl.workers.utils.losses import ppo_loss  # as verl.workers.engine_workers imports it

        self.loss_fn = functools.partial(ppo_loss, config=actor_config)  # as its actor worker binds it
        self.policy, self.max_token_len = policy, max_token_len
        self.micro_rows: list[list[int]] = []
        self.batch_num_tokens: list[int] = []
        self.losses: list[float] = []
        self.metrics: list[dict] = []

    def update_actor(self, data):
        mini = tu.pop(data, key="mini_batch_size", default=None)
        epochs = tu.pop(data, key="epochs", default=1)
        seed = tu.pop(data, key="seed", default=42)
        kwargs = tu.pop(data, key="dataloader_kwargs", default={})
        for mb in tu.make_iterator(data, mini_batch_size=mini, epochs=epochs, seed=seed, dataloader_kwargs=kwargs):
            n_tokens = int(mb["loss_mask"].sum())
            tu.assign_non_tensor(mb, batch_num_tokens=n_tokens, dp_size=1, use_dynamic_bsz=True,
                                 max_token_len_per_gpu=self.max_token_len, sp_size=1)
            self.batch_num_tokens.append(n_tokens)
            micro_batches, _ = prepare_micro_batches(mb, dp_group=None, same_micro_num_in_dp=False)
            for micro in micro_batches:
                calc = bool(tu.get_non_tensor_data(micro, "calculate_entropy", False))
                out = self.policy.output(micro, calc)
                loss, metrics = self.loss_fn(model_output=out, data=micro, dp_group=None)
                loss.backward()
                self.micro_rows.append(micro["row_id"].long().tolist())
                self.losses.append(float(loss.detach()))
                self.metrics.append(metrics)
        return {"pg_loss": sum(self.losses)}


def config(loss_mode: str, adv_estimator: str = "grouprl.grpo", hparams=None, **actor_kw):
    from omegaconf import OmegaConf

    actor = OmegaConf.create({
        "policy_loss": {"loss_mode": loss_mode}, "ppo_mini_batch_size": B, "ppo_epochs": 1,
        "data_loader_seed": 3, "shuffle": True, "calculate_entropy": False, "entropy_coeff": 0.0, **actor_kw,
    })
    return OmegaConf.create({
        "actor_rollout_ref": {"actor": actor, "rollout": {"n": 1}},
        "algorithm": {"adv_estimator": adv_estimator, "grouprl": {"hparams": dict(hparams or {})}},
    })


def actor_config(loss_mode: str, **kw) -> ActorConfig:
    return ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1,
                       policy_loss=PolicyLossConfig(loss_mode=loss_mode), **kw)


@pytest.fixture
def trainer_module(tmp_path, monkeypatch):
    import importlib

    name = f"fake_legacy_trainer_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(FAKE_TRAINER)
    monkeypatch.syspath_prepend(str(tmp_path))
    gv.install_field_passthrough(module=name)
    mod = importlib.import_module(name)
    assert getattr(mod.RayPPOTrainer._update_actor, "_grouprl_passthrough", False)
    return mod


def run_update(mod, cfg, actor_cfg, batch, max_token_len=14):
    policy = Policy()
    worker = Worker(actor_cfg, policy, max_token_len)
    out = mod.RayPPOTrainer(cfg, worker)._update_actor(batch)
    return policy, worker, out


# ------------------------------------------------------------------------------------------ COPO
@pytest.mark.parametrize("adv_estimator,hparams", [("grouprl.copo", {"k": 2.0, "b": 0.5}), ("grpo", {})])
def test_copo_through_verls_actor_path_equals_grouprls_copo_loss(trainer_module, adv_estimator, hparams):
    """The loss verl accumulates over its shuffled, uneven micro-batches and its gradient equal
    grouprl's copo loss on the whole batch with the hook's inputs (token-mean over all tokens)."""
    batch = step_batch()
    cfg = config("grouprl.copo", adv_estimator, hparams)
    policy, worker, out = run_update(trainer_module, cfg, actor_config("grouprl.copo"), batch)
    assert len(worker.micro_rows) >= 3 and sorted(itertools.chain(*worker.micro_rows)) == list(range(B))
    assert worker.micro_rows[0] != list(range(len(worker.micro_rows[0])))  # shuffled: not the trivial split

    mask = batch.batch["response_mask"].bool()
    rows = Rollouts(rewards=SCORE, group=batch.non_tensor_batch["uid"], mask=mask, answer=torch.as_tensor(ANSWER))
    t = copo_terms(rows, **hparams)  # the estimator's hparams reach the hook only when it is copo
    if not hparams:
        t_k2 = copo_terms(rows, k=2.0, b=0.5)
        assert not torch.allclose(t.weight, t_k2.weight)  # so the parametrisation tells them apart
    local = t.local.to(torch.float32).unsqueeze(1) * mask
    lp = policy.lp.detach().clone().requires_grad_()
    want, _ = policy_loss("copo", lp, policy.old, local, mask, agg="token-mean", respect_agg=True,
                          global_advantages=t.global_.float(), blend_weight=t.weight.float(),
                          global_loss_coef=t.global_coef)
    want.backward()
    torch.testing.assert_close(torch.tensor(sum(worker.losses)), want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(policy.lp.grad, lp.grad, rtol=1e-5, atol=1e-7)
    assert float(lp.grad.abs().sum()) > 0
    # the hook's metrics are logged with the actor's
    assert out.meta_info["metrics"]["actor/grouprl/copo/blend_weight"] == pytest.approx(float(t.weight.mean()))
    # the step's inputs are DataProto fields; verl's own advantages are left as they were
    assert torch.equal(batch.batch["grouprl_blend_weight"], t.weight.float())
    assert batch.meta_info[gv.STEP_META_KEY]["loss"] == "copo"


def test_copo_is_not_the_estimators_advantages_under_verl(trainer_module):
    """Guards the comparison above: training on verl's advantages would give another loss."""
    batch = step_batch()
    policy, worker, _ = run_update(trainer_module, config("grouprl.copo"), actor_config("grouprl.copo"), batch)
    mask = batch.batch["response_mask"].bool()
    other, _ = policy_loss("ppo_clip", policy.lp.detach(), policy.old, batch.batch["advantages"], mask,
                           agg="token-mean")
    assert abs(sum(worker.losses) - float(other)) > 1e-3


def test_copo_without_answer_names_the_field_and_the_reward_function(trainer_module):
    with pytest.raises(ValueError, match=r"needs the DataProto field 'answer'.*reward function.*non_tensor_batch\['answer'\]"):
        run_update(trainer_module, config("grouprl.copo"), actor_config("grouprl.copo"), step_batch(answer=False))


def test_copo_loss_without_the_step_inputs_names_answer_and_the_legacy_trainer():
    """verl's v1 trainer (or a driver without the plug-in) reaches ppo_loss without the stored
    inputs: the loss names the declared field and what to do, rather than training on something else."""
    batch = step_batch()
    from verl.workers.utils.padding import left_right_2_no_padding

    td = left_right_2_no_padding(batch.to_tensordict())
    tu.assign_non_tensor(td, batch_num_tokens=int(td["loss_mask"].sum()), dp_size=1, global_batch_size=B)
    policy = Policy()
    loss_fn = functools.partial(verl_losses.ppo_loss, config=actor_config("grouprl.copo"))
    with pytest.raises(ValueError, match=r"'answer'.*trainer\.use_v1=False"):
        loss_fn(model_output=policy.output(td, False), data=td, dp_group=None)


# ------------------------------------------------------------------------------------------ HAPO
def test_hapo_gets_verls_entropy_through_its_actor_path(trainer_module):
    """HAPO's token_entropy is verl's model-output entropy of each micro-batch (normalised per
    micro-batch, as the reference code): the accumulated loss and gradient equal grouprl's hapo loss
    summed over the same micro-batches with verl's global token count."""
    batch = step_batch()
    cfg = config("grouprl.hapo", calculate_entropy=True)
    policy, worker, _ = run_update(trainer_module, cfg, actor_config("grouprl.hapo", calculate_entropy=True), batch)
    mask = batch.batch["response_mask"].bool()
    adv = batch.batch["advantages"]
    lp = policy.lp.detach().clone().requires_grad_()
    total = torch.zeros(())
    (n_tokens,) = worker.batch_num_tokens
    for rows in worker.micro_rows:
        r = torch.tensor(rows)
        loss, _ = policy_loss("hapo", lp[r], policy.old[r], adv[r], mask[r], agg="token-mean", num_tokens=n_tokens,
                              token_entropy=policy.ent.detach()[r], respect_agg=True)
        total = total + loss
    total.backward()
    torch.testing.assert_close(torch.tensor(sum(worker.losses)), total.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(policy.lp.grad, lp.grad, rtol=1e-5, atol=1e-7)
    # the entropies changed the objective: not PPO-clip with HAPO's clip and dual clip
    plain = sum(float(policy_loss("ppo_clip", lp.detach()[torch.tensor(r)], policy.old[torch.tensor(r)],
                                  adv[torch.tensor(r)], mask[torch.tensor(r)], num_tokens=n_tokens,
                                  clip_ratio_c=10.0)[0]) for r in worker.micro_rows)
    assert abs(plain - sum(worker.losses)) > 1e-4
    assert any(m["actor/grouprl/hapo_redistributed"].aggregate() > 0 for m in worker.metrics)  # verl Metric objects


def test_hapo_without_verls_entropy_is_refused_before_the_update(trainer_module):
    with pytest.raises(ValueError, match=r"token_entropy.*calculate_entropy=True"):
        run_update(trainer_module, config("grouprl.hapo"), actor_config("grouprl.hapo"), step_batch())
    # entropy_coeff != 0 makes verl's actor compute it as well
    run_update(trainer_module, config("grouprl.hapo", entropy_coeff=1e-3),
               actor_config("grouprl.hapo", entropy_coeff=1e-3), step_batch())


def test_hapo_called_outside_ppo_loss_names_token_entropy():
    fn = gv.make_policy_loss("hapo")
    p = Policy()
    mask = torch.ones(B, T, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"needs token_entropy=.*ppo_loss"):
        fn(old_log_prob=p.old, log_prob=p.lp, advantages=torch.ones(B, T), response_mask=mask,
           loss_agg_mode="token-mean", config=actor_config("grouprl.hapo"), rollout_is_weights=None)
    loss, _ = fn(old_log_prob=p.old, log_prob=p.lp, advantages=torch.ones(B, T), response_mask=mask,
                 loss_agg_mode="token-mean", config=actor_config("grouprl.hapo"), rollout_is_weights=None,
                 token_entropy=p.ent.detach())
    want, _ = policy_loss("hapo", p.lp, p.old, torch.ones(B, T), mask, token_entropy=p.ent.detach(), respect_agg=True)
    torch.testing.assert_close(loss, want)


def test_other_losses_are_untouched_by_the_wrappers(trainer_module):
    """A loss without declared extras runs through the same path with no stored fields."""
    batch = step_batch()
    policy, worker, _ = run_update(trainer_module, config("grouprl.ppo_clip"), actor_config("grouprl.ppo_clip"), batch)
    assert gv.STEP_META_KEY not in batch.meta_info and "grouprl_advantages" not in batch.batch.keys()
    mask = batch.batch["response_mask"].bool()
    want, _ = policy_loss("ppo_clip", policy.lp.detach(), policy.old, batch.batch["advantages"], mask,
                          agg="token-mean", respect_agg=True)
    torch.testing.assert_close(torch.tensor(sum(worker.losses)), want, rtol=1e-5, atol=1e-6)


def test_ppo_loss_bound_by_name_before_the_patch_is_rebound(monkeypatch):
    """verl.workers.engine_workers does ``from verl.workers.utils.losses import ppo_loss``; if it
    was imported before the plug-in, its name is rebound to the wrapper too."""
    import sys

    wrapped = verl_losses.ppo_loss
    original = wrapped.__wrapped__
    early = types.ModuleType(f"fake_engine_workers_{os.getpid()}")
    early.ppo_loss = original
    monkeypatch.setitem(sys.modules, early.__name__, early)
    monkeypatch.setattr(verl_losses, "ppo_loss", original)
    gv._wrap_ppo_loss(verl_losses)
    assert getattr(verl_losses.ppo_loss, "_grouprl_passthrough", False)
    assert early.ppo_loss is verl_losses.ppo_loss


# ------------------------------------------- verl's engine forward/backward with a tiny HF model
def tiny_hf_model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=60, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0, eos_token_id=1,
                      bos_token_id=1, tie_word_embeddings=True)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(cfg).float()


@pytest.fixture
def engine(tmp_path, monkeypatch):
    """verl's FSDPEngineWithLMHead without FSDP: its own forward_backward_batch, forward_step and
    prepare_model_inputs/outputs (no-padding data, use_remove_padding=False) around a tiny Qwen2 on
    the CPU, in a one-process gloo group. Only the device query is redirected to the CPU."""
    require("transformers")
    import torch.distributed as dist
    import verl.utils.torch_functional as verl_F
    import verl.workers.engine.fsdp.transformer_impl as impl

    monkeypatch.setattr(impl, "get_device_id", lambda: "cpu")
    monkeypatch.setattr(impl, "get_device_name", lambda: "cpu")
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    eng = object.__new__(impl.FSDPEngineWithLMHead)
    eng.module = tiny_hf_model()
    eng._autocast_dtype = torch.float32
    eng.pad_to_length, eng.use_ulysses_sp, eng.ulysses_sequence_parallel_size, eng.scaler = 0, False, 1, None
    eng.engine_config = types.SimpleNamespace(entropy_checkpointing=False, entropy_from_logits_with_chunking=False,
                                              use_no_sync_for_gradient_accumulation=True)
    eng.compute_entropy_from_logits = verl_F.entropy_from_logits
    eng.get_data_parallel_group = lambda: None
    eng.get_data_parallel_size = lambda: 1
    yield eng
    if created:
        dist.destroy_process_group()


class EngineWorker:
    """Stand-in for verl's TrainingWorker.train_mini_batch: its iterator and per-mini-batch keys
    around verl's own engine.forward_backward_batch; records each micro-batch's rows."""

    def __init__(self, engine, actor_config: ActorConfig, dynamic: bool) -> None:
        from verl.workers.utils.losses import ppo_loss

        self.engine, self.dynamic = engine, dynamic
        self.loss_fn = functools.partial(ppo_loss, config=actor_config)
        self.micro_rows: list[list[int]] = []
        self.losses: list[float] = []

    def recording_loss(self, model_output, data, dp_group=None):
        self.micro_rows.append(data["row_id"].long().tolist())
        loss, metrics = self.loss_fn(model_output=model_output, data=data, dp_group=dp_group)
        self.losses.append(float(loss.detach()))
        return loss, metrics

    def update_actor(self, data):
        mini = tu.pop(data, key="mini_batch_size", default=None)
        kwargs = tu.pop(data, key="dataloader_kwargs", default={})
        it = tu.make_iterator(data, mini_batch_size=mini, epochs=tu.pop(data, key="epochs", default=1),
                              seed=tu.pop(data, key="seed", default=42), dataloader_kwargs=kwargs)
        for mb in it:
            tu.assign_non_tensor(mb, use_remove_padding=False, use_dynamic_bsz=self.dynamic, max_token_len_per_gpu=14,
                                 micro_batch_size_per_gpu=2, use_fused_kernels=False)
            self.engine.forward_backward_batch(mb, loss_function=self.recording_loss, forward_only=False)
        return {}


def model_logprobs(model, batch):
    """The tiny model's response log-probs and entropies (B, T), one ordinary padded forward."""
    ids, attn = batch.batch["input_ids"], batch.batch["attention_mask"]
    logits = model(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(1) - 1).clamp_min(0)).logits
    logits = logits[:, P - 1: P + T - 1].float()
    logp = torch.log_softmax(logits, dim=-1)
    lp = logp.gather(-1, ids[:, P:].unsqueeze(-1)).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1)
    return lp, ent


def engine_batch(model, answer=True):
    batch = step_batch(answer)
    with torch.no_grad():
        lp, _ = model_logprobs(model, batch)
    mask = batch.batch["response_mask"]
    noise = 0.3 * torch.randn(B, T, generator=torch.Generator().manual_seed(7))
    batch.batch["old_log_probs"] = (lp + noise) * mask  # off-policy enough for some ratios to clip
    return batch


def grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).clone()


@pytest.mark.parametrize("dynamic", [True, False])
def test_copo_through_verls_engine_with_a_tiny_model_equals_grouprls_copo_loss(trainer_module, engine, dynamic):
    """verl's engine computes the log-probs from the tiny model, splits the shuffled batch into
    micro-batches and back-propagates verl's ppo_loss with grouprl.copo: the accumulated gradient
    equals that of grouprl's copo loss on the whole batch (one ordinary forward)."""
    model = engine.module
    batch = engine_batch(model)
    worker = EngineWorker(engine, actor_config("grouprl.copo"), dynamic)
    trainer_module.RayPPOTrainer(config("grouprl.copo"), worker)._update_actor(batch)
    assert len(worker.micro_rows) >= 3 and sorted(itertools.chain(*worker.micro_rows)) == list(range(B))
    got = grads(model)
    model.zero_grad(set_to_none=True)

    mask = batch.batch["response_mask"].bool()
    rows = Rollouts(rewards=SCORE, group=batch.non_tensor_batch["uid"], mask=mask, answer=torch.as_tensor(ANSWER))
    t = copo_terms(rows)
    lp, _ = model_logprobs(model, batch)
    want, _ = policy_loss("copo", lp, batch.batch["old_log_probs"], t.local.float().unsqueeze(1) * mask, mask,
                          agg="token-mean", respect_agg=True, global_advantages=t.global_.float(),
                          blend_weight=t.weight.float(), global_loss_coef=t.global_coef)
    want.backward()
    torch.testing.assert_close(torch.tensor(sum(worker.losses)), want.detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got, grads(model), rtol=1e-3, atol=1e-6)
    assert float(got.abs().sum()) > 0


def test_hapo_through_verls_engine_with_a_tiny_model_uses_the_models_entropies(trainer_module, engine):
    """verl's engine computes the entropies from the tiny model's logits (calculate_entropy=True);
    the accumulated gradient equals that of grouprl's hapo loss on the same micro-batches with the
    model's entropies (computed here from one ordinary forward)."""
    model = engine.module
    batch = engine_batch(model)
    worker = EngineWorker(engine, actor_config("grouprl.hapo", calculate_entropy=True), dynamic=False)
    trainer_module.RayPPOTrainer(config("grouprl.hapo", calculate_entropy=True), worker)._update_actor(batch)
    got = grads(model)
    model.zero_grad(set_to_none=True)

    mask = batch.batch["response_mask"].bool()
    lp, ent = model_logprobs(model, batch)
    n_tokens = int(mask.sum())

    def hapo_sum(entropy):
        total = torch.zeros(())
        for rows in worker.micro_rows:
            r = torch.tensor(rows)
            loss, _ = policy_loss("hapo", lp[r], batch.batch["old_log_probs"][r], batch.batch["advantages"][r],
                                  mask[r], agg="token-mean", num_tokens=n_tokens, token_entropy=entropy[r],
                                  respect_agg=True)
            total = total + loss
        return total

    other = hapo_sum(ent.detach().flip(1))  # other entropies give another gradient: the check can fail
    other.backward(retain_graph=True)
    g_other = grads(model)
    model.zero_grad(set_to_none=True)
    assert float((g_other - got).abs().max()) > 1e-3
    total = hapo_sum(ent.detach())
    total.backward()
    torch.testing.assert_close(torch.tensor(sum(worker.losses)), total.detach(), rtol=1e-4, atol=1e-6)
    # float32: verl's entropy_from_logits and the log-softmax here differ in the last bits
    torch.testing.assert_close(got, grads(model), rtol=1e-3, atol=1e-5)
    assert float(got.abs().sum()) > 0
