"""Calibration: how far predicted confidences are from observed accuracies, and how to fix it.

    from labelsmooth.calibration import expected_calibration_error, TemperatureScaling
    ece = expected_calibration_error(probs, target)              # probs (N, K), target (N,)
    ece = expected_calibration_error(logits, target, from_logits=True)

``metrics`` holds the ECE family, Brier score, NLL and bootstrap intervals (torch only).
"""

from __future__ import annotations

from .metrics import (
    BinStatistics,
    CalibrationError,
    ConfidenceInterval,
    bin_statistics,
    bootstrap_ci,
    brier_score,
    classwise_calibration_error,
    debiased_l2_calibration_error,
    expected_calibration_error,
    negative_log_likelihood,
)

__all__ = [
    "BinStatistics",
    "CalibrationError",
    "ConfidenceInterval",
    "bin_statistics",
    "bootstrap_ci",
    "brier_score",
    "classwise_calibration_error",
    "debiased_l2_calibration_error",
    "expected_calibration_error",
    "negative_log_likelihood",
]
