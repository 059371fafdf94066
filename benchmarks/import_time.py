"""Time `import grouprl` against `import torch` alone (fresh interpreters, median of N)."""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time


def timed(code: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    base = [timed("pass") for _ in range(args.repeats)]
    torch_t = [timed("import torch") for _ in range(args.repeats)]
    g = [timed("import grouprl") for _ in range(args.repeats)]
    b, tt, gg = (statistics.median(x) for x in (base, torch_t, g))
    print(f"machine: {platform.machine()} {platform.processor() or ''} python {platform.python_version()}")
    print("| import | median s (minus interpreter start) | ratio to torch |")
    print("|---|---:|---:|")
    print(f"| torch | {tt - b:.3f} | 1.00 |")
    print(f"| grouprl | {gg - b:.3f} | {(gg - b) / (tt - b):.2f} |")


if __name__ == "__main__":
    main()
