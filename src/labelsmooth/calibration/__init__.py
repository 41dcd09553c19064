"""Calibration: how far predicted confidences are from observed accuracies, and how to fix it.

    from labelsmooth.calibration import expected_calibration_error, TemperatureScaling
    ece = expected_calibration_error(probs, target)              # probs (N, K), target (N,)
    ece = expected_calibration_error(logits, target, from_logits=True)

``metrics`` holds the ECE family, Brier score, NLL and bootstrap intervals (torch only);
``scaling`` the post-hoc calibrators (Platt and isotonic import scikit-learn when fitted).
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
from .scaling import (
    CALIBRATORS,
    Calibrator,
    IsotonicCalibration,
    PlattScaling,
    TemperatureScaling,
    VectorScaling,
)

__all__ = [
    "CALIBRATORS",
    "BinStatistics",
    "CalibrationError",
    "Calibrator",
    "ConfidenceInterval",
    "IsotonicCalibration",
    "PlattScaling",
    "TemperatureScaling",
    "VectorScaling",
    "bin_statistics",
    "bootstrap_ci",
    "brier_score",
    "classwise_calibration_error",
    "debiased_l2_calibration_error",
    "expected_calibration_error",
    "negative_log_likelihood",
]
