"""Calibration of predicted success probabilities (e.g. VADE's posterior means) against outcomes.

Outcomes y may be binary or fractional (a group's observed success rate); every formula below is
linear or quadratic in y, so a fractional y is the average over the group's Bernoulli outcomes
(for Brier: up to the within-group variance term, which does not depend on the prediction).

* Brier score: mean (p − y)².
* Expected calibration error: M equal-width bins on [0, 1] (bin k = [k/M, (k+1)/M), the last bin
  closed at 1); ECE = Σ_b (n_b / n) |mean(y_b) − mean(p_b)|; empty bins contribute 0.
* Balance score — "Rethinking Evaluation Metric for Probability Estimation Models Using Esports
  Data" (Choi, Kim, Lee; arXiv 2309.06248): the mean of a per-item gain/loss

      f(p, y) = y − p   if p >= 0.5    (1 − p when right, −p when wrong)
      f(p, y) = p − y   if p <  0.5    (p when right, p − 1 when wrong)

  so E[f] = p_true − p on the p >= 0.5 side and p − p_true below: 0 when the prediction equals the
  true probability, |E f| = |p − p_true|, negative when over-confident (pushed away from 0.5),
  positive when under-confident; bounded in [−1, 0.5]; no bins, no hyperparameter.
  Provenance: the paper's full text was not available here; the piecewise form comes from a
  secondary summary (emergentmind.com, "Bounded Accuracy Scoring Metric", citing Choi et al. 2023)
  and agrees with the properties stated in a summary of the paper (G(p) = 0 when p̂ = p and
  |g(q; p)| = |q − p|), which the tests check. Whether the paper reports the signed mean or its
  absolute value as the headline number was not verifiable; this returns the signed mean
  (use ``abs()`` for a calibration-error magnitude).
"""

from __future__ import annotations

import torch

from ._check import as_vector, in_unit_interval, same_length

__all__ = ["brier_score", "expected_calibration_error", "balance_score", "calibration_report"]


def _inputs(pred, outcome, who: str):
    p = as_vector("pred", pred, who)
    y = as_vector("outcome", outcome, who)
    same_length(who, pred=p, outcome=y)
    in_unit_interval("pred", p, who)
    in_unit_interval("outcome", y, who)
    return p, y


def brier_score(pred, outcome) -> float:
    """Mean squared difference between predicted probability and outcome, Σ (p − y)² / n."""
    p, y = _inputs(pred, outcome, "brier_score")
    return float(((p - y) ** 2).mean())


def expected_calibration_error(pred, outcome, n_bins: int = 10) -> float:
    """ECE with ``n_bins`` equal-width bins (see the module doc for the binning)."""
    if n_bins < 1:
        raise ValueError(f"expected_calibration_error: n_bins={n_bins}; pass a positive int (10 is usual).")
    p, y = _inputs(pred, outcome, "expected_calibration_error")
    b = torch.clamp((p * n_bins).floor().long(), max=n_bins - 1)
    sp = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, b, p)
    sy = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, b, y)
    return float((sy - sp).abs().sum() / p.numel())  # Σ_b n_b/n · |ȳ_b − p̄_b| = Σ_b |Σy − Σp| / n


def balance_score(pred, outcome) -> float:
    """Balance score of Choi et al. (arXiv 2309.06248): mean of s_i (y_i − p_i), s_i = +1 if
    p_i >= 0.5 else −1. 0 is ideal; < 0 over-confident, > 0 under-confident (see module doc)."""
    p, y = _inputs(pred, outcome, "balance_score")
    sign = torch.where(p >= 0.5, 1.0, -1.0).to(torch.float64)
    return float((sign * (y - p)).mean())


def calibration_report(pred, outcome, n_bins: int = 10) -> dict[str, float]:
    """Brier, ECE and Balance score in one dict (keys ``brier``, ``ece``, ``balance``, ``n``)."""
    p, y = _inputs(pred, outcome, "calibration_report")
    return {
        "brier": brier_score(p, y),
        "ece": expected_calibration_error(p, y, n_bins),
        "balance": balance_score(p, y),
        "n": int(p.numel()),
    }
