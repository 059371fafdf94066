"""Time one RL step of the default ``grouprl train`` preset, phase by phase.

    python benchmarks/train_step.py [--steps 6] [--threads 2] [--init RUN/sft] [key=value ...]

Runs the real training loop for a few steps (evaluation reduced to one example) and reports, over
the steps after the first (warm-up), the median seconds of each phase — rollout (sampling with the
KV cache + scoring), logprobs (old-policy and reference forwards), advantages, update (PPO
epochs x mini-batches x micro-batches, backward and AdamW) — its share of the step, and tokens/s
of the rollout and of the update. Without ``--init`` the model is the run's own warm start: the one
shipped with grouprl for the default task and model (``grouprl.warmstarts``), else the preset after
a short SFT (``sft_steps``, default 100) so that response lengths are realistic.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from grouprl.train import build_config, parse_overrides, train
from grouprl.train.logging import read_jsonl
from grouprl.train.task_source import shipped_warm_start

PHASES = ("rollout", "logprobs", "advantages", "update")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--init", default=None, help="start from this checkpoint dir instead of a short SFT")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        values = parse_overrides(args.overrides)
        if not args.init and shipped_warm_start(build_config(dict(values))) is None:
            values.setdefault("sft_steps", 100)
        values.update(out_dir=tmp, name="bench", steps=args.steps, eval_every=0, eval_size=1, pass_k_size=0,
                      progress=False, tensorboard=False, threads=args.threads, save_every=10**6)
        if args.init:
            values["init"] = args.init
        cfg = build_config(values)
        train(cfg)
        rows = read_jsonl(Path(tmp) / "bench" / "metrics.jsonl")[1:] or read_jsonl(Path(tmp) / "bench" / "metrics.jsonl")
    med = {p: statistics.median(r[f"time/{p}"] for r in rows) for p in PHASES}
    step = statistics.median(r["time/step"] for r in rows)
    tokens = statistics.median(r["response_len"] for r in rows) * cfg.prompts_per_step * cfg.group_size
    out = {
        "model": cfg.model,
        "task": cfg.task,
        "rows_per_step": cfg.prompts_per_step * cfg.group_size,
        "response_tokens_per_step": tokens,
        "threads": args.threads,
        "step_s": step,
        **{f"{p}_s": med[p] for p in PHASES},
        **{f"{p}_share": med[p] / step for p in PHASES},
        "rollout_tokens_per_s": tokens / med["rollout"],
        "update_tokens_per_s": tokens * cfg.ppo_epochs / med["update"],
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(f"model {cfg.model}, task {cfg.task}, {out['rows_per_step']} rows/step, "
              f"{tokens:.0f} response tokens/step, {args.threads} threads, median of {len(rows)} steps")
        print(f"{'phase':<12}{'seconds':>10}{'share':>9}")
        for p in PHASES:
            print(f"{p:<12}{med[p]:>10.3f}{med[p] / step:>9.1%}")
        print(f"{'step':<12}{step:>10.3f}")
        print(f"rollout {out['rollout_tokens_per_s']:.0f} tokens/s, update {out['update_tokens_per_s']:.0f} tokens/s")
    if out["advantages_share"] >= 0.02:
        print(f"WARNING: advantages take {out['advantages_share']:.1%} of the step (target < 2%)", file=sys.stderr)


if __name__ == "__main__":
    main()
