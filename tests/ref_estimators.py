"""Plain-Python reference implementations of the estimators, written for clarity, not speed.

Each takes Python lists (rewards, labels, mask rows as lists of 0/1, ...) and returns a list of
per-token lists (0.0 on masked tokens). Shared conventions, stated once:

* a group whose rewards are all equal gets advantage 0 (before any whitening);
* a group of one follows ``singleton``: "zero" -> 0, "raw" -> the value the verl code gives;
* whitening: (x - mean) / sqrt(var + 1e-8) over all trained tokens, unbiased variance.
"""

from __future__ import annotations

import math
from collections import defaultdict


def groups_of(labels):
    out = defaultdict(list)
    for i, g in enumerate(labels):
        out[g].append(i)
    return out


def mean(xs):
    return sum(xs) / len(xs)


def std(xs, ddof=1):
    if len(xs) <= ddof:
        return 0.0
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - ddof))


def tile(per_row, mask):
    return [[per_row[i] if m else 0.0 for m in row] for i, row in enumerate(mask)]


def whiten(adv, mask, eps=1e-8):
    vals = [a for arow, mrow in zip(adv, mask) for a, m in zip(arow, mrow) if m]
    n = len(vals)
    mu = sum(vals) / max(n, 1)
    var = sum((v - mu) ** 2 for v in vals) / max(n - 1, 1)
    return [[(a - mu) / math.sqrt(var + eps) if m else 0.0 for a, m in zip(arow, mrow)] for arow, mrow in zip(adv, mask)]


def _per_group(rewards, labels, fn, singleton, raw=None):
    """Apply fn(i, members) per row, with the constant-group and singleton rules."""
    raw = rewards if raw is None else raw
    out = [0.0] * len(rewards)
    for members in groups_of(labels).values():
        rs = [rewards[j] for j in members]
        for i in members:
            if len(members) == 1:
                out[i] = raw[i] if singleton == "raw" else 0.0
            elif max(rs) == min(rs):
                out[i] = 0.0
            else:
                out[i] = fn(i, members)
    return out


def grpo(rewards, labels, mask, eps=1e-6, singleton="zero"):
    def f(i, members):
        rs = [rewards[j] for j in members]
        return (rewards[i] - mean(rs)) / (std(rs) + eps)

    return tile(_per_group(rewards, labels, f, singleton), mask)


def rloo(rewards, labels, mask, singleton="zero"):
    def f(i, members):
        others = [rewards[j] for j in members if j != i]
        return rewards[i] - mean(others)

    return tile(_per_group(rewards, labels, f, singleton), mask)


def opo(rewards, labels, mask, singleton="zero"):
    lengths = [sum(row) for row in mask]

    def f(i, members):
        total = sum(lengths[j] for j in members)
        base = sum(lengths[j] * rewards[j] for j in members) / total if total else 0.0
        return rewards[i] - base

    return tile(_per_group(rewards, labels, f, singleton), mask)


def gpg(rewards, labels, mask, singleton="zero"):
    alpha = len(rewards) / max(1, sum(1 for r in rewards if r != 0))

    def f(i, members):
        return alpha * (rewards[i] - mean([rewards[j] for j in members]))

    raw = [alpha * r for r in rewards]
    return tile(_per_group(rewards, labels, f, singleton, raw=raw), mask)


def grpo_passk(rewards, labels, mask, scale=True, eps=1e-6):
    out = [0.0] * len(rewards)
    for members in groups_of(labels).values():
        if len(members) < 2:
            continue
        ranked = sorted(members, key=lambda j: -rewards[j])
        best, second = ranked[0], ranked[1]
        margin = rewards[best] - rewards[second]
        if margin > 0:
            out[best] = margin / (std([rewards[j] for j in members]) + eps) if scale else margin
    return tile(out, mask)


def reinforce_pp_baseline(rewards, labels, mask, singleton="zero", do_whiten=True):
    def f(i, members):
        return rewards[i] - mean([rewards[j] for j in members])

    adv = tile(_per_group(rewards, labels, f, singleton), mask)
    return whiten(adv, mask) if do_whiten else adv


