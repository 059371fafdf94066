"""Seconds per RL step: grouprl's own trainer vs TRL's GRPOTrainer, same model, batch and lengths.

    python benchmarks/trainer_vs_trl.py [--steps 5] [--threads 1] [--model 1M] [--prompts 16]
                                        [--group 8] [--max-new-tokens 6] [--task mixed] [--json]

Both sides: the grouprl model preset (a Qwen2 from ``grouprl.models.build_model``, same seed) and
the char tokenizer, the task's training prompts and verifier, ``prompts x group`` rows per step
in one micro-batch, at most ``max-new-tokens`` sampled tokens, temperature 1, one PPO epoch, no
KL, no SFT warm-up, CPU with ``--threads`` torch threads. Each framework runs with its defaults
otherwise (grouprl recomputes the old log-probs in a separate forward; TRL skips that when fully
on-policy). Reported: the median wall time of the steps after the first (warm-up), and the ratio
TRL / grouprl. Needs TRL (``pip install grouprl[trl]``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch


def grouprl_step_times(a: argparse.Namespace, tmp: str) -> list[float]:
    from grouprl.train import build_config, train
    from grouprl.train.logging import read_jsonl

    cfg = build_config(
        {
            "out_dir": tmp, "name": "grouprl", "model": a.model, "task": a.task, "seed": 0,
            "prompts_per_step": a.prompts, "group_size": a.group, "max_new_tokens": a.max_new_tokens,
            "micro_batch_size": a.prompts * a.group, "steps": a.steps, "sft_steps": 0,
            "eval_every": 0, "eval_size": 1, "pass_k_size": 0, "threads": a.threads,
            "progress": False, "tensorboard": False, "save_every": 10**6,
        }
    )
    train(cfg)
    rows = read_jsonl(Path(tmp) / "grouprl" / "metrics.jsonl")
    return [r["time/step"] for r in rows]


def trl_step_times(a: argparse.Namespace, tmp: str) -> list[float]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from grouprl.models import build_model, build_tokenizer
    from grouprl.tasks import get_task

    task = get_task(a.task, seed=0)
    by_prompt = {e.prompt: e for e in task.train_pool}
    tok = build_tokenizer("char")
    model = build_model(a.model, tok, seed=0)

    def reward(prompts, completions, **kw):
        return [task.score(by_prompt[p], c) for p, c in zip(prompts, completions)]

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)

    timer = Timer()
    args = GRPOConfig(
        output_dir=os.path.join(tmp, "trl"), per_device_train_batch_size=a.prompts * a.group,
        num_generations=a.group, max_completion_length=a.max_new_tokens, max_steps=a.steps,
        learning_rate=1e-4, temperature=1.0, use_cpu=True, report_to=[], logging_steps=10**6,
        save_strategy="no", dataloader_num_workers=0, seed=0, disable_tqdm=True,
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=reward, args=args, processing_class=tok, callbacks=[timer],
        train_dataset=Dataset.from_dict({"prompt": list(by_prompt)}),
    )
    trainer.train()
    return timer.times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default="1M")
    ap.add_argument("--task", default="mixed")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=6)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.steps < 2:
        ap.error("--steps must be >= 2 (the first step is a warm-up)")
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ours = grouprl_step_times(a, tmp)
        theirs = trl_step_times(a, tmp)
    g = statistics.median(ours[1:])
    t = statistics.median(theirs[1:])
    out = {
        "model": a.model, "task": a.task, "rows_per_step": a.prompts * a.group,
        "max_new_tokens": a.max_new_tokens, "threads": a.threads, "timed_steps": a.steps - 1,
        "grouprl_step_s": g, "trl_step_s": t, "trl_over_grouprl": t / g,
    }
    if a.json:
        print(json.dumps(out))
        return
    print(f"model {a.model}, task {a.task}, {out['rows_per_step']} rows/step, <= {a.max_new_tokens} new tokens, "
          f"{a.threads} thread(s), median of {a.steps - 1} steps after a warm-up step")
    print(f"grouprl trainer   {g:8.3f} s/step")
    print(f"TRL GRPOTrainer   {t:8.3f} s/step")
    print(f"TRL / grouprl     {t / g:8.2f}x  (target >= 2x)")


if __name__ == "__main__":
    main()
