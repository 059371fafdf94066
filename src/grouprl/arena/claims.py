"""The claims table (docs/evidence.md): each seed paper's headline claim against what the arena measured.

``CLAIMS`` is data: per seed method, the paper's headline claim (paraphrased from its abstract or
results section; arXiv id), the direction it claims against a GRPO-style baseline, and the arena
cells that test it (``Measure``: preset, method name in that preset, baseline). A method that cannot
be run meaningfully here has no measure and a ``why``. ``claims_blocks(paths)`` turns stored arena
runs (run directories or database files, e.g. the slim copies in ``benchmarks/results/arena/``)
into the table; a measure whose preset has no stored run says "not run" with the command that runs
it. Every number comes from ``grouprl.arena.report.evidence`` on the store (the same statistics as
``grouprl report RUN --json``), never from this module.

Verdict of a measured row (``verdict``), from the 95% hierarchical-bootstrap CI of the difference
method − baseline (paired by seed and prompt at the final evaluation):

* **consistent**: the CI excludes 0 on the side the paper claims and the seed-level exact
  sign-flip test, Holm-adjusted over the run's comparisons, has p < 0.05;
* **contradicted**: both, on the other side;
* **not detected at this scale**: otherwise; the row gives the MDE (the smallest true difference
  the design detects with 80% power), so "not detected" reads as "smaller than about the MDE here,
  if any". A CI that excludes 0 while the adjusted p ≥ 0.05 says so: the bootstrap over prompts
  within 10 seeds sees an effect that the multiplicity-corrected test over seeds does not confirm,
  and a claims table that tests 9 methods at once must not count it (our choice: both must agree).

    grouprl claims benchmarks/results/arena/*.db --out docs/evidence.md
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..reporting import render_markdown
from .report import ALPHA, ReportData, evidence, group_fairness, load, store_path

__all__ = ["CLAIMS", "Claim", "Measure", "claims_blocks", "verdict", "write_claims"]


@dataclass(frozen=True)
class Measure:
    """Arena cells that test a claim: ``method`` against ``baseline`` in a run of ``preset`` (a
    stored run matches by its spec name), on ``task`` (None: the first task where both ran)."""

    preset: str
    method: str
    baseline: str = "grpo"  # the table's column is "diff vs GRPO"; another baseline is named in the cell
    task: str | None = None


@dataclass(frozen=True)
class Claim:
    """One seed method's row (rows: one per measure). ``direction`` +1: the paper claims a higher
    score than its baselines; -1: a lower one. ``note``: what the setting here leaves out."""

    name: str
    arxiv: str
    claim: str
    direction: int
    measures: tuple[Measure, ...] = ()
    note: str = ""
    why: str = ""  # why there is no measure (the method cannot run meaningfully here)


_EV, _CREDIT, _AGENTS, _SELFPLAY = "evidence", "token_credit", "agents", "selfplay"
_GRPO = Measure.__dataclass_fields__["baseline"].default  # the baseline of the table's diff column

#: The seed methods' headline claims (paraphrased from the paper's abstract or results section).
CLAIMS: tuple[Claim, ...] = (
    Claim("NGRPO", "2509.18851",
          "Calibrating advantages with a virtual maximum-reward sample and clipping asymmetrically beats "
          "PPO, GRPO and DAPO on math benchmarks (Pass@1 and Pass@k, Qwen2.5-Math-7B).",
          +1, (Measure(_EV, "ngrpo"),)),
    Claim("CANON", "2509.23962",
          "Conditioning the advantage on an entropy (or length) split of the group beats prior methods on "
          "math and logic reasoning across three LLMs.",
          +1, (Measure(_EV, "canon"),)),
    Claim("COPO", "2508.04138",
          "Consistency-aware global rewards and a blended local/global loss give substantial gains on math "
          "reasoning benchmarks.",
          +1, (Measure(_EV, "copo"),)),
    Claim("Confucius3 (TER/PSHW/RSR)", "2506.18330",
          "Entropy regularisation, hardness-weighted advantages and recovering surplus samples train a 14B "
          "K-12 math model to state-of-the-art scores; recovery alone adds up to 3 points at equal data.",
          +1, (Measure(_EV, "confucius3"),),
          note="the three parts in one stage (the report runs them in stages)"),
    Claim("SRPO (RSVR/BGAE)", "2510.20815",
          "Graded rewards over item indices plus a pass@K advantage bonus give consistent gains over "
          "generative and LLM recommenders on three datasets.",
          +1, (Measure(_EV, "srpo"),),
          note="BGAE and dynamic sampling only: RSVR is a reward over hierarchical item indices, which "
               "arithmetic has not"),
    Claim("MaxMin", "2402.08925",
          "Optimising the worst group's reward raises win rates over single-reward RLHF on average and "
          "most for the minority group.",
          +1, why="the claim is about the worst-off group's reward; the arena scores held-out task accuracy, which "
              "is only the majority group's reward here, so a difference in it (the `maxmin` preset measures one) "
              "is the price MaxMin pays, not a test of the claim. The worst group's reward is measured by the "
              "MaxMin pipeline in docs/outcome-methods.md (\"MaxMin-RLHF end to end\"), outside the arena"),
    Claim("DAPO", "2503.14476",
          "Clip-higher, dynamic sampling, token-level loss and overlong shaping reach 50 on AIME 2024 from "
          "Qwen2.5-32B, where naive GRPO reaches about 30.",
          +1, (Measure(_EV, "dapo"),)),
    Claim("VADE", "2511.18902",
          "Sampling prompts by an online estimate of their reward variance improves accuracy and sample "
          "efficiency over dynamic-sampling baselines while cutting rollout cost.",
          +1, (Measure(_EV, "vade"),)),
    Claim("HAPO", "2509.16591",
          "Entropy-aware temperature, token-level group advantages and adaptive clipping raise the "
          "6-benchmark math average over DAPO on three base models.",
          +1, (Measure(_CREDIT, "hapo"),)),
    Claim("SPO", "2505.23564",
          "Segment-level credit from Monte Carlo values beats PPO and GRPO by several points (GSM8K with "
          "the chain variant, MATH500 with the tree variant).",
          +1, (Measure(_CREDIT, "spo_chain"), Measure(_CREDIT, "spo_tree"))),
    Claim("T-PPO/EGAE", "2506.15050",
          "Truncated rollouts with an extended generalised advantage estimate train up to 2.5x more "
          "efficiently and outperform their competitors on AIME 2024 (Qwen2.5-32B).",
          +1, (Measure(_CREDIT, "tppo"), Measure(_CREDIT, "egae")),
          note="the accuracy part of the claim; efficiency is in the arena report's time per step. T-PPO's "
               "accuracy collapses in this setting (reward 0 within about 30 steps); whether the setting "
               "(3-token windows, max_total_tokens 6) or this implementation's reading causes it is not known"),
    Claim("GiGPO", "2505.10978",
          "Step-level advantages over shared anchor states add more than 12 points over GRPO on ALFWorld "
          "and 9 on WebShop at the same memory and rollouts.",
          +1, (Measure(_AGENTS, "gigpo"),)),
    Claim("SALT", "2510.20022",
          "Step-level advantages from a trajectory graph consistently improve a group-relative baseline on "
          "long-horizon agent tasks.",
          +1, (Measure(_AGENTS, "salt"),)),
    Claim("MARS", "2510.15414",
          "Self-play RL in strategic games with turn-level advantages lifts held-out game scores (up to "
          "+28.7%) and reasoning inside multi-agent systems.",
          +1, (Measure(_SELFPLAY, "mars"),)),
    Claim("ReAd", "2405.14314",
          "Reinforced advantage feedback for sequential multi-agent plans reaches higher success rates with "
          "far fewer environment steps and LLM queries.",
          +1, why="ReAd's advantage reads a learned critic's Q(s, a) and V(s) per agent step (the batch fields "
              "q_values and state_values); no trainer rollout here trains such a critic, so the estimator is refused "
              "at config load in both modes; its formula is tested on the paper's worked example (tests/test_read.py)"),
    Claim("AdvEvo", "2510.01586",
          "Adversarial co-evolution keeps attack success below 20% (baselines up to 38%) and improves task "
          "accuracy by up to 3.7 points.",
          +1, (Measure(_SELFPLAY, "advevo"),),
          note="the public baseline's advantage only (its normalisation is a proposed reading) on tic-tac-toe "
               "self-play; no attackers, so the safety half of the claim is not tested"),
)


def verdict(ci_low: float | None, ci_high: float | None, direction: int, *, p_adj: float | None = None,
            mde: float | None = None) -> str:
    """The row's verdict from the CI of method − baseline and the claimed ``direction`` (see the
    module docstring); "not measured" when the CI is undefined."""
    if direction not in (1, -1):
        raise ValueError(f"direction {direction!r} must be +1 (claims higher) or -1 (claims lower)")
    if ci_low is None or ci_high is None or not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return "not measured"
    mde_txt = f"MDE {mde:.3f}" if mde is not None and math.isfinite(mde) else "MDE undefined"
    if ci_low > 0 or ci_high < 0:
        side = 1 if ci_low > 0 else -1
        if p_adj is not None and math.isfinite(p_adj) and p_adj >= ALPHA:
            return (f"**not detected at this scale** (the CI excludes 0 but the seed-level test does not: "
                    f"Holm p = {p_adj:.3f}; {mde_txt})")
        return "**consistent**" if side == direction else "**contradicted**"
    return f"**not detected at this scale** ({mde_txt})"


def _fmt(x: float | None, digits: int = 3, sign: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


class _Stores:
    """The stored runs by spec name (the preset they ran), each opened once, read-only."""

    def __init__(self, paths: list[Path]) -> None:
        self.runs: dict[str, tuple[Path, ReportData]] = {}
        for p in paths:
            data = load(p)
            name = data.spec["name"]
            if name in self.runs:
                data.store.close()
                raise ValueError(f"two stored runs named {name!r}: {self.runs[name][0]} and {p}; give one of them")
            self.runs[name] = (store_path(p), data)
        self.cache: dict[tuple[str, str, str], tuple[list[dict[str, Any]], str | None]] = {}

    def close(self) -> None:
        for _, data in self.runs.values():
            data.store.close()

    def comparisons(self, preset: str, task: str, baseline: str) -> tuple[list[dict[str, Any]], str | None]:
        """The report's comparison rows of one stored run and task against ``baseline`` (Holm over
        that run's comparisons on the task, as in its report)."""
        key = (preset, task, baseline)
        if key not in self.cache:
            data = self.runs[preset][1]
            view = ReportData(spec={**data.spec, "baseline": baseline}, meta=data.meta, cells=data.cells,
                              store=data.store)
            _, comps, note = evidence(view, task, data.spec.get("metric", "acc"))
            self.cache[key] = (comps, note)
        return self.cache[key]


