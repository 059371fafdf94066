"""Floor 3: evaluation metrics — per-data-group fairness and groupwise regret, calibration of
predicted success, and within-group ranking accuracy. Pure functions of tensors (core only)."""

from .calibration import balance_score, brier_score, calibration_report, expected_calibration_error
from .fairness import (
    GroupTable,
    fairness_report,
    fairness_summary,
    gini,
    group_table,
    minmax_normalise,
    percentile,
)
from .ranking import RankingAccuracy, ranking_accuracy, sequence_logprob, within_group_pairs
from .regret import groupwise_regret

__all__ = [
    "brier_score",
    "expected_calibration_error",
    "balance_score",
    "calibration_report",
    "gini",
    "minmax_normalise",
    "percentile",
    "GroupTable",
    "group_table",
    "fairness_summary",
    "fairness_report",
    "groupwise_regret",
    "within_group_pairs",
    "sequence_logprob",
    "ranking_accuracy",
    "RankingAccuracy",
]
