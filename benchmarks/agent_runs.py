"""Summarise agent runs over seeds: eval curves and blocks of train steps, mean ± standard error.

    python benchmarks/agent_runs.py gigpo=/tmp/runs/G0,/tmp/runs/G1 grpo=/tmp/runs/R0,/tmp/runs/R1 \
        --keys acc,sampled_success --block 10 --png docs/images/agents_gridworld_compare.png

Each ``label=dir1,dir2,...`` is one method; its runs (one per seed) must share the eval steps.
Prints Markdown tables: every eval key at every eval step, the training episodes' ``success`` (and
``invalid_rate``) per block of ``--block`` steps, and the CPU/wall time of the runs' steps. The
standard error is the sample std over runs / sqrt(runs) (0 with one run). Reads only the
``eval.jsonl`` and ``metrics.jsonl`` that ``grouprl train`` writes.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from grouprl.train.logging import read_jsonl  # noqa: E402


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n); 0 for one value)."""
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return m, 0.0
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return m, math.sqrt(var / n)


def fmt(values: list[float]) -> str:
    m, se = mean_se(values)
    return f"{m:.3f} ± {se:.3f}" if len(values) > 1 else f"{m:.3f}"


def load(spec: str) -> tuple[str, list[Path]]:
    label, _, dirs = spec.partition("=")
    if not dirs:
        raise SystemExit(f"{spec!r}: expected label=dir1,dir2,...")
    return label, [Path(d) for d in dirs.split(",") if d]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="label=dir1,dir2,... (one label per method)")
    ap.add_argument("--keys", default="acc,sampled_success", help="eval.jsonl keys to tabulate")
    ap.add_argument("--block", type=int, default=10, help="train steps per block")
    ap.add_argument("--train-keys", default="success,invalid_rate", help="metrics.jsonl keys per block")
    ap.add_argument("--png", default=None, help="write the eval curves (mean ± SE) here")
    args = ap.parse_args(argv)
    methods = [load(s) for s in args.runs]
    keys = [k for k in args.keys.split(",") if k]
    curves: dict[str, dict[str, list[tuple[int, float, float]]]] = {}
    for label, dirs in methods:
        evals = [read_jsonl(d / "eval.jsonl") for d in dirs]
        steps = [e["step"] for e in evals[0]]
        n = min(len(e) for e in evals)
        print(f"\n### {label}: {len(dirs)} run(s) ({', '.join(d.name for d in dirs)})\n")
        print("| eval step | " + " | ".join(keys) + " |")
        print("|---" * (len(keys) + 1) + "|")
        curves[label] = {k: [] for k in keys}
        for i in range(n):
            cells = []
            for k in keys:
                vals = [float(e[i][k]) for e in evals]
                cells.append(fmt(vals))
                curves[label][k].append((steps[i], *mean_se(vals)))
            print(f"| {steps[i]} | " + " | ".join(cells) + " |")
        metrics = [read_jsonl(d / "metrics.jsonl") for d in dirs]
        m = min(len(x) for x in metrics)
        blocks = list(range(0, m, args.block))
        print("\n| train steps | " + " | ".join(f"{b + 1}–{min(b + args.block, m)}" for b in blocks) + " |")
        print("|---" * (len(blocks) + 1) + "|")
        for k in [k for k in args.train_keys.split(",") if k]:
            row = []
            for b in blocks:
                per_run = [sum(r[k] for r in x[b:b + args.block]) / len(x[b:b + args.block]) for x in metrics]
                row.append(fmt(per_run))
            print(f"| {k} | " + " | ".join(row) + " |")
        step_s = [sum(r.get("time/step", 0.0) for r in x[:m]) for x in metrics]
        print(f"\nstep time (rollout + log-probs + advantages + update, wall): {fmt(step_s)} s over {m} steps")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
        for ax, k in zip(axes[0], keys):
            for label, c in curves.items():
                xs, ms, ses = zip(*c[k])
                ax.errorbar(xs, ms, yerr=ses, marker="o", capsize=3, label=label)
            ax.set_title({"acc": "held-out greedy success (acc)", "sampled_success": "held-out sampled success"}.get(k, k))
            ax.set_xlabel("RL step")
            ax.set_ylim(-0.02, 1.02)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.png, dpi=90)
        print(f"\nwrote {args.png}")


if __name__ == "__main__":
    main()
