"""GREAM's Residual-Sensitive Verifiable Reward, RSVR, arXiv:2510.20815.

Items are hierarchical codes from residual quantisation, written as index tokens such as
``<|a_12|><|b_3|><|c_40|><|d_7|>`` (coarsest level first). RSVR gives graded credit:

    format check fails                → 0
    the whole code equals the gold    → 1
    else the first m ≥ 1 levels match → score_level[min(m − 1, 3)], score_level = [0.5, 0.707, 0.866, 0.95]
    the first level mismatches        → 0   (even when later levels match)

The score table is the reference code's (the paper's closed form is not available; the values are
about √(m/4) for m = 1..3, capped at 0.95 below an exact hit: a *proposed reading* of the table).
``rsvr_scores`` is the vectorised form over integer code tensors; ``rsvr_reward`` scores one text.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

__all__ = ["SCORE_LEVELS", "parse_item_code", "rsvr_reward", "rsvr_scores", "code_tensor"]

SCORE_LEVELS = (0.5, 0.707, 0.866, 0.95)

_TOKEN = r"<\|\w_\d+\|>"
_DIRECT = re.compile(rf"((?:{_TOKEN}){{4,5}})", re.DOTALL)
_ANSWER = re.compile(rf"<answer>((?:{_TOKEN})+)</answer>", re.DOTALL)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_LEVEL = re.compile(r"<\|(\w_\d+)\|>")
MODES = ("reason", "direct")


def parse_item_code(text: str, *, mode: str = "reason") -> list[str] | None:
    """The index levels of the answer in ``text`` (e.g. ``["a_1", "b_2", "c_3", "d_4"]``), or
    ``None`` when the format check fails.

    ``mode="reason"``: the text must contain ``<think>…</think>`` and ``<answer>`` holding only
    index tokens. ``"direct"``: 4–5 consecutive index tokens somewhere in the text (as the
    reference code, a search, not a full match).
    """
    if mode not in MODES:
        raise ValueError(f"rsvr: mode={mode!r}; choose one of {MODES}")
    if mode == "reason":
        m = _ANSWER.search(text)
        if m is None or _THINK.search(text) is None:
            return None
    else:
        m = _DIRECT.search(text)
        if m is None:
            return None
    return _LEVEL.findall(m.group(1))


def rsvr_reward(
    text: str, gold: str | list[str], *, mode: str = "reason", score_level=SCORE_LEVELS
) -> tuple[float, bool]:
    """(RSVR score, exact match) of one generated text against the gold code (a token string
    such as ``"<|a_1|><|b_2|><|c_3|><|d_4|>"`` or a list of levels)."""
    pred = parse_item_code(text, mode=mode)
    if pred is None:
        return 0.0, False
    gold_levels = _LEVEL.findall(gold) if isinstance(gold, str) else list(gold)
    if pred == gold_levels:
        return 1.0, True
    m = 0
    for p, g in zip(pred, gold_levels):  # at most 5 levels
        if p != g:
            break
        m += 1
    return (float(score_level[min(m - 1, len(score_level) - 1)]) if m else 0.0), False


def code_tensor(codes: list[list[int]], *, pad: int = -1) -> Tensor:
    """Right-pad integer codes of possibly different lengths into an int64 (B, H) tensor."""
    H = max((len(c) for c in codes), default=0)
    out = torch.full((len(codes), H), pad, dtype=torch.int64)
    for i, c in enumerate(codes):
        out[i, : len(c)] = torch.as_tensor(c, dtype=torch.int64)
    return out


def rsvr_scores(
    pred: Tensor, gold: Tensor, format_ok: Tensor | None = None, *, score_level=SCORE_LEVELS
) -> tuple[Tensor, Tensor]:
    """Vectorised RSVR: (scores float32 (B,), exact bool (B,)).

    ``pred``, ``gold``: int64 (B, H) level ids, right-padded with a negative value (codes of
    different lengths are never an exact match unless their padding agrees); ``format_ok``: bool
    (B,), rows that failed the format check score 0.
    """
    if pred.shape != gold.shape or pred.dim() != 2:
        raise ValueError(f"rsvr_scores: pred and gold must both be (B, H), got {tuple(pred.shape)} and {tuple(gold.shape)}.")
    eq = pred == gold
    exact = eq.all(dim=1)
    m = torch.cumprod(eq.to(torch.int64), dim=1).sum(dim=1)  # matched prefix length
    table = torch.tensor(score_level, dtype=torch.float32, device=pred.device)
    idx = (m - 1).clamp(0, len(score_level) - 1)
    score = torch.where(m > 0, table[idx], torch.zeros_like(table[idx]))
    score = torch.where(exact, torch.ones_like(score), score)
    if format_ok is not None:
        ok = format_ok.to(torch.bool)
        score = score * ok
        exact = exact & ok
    return score, exact
