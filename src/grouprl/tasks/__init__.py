"""TEMPORARY SHIM (not committed): replaced by branch models-tasks."""
from __future__ import annotations
import math, random, threading
from dataclasses import dataclass, field
import torch

@dataclass
class Example:
    prompt: str
    answer: str
    data_group: str = ""
    meta: dict = field(default_factory=dict)

class Task:
    def __init__(self, name, train_pool, eval_examples):
        self.name, self.train_pool, self.eval_examples = name, train_pool, eval_examples
        self.data_groups = sorted({e.data_group for e in train_pool})
    def score(self, example, completion):
        return float(completion.strip() == example.answer)
    def reference(self, example):
        return example.answer

def _add(rng, d):
    a = rng.randint(0, 10**d - 1); b = rng.randint(0, 10**d - 1)
    return Example(f"{a}+{b}=", str(a + b), f"add{d}")

def get_task(name, seed=0):
    rng = random.Random(seed)
    digits = {"add1": [1], "add2": [2], "mixed": [1, 2]}[name]
    ex = [_add(rng, digits[i % len(digits)]) for i in range(3000)]
    seen = set(); pool = []
    for e in ex:
        if e.prompt not in seen: seen.add(e.prompt); pool.append(e)
    ev = pool[:200]; tr = pool[200:]
    return Task(name, tr, ev)

class RewardGuard:
    def __init__(self, score_fn, timeout_s=1.0, failure_reward=0.0, trusted=False):
        self.score_fn, self.timeout_s, self.failure_reward = score_fn, timeout_s, failure_reward
        self.failures = 0
    def _one(self, ex, c):
        box = {}
        def run():
            try: box["v"] = float(self.score_fn(ex, c))
            except Exception as e: box["e"] = e
        t = threading.Thread(target=run, daemon=True); t.start(); t.join(self.timeout_s)
        v = box.get("v")
        if v is None or not math.isfinite(v): return self.failure_reward, True
        return v, False
    def score_batch(self, examples, completions):
        out = [self._one(e, c) for e, c in zip(examples, completions)]
        r = torch.tensor([o[0] for o in out], dtype=torch.float32); f = torch.tensor([o[1] for o in out])
        self.failures += int(f.sum()); return r, f
