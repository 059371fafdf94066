"""``grouprl report RUN`` on a training run: curves, the evaluation table, the summary, the config and
the versions, as ``RUN/report/report.md`` and ``report.html`` (an arena run has its own report).

Each evaluation row gets its binomial standard error sqrt(p(1-p)/n) on its own ``n`` prompts. The
warm-start and final rows score the same prompts, so the standard error of their difference is
smaller than the two combined; a paired interval needs per-prompt scores (the arena stores them).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..reporting import render_html, render_markdown
from .config import SECTION_OF, read_config_file
from .logging import environment_versions, read_jsonl
from .plot import plot_run, warm_start_note

__all__ = ["write_run_report"]


def _f(x: Any, digits: int = 3) -> str:
    if isinstance(x, bool) or x is None:
        return "-" if x is None else str(x)
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _eval_table(evals: list[dict[str, Any]]) -> tuple:
    keys = sorted({k for e in evals for k in e if k.startswith("pass@")})
    headers = ["step", "n", "greedy acc", "± SE", "sampled acc", *keys]
    rows = []
    for e in evals:
        n, p = e.get("n"), e.get("acc")
        se = math.sqrt(p * (1 - p) / n) if n and p is not None else None
        rows.append([str(e["step"]), _f(n), _f(p), _f(se), _f(e.get("sampled_acc")), *[_f(e.get(k)) for k in keys]])
    return ("table", headers, rows)


def _warm_start_text(summary: dict[str, Any], config: dict[str, Any]) -> str:
    ws = summary.get("warm_start") or {}
    src = ws.get("source")
    if src == "shipped":
        return f"Warm start: the checkpoint `{ws.get('name')}` shipped with grouprl (SHA-256 `{ws.get('sha256')}`)."
    if src == "init":
        return f"Warm start: `init={ws.get('path')}`."
    if src == "sft" or summary.get("sft_steps_run"):
        secs = summary.get("sft_seconds")
        took = f" in {secs:.0f} s" if isinstance(secs, (int, float)) else ""
        return (f"Warm start: SFT on the task's reference answers, {summary.get('sft_steps_run')} steps{took}, "
                f"validation accuracy {_f(summary.get('sft_val_acc'))} (target {config.get('sft_target_acc')}).")
    return "Warm start: none recorded (the run has not finished, or it started from the bare model)."


def write_run_report(run: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write the report of one training run; returns the paths (``markdown``, ``html``, ``figures``)."""
    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(f"{run}: no config.yaml; is it a grouprl training run directory?")
    config = read_config_file(run / "config.yaml")  # flat, whether written nested by section or flat
    evals = read_jsonl(run / "eval.jsonl")
    summary_path = run / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    out = Path(out_dir) if out_dir is not None else run / "report"
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)

    blocks: list[tuple] = [("h1", f"Training run {run.name}")]
    if not summary:
        blocks.append(("p", "The run has not finished (no summary.json): the tables show what it wrote so far."))
    blocks.append(("p", _warm_start_text(summary, config)))
    note = warm_start_note(run)
    if note:
        blocks.append(("p", f"Warning: {note}; RL from such a warm start rarely moves accuracy."))
    blocks.append(("h2", "Held-out evaluation"))
    if evals:
        blocks.append(_eval_table(evals))
        first, last = evals[0], evals[-1]
        if len(evals) > 1 and first.get("acc") is not None and last.get("acc") is not None:
            blocks.append(("p", f"Greedy accuracy {first['acc']:.3f} (step {first['step']}) -> {last['acc']:.3f} "
                                f"(step {last['step']}) on the same {last.get('n', '?')} held-out prompts."))
    else:
        blocks.append(("p", "No evaluation yet."))
    try:
        plot_run(run, figs / "curves.png")
        blocks.append(("img", "figures/curves.png", "learning curves"))
    except FileNotFoundError:
        pass
    if summary:
        blocks.append(("h2", "Summary"))
        skip = {"final_eval", "versions", "warm_start"}
        blocks.append(("table", ["field", "value"],
                       [[k, _f(v)] for k, v in summary.items() if k not in skip]))
    blocks.append(("h2", "Config"))
    blocks.append(("table", ["section", "key", "value"],
                   [[SECTION_OF.get(k, "-"), k, f"`{v}`"] for k, v in config.items()]))
    versions = summary.get("versions")
    blocks.append(("h2", "Versions" + ("" if versions else " (of this report's environment: the run recorded none)")))
    blocks.append(("table", ["package", "version"], [[k, _f(v)] for k, v in (versions or environment_versions()).items()]))
    md, page = out / "report.md", out / "report.html"
    md.write_text(render_markdown(blocks))
    page.write_text(render_html(blocks, f"grouprl run {run.name}"))
    return {"markdown": md, "html": page, "figures": figs}
