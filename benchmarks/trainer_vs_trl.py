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
    from grouprl.train import build_config, parse_overrides as build_overrides, train
    from grouprl.train.logging import read_jsonl

    cfg = build_config(
        {
            "out_dir": tmp, "name": "grouprl", "model": a.model, "task": a.task, "seed": 0,
            "prompts_per_step": a.prompts, "group_size": a.group, "max_new_tokens": a.max_new_tokens,
            "micro_batch_size": a.prompts * a.group, "steps": a.steps, "sft_steps": 0,
            "eval_every": 0, "eval_size": 1, "pass_k_size": 0, "threads": a.threads,
            "progress": False, "tensorboard": False, "save_every": 10**6,
            **build_overrides(a.grouprl),
        }
    )
    from grouprl.train import loop

    stamps: list[float] = []
    update = loop._Progress.update

    def stamped(self, row, ev):  # called once at the end of every loop iteration
        stamps.append(time.perf_counter())
        return update(self, row, ev)

    loop._Progress.update = stamped
    try:
        train(cfg)
    finally:
        loop._Progress.update = update
    rows = read_jsonl(Path(tmp) / "grouprl" / "metrics.jsonl")
    # wall time of whole loop iterations (rollout to the end of logging) from the second on; the
    # first iteration's start is not observable here, so it is reported by its phase sum
    walls = [rows[0]["time/step"]] + [b - a for a, b in zip(stamps, stamps[1:])]
    return walls, [r["time/step"] for r in rows]


#: TRL settings of the two TRL runs. ``matched`` does the same work per step as grouprl: fp32
#: forwards (GRPOConfig turns bf16 autocast on by default, also on a CPU) and no activation
#: checkpointing (on by default in GRPOConfig: one more forward inside the backward).
TRL_CONFIGS = {"matched": {"bf16": False, "gradient_checkpointing": False}, "defaults": {}}


def trl_step_times(a: argparse.Namespace, tmp: str, extra: dict | None = None) -> list[float]:
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
        save_strategy="no", dataloader_num_workers=0, seed=0, disable_tqdm=True, **(extra or {}),
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
    ap.add_argument("--trl", nargs="+", default=list(TRL_CONFIGS), choices=list(TRL_CONFIGS),
                    help="which TRL runs (matched: fp32, no activation checkpointing; defaults: GRPOConfig's)")
    ap.add_argument("--grouprl", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra grouprl config overrides (e.g. old_logprobs=recompute)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.steps < 2:
        ap.error("--steps must be >= 2 (the first step is a warm-up)")
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        walls, phases = grouprl_step_times(a, tmp)
        theirs = {name: trl_step_times(a, os.path.join(tmp, name), TRL_CONFIGS[name]) for name in a.trl}
    g = statistics.median(walls[1:])
    out = {
        "model": a.model, "task": a.task, "rows_per_step": a.prompts * a.group,
        "max_new_tokens": a.max_new_tokens, "threads": a.threads, "timed_steps": a.steps - 1,
        "grouprl_overrides": a.grouprl, "grouprl_step_s": g, "grouprl_phase_sum_s": statistics.median(phases[1:]),
        "load_avg_1m": os.getloadavg()[0],
    }
    for name, times in theirs.items():
        out[f"trl_{name}_step_s"] = statistics.median(times[1:])
        out[f"trl_{name}_over_grouprl"] = out[f"trl_{name}_step_s"] / g
    if a.json:
        print(json.dumps(out))
        return
    print(f"model {a.model}, task {a.task}, {out['rows_per_step']} rows/step, <= {a.max_new_tokens} new tokens, "
          f"{a.threads} thread(s), median of {a.steps - 1} steps after a warm-up step, "
          f"load average {out['load_avg_1m']:.2f} at the end")
    print(f"grouprl trainer              {g:8.3f} s/step (whole loop iteration; phases alone "
          f"{out['grouprl_phase_sum_s']:.3f})")
    for name in theirs:
        print(f"TRL GRPOTrainer ({name + ')':9} {out[f'trl_{name}_step_s']:8.3f} s/step   "
              f"TRL / grouprl {out[f'trl_{name}_over_grouprl']:5.2f}x  (target >= 2x)")


if __name__ == "__main__":
    main()
