"""Seconds per RL step: grouprl's own trainer vs TRL's GRPOTrainer, same model, batch and lengths.

    python benchmarks/trainer_vs_trl.py [--steps 11] [--rounds 3] [--threads 1] [--model 1M]
                                        [--prompts 16] [--group 8] [--max-new-tokens 6] [--task mixed]
                                        [--trl matched defaults] [--grouprl KEY=VALUE ...] [--json]

Both sides: the grouprl model preset (a Qwen2 from ``grouprl.models.build_model``, same seed) and
the char tokenizer, the task's training prompts and verifier, ``prompts x group`` rows per step
in one micro-batch, at most ``max-new-tokens`` sampled tokens, temperature 1, one PPO epoch and
one optimizer step per rollout, no KL, no SFT warm-up, CPU with ``--threads`` torch threads.

Per step both trainers sample the responses with a KV cache, score them, compute group-relative
advantages, run one forward with grad over prompt + response, one backward, gradient clipping and
one AdamW step. Neither runs a separate old-policy forward (fully on-policy: TRL sets the old
log-probs to the current ones, detached; grouprl's ``old_logprobs=auto`` does the same).

TRL runs twice: ``matched`` (the same work as grouprl: fp32 forwards and no activation
checkpointing) and ``defaults`` (GRPOConfig's own: bf16 autocast, also on a CPU, and activation
checkpointing, which re-runs the forward inside the backward).

Timing: TRL's steps from a callback (``on_step_begin`` to ``on_step_end``: generation, scoring,
loss, backward, optimizer; not its logging); grouprl's from the end of one loop iteration to the
end of the next (everything, metrics and logging included; the phase sum ``time/step`` is shown
too). Each trainer runs ``--rounds`` times, interleaved (grouprl, TRL matched, TRL defaults,
grouprl, ...) so that load changes on a shared machine hit all of them; per round the median of
the steps after the first (warm-up); reported: the median over rounds of each, and the median of
the per-round ratios TRL / grouprl. Needs TRL (``pip install grouprl[trl]``).
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


class Spans:
    """With ``--breakdown``: wall time per step spent inside given functions (patched for one run).

    ``patch(owner, name, label)`` times every call of ``owner.name``; ``step_end()`` closes a step.
    Reported: the mean per step over the steps after the first. A timed call made inside another
    timed call counts only in the outer one (grouprl's old-policy forward calls response_logprobs).
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.total: dict[str, float] = {}
        self.per_step: list[dict[str, float]] = []
        self._undo: list[tuple[object, str, object]] = []
        self._depth = 0

    def patch(self, owner: object, name: str, label: str) -> None:
        if not self.enabled:
            return
        fn = getattr(owner, name)

        def timed(*args, **kw):
            if self._depth:  # inside another timed call
                return fn(*args, **kw)
            self._depth += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                self.total[label] = self.total.get(label, 0.0) + time.perf_counter() - t0
                self._depth -= 1

        self._undo.append((owner, name, owner.__dict__[name]))
        setattr(owner, name, timed)

    def step_end(self) -> None:
        if self.enabled:
            self.per_step.append(dict(self.total))
            self.total = {}

    def restore(self) -> None:
        for owner, name, fn in reversed(self._undo):
            setattr(owner, name, fn)
        self._undo.clear()

    def means(self) -> dict[str, float]:
        steps = self.per_step[1:]
        labels = sorted({k for s in steps for k in s})
        return {k: sum(s.get(k, 0.0) for s in steps) / max(len(steps), 1) for k in labels}


def grouprl_step_times(a: argparse.Namespace, tmp: str, spans: Spans | None = None) -> tuple[list[float], list[float]]:
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
    from grouprl.train import loop, task_source

    stamps: list[float] = []
    update = loop._Progress.update

    def stamped(self, row, ev):  # called once at the end of every loop iteration
        stamps.append(time.perf_counter())
        if spans is not None:
            spans.step_end()
        return update(self, row, ev)

    loop._Progress.update = stamped
    if spans is not None:
        spans.patch(task_source, "sample", "generate (sampling)")
        spans.patch(loop, "response_logprobs", "forward with grad (update)")
        spans.patch(loop, "_forward_logprobs", "old-policy forward")
        spans.patch(torch.Tensor, "backward", "backward")
        spans.patch(torch.optim.AdamW, "step", "AdamW step")
    try:
        train(cfg)
    finally:
        loop._Progress.update = update
        if spans is not None:
            spans.restore()
    rows = read_jsonl(Path(tmp) / "grouprl" / "metrics.jsonl")
    # wall time of whole loop iterations (rollout to the end of logging) from the second on; the
    # first iteration's start is not observable here, so it is reported by its phase sum
    walls = [rows[0]["time/step"]] + [b - a for a, b in zip(stamps, stamps[1:])]
    return walls, [r["time/step"] for r in rows]


#: TRL settings of the two TRL runs. ``matched`` does the same work per step as grouprl: fp32
#: forwards (GRPOConfig turns bf16 autocast on by default, also on a CPU) and no activation
#: checkpointing (on by default in GRPOConfig: one more forward inside the backward).
TRL_CONFIGS = {"matched": {"bf16": False, "gradient_checkpointing": False}, "defaults": {}}


def trl_step_times(a: argparse.Namespace, tmp: str, extra: dict | None = None,
                   spans: Spans | None = None) -> list[float]:
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
            if spans is not None:
                spans.step_end()

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
    if spans is not None:
        from accelerate import Accelerator

        spans.patch(GRPOTrainer, "_generate", "generate (sampling)")
        spans.patch(GRPOTrainer, "compute_loss", "forward with grad (update)")
        spans.patch(Accelerator, "backward", "backward")
        spans.patch(torch.optim.AdamW, "step", "AdamW step")
    try:
        trainer.train()
    finally:
        if spans is not None:
            spans.restore()
    return timer.times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=11)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default="1M")
    ap.add_argument("--task", default="mixed")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=6)
    ap.add_argument("--trl", nargs="*", default=list(TRL_CONFIGS), choices=list(TRL_CONFIGS),
                    help="which TRL runs (matched: fp32, no activation checkpointing; defaults: GRPOConfig's)")
    ap.add_argument("--grouprl", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra grouprl config overrides (e.g. old_logprobs=recompute)")
    ap.add_argument("--breakdown", action="store_true",
                    help="one more round of each, timing generation, forward, backward and AdamW per step")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.steps < 2:
        ap.error("--steps must be >= 2 (the first step is a warm-up)")
    torch.set_num_threads(a.threads)
    rounds: list[dict[str, float]] = []
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            walls, phases = grouprl_step_times(a, os.path.join(tmp, f"g{r}"))
            row = {"grouprl": statistics.median(walls[1:]), "grouprl_phases": statistics.median(phases[1:])}
            for name in a.trl:
                times = trl_step_times(a, os.path.join(tmp, f"{name}{r}"), TRL_CONFIGS[name])
                row[f"trl_{name}"] = statistics.median(times[1:])
            rounds.append(row)
            loads.append(os.getloadavg()[0])
        breakdown: dict[str, dict[str, float]] = {}
        if a.breakdown:  # a separate round: the patched timers cost a little
            spans = Spans(True)
            grouprl_step_times(a, os.path.join(tmp, "gb"), spans)
            breakdown["grouprl"] = spans.means()
            for name in a.trl:
                spans = Spans(True)
                trl_step_times(a, os.path.join(tmp, f"{name}b"), TRL_CONFIGS[name], spans)
                breakdown[f"TRL {name}"] = spans.means()
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    out = {
        "model": a.model, "task": a.task, "rows_per_step": a.prompts * a.group,
        "max_new_tokens": a.max_new_tokens, "threads": a.threads, "timed_steps": a.steps - 1, "rounds": a.rounds,
        "grouprl_overrides": a.grouprl, "grouprl_step_s": med["grouprl"], "grouprl_phase_sum_s": med["grouprl_phases"],
        "load_avg_1m": loads, "per_round": rounds, "breakdown": breakdown,
    }
    for name in a.trl:
        out[f"trl_{name}_step_s"] = med[f"trl_{name}"]
        out[f"trl_{name}_over_grouprl"] = statistics.median(r[f"trl_{name}"] / r["grouprl"] for r in rounds)
    if a.json:
        print(json.dumps(out))
        return
    print(f"model {a.model}, task {a.task}, {out['rows_per_step']} rows/step, <= {a.max_new_tokens} new tokens, "
          f"{a.threads} thread(s); per round the median of {a.steps - 1} steps after a warm-up step; "
          f"median of {a.rounds} interleaved rounds; 1-min load average {', '.join(f'{x:.1f}' for x in loads)}")
    print(f"grouprl trainer              {med['grouprl']:8.3f} s/step (whole loop iteration; phases alone "
          f"{med['grouprl_phases']:.3f})")
    for name in a.trl:
        per = ", ".join(f"{r[f'trl_{name}'] / r['grouprl']:.2f}" for r in rounds)
        print(f"TRL GRPOTrainer ({name + ')':9} {med[f'trl_{name}']:8.3f} s/step   "
              f"TRL / grouprl {out[f'trl_{name}_over_grouprl']:5.2f}x  (rounds: {per}; target >= 2x)")
    if breakdown:
        labels = sorted({k for b in breakdown.values() for k in b})
        print("breakdown, seconds per step (mean of the steps after the first, one separate timed run each):")
        print(f"{'':30}" + "".join(f"{who:>14}" for who in breakdown))
        for k in labels:
            print(f"{k:30}" + "".join(f"{b.get(k, 0.0):14.4f}" for b in breakdown.values()))


if __name__ == "__main__":
    main()
