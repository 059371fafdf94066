"""GRPO in TRL with a grouprl estimator and loss.

    # one process, CPU, a tiny random model built offline (a smoke test, seconds):
    python examples/trl/grpo_grouprl.py --estimator rloo --loss ppo_clip --steps 2

    # a local checkpoint on 8 GPUs (accelerate; add --config_file for DeepSpeed/FSDP):
    accelerate launch --num_processes 8 examples/trl/grpo_grouprl.py \
        --model /path/to/Qwen2.5-0.5B-Instruct --estimator "0.5*grpo + 0.5*rloo" \
        --estimator-hparams '{"singleton": "zero"}' --loss ppo_clip --loss-hparams '{"eps_high": 0.28}' \
        --batch 8 --num-generations 8 --steps 200 --bf16

The reward is a toy (letters 'a' in the completion); replace ``reward`` with your verifier.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from datasets import Dataset
from trl import GRPOConfig

from grouprl.integrations.trl import GroupRLGRPOTrainer

PROMPTS = ["what is one plus two", "add a b", "the answer is", "what is c", "b plus c", "one two three"]


def tiny_model_and_tokenizer():
    """A 2-layer Qwen2 (hidden 32) and a word-level tokenizer, built without any download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for w in " ".join(PROMPTS).split():
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    cfg = Qwen2Config(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
        pad_token_id=0, eos_token_id=1, bos_token_id=1, tie_word_embeddings=True,
    )
    return Qwen2ForCausalLM(cfg), hf_tok


def reward(completions, **kwargs):
    return [float(str(c).count("a")) for c in completions]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="'tiny' (built offline) or a local checkpoint directory")
    p.add_argument("--estimator", default="grpo", help="grouprl estimator name or expression")
    p.add_argument("--estimator-hparams", default="{}", help="JSON keyword arguments of the estimator")
    p.add_argument("--loss", default=None, help="grouprl policy loss (default: TRL's own loss_type)")
    p.add_argument("--loss-hparams", default="{}", help="JSON keyword arguments of the loss")
    p.add_argument("--loss-agg", default=None, help="aggregation mode (default: the loss's own, else token-mean)")
    p.add_argument("--group-by", default="block", choices=["block", "prompt"])
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--batch", type=int, default=4, help="per-device train batch size")
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--max-completion-length", type=int, default=8)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--output-dir", default="runs/trl-grouprl")
    a = p.parse_args()

    torch.manual_seed(0)
    if a.model == "tiny":
        model, tok = tiny_model_and_tokenizer()
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(a.model)
        tok = AutoTokenizer.from_pretrained(a.model)
    args = GRPOConfig(
        output_dir=a.output_dir,
        per_device_train_batch_size=a.batch,
        num_generations=a.num_generations,
        max_completion_length=a.max_completion_length,
        max_steps=a.steps,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=not torch.cuda.is_available(),
        bf16=a.bf16,
        seed=0,
    )
    trainer = GroupRLGRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS * 50}),
        processing_class=tok,
        estimator=a.estimator,
        estimator_hparams=json.loads(a.estimator_hparams),
        group_by=a.group_by,
        loss=a.loss,
        loss_hparams=json.loads(a.loss_hparams),
        loss_agg=a.loss_agg,
    )
    trainer.train()
    for row in trainer.state.log_history:
        if "loss" in row:
            print({k: row[k] for k in ("step", "loss", "reward", "reward_std") if k in row})


if __name__ == "__main__":
    main()
