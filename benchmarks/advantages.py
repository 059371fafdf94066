"""Benchmark of grouprl's advantage estimators against naive loops, the memory floor and verl.

    nice python benchmarks/advantages.py --sizes 4096 32768 --T 512 --G 8 --repeats 5

Inputs (built once, not timed): B rows in B/G groups of G, int group labels shuffled, right-padded
masks with lengths uniform in [1, T], 0/1 rewards, critic values ~ N(0, 1). Median wall time per
call over ``--repeats`` calls after one warm-up round; the cases are interleaved (each round
times every case once) so that load changes on a shared machine hit all of them alike. The memory floor is one (B, T) float32 multiply by
the mask: the cost of writing a (B, T) advantage tensor at all. Prints a markdown table and the
machine. verl's functions are timed on the same inputs when ``verl.trainer.ppo.core_algos`` imports.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from grouprl import Rollouts, compute_advantages  # noqa: E402
from grouprl.advantages.gae import gae, gae_with_returns  # noqa: E402

FLOOR = "memory floor: (B,T) float32 x * mask"
GAE = "grouprl gae (gamma .99, lam .95)"
GAE_LOOP = "naive GAE, Python loop over T"
GROUP_ESTIMATORS = ["grpo", "rloo", "opo", "gpg", "grpo_passk", "reinforce_pp_baseline"]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def make_inputs(B: int, T: int, G: int, seed: int = 0, gaps: bool = False):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(B // G).repeat_interleave(G)
    labels = labels[torch.randperm(B, generator=gen)]
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    if gaps:  # observation spans: drop ~20% of the tokens inside each response
        keep = torch.rand(B, T, generator=gen) > 0.2
        keep[:, 0] = True
        mask = mask & keep
    rewards = (torch.rand(B, generator=gen) < 0.5).float()
    values = torch.randn(B, T, generator=gen)
    return labels, mask, rewards, values


# ---------------------------------------------------------------- naive baselines
def naive_grpo_loop(rewards: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6):
    """The GRPO formula with a Python loop over groups (rows of each group found by a mask)."""
    adv = torch.zeros_like(rewards)
    for g in torch.unique(labels).tolist():
        rows = labels == g
        r = rewards[rows]
        adv[rows] = (r - r.mean()) / (r.std() + eps) if r.numel() > 1 else r
    return adv.unsqueeze(1) * mask


def loop_gae(token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """GAE with a Python loop over the T columns (verl's style), then batch whitening."""
    m = mask.float()
    next_v = torch.zeros(values.shape[0])
    running = torch.zeros(values.shape[0])
    cols = []
    for t in reversed(range(values.shape[1])):
        delta = token_rewards[:, t] + gamma * next_v - values[:, t]
        new = delta + gamma * lam * running
        next_v = values[:, t] * m[:, t] + (1 - m[:, t]) * next_v
        running = new * m[:, t] + (1 - m[:, t]) * running
        cols.append(running)
    adv = torch.stack(cols[::-1], dim=1)
    mean = (adv * m).sum() / m.sum()
    var = ((adv - mean) ** 2 * m).sum() / (m.sum() - 1)
    return (adv - mean) * torch.rsqrt(var + 1e-8) * m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 32768])
    ap.add_argument("--T", type=int, default=512)
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-verl", action="store_true", help="skip verl even if it imports")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    verl = None
    if not args.no_verl:
        try:
            import verl.trainer.ppo.core_algos as verl  # type: ignore[no-redef]
        except Exception:  # not installed, or its dependencies are missing
            verl = None

    gamma, lam = 0.99, 0.95
    results: dict[str, dict[int, float]] = {}

    def record(name: str, B: int, ms: float) -> None:
        results.setdefault(name, {})[B] = ms
        print(f"  {name:<48} B={B:<6} {ms:9.2f} ms", file=sys.stderr, flush=True)

    for B in args.sizes:
        labels, mask, rewards, values = make_inputs(B, args.T, args.G)
        batch = Rollouts(rewards=rewards, group=labels, mask=mask, values=values)
        _, maskg, _, _ = make_inputs(B, args.T, args.G, gaps=True)
        batch_gaps = Rollouts(rewards=rewards, group=labels, mask=maskg, values=values)
        x = torch.randn(B, args.T)
        tok = torch.zeros(B, args.T).scatter_(1, (mask.sum(1) - 1).unsqueeze(1), rewards.unsqueeze(1))

        def est(name: str, b: Rollouts = batch, **kw):
            return lambda: compute_advantages(name, b, **kw)

        cases: list[tuple[str, Callable[[], object]]] = [
            (FLOOR, lambda: x * mask),
            ("(B,T) float32 torch.where(mask, x, 0)", lambda: torch.where(mask, x, 0.0)),
        ]
        cases += [(f"grouprl {n}", est(n)) for n in GROUP_ESTIMATORS]
        cases += [
            (GAE, est("gae", gamma=gamma, lam=lam)),
            ("grouprl gae, direct call (no registry checks)", lambda: gae(batch, gamma=gamma, lam=lam)),
            ("grouprl gae_with_returns", lambda: gae_with_returns(batch, gamma=gamma, lam=lam)),
            ("grouprl gae, masks with gaps", est("gae", batch_gaps, gamma=gamma, lam=lam)),
            ("grouprl reinforce_pp (gamma .99)", est("reinforce_pp", gamma=gamma)),
            ("naive GRPO, Python loop over groups", lambda: naive_grpo_loop(rewards, labels, mask)),
            (GAE_LOOP, lambda: loop_gae(tok, values, mask, gamma, lam)),
        ]
        if verl is not None:
            index = labels.numpy().astype(np.int64)
            m = mask.float()
            cfg = type("C", (), {"gamma": gamma})()
            cases += [
                ("verl grpo (loop)", lambda: verl.compute_grpo_outcome_advantage(tok.clone(), m, index)),
                ("verl grpo_vectorized", lambda: verl.compute_grpo_vectorized_outcome_advantage(tok.clone(), m, index)),
                ("verl rloo (loop)", lambda: verl.compute_rloo_outcome_advantage(tok.clone(), m, index)),
                ("verl rloo_vectorized", lambda: verl.compute_rloo_vectorized_outcome_advantage(tok.clone(), m, index)),
                ("verl reinforce_plus_plus_baseline",
                 lambda: verl.compute_reinforce_plus_plus_baseline_outcome_advantage(tok.clone(), m, index)),
                ("verl gae", lambda: verl.compute_gae_advantage_return(tok, values, m, gamma, lam)),
                ("verl reinforce_plus_plus",
                 lambda: verl.compute_reinforce_plus_plus_outcome_advantage(tok, m, config=cfg)),
            ]
        # Interleaved: every repeat times every case once, so load changes on a shared machine
        # hit all cases alike; the first round is a warm-up.
        times: dict[str, list[float]] = {name: [] for name, _ in cases}
        for rep in range(args.repeats + 1):
            for name, fn in cases:
                t0 = time.perf_counter()
                fn()
                if rep:
                    times[name].append((time.perf_counter() - t0) * 1e3)
        for name, _ in cases:
            record(name, B, statistics.median(times[name]))

    floor = results[FLOOR]
    gae_loop = results[GAE_LOOP]
    sizes = args.sizes
    head = "| estimator | " + " | ".join(f"B={B} ms" for B in sizes) + " | " + " | ".join(
        f"x floor @{B}" for B in sizes
    ) + " |"
    print()
    print(head)
    print("|---|" + "---:|" * (2 * len(sizes)))
    for name, row in results.items():
        ms = " | ".join(f"{row[B]:.2f}" for B in sizes)
        ratio = " | ".join(f"{row[B] / floor[B]:.2f}" for B in sizes)
        print(f"| {name} | {ms} | {ratio} |")
    print()
    for B in sizes:
        g = results[GAE][B]
        direct = results["grouprl gae, direct call (no registry checks)"][B]
        print(f"- B={B}: naive GAE loop / grouprl gae = {gae_loop[B] / g:.1f}x "
              f"(direct call: {gae_loop[B] / direct:.1f}x)")
    print()
    print(f"Machine: {platform.platform()}; CPU: {cpu_model()}; {os.cpu_count()} logical CPUs; "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
          f"T={args.T}, G={args.G}, repeats={args.repeats}; verl: {'yes' if verl else 'not importable'}")


if __name__ == "__main__":
    main()
