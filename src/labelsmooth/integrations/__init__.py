"""Thin adapters for the frameworks users already train with; none of them is a dependency.

- :mod:`labelsmooth.integrations.transformers`: ``apply_to(model, label_smoothing=0.1)`` makes a
  Hugging Face causal LM compute its training loss with :func:`labelsmooth.linear_cross_entropy`
  (no logits); ``trainer_loss(...)`` is a ``compute_loss_func`` for ``Trainer`` (any model).
- :mod:`labelsmooth.integrations.timm`: ``LabelSmoothingCrossEntropy`` and
  ``SoftTargetCrossEntropy`` with timm's constructor signatures, for ``train.py``-style code
  with or without timm's ``Mixup``.
- :mod:`labelsmooth.integrations.torchmetrics`: the streaming calibration errors as
  ``torchmetrics.Metric`` subclasses (Lightning logs and syncs them).

Importing this package imports none of these frameworks; each submodule imports its own when it is
imported or first used, and a missing one raises an ImportError that says what to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]


def require(package: str, purpose: str, extra: str | None = None) -> ModuleType:
    """Import ``package`` or raise an ImportError saying how to install it.

    >>> require("torch", "labelsmooth").__name__
    'torch'
    """
    try:
        return importlib.import_module(package)
    except ImportError as error:
        hint = f'pip install {package}' + (f' (or pip install "labelsmooth[{extra}]")' if extra else "")
        raise ImportError(f"{purpose} needs {package}, which is not installed: {hint}") from error
