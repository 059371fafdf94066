"""TRL plug-in: GroupRLGRPOTrainer on a tiny from-config Qwen2 model, CPU, no downloads."""

from __future__ import annotations

import os

import pytest
from conftest import require

trl = require("trl")
require("datasets")

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("WANDB_DISABLED", "true")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from grouprl import Rollouts, compute_advantages  # noqa: E402
from grouprl.integrations.trl import GroupRLGRPOTrainer, resolve_estimator  # noqa: E402

WORDS = "a b c d e f g h add one two three plus is what the answer".split()
PROMPTS = ["what is one plus two", "add a b", "the answer is", "what is c", "b plus c", "one two three"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def tiny_model(vocab_size: int) -> Qwen2ForCausalLM:
    cfg = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return Qwen2ForCausalLM(cfg)


def count_a(completions, **kwargs):
    """Toy reward: the number of letters 'a' in the completion (integers: exact group means)."""
    return [float(c.count("a")) for c in completions]


def half_words(completions, **kwargs):
    """A second toy reward in halves, to exercise reward weights."""
    return [0.5 * len(c.split()) for c in completions]


class Recording:
    """Mixin recording what each generation step produced."""

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        self.rec.append(
            {
                "advantages": out["advantages"].detach().clone(),
                "mask": out["completion_mask"].detach().clone(),
                "logged": list(self._logs["advantages"]),
            }
        )
        return out

    def _calculate_rewards(self, *args, **kwargs):
        r = super()._calculate_rewards(*args, **kwargs)
        self.rewards.append(r.detach().clone())
        return r


class RecTRL(Recording, GRPOTrainer):
    pass


class RecGroupRL(Recording, GroupRLGRPOTrainer):
    pass


def run(tmp_path, cls, steps=2, reward_funcs=(count_a,), batch=4, prompts=PROMPTS, config=None, **kwargs):
    tok = tiny_tokenizer()
    args = GRPOConfig(
        **(config or {}),
        output_dir=str(tmp_path / cls.__name__),
        per_device_train_batch_size=batch,
        num_generations=4,
        max_completion_length=6,
        max_steps=steps,
        use_cpu=True,
        report_to=[],
        logging_steps=1,
        seed=0,
        learning_rate=1e-3,
        save_strategy="no",
        dataloader_num_workers=0,
        reward_weights=[1.0] * len(reward_funcs),
    )
    trainer = cls(
        model=tiny_model(len(tok)),
        reward_funcs=list(reward_funcs),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": list(prompts) * 4}),
        processing_class=tok,
        **kwargs,
    )
    trainer.rec, trainer.rewards = [], []
    trainer.train()
    return trainer


def test_grouprl_grpo_matches_trl_advantages_over_two_steps(tmp_path):
    ref = run(tmp_path, RecTRL)
    ours = run(tmp_path, RecGroupRL, estimator="grpo", estimator_hparams={"eps": 1e-4})
    assert len(ref.rec) == len(ours.rec) == 2
    for a, b, ra, rb in zip(ref.rec, ours.rec, ref.rewards, ours.rewards):
        assert torch.equal(ra, rb), "same seed, same model: the same completions and rewards"
        assert a["advantages"].shape == b["advantages"].shape == (4,)
        torch.testing.assert_close(b["advantages"], a["advantages"], atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.tensor(b["logged"]), torch.tensor(a["logged"]), atol=1e-5, rtol=0)
    # at least one step had a non-trivial group, so the comparison is not 0 == 0
    assert any(float(r["advantages"].abs().max()) > 0.1 for r in ref.rec)
    # TRL's reward logging is untouched
    assert ref._metrics["train"]["reward"] == ours._metrics["train"]["reward"]


def test_group_by_prompt_equals_blocks_for_distinct_prompts(tmp_path):
    # two prompts per batch of 8, all prompts distinct: grouping by prompt text == blocks of 4
    block = run(tmp_path, RecGroupRL, steps=1, batch=8, estimator_hparams={"eps": 1e-4})
    prompt = run(tmp_path, RecGroupRL, steps=1, batch=8, estimator_hparams={"eps": 1e-4}, group_by="prompt")
    torch.testing.assert_close(prompt.rec[0]["advantages"], block.rec[0]["advantages"], atol=0, rtol=0)
    logged = [h for h in block.state.log_history if "grouprl/num_groups" in h]
    assert [h["grouprl/num_groups"] for h in logged] == [2.0]


def test_other_estimator_and_logging_consistent(tmp_path):
    # Dr. GRPO with two reward functions: advantages = weighted reward minus its group mean,
    # recomputed here from the recorded rewards; TRL's logged advantages are grouprl's.
    tr = run(tmp_path, RecGroupRL, reward_funcs=(count_a, half_words), estimator="dr_grpo")
    for rec, rpf in zip(tr.rec, tr.rewards):
        r = rpf.sum(dim=1)
        expect = compute_advantages(
            "dr_grpo", Rollouts(rewards=r, group=torch.arange(4) // 4, mask=torch.ones(4, 1))
        )[:, 0]
        torch.testing.assert_close(rec["advantages"], expect, atol=1e-6, rtol=0)
        torch.testing.assert_close(torch.tensor(rec["logged"]), expect, atol=1e-6, rtol=0)


def test_expression_and_bad_arguments():
    est = resolve_estimator("0.5*grpo + 0.5*dr_grpo", {"eps": 1e-4})
    assert len(est.terms) == 2
    with pytest.raises(TypeError, match="unknown hyperparameter"):
        resolve_estimator("grpo", {"epss": 1e-4})
    with pytest.raises(ValueError, match="group_by"):
        GroupRLGRPOTrainer(model=None, group_by="rows")


def test_grouprl_loss_reproduces_trl_dapo_over_two_steps(tmp_path):
    # grouprl's PPO-clip with token-mean over the generation batch is TRL's default "dapo" loss:
    # the same logged losses, the same update, hence the same second-step advantages.
    ref = run(tmp_path, RecTRL)
    ours = run(
        tmp_path,
        RecGroupRL,
        estimator_hparams={"eps": 1e-4},
        loss="ppo_clip",
        loss_hparams={"eps_low": 0.2, "eps_high": 0.2},
    )
    ref_loss = [h["loss"] for h in ref.state.log_history if "loss" in h]
    our_loss = [h["loss"] for h in ours.state.log_history if "loss" in h]
    assert len(our_loss) == 2
    torch.testing.assert_close(torch.tensor(our_loss), torch.tensor(ref_loss), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.rec[1]["advantages"], ref.rec[1]["advantages"], atol=1e-5, rtol=0)
    assert any("grouprl/clipfrac" in h for h in ours.state.log_history)
    assert any(abs(x) > 1e-4 for x in ref_loss)


@pytest.mark.parametrize("iterations", [1, 2])
def test_grouprl_gspo_reproduces_trl_sequence_level_importance_sampling(tmp_path, iterations):
    # GSPO (arXiv:2507.18071 Eq. 5-7) computed independently by TRL: importance_sampling_level=
    # "sequence" (s_i = exp(mean_t log ρ_t)) with the per-sequence mean ("grpo" loss type) and the
    # paper's clip range 3e-4 / 4e-4. grouprl's gspo loss must log the same losses and gradient
    # norms and, having made the same updates, see the same second-step advantages. With two
    # iterations per generation the second pass is off-policy: the ratios differ from 1 and clip.
    common = dict(num_iterations=iterations, steps_per_generation=1) if iterations > 1 else {}
    ref = run(tmp_path, RecTRL, steps=2 * iterations, config=dict(
        importance_sampling_level="sequence", loss_type="grpo", epsilon=3e-4, epsilon_high=4e-4, beta=0.0, **common))
    ours = run(tmp_path, RecGroupRL, steps=2 * iterations, config=dict(common), estimator="grpo",
               estimator_hparams={"eps": 1e-4}, loss="gspo", loss_agg="seq-mean-token-mean")
    key = lambda tr, k: [h[k] for h in tr.state.log_history if k in h]  # noqa: E731
    assert len(key(ours, "loss")) == 2 * iterations
    torch.testing.assert_close(torch.tensor(key(ours, "loss")), torch.tensor(key(ref, "loss")), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(key(ours, "grad_norm")), torch.tensor(key(ref, "grad_norm")),
                               atol=1e-6, rtol=1e-5)
    assert any(g > 1e-3 for g in key(ref, "grad_norm"))  # a real gradient was compared
    assert len(ours.rec) == len(ref.rec) >= 2
    for a, b in zip(ref.rec, ours.rec):
        torch.testing.assert_close(b["advantages"], a["advantages"], atol=1e-5, rtol=0)


def test_grouprl_loss_bad_names():
    with pytest.raises(KeyError):
        GroupRLGRPOTrainer(model=None, loss="ppo_clipp")
    with pytest.raises(ValueError, match="token-means"):
        GroupRLGRPOTrainer(model=None, loss="ppo_clip", loss_agg="token-means")


def test_two_processes_groups_spanning_ranks(tmp_path):
    # torchrun, 2 CPU processes (gloo), 2 rows per process and groups of 4: every group spans both
    # ranks; grouprl gathers rewards and masks and slices its rows back, as TRL does.
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "_trl_two_process.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script, str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=240,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert [(tmp_path / f"rank{r}.ok").read_text() for r in (0, 1)] == [
        "OK rank 0 nontrivial=True",
        "OK rank 1 nontrivial=True",
    ]


def test_trl_loss_options_are_refused_with_a_grouprl_loss(tmp_path):
    tok = tiny_tokenizer()
    args = GRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, use_cpu=True,
        report_to=[], top_entropy_quantile=0.2,
    )
    kw = dict(reward_funcs=[count_a], args=args, train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
              processing_class=tok)
    with pytest.raises(ValueError, match="top_entropy_quantile"):
        GroupRLGRPOTrainer(model=tiny_model(len(tok)), loss="ppo_clip", **kw)
    GroupRLGRPOTrainer(model=tiny_model(len(tok)), **kw)  # TRL's own loss: the option is TRL's business
