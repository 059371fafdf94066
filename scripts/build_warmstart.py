"""Build (or rebuild) a warm start shipped inside grouprl: SFT to a validation target, then package it.

    python scripts/build_warmstart.py --name add3r-1M --task add3r --model 1M --seed 2

runs exactly ``grouprl sft task=TASK model=MODEL seed=SEED threads=1 sft_target_acc=TARGET
sft_steps=MAX`` in a subprocess, refuses a result below the target (the small model's SFT jump
depends on the seed and on the CPU's kernels: try another ``--seed``), and writes
``src/grouprl/warmstarts/NAME/`` with the checkpoint, the SFT log and ``warmstart.json``: the task
and model it fits, the SFT settings, the command, the held-out accuracy, the versions and CPU that
built it, and the SHA-256 of every file. ``--check`` rebuilds into a temporary directory and only
compares checksums with the shipped copy (weights, config, tokenizer; not the SFT log, which holds
timings): bit-identical on the same CPU type and versions.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHIP_ROOT = REPO / "src" / "grouprl" / "warmstarts"
# Task arguments that do not touch the eval split, so the warm start still fits a task built with them.
FREE_TASK_KWARGS = ["train_size"]


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sha256(path: Path) -> str:
    sys.path.insert(0, str(REPO / "src"))
    from grouprl.warmstarts import sha256_file

    return sha256_file(path)


def build(args: argparse.Namespace, out: Path, run: bool = True) -> list[str]:
    """Run the SFT command into ``out`` (unless ``run`` is False); returns the command without ``--out``."""
    cmd = ["grouprl", "sft", f"task={args.task}", f"model={args.model}", f"seed={args.seed}", "threads=1",
           f"sft_target_acc={args.target}", f"sft_steps={args.max_steps}"]
    if not run:
        return cmd
    exe = shutil.which("grouprl")
    if exe is None:
        sys.exit("build_warmstart: the grouprl command is not on PATH; pip install -e . first")
    print("$", " ".join(cmd), flush=True)
    subprocess.run([exe, *cmd[1:], "progress=false", "--out", str(out)], check=True)
    return cmd


def heldout_eval(ckpt: Path, task_name: str) -> dict:
    """Greedy accuracy of the checkpoint on the task's whole held-out set (1 thread)."""
    sys.path.insert(0, str(REPO / "src"))
    import torch

    from grouprl.models import load_pretrained
    from grouprl.tasks import RewardGuard, get_task
    from grouprl.train.data import evaluate, step_generator

    torch.set_num_threads(1)
    task = get_task(task_name)
    model, tok = load_pretrained(str(ckpt))
    model.eval()
    guard = RewardGuard(task.score, trusted=True)
    return evaluate(model, tok, task.eval_examples, guard, max_new_tokens=6, pass_k=4, pass_k_size=0,
                    temperature=1.0, top_p=1.0, generator=step_generator(0, 0, 5))


def package(args: argparse.Namespace, built: Path, cmd: list[str], dest: Path) -> dict:
    """Check the SFT result against the target and write ``dest`` (files + manifest)."""
    import torch
    import transformers

    log = [json.loads(x) for x in (built / "sft_log.jsonl").read_text().splitlines() if x.strip()]
    ev = heldout_eval(built, args.task)
    checks = [r["val_acc"] for r in log if "val_acc" in r]
    if not checks or checks[-1] < args.target:
        sys.exit(f"build_warmstart: SFT ended at validation accuracy {checks[-1] if checks else None} < target "
                 f"{args.target} after {len(log)} steps; try another --seed or a larger --max-steps.")
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(built, dest, ignore=shutil.ignore_patterns("sft_eval.json", ".*"))
    files = {p.name: _sha256(p) for p in sorted(dest.iterdir()) if p.is_file()}
    manifest = {
        "name": args.name,
        "task": args.task,
        "model": args.model,
        "tokenizer": "char",
        "free_task_kwargs": FREE_TASK_KWARGS,
        "sft": {"seed": args.seed, "steps_run": len(log), "target_acc": args.target, "max_steps": args.max_steps,
                "val_acc": checks[-1], "final_loss": log[-1]["loss"]},
        "heldout_greedy_acc": ev["acc"],
        "heldout_n": ev["n"],
        "command": " ".join(cmd),
        "rebuild": f"python scripts/build_warmstart.py --name {args.name} --task {args.task} --model {args.model} "
                   f"--seed {args.seed} --target {args.target} --max-steps {args.max_steps}",
        "built": {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "torch": torch.__version__,
                  "transformers": transformers.__version__, "python": platform.python_version(), "cpu": _cpu()},
        "files": files,
    }
    (dest / "warmstart.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True, help="directory name under src/grouprl/warmstarts/")
    ap.add_argument("--task", default="add3r")
    ap.add_argument("--model", default="1M")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--target", type=float, default=0.4, help="validation greedy accuracy to reach")
    ap.add_argument("--max-steps", type=int, default=4000)
    ap.add_argument("--check", action="store_true", help="rebuild and compare with the shipped copy; change nothing")
    ap.add_argument("--from", dest="built", type=Path, default=None,
                    help="package this output of the same `grouprl sft` command instead of running it")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        built = args.built or Path(tmp) / "sft"
        cmd = build(args, built, run=args.built is None)
        if args.check:
            shipped = json.loads((SHIP_ROOT / args.name / "warmstart.json").read_text())["files"]
            shipped.pop("sft_log.jsonl", None)  # holds wall-clock timings: never bit-identical
            fresh = {p.name: _sha256(p) for p in sorted(built.iterdir()) if p.name in shipped}
            diff = sorted(k for k in shipped if fresh.get(k) != shipped[k])
            print("identical to the shipped copy" if not diff else f"differs from the shipped copy in: {', '.join(diff)}")
            sys.exit(1 if diff else 0)
        manifest = package(args, built, cmd, SHIP_ROOT / args.name)
    print(json.dumps({k: manifest[k] for k in ("name", "sft", "heldout_greedy_acc", "files")}, indent=2))


if __name__ == "__main__":
    main()