def _setting(data: ReportData, preset: str, task: str) -> str:
    """Task, model, RL steps, warm start and preset of a stored run's cells on ``task``."""
    from ..train.config import build_config
    from ..train.task_source import shipped_warm_start

    cfg = next(c["config"] for c in data.done if c["task"] == task)
    if cfg.get("init"):
        warm = "a given checkpoint"
    elif shipped_warm_start(build_config(dict(cfg))) is not None:
        warm = "the shipped warm start"
    elif int(cfg.get("sft_steps", 0)) > 0:
        warm = f"a {cfg['sft_steps']}-step SFT warm start per seed"
    else:
        warm = "the initial model"
    where = f"env `{cfg['env']}`" if cfg.get("env") else f"`{task}`"
    return f"{where}, {cfg['model']} model, {cfg['steps']} RL steps from {warm} (`{preset}`)"


def _not_run(m: Measure, stores: _Stores) -> str:
    cmd = f"`grouprl arena --preset {m.preset}`"
    if m.preset not in stores.runs:
        return f"not run: {m.preset} ({cmd})"
    data = stores.runs[m.preset][1]
    ran = ", ".join(data.methods()) or "none done"
    if m.method not in data.methods():
        return f"not run: `{m.method}` has no finished cell in the stored `{m.preset}` run (methods: {ran})"
    return (f"not run: no task of the stored `{m.preset}` run has finished cells of both `{m.method}` and "
            f"`{m.baseline}`")


