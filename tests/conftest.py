"""Shared test fixtures: a float64 reference for smoothed cross-entropy, written from the definition.

The reference builds the dense smoothed target ``q' = (1 - eps) onehot(y) + eps u(. | y)`` and
returns ``-sum_c w_c q'_c log p_c`` per row, which is DESIGN.md's weight rule
``(1 - eps) w_y (-log p_y) + eps sum_c w_c u(c | y) (-log p_c)`` written as one sum. It shares no
code with ``labelsmooth``.
"""

from __future__ import annotations

import pytest
import torch


def reference_smoothing_rows(target: torch.Tensor, num_classes: int, distribution) -> torch.Tensor:
    """``u(. | y)`` for each row of ``target`` (M,), shape (M, K), float64."""
    onehot = torch.nn.functional.one_hot(target, num_classes).double()
    if isinstance(distribution, torch.Tensor):
        dist = distribution.double()
        return dist.expand_as(onehot).clone() if dist.dim() == 1 else dist[target]
    if distribution == "uniform":
        return torch.full_like(onehot, 1.0 / num_classes)
    if distribution == "non_target":
        return (1 - onehot) / (num_classes - 1)
    raise AssertionError(distribution)


def reference_cross_entropy(logits, target, *, eps=0.0, distribution="uniform", weight=None,
                            ignore_index=-100, reduction="mean", z_loss=0.0, softcap=None):
    """Dense float64 label-smoothed CE for (N, K) or (N, K, d1, ...) logits and class indices.

    ``eps`` is a float or a tensor with the target's shape.
    """
    num_classes = logits.shape[1]
    x = logits.movedim(1, -1).reshape(-1, num_classes).double()
    y = target.reshape(-1)
    valid = y != ignore_index
    y_safe = torch.where(valid, y, 0)
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    log_p = x.log_softmax(1)
    eps_rows = (eps.reshape(-1).double() if isinstance(eps, torch.Tensor) and eps.dim()
                else torch.as_tensor(eps, dtype=torch.float64).expand(len(y)))
    onehot = torch.nn.functional.one_hot(y_safe, num_classes).double()
    u = reference_smoothing_rows(y_safe, num_classes, distribution)
    q = (1 - eps_rows)[:, None] * onehot + eps_rows[:, None] * u
    w = weight.double() if weight is not None else torch.ones(num_classes, dtype=torch.float64)
    rows = -(w * q * log_p).sum(1) + z_loss * torch.logsumexp(x, 1) ** 2
    rows = torch.where(valid, rows, torch.zeros((), dtype=torch.float64))
    if reduction == "none":
        return rows.reshape(target.shape)
    if reduction == "sum":
        return rows.sum()
    denominator = torch.where(valid, w[y_safe], torch.zeros((), dtype=torch.float64)).sum()
    return rows.sum() / denominator if denominator > 0 else rows.sum() * 0


@pytest.fixture(scope="session")
def reference_ce():
    return reference_cross_entropy


@pytest.fixture(scope="session")
def smoothing_rows():
    return reference_smoothing_rows
