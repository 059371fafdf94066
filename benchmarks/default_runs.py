"""The README's main job over seeds and thread counts: does RL improve held-out accuracy on every seed?

    python benchmarks/default_runs.py --out runs/default-sweep --seeds 0-9 --threads 1 2 [--jobs 1] [key=value ...]

runs ``grouprl train out_dir=OUT name=s{SEED}-t{THREADS} seed=SEED threads=THREADS progress=false
[key=value ...]`` for every pair (a finished run, one with summary.json, is kept: the sweep resumes),
times each run as a whole process (wall seconds, peak resident memory from ``wait4``), and writes
OUT/sweep.json and a Markdown table: per run the warm-start and final held-out greedy accuracy and
their difference; per thread count the number of seeds whose gain reaches ``--min-gain``, the mean
gain with a 95% t interval over seeds, and the smallest gain. Each accuracy is scored on the same
``n`` held-out prompts (each eval.jsonl row records n).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats


def _seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def _run(exe: str, out: Path, seed: int, threads: int, extra: list[str]) -> dict:
    name = f"s{seed}-t{threads}"
    run = out / name
    if (run / "summary.json").is_file():
        return json.loads((run / "timing.json").read_text()) if (run / "timing.json").is_file() else {}
    shutil.rmtree(run, ignore_errors=True)  # an unfinished run of an earlier sweep starts over
    cmd = [exe, "train", f"out_dir={out}", f"name={name}", f"seed={seed}", f"threads={threads}", "progress=false", *extra]
    t0 = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    timing = {"wall_s": time.perf_counter() - t0, "max_rss_mb": usage.ru_maxrss / 1024, "exit": os.waitstatus_to_exitcode(status),
              "load_avg_1m_at_end": os.getloadavg()[0], "command": " ".join(cmd)}
    if timing["exit"] == 0:
        (run / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    return timing


def summarise(out: Path, seeds: list[int], threads: list[int], min_gain: float) -> dict:
    runs, groups = [], []
    for t in threads:
        gains = []
        for s in seeds:
            run = out / f"s{s}-t{t}"
            if not (run / "summary.json").is_file():
                continue
            evals = [json.loads(x) for x in (run / "eval.jsonl").read_text().splitlines() if x.strip()]
            timing = json.loads((run / "timing.json").read_text()) if (run / "timing.json").is_file() else {}
            first, last = evals[0], evals[-1]
            gain = last["acc"] - first["acc"]
            gains.append(gain)
            runs.append({"seed": s, "threads": t, "n": last.get("n"), "warm_start": first["acc"], "final": last["acc"],
                         "gain": gain, "sampled_start": first.get("sampled_acc"), "sampled_final": last.get("sampled_acc"),
                         "wall_s": timing.get("wall_s"), "max_rss_mb": timing.get("max_rss_mb")})
        if gains:
            g = np.asarray(gains)
            half = stats.t.ppf(0.975, len(g) - 1) * g.std(ddof=1) / np.sqrt(len(g)) if len(g) > 1 else float("nan")
            groups.append({"threads": t, "n_seeds": len(g), "n_gain_at_least": int((g >= min_gain).sum()),
                           "min_gain": min_gain, "mean_gain": float(g.mean()), "ci95": [float(g.mean() - half), float(g.mean() + half)],
                           "smallest_gain": float(g.min())})
    return {"runs": runs, "by_threads": groups}


def markdown(summary: dict) -> str:
    f = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    lines = ["| seed | threads | n | warm start | after RL | gain | sampled acc start -> end | wall (s) | peak RSS (MB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in summary["runs"]:
        lines.append(f"| {r['seed']} | {r['threads']} | {r['n']} | {f(r['warm_start'])} | {f(r['final'])} | {r['gain']:+.3f} | "
                     f"{f(r['sampled_start'])} -> {f(r['sampled_final'])} | "
                     f"{'-' if r['wall_s'] is None else round(r['wall_s'])} | {'-' if r['max_rss_mb'] is None else round(r['max_rss_mb'])} |")
    lines += ["", "| threads | seeds | gain >= min | mean gain [95% CI over seeds] | smallest gain |", "|---|---|---|---|---|"]
    for g in summary["by_threads"]:
        lines.append(f"| {g['threads']} | {g['n_seeds']} | {g['n_gain_at_least']} (>= {g['min_gain']}) | "
                     f"{g['mean_gain']:+.3f} [{g['ci95'][0]:+.3f}, {g['ci95'][1]:+.3f}] | {g['smallest_gain']:+.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", default="0-9")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--min-gain", type=float, default=0.03)
    ap.add_argument("--summary-only", action="store_true", help="summarise the finished runs; run nothing")
    args, extra = ap.parse_known_args()
    seeds = _seeds(args.seeds)
    args.out.mkdir(parents=True, exist_ok=True)
    exe = shutil.which("grouprl")
    if not args.summary_only:
        if exe is None:
            sys.exit("default_runs: the grouprl command is not on PATH; pip install -e . first")
        for t in args.threads:
            for s in seeds:
                timing = _run(exe, args.out, s, t, extra)
                print(f"s{s}-t{t}: {timing}", flush=True)
    summary = summarise(args.out, seeds, args.threads, args.min_gain)
    (args.out / "sweep.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(markdown(summary))


if __name__ == "__main__":
    main()
