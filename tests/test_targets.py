"""``labelsmooth.smooth_targets`` against hand-written values and the definition
``q' = (1 - eps) onehot(y) + eps u(. | y)``, and its agreement with ``cross_entropy``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import labelsmooth as ls

PRIOR = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
CONDITIONAL = torch.tensor([[0.7, 0.1, 0.1, 0.1],
                            [0.25, 0.25, 0.25, 0.25],
                            [0.0, 0.5, 0.5, 0.0],
                            [0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)


def test_seed_worked_example():
    """A blog post's example: K = 4, eps = 0.001, label (0, 1, 0, 0) -> (0.00025, 0.99925, 0.00025, 0.00025)."""
    q = ls.smooth_targets(torch.tensor([1]), 4, 0.001, dtype=torch.float64)
    torch.testing.assert_close(q, torch.tensor([[0.00025, 0.99925, 0.00025, 0.00025]], dtype=torch.float64),
                               rtol=0, atol=1e-15)


# Hand-computed rows for target y = 2, eps = 0.2, K = 4.
HAND_ROWS = {
    "uniform": [0.05, 0.05, 0.85, 0.05],                   # 0.2 / 4 each, 0.8 + 0.05 on y
    "non_target": [0.2 / 3, 0.2 / 3, 0.8, 0.2 / 3],        # 0.2 / 3 off y, y keeps 1 - eps
    "prior": [0.02, 0.04, 0.86, 0.08],                     # 0.2 * PRIOR, + 0.8 on y
    "conditional": [0.0, 0.1, 0.9, 0.0],                   # 0.2 * CONDITIONAL[2], + 0.8 on y
}
DISTRIBUTION_ARGS = {"uniform": "uniform", "non_target": "non_target", "prior": PRIOR,
                     "conditional": CONDITIONAL}


@pytest.mark.parametrize("name", HAND_ROWS)
def test_hand_rows(name):
    q = ls.smooth_targets(torch.tensor([2]), 4, 0.2, distribution=DISTRIBUTION_ARGS[name], dtype=torch.float64)
    torch.testing.assert_close(q, torch.tensor([HAND_ROWS[name]], dtype=torch.float64))
    torch.testing.assert_close(q.sum(1), torch.ones(1, dtype=torch.float64))


@pytest.mark.parametrize("name", HAND_ROWS)
def test_definition_with_per_sample_eps_and_ignored_rows(name, smoothing_rows):
    target = torch.tensor([[0, 3, -1], [2, 1, 0]])
    eps = torch.tensor([[0.0, 0.5, 0.3], [1.0, -0.2, 0.1]], dtype=torch.float64)
    q = ls.smooth_targets(target, 4, eps, distribution=DISTRIBUTION_ARGS[name], ignore_index=-1,
                          dtype=torch.float64)
    assert q.shape == (2, 4, 3)  # class dimension at position 1, like F.cross_entropy's input
    rows = q.movedim(1, -1).reshape(-1, 4)
    y = target.reshape(-1).clamp(min=0)
    expected = ((1 - eps.reshape(-1, 1)) * F.one_hot(y, 4)
                + eps.reshape(-1, 1) * smoothing_rows(y, 4, DISTRIBUTION_ARGS[name]))
    expected[2] = 0  # the ignored target
    torch.testing.assert_close(rows, expected)


@pytest.mark.parametrize("name", HAND_ROWS)
@pytest.mark.parametrize("eps", [0.1, 1.0, -0.3])
def test_cross_entropy_on_smoothed_targets_equals_labelsmooth(name, eps):
    """F.cross_entropy with smooth_targets as probabilities is the label-smoothed loss."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(10, 4, 3, generator=g, dtype=torch.float64)
    target = torch.randint(0, 4, (10, 3), generator=g)
    distribution = DISTRIBUTION_ARGS[name]
    soft = ls.smooth_targets(target, 4, eps, distribution=distribution, dtype=torch.float64)
    torch.testing.assert_close(F.cross_entropy(logits, soft),
                               ls.cross_entropy(logits, target, label_smoothing=eps, distribution=distribution))


def test_default_dtype_and_zero_dim_target():
    q = ls.smooth_targets(torch.tensor(1), 3, 0.3)
    assert q.dtype == torch.float32
    torch.testing.assert_close(q, torch.tensor([0.1, 0.8, 0.1]))
