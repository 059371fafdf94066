"""One-GPU device check: estimator kernels vs the memory floor, and a 20-step bf16 training run.

    python benchmarks/gpu_check.py OUT_DIR                      # on a CUDA machine (see gpu_check.sh)
    python benchmarks/gpu_check.py OUT_DIR --device cpu --small # the same logic at tiny sizes (tests)

1. Estimators (grpo, rloo, gae, and the agent estimators gigpo and mars) at B=262,144 x T=1,024 on the
   device; each as a multiple of the memory floor, one elementwise (B, T) float32 multiply by the
   mask. Median of --repeats timed calls after one warm-up, timed with CUDA events (wall clock after
   a synchronize on CPU). verl's grpo/rloo/gae are timed beside them when verl imports.
2. Training: the "100M" preset built from config (no download), task add2, 20 RL steps, bf16
   autocast, no SFT; reports rollout and update tokens/s (mean over steps 2..N: step 1 warms up
   kernels) and peak GPU memory.
3. Prints one markdown table and writes OUT_DIR/gpu_check.json.

Sized to finish well under 5 minutes on one H100: inputs are built on the device, responses are
short (max_new_tokens=32), no SFT, a 64-example evaluation. It has not been run on a GPU yet.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from grouprl import Rollouts, compute_advantages  # noqa: E402

FULL = dict(B=262_144, T=1024, G=8, S=4, repeats=5, model="100M", steps=20, prompts=64, group=8,
            max_new_tokens=32, micro=256)
SMALL = dict(B=512, T=32, G=8, S=4, repeats=2, model="tiny", steps=2, prompts=4, group=4, max_new_tokens=4,
             micro=16)


def make_batch(B: int, T: int, G: int, S: int, device: torch.device) -> tuple[Rollouts, torch.Tensor, torch.Tensor]:
    """B rows: groups of G trajectories of S steps each (rows are turns), on ``device``.

    Right-padded masks with lengths uniform in [1, T], 0/1 outcome rewards, per-step rewards, values
    ~ N(0, 1), state keys from 64 states (so GiGPO's anchor groups have several members), two agents
    alternating turns (MARS). Returns the batch, a (B, T) float tensor x and the mask.
    """
    gen = torch.Generator(device=device).manual_seed(0)
    rows = torch.arange(B, device=device)
    traj = rows // S
    lengths = torch.randint(1, T + 1, (B,), generator=gen, device=device)
    mask = torch.arange(T, device=device)[None, :] < lengths[:, None]
    traj_reward = (torch.rand(B // S + 1, generator=gen, device=device) < 0.5).float()
    batch = Rollouts(
        rewards=traj_reward[traj], group=traj // G, mask=mask,
        values=torch.randn(B, T, generator=gen, device=device),
        trajectory=traj, step=rows % S,
        step_rewards=torch.rand(B, generator=gen, device=device),
        state_key=torch.randint(0, 64, (B,), generator=gen, device=device),
        agent=rows % 2,
    )
    return batch, torch.randn(B, T, generator=gen, device=device), mask


def timer(device: torch.device) -> Callable[[Callable[[], object], int], float]:
    """``time(fn, repeats)`` -> median ms after one warm-up call."""

    def run(fn: Callable[[], object], repeats: int) -> float:
        fn()
        out = []
        for _ in range(repeats):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize(device)
                out.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(out)

    return run


def bench_estimators(size: dict, device: torch.device, use_verl: bool) -> list[dict[str, Any]]:
    batch, x, mask = make_batch(size["B"], size["T"], size["G"], size["S"], device)
    cases: list[tuple[str, Callable[[], object]]] = [("memory floor", lambda: x * mask)]
    cases += [(n, lambda n=n: compute_advantages(n, batch)) for n in ("grpo", "rloo")]
    cases.append(("gae", lambda: compute_advantages("gae", batch, gamma=0.99, lam=0.95)))
    cases += [(n, lambda n=n: compute_advantages(n, batch)) for n in ("gigpo", "mars")]
    if use_verl:
        try:
            import verl.trainer.ppo.core_algos as verl
        except Exception:  # not installed, or its dependencies are missing
            verl = None
        if verl is not None:
            m = mask.float()
            tok = torch.zeros_like(m).scatter_(1, (mask.sum(1) - 1)[:, None], batch.rewards[:, None])
            index = batch.group.cpu().numpy()
            cases += [
                ("verl grpo_vectorized", lambda: verl.compute_grpo_vectorized_outcome_advantage(tok, m, index)),
                ("verl rloo_vectorized", lambda: verl.compute_rloo_vectorized_outcome_advantage(tok, m, index)),
                ("verl gae", lambda: verl.compute_gae_advantage_return(tok, batch.values, m, 0.99, 0.95)),
            ]
    time_it = timer(device)
    rows = []
    for name, fn in cases:
        try:
            rows.append({"name": name, "ms": time_it(fn, size["repeats"])})
        except Exception as exc:  # e.g. a verl function that does not take device tensors: report, go on
            if not name.startswith("verl"):
                raise
            rows.append({"name": name, "ms": None, "error": f"{type(exc).__name__}: {exc}"[:200]})
            print(f"  {name:<24} failed: {rows[-1]['error']}", file=sys.stderr, flush=True)
            continue
        print(f"  {name:<24} {rows[-1]['ms']:10.3f} ms", file=sys.stderr, flush=True)
    floor = rows[0]["ms"]
    for r in rows:
        r["x_floor"] = None if r["ms"] is None else r["ms"] / floor
    return rows


def bench_train(size: dict, device: torch.device, precision: str, work: Path) -> dict[str, Any]:
    from grouprl.train import build_config, train
    from grouprl.train.logging import read_jsonl

    cfg = build_config(dict(
        out_dir=str(work), name="gpu_check", model=size["model"], task="add2", sft_steps=0, steps=size["steps"],
        prompts_per_step=size["prompts"], group_size=size["group"], max_new_tokens=size["max_new_tokens"],
        micro_batch_size=size["micro"], eval_every=0, eval_size=64 if size["model"] != "tiny" else 4,
        pass_k_size=0, save_every=10_000, keep_checkpoints=1, progress=False, tensorboard=False,
        threads=1 if device.type == "cpu" else 4, device=str(device), precision=precision, lr=1e-5,
    ))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    summary = train(cfg)
    wall = time.perf_counter() - t0
    rows = read_jsonl(Path(summary["run_dir"]) / "metrics.jsonl")
    timed = rows[1:] if len(rows) > 1 else rows  # step 1 warms up kernels and the allocator
    from grouprl.models import build_tokenizer, count_parameters, model_config

    params = None
    try:
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            params = count_parameters(AutoModelForCausalLM.from_config(model_config(size["model"], build_tokenizer("char"))))
    except Exception:  # counting is informative only
        params = None
    return {
        "model": size["model"], "parameters": params, "steps": len(rows), "precision": precision,
        "rows_per_step": size["prompts"] * size["group"], "max_new_tokens": size["max_new_tokens"],
        "rollout_tok_s": statistics.mean(r["perf/rollout_tok_s"] for r in timed),
        "update_tok_s": statistics.mean(r["perf/update_tok_s"] for r in timed),
        "step_s": statistics.mean(r["time/step"] for r in timed),
        "peak_mem_gib": (torch.cuda.max_memory_allocated(device) / 2**30) if device.type == "cuda" else None,
        "wall_s": wall,
    }


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}; torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"CPU ({platform.processor() or platform.machine()}); torch {torch.__version__}"


def table(report: dict[str, Any]) -> str:
    lines = [f"Machine: {report['machine']}", "", "| case | ms | x memory floor |", "|---|---:|---:|"]
    lines += [f"| {r['name']} (B={report['B']}, T={report['T']}) | {r['ms']:.3f} | {r['x_floor']:.2f} |"
              if r["ms"] is not None else f"| {r['name']} | failed: {r['error']} | |" for r in report["estimators"]]
    tr = report["train"]
    mem = "n/a" if tr["peak_mem_gib"] is None else f"{tr['peak_mem_gib']:.2f} GiB"
    lines += ["", "| training | value |", "|---|---:|",
              f"| model | {tr['model']} ({tr['parameters']} parameters) |",
              f"| steps x rows | {tr['steps']} x {tr['rows_per_step']} (max_new_tokens {tr['max_new_tokens']}) |",
              f"| precision | {tr['precision']} |",
              f"| rollout tokens/s | {tr['rollout_tok_s']:.0f} |",
              f"| update tokens/s | {tr['update_tok_s']:.0f} |",
              f"| s/step | {tr['step_s']:.3f} |",
              f"| peak GPU memory | {mem} |",
              f"| training wall time | {tr['wall_s']:.1f} s |"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="folder for gpu_check.json")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --small: a logic test)")
    ap.add_argument("--small", action="store_true", help="tiny sizes (seconds on a CPU)")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--no-verl", action="store_true")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible to torch "
              f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); nothing to check.", file=sys.stderr)
        raise SystemExit(2)
    device = torch.device(args.device)
    torch.set_num_threads(1 if device.type == "cpu" else min(4, os.cpu_count() or 1))
    size = SMALL if args.small else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"gpu_check: estimators at B={size['B']} T={size['T']} on {device}", file=sys.stderr, flush=True)
    est = bench_estimators(size, device, use_verl=not args.no_verl)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    print(f"gpu_check: training {size['model']} for {size['steps']} steps ({args.precision})", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        tr = bench_train(size, device, args.precision, Path(work))
    report = {"machine": machine(device), "device": str(device), "B": size["B"], "T": size["T"],
              "estimators": est, "train": tr, "total_s": time.perf_counter() - t0, "small": args.small}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"\nwrote {out / 'gpu_check.json'} ({report['total_s']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
