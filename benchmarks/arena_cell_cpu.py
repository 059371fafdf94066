"""CPU seconds of one arena cell per method of a preset (the numbers behind ``grouprl arena --dry-run``).

    nice -n 10 python benchmarks/arena_cell_cpu.py agents --seed 0 --out /tmp/cellcpu
    python benchmarks/arena_cell_cpu.py token_credit --methods grpo,hapo --out /tmp/cellcpu

Each warm start the measured cells need (an SFT keyed by ``grouprl.arena.spec.warm_key``; none for
the shipped one) is built first, then each method's cell of task 1 and ``--seed`` runs from it,
every one in its own process under ``/usr/bin/time -v`` at ``threads=1`` (the arena's setting).
Printed per row: user + sys CPU seconds (what ``/usr/bin/time`` reports; roughly independent of
the machine's load, unlike the wall time, which is printed too), and the cell's held-out metric at
the warm start and at the end. A block's wall time on W idle cores is about Σ CPU / W.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))


def _timed(args: list[str]) -> tuple[float, float, str]:
    """Run ``python THIS args`` under /usr/bin/time -v; (user + sys CPU s, wall s, the child's stdout)."""
    cmd = ["/usr/bin/time", "-v", sys.executable, __file__, *args]
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    user = float(re.search(r"User time \(seconds\): ([\d.]+)", p.stderr).group(1))
    sys_ = float(re.search(r"System time \(seconds\): ([\d.]+)", p.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", p.stderr).group(1)
    secs = sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall.split(":"))))
    return user + sys_, secs, p.stdout


def _child(kind: str, config_file: str, run_dir: str, warm_root: str) -> None:
    import torch

    from grouprl.arena.runner import ensure_warm_start, run_cell

    config = json.loads(Path(config_file).read_text())
    torch.set_num_threads(int(config.get("threads", 1)))  # as the arena's workers (run_cell sets it too)
    if kind == "warm":
        ensure_warm_start(config, warm_root)
        return
    res = run_cell(config, run_dir, warm_root)
    if res["status"] != "done":
        raise SystemExit(res["error"])
    print(json.dumps(res["evals"]))


def main(argv: list[str] | None = None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(*sys.argv[2:6])
        return
    from grouprl.arena.spec import load_spec, warm_key

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default=None, help="comma-separated (default: all of the preset's)")
    ap.add_argument("--out", required=True, help="work directory (warm starts, cell run dirs)")
    args = ap.parse_args(argv)
    spec = load_spec(preset=args.preset)
    task = next(iter(spec.tasks))
    want = args.methods.split(",") if args.methods else list(spec.methods)
    cells = [c for c in spec.cells() if c.task == task and c.seed == args.seed and c.method in want]
    out = Path(args.out) / args.preset
    out.mkdir(parents=True, exist_ok=True)
    warm_root = out / "warm"
    print(f"| preset | cell | CPU s (user+sys) | wall s | {spec.metric} warm start -> final |")
    print("|---|---|---|---|---|")
    built = set()
    for c in cells:
        f = out / f"{c.cell_id}.json"
        f.write_text(json.dumps(c.config))
        key = warm_key(c.config)
        if key is not None and key not in built:
            cpu, wall, _ = _timed(["--child", "warm", str(f), "-", str(warm_root)])
            print(f"| {args.preset} | warm start {key} | {cpu:.1f} | {wall:.1f} | |", flush=True)
            built.add(key)
        cpu, wall, stdout = _timed(["--child", "cell", str(f), str(out / "cells" / c.cell_id), str(warm_root)])
        evals = json.loads(stdout.strip().splitlines()[-1])
        first, last = evals[0].get(spec.metric), evals[-1].get(spec.metric)
        print(f"| {args.preset} | {c.cell_id} | {cpu:.1f} | {wall:.1f} | {first:.3f} -> {last:.3f} |", flush=True)


if __name__ == "__main__":
    main()