def _row(c: Claim, m: Measure | None, stores: _Stores) -> list[str]:
    label = c.name if m is None or len(c.measures) == 1 else f"{c.name}: `{m.method}`"
    head = [label, f"{c.claim} (arXiv {c.arxiv})"]
    if m is None:
        return head + [f"cannot be run meaningfully here: {c.why}"] + ["–"] * 6
    run = stores.runs.get(m.preset)
    tasks = []
    if run is not None:
        data = run[1]
        both = [t for t in data.tasks() if {m.method, m.baseline} <= {x["method"] for x in data.done if x["task"] == t}]
        tasks = [t for t in both if m.task is None or t == m.task]
    if not tasks:
        return head + [_not_run(m, stores)] + ["–"] * 6
    data, task = run[1], tasks[0]
    comps, note = stores.comparisons(m.preset, task, m.baseline)
    comp = next((x for x in comps if x["method"] == m.method), None)
    if comp is None:
        why = f"not run: `{m.method}` and `{m.baseline}` finished no seed in common in the stored `{m.preset}` run"
        return [*head, why] + ["–"] * 6
    setting = (_setting(data, m.preset, task) + (f"; {c.note}" if c.note else "")
               + (f"; compared by seed only: {note}" if note and comp["n_items"] is None else ""))
    design = f"{comp['n_seeds']} × {comp['n_items'] if comp['n_items'] is not None else '–'}"
    groups, fair = group_fairness(data, data.spec.get("metric", "acc"), task, [m.method, m.baseline])
    if not groups:
        fairness = "one group"
    elif m.method in fair and m.baseline in fair:
        (gm, sm), sb = fair[m.method], fair[m.baseline][1]
        fairness = (f"worst {groups[gm.index(min(gm))]} {_fmt(sm['worst'])} ({m.baseline} {_fmt(sb['worst'])}); "
                    f"Gini {_fmt(sm['gini'])} ({_fmt(sb['gini'])})")
    else:
        fairness = "–"
    diff = (f"{_fmt(comp['diff'], sign=True)} [{_fmt(comp['ci_low'], sign=True)}, {_fmt(comp['ci_high'], sign=True)}]"
            + ("" if m.baseline == _GRPO else f" vs `{m.baseline}`"))
    return head + [setting, diff, design, _fmt(comp["mde"]), _fmt(comp["p_adj"]),
                   verdict(comp["ci_low"], comp["ci_high"], c.direction, p_adj=comp["p_adj"], mde=comp["mde"]),
                   fairness]


