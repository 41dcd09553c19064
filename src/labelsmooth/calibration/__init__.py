"""Calibration: how far predicted confidences are from observed accuracies, and how to fix it.

    from labelsmooth.calibration import expected_calibration_error, TemperatureScaling
    ece = expected_calibration_error(probs, target)              # probs (N, K), target (N,)
    ece = expected_calibration_error(logits, target, from_logits=True)
    probs = TemperatureScaling().fit(val_logits, val_target).transform(test_logits)

``metrics`` (the ECE family, Brier score, NLL), ``selective`` (selective classification and
misclassification detection: AURC, E-AURC, AUROC of the max probability, risk at a coverage),
``bootstrap`` (intervals) and ``streaming`` (the ``CalibrationError`` module) need only torch and
load eagerly; ``scaling`` (post-hoc calibrators;
NumPy, scikit-learn) and ``diagrams`` (reliability diagrams; matplotlib) load on first use of one
of their names. A pure library: it imports only the core package. The lab uses it for the
calibration section of its reports (``labelsmooth.lab.report.calibration``) and the
``labelsmooth calibrate`` command (``labelsmooth.lab.calibrate``).
"""

from __future__ import annotations

import importlib

from .bootstrap import SUMMARY_METRICS, ConfidenceInterval, bootstrap_ci, calibration_summary
from .metrics import (
    BinStatistics,
    accuracy,
    bin_statistics,
    brier_score,
    classwise_calibration_error,
    confidence_gap,
    debiased_l2_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
)
from .selective import (
    SELECTIVE_METRICS,
    aurc,
    excess_aurc,
    misclassification_auroc,
    risk_at_coverage,
    risk_coverage_curve,
    roc_auc,
    selective_summary,
)
from .streaming import CalibrationError

_LAZY = {
    "CALIBRATORS": "scaling",
    "Calibrator": "scaling",
    "IsotonicCalibration": "scaling",
    "PlattScaling": "scaling",
    "TemperatureScaling": "scaling",
    "VectorScaling": "scaling",
    "reliability_diagram": "diagrams",
    "reliability_diagrams": "diagrams",
}

__all__ = [
    "SELECTIVE_METRICS",
    "SUMMARY_METRICS",
    "BinStatistics",
    "CalibrationError",
    "ConfidenceInterval",
    "accuracy",
    "aurc",
    "bin_statistics",
    "bootstrap_ci",
    "brier_score",
    "calibration_summary",
    "classwise_calibration_error",
    "confidence_gap",
    "debiased_l2_calibration_error",
    "excess_aurc",
    "expected_calibration_error",
    "maximum_calibration_error",
    "misclassification_auroc",
    "negative_log_likelihood",
    "risk_at_coverage",
    "risk_coverage_curve",
    "roc_auc",
    "selective_summary",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
