"""Per-step and per-evaluation reports of the trainer: who is left behind, how well the sampler
predicts success, and whether the policy ranks a group's responses by reward.

* ``group_report(eval_row, examples)`` — per ``data_group`` accuracy of an evaluation and, across
  groups, the worst group, the 20th percentile (min-max normalised) and the Gini coefficient
  (``grouprl.metrics.fairness``). Written into eval.jsonl (``groups``, ``group/worst``,
  ``group/p20``, ``group/gini``) and printed as a table.
* ``sampler_calibration(sampler)`` — for samplers that predict per-prompt success before the
  rollout (``last_predictions``: VADE's posterior means), the Brier score, ECE and Balance score
  of those predictions against the observed group success (``grouprl.metrics.calibration``).
* ``ranking_report(rewards, logprobs, mask, group)`` — within-group ranking accuracy: the fraction
  of response pairs of one group with different rewards whose sequence log-probabilities under the
  rollout policy are ordered the same way (``grouprl.metrics.ranking``).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from ..metrics.calibration import calibration_report
from ..metrics.fairness import fairness_summary
from ..metrics.ranking import ranking_accuracy, sequence_logprob

__all__ = ["group_report", "format_group_table", "sampler_calibration", "ranking_report"]


def group_report(eval_row: dict[str, Any], examples: Sequence[Any]) -> dict[str, Any]:
    """The per-data-group table and fairness summary of one evaluation row of ``evaluate``.

    Uses ``acc/<group>`` when the evaluation has several groups, else ``acc`` for the only one.
    Returns ``{"groups": [{"group", "acc", "n"}, ...], "group/worst", "group/p20", "group/gini"}``.
    """
    counts: dict[str, int] = {}
    for e in examples:
        counts[str(e.data_group)] = counts.get(str(e.data_group), 0) + 1
    labels = sorted(counts)
    if len(labels) == 1:
        accs = [float(eval_row["acc"])]
    else:
        missing = [g for g in labels if f"acc/{g}" not in eval_row]
        if missing:
            raise ValueError(f"group_report: the evaluation row has no acc/{missing[0]}; pass the row of evaluate().")
        accs = [float(eval_row[f"acc/{g}"]) for g in labels]
    s = fairness_summary(torch.tensor(accs, dtype=torch.float64))
    return {
        "groups": [{"group": g, "acc": a, "n": counts[g]} for g, a in zip(labels, accs)],
        "group/worst": s["worst"],
        "group/p20": s["p20"],
        "group/gini": s["gini"],
    }


def format_group_table(step: int, report: dict[str, Any]) -> str:
    """A plain-text table of ``group_report`` for the console / log."""
    w = max([5] + [len(r["group"]) for r in report["groups"]])
    lines = [f"eval step {step}: per data_group accuracy", f"  {'group':<{w}}  {'acc':>6}  {'n':>5}"]
    lines += [f"  {r['group']:<{w}}  {r['acc']:>6.3f}  {r['n']:>5d}" for r in report["groups"]]
    if len(report["groups"]) == 1:  # worst / p20 / Gini compare groups: nothing to compare
        lines.append("  one group: no across-group summary")
    else:
        lines.append(f"  worst {report['group/worst']:.3f}  p20 {report['group/p20']:.3f}  gini {report['group/gini']:.3f}")
    return "\n".join(lines)


def sampler_calibration(sampler: Any) -> dict[str, float]:
    """Brier / ECE / Balance of the sampler's pre-rollout success predictions of this step
    (empty when the sampler makes none)."""
    pred = getattr(sampler, "last_predictions", None)
    if not pred or pred["predicted"].numel() == 0:
        return {}
    rep = calibration_report(pred["predicted"].to(torch.float64), pred["observed"].to(torch.float64))
    return {"calib/brier": rep["brier"], "calib/ece": rep["ece"], "calib/balance": rep["balance"]}


def ranking_report(rewards: Tensor, logprobs: Tensor, mask: Tensor, group: Tensor) -> dict[str, float]:
    """Within-group ranking accuracy of the rollout policy's sequence log-probabilities
    (``rank/acc``; omitted when no group has two different rewards) and the pair count."""
    acc, pairs = ranking_accuracy(rewards, sequence_logprob(logprobs, mask), group)
    return {"rank/acc": acc, "rank/pairs": float(pairs)} if pairs else {"rank/pairs": 0.0}
