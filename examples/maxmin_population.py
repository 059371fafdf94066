"""A synthetic user population for MaxMin-RLHF (arXiv:2402.08925), the worked example of
docs/outcome-methods.md ("MaxMin-RLHF end to end").

Two user groups answer the add3r prompts' comparisons with different tastes: group A (the
majority) prefers answers made of the digits 0–4, group B (the minority) answers made of 5–9, a
stand-in for the paper's conflicting preferences (sentiment vs conciseness). A user of group g
prefers y1 over y2 with probability σ(scale·(u_g(y1) − u_g(y2))) (Bradley–Terry), where u_A(y) is
the fraction of y's characters in 0–4 and u_B(y) the fraction in 5–9 (letters, symbols and spaces count
for neither). The best answer for A is all low digits, for B all high digits; an even mix gives
both 0.5, which is what an egalitarian policy should find, while one reward model pooled over the
users (7:3) favours A's taste.

    python examples/maxmin_population.py generate --out pop.jsonl --ratio 7:3
    grouprl fit-rewards pop.jsonl --clusters 2 --out rm2      # the K = 2 mixture (MaxMin)
    grouprl fit-rewards pop.jsonl --clusters 1 --out rm1      # one pooled reward model (plain RLHF)
    grouprl train --config examples/maxmin.yaml reward_models=rm2 init=SFT_DIR name=maxmin
    grouprl train --config examples/maxmin.yaml reward_models=rm1 init=SFT_DIR name=pooled
    python examples/maxmin_population.py evaluate runs/maxmin runs/pooled --init SFT_DIR

``evaluate`` samples the final policy of each run on held-out prompts and reports both groups'
true utilities (u_A, u_B); ``--out`` writes them as JSON. With K = 1 the ``maxmin`` estimator is
plain GRPO on the pooled reward (tested), so the two runs differ only in the reward models.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import yaml

JUNK = "abxyz+-=*# "


def utilities(texts: list[str]) -> torch.Tensor:
    """(B, 2) true utilities (u_A, u_B): the fractions of characters in 0–4 and in 5–9."""
    from grouprl.rewards.preferences import text_features

    f = text_features(texts)
    return f[:, 1:3]


def _responses(n: int, g: torch.Generator) -> list[str]:
    """n strings of 0–6 characters: each has its own share p ~ U(0, 1) of low digits among its
    digits and q ~ U(0, 0.5) of non-digits (letters, symbols and spaces, which neither group wants), so
    that the reward models also learn what a non-answer is worth. Empty answers (1 in 7) are
    there for the same reason: a policy can produce them, and a model never shown one scores it 0."""
    lengths = torch.randint(0, 7, (n,), generator=g)
    p = torch.rand(n, generator=g)
    q = 0.5 * torch.rand(n, generator=g)
    low = torch.rand(n, 6, generator=g) < p[:, None]
    junk = torch.rand(n, 6, generator=g) < q[:, None]
    code = torch.randint(0, 5, (n, 6), generator=g) + torch.where(low, 0, 5)
    code = torch.where(junk, 10 + torch.randint(0, len(JUNK), (n, 6), generator=g), code)
    chars = [str(i) for i in range(10)] + list(JUNK)
    return ["".join(chars[c] for c in row[:k]) for row, k in zip(code.tolist(), lengths.tolist())]


def generate(out: str, ratio: str = "7:3", users: int = 20, pairs: int = 60, scale: float = 5.0,
             seed: int = 0, task: str = "add3r") -> dict:
    """Write the population's comparisons as preference JSONL; returns a summary."""
    from grouprl.tasks import get_task

    a, b = (int(x) for x in ratio.split(":"))
    n_a = round(users * a / (a + b))
    g = torch.Generator().manual_seed(seed)
    prompts = [e.prompt for e in get_task(task, seed=seed).train_pool]
    n = users * pairs
    user = torch.arange(users).repeat_interleave(pairs)
    group = (user >= n_a).long()  # 0 = A (majority), 1 = B (minority)
    y1, y2 = _responses(n, g), _responses(n, g)
    u1, u2 = utilities(y1), utilities(y2)
    margin = (u1 - u2).gather(1, group[:, None]).squeeze(1)
    first = torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(scale * margin)
    pick = torch.randint(0, len(prompts), (n,), generator=g).tolist()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for i in range(n):
            w, l_ = (y1[i], y2[i]) if first[i] else (y2[i], y1[i])
            fh.write(json.dumps({"user": f"u{int(user[i]):02d}", "prompt": prompts[pick[i]], "chosen": w, "rejected": l_,
                                 "meta": {"group": "AB"[int(group[i])]}}) + "\n")
    return {"pairs": n, "users": users, "group_A": n_a, "group_B": users - n_a, "out": str(path)}


def evaluate(runs: list[str], init: str, prompts: int = 128, samples: int = 8, seed: int = 1234) -> dict:
    """Both groups' mean true utility of each run's final policy (and of the warm start ``init``)
    on ``prompts`` held-out prompts x ``samples`` samples at the run's temperature."""
    from safetensors.torch import load_file

    from grouprl.models import load_pretrained
    from grouprl.rollout import sample
    from grouprl.train.checkpoint import latest_checkpoint
    from grouprl.train.config import TrainConfig
    from grouprl.train.data import decode_responses, encode_prompts
    from grouprl.train.loop import load_task

    out = {}
    for run in [None, *runs]:
        model, tok = load_pretrained(init)
        cfg = TrainConfig(**yaml.safe_load((Path(run or runs[0]) / "config.yaml").read_text()))
        if run is not None:
            ckpt = latest_checkpoint(Path(run) / "checkpoints")
            model.load_state_dict(load_file(str(ckpt / "model.safetensors")))
        model.eval()
        task = load_task(cfg)
        ex = list(task.eval_examples)[:prompts]
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            gen = sample(model, encode_prompts(tok, [e.prompt for e in ex]), eos_id=tok.eos_token_id,
                         pad_id=tok.pad_token_id, max_new_tokens=cfg.max_new_tokens, num_samples=samples,
                         temperature=cfg.temperature, top_p=cfg.top_p, generator=g)
        u = utilities(decode_responses(tok, gen)).mean(0).tolist()
        out[run or "warm_start"] = {"u_A": u[0], "u_B": u[1], "min": min(u)}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    gp = sub.add_parser("generate", help="write the population's preference pairs (JSONL)")
    gp.add_argument("--out", required=True)
    gp.add_argument("--ratio", default="7:3", help="majority:minority users, e.g. 7:3 or 8:2")
    gp.add_argument("--users", type=int, default=20)
    gp.add_argument("--pairs", type=int, default=60, help="comparisons per user")
    gp.add_argument("--scale", type=float, default=5.0, help="Bradley-Terry scale of the true utilities")
    gp.add_argument("--seed", type=int, default=0)
    ep = sub.add_parser("evaluate", help="both groups' true utility under each run's final policy")
    ep.add_argument("runs", nargs="+")
    ep.add_argument("--init", required=True, help="the warm start the runs started from (init=)")
    ep.add_argument("--prompts", type=int, default=128)
    ep.add_argument("--samples", type=int, default=8)
    ep.add_argument("--out", default=None, help="write the result as JSON here")
    a = ap.parse_args(argv)
    if a.cmd == "generate":
        res = generate(a.out, a.ratio, a.users, a.pairs, a.scale, a.seed)
    else:
        res = evaluate(a.runs, a.init, a.prompts, a.samples)
        if a.out:
            Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    json.dump(res, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
