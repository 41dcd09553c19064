"""labelsmooth: label smoothing done right and fast, and a lab that shows whether it helps.

    import labelsmooth as ls
    loss = ls.cross_entropy(logits, target, label_smoothing=0.1)   # drop-in for F.cross_entropy

The loss family imports eagerly (it needs only torch); ``calibration``, ``distributed``,
``analysis`` and ``lab`` load on first attribute access, so ``import labelsmooth`` costs little
more than ``import torch``.
"""

from __future__ import annotations

import importlib

from .losses import (
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    LossParts,
    binary_cross_entropy_with_logits,
    cross_entropy,
    cross_entropy_with_grad,
)
from .online import OnlineLabelSmoothing
from .targets import smooth_targets

__version__ = "0.1.0"

_LAZY_SUBMODULES = ("analysis", "calibration", "distributed", "lab", "ops")
_LAZY_FUNCTIONS = {"linear_cross_entropy": "labelsmooth.ops.linear_cross_entropy"}

__all__ = [
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "LossParts",
    "OnlineLabelSmoothing",
    "binary_cross_entropy_with_logits",
    "calibration",
    "cross_entropy",
    "cross_entropy_with_grad",
    "distributed",
    "linear_cross_entropy",
    "smooth_targets",
]


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"labelsmooth.{name}")
    if name in _LAZY_FUNCTIONS:
        return getattr(importlib.import_module(_LAZY_FUNCTIONS[name]), name)
    raise AttributeError(f"module 'labelsmooth' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_LAZY_SUBMODULES))