def token_rewards_of(rewards, mask):
    """The scalar reward on each row's last trained token."""
    out = []
    for r, row in zip(rewards, mask):
        tr = [0.0] * len(row)
        last = max((t for t, m in enumerate(row) if m), default=None)
        if last is not None:
            tr[last] = r
        out.append(tr)
    return out


def remax(token_rewards, baselines, mask):
    out = []
    for tr, b, row in zip(token_rewards, baselines, mask):
        res = [0.0] * len(row)
        for t in range(len(row)):
            if row[t]:
                res[t] = sum(tr[s] for s in range(t, len(row)) if row[s]) - b
        out.append(res)
    return out


def gdpo(components, labels, mask, weights, mode="normalize_then_sum", eps=1e-6, do_whiten=None, singleton="zero"):
    K = len(components[0])
    if mode == "normalize_then_sum":
        total = [0.0] * len(components)
        for k in range(K):
            col = [c[k] for c in components]
            a = [row[0] for row in grpo(col, labels, [[1]] * len(col), eps=eps, singleton=singleton)]
            total = [t + weights[k] * x for t, x in zip(total, a)]
    else:
        summed = [sum(w * x for w, x in zip(weights, c)) for c in components]
        total = [row[0] for row in grpo(summed, labels, [[1]] * len(summed), eps=eps, singleton=singleton)]
    adv = tile(total, mask)
    if do_whiten is None:
        do_whiten = mode == "normalize_then_sum"
    return whiten(adv, mask) if do_whiten else adv


def gae(token_rewards, values, mask, gamma, lam, do_whiten=True):
    """Backward loop per row; masked positions carry the next value and running advantage."""
    adv, ret = [], []
    for tr, vs, row in zip(token_rewards, values, mask):
        a = [0.0] * len(row)
        next_v, running = 0.0, 0.0
        for t in reversed(range(len(row))):
            if not row[t]:
                continue
            delta = tr[t] + gamma * next_v - vs[t]
            running = delta + gamma * lam * running
            next_v = vs[t]
            a[t] = running
        adv.append(a)
        ret.append([a[t] + vs[t] if row[t] else 0.0 for t in range(len(row))])
    return (whiten(adv, mask) if do_whiten else adv), ret


def reinforce_pp(token_rewards, mask, gamma, do_whiten=True):
    out = []
    for tr, row in zip(token_rewards, mask):
        g, running = [0.0] * len(row), 0.0
        for t in reversed(range(len(row))):
            if row[t]:
                running = tr[t] + gamma * running
                g[t] = running
        out.append(g)
    return whiten(out, mask) if do_whiten else out


def optimal_token_baseline(token_rewards, labels, mask, old_logprobs, sum_pi_sq, handle_zero_tail=True, eps=1e-8):
    B, T = len(mask), len(mask[0])
    G = [[sum(token_rewards[i][s] for s in range(t, T) if mask[i][s]) if mask[i][t] else 0.0 for t in range(T)] for i in range(B)]
    W = []
    for i in range(B):
        acc, row = 0.0, []
        for t in range(T):
            if mask[i][t]:
                acc += 1 - 2 * math.exp(old_logprobs[i][t]) + sum_pi_sq[i][t]
            row.append(acc if mask[i][t] else 0.0)
        W.append(row)
    out = [[G[i][t] for t in range(T)] for i in range(B)]
    for members in groups_of(labels).values():
        if len(members) == 1:
            continue
        lengths = sorted(sum(mask[j]) for j in members)
        for t in range(T):
            num = sum(G[j][t] * W[j][t] for j in members)
            den = sum(W[j][t] for j in members) + eps
            for i in members:
                base = num / den
                unique_longest = sum(mask[i]) == lengths[-1] and lengths[-1] > lengths[-2]
                if handle_zero_tail and unique_longest and t >= lengths[-2]:
                    base = 0.0
                out[i][t] = (G[i][t] - base) if mask[i][t] else 0.0
    return out