HEADERS = ["method", "paper's headline claim", "setting here", "diff vs GRPO [95% CI]", "seeds × prompts", "MDE",
           "p (Holm)", "verdict", "fairness (worst group, Gini)"]


def claims_blocks(paths: list[str | Path], claims: tuple[Claim, ...] = CLAIMS,
                  command: str | None = None) -> list[tuple]:
    """The claims document as report blocks, from the stored runs at ``paths``."""
    stores = _Stores([Path(p) for p in paths])
    try:
        rows = [_row(c, m, stores) for c in claims for m in (c.measures or (None,))]
        runs = []
        for name, (db, data) in stores.runs.items():
            counts = {s: sum(1 for x in data.cells if x["status"] == s) for s in ("done", "failed")}
            git = (data.meta.get("versions") or {}).get("git", "unknown")
            cells = (f"{counts['done']} done, {counts['failed']} failed, "
                     f"{len(data.cells) - sum(counts.values())} not finished of {len(data.cells)}")
            runs.append([f"`{name}`", f"`{db}`", cells, f"`{git}`"])
    finally:
        stores.close()
    cmd = command or "grouprl claims " + " ".join(str(p) for p in paths) + " --out docs/evidence.md"
    return [
        ("h1", "Evidence: the seed papers' claims, measured here"),
        ("p", (f"Generated from stored arena runs by `{cmd}`; do not edit by hand (every number comes from the "
               "stores). One row per seed method (two where the method has two variants); the claim is "
               "paraphrased from the paper (arXiv id given).")),
        ("p", ("diff: mean over (seed, prompt) of the method's minus GRPO's per-prompt score at the final "
              "evaluation, both from the same warm start per seed, with its 95% hierarchical-bootstrap CI "
              "(seeds, then prompts within seeds); seeds × prompts: the paired design (– : compared by seed "
              "only); MDE: the smallest true difference this design detects with 80% power (paired t, "
              f"α = {ALPHA}); p (Holm): two-sided exact sign-flip test on the per-seed differences, Holm-adjusted "
              "over the comparisons of its run and task. Verdict: **consistent** = the CI excludes 0 in the "
              "claimed direction and the Holm-adjusted p < 0.05, **contradicted** = both in the other direction, "
              "**not detected at this scale** = otherwise (an effect, if any, below about the MDE). The settings here are "
              "miniature (a 1M-parameter model, arithmetic or grid worlds, CPU budgets); a verdict speaks for "
              "this setting, not for the paper's.")),
        ("table", HEADERS, rows),
        ("h2", "Stored runs"),
        ("table", ["run (preset)", "store", "cells", "git commit of the sweep"], runs),
    ]


def write_claims(paths: list[str | Path], out: str | Path, command: str | None = None) -> Path:
    """Write the claims table (Markdown) of the stored runs at ``paths`` to ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_markdown(claims_blocks(paths, command=command)))
    return out
