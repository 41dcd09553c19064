"""``binary_cross_entropy_with_logits`` / ``BCEWithLogitsLoss``: torch's loss on targets smoothed
by hand as ``y (1 - eps) + eps / 2`` (Keras' convention).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import labelsmooth as ls

G = torch.Generator().manual_seed(0)
LOGITS = 3 * torch.randn(6, 4, generator=G, dtype=torch.float64)
LABELS = torch.randint(0, 2, (6, 4), generator=G).double()
WEIGHT = torch.rand(4, generator=G, dtype=torch.float64) + 0.5
POS_WEIGHT = torch.rand(4, generator=G, dtype=torch.float64) * 3
NAN = float("nan")


@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0, -0.2])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weights", [{}, {"weight": WEIGHT}, {"pos_weight": POS_WEIGHT},
                                     {"weight": WEIGHT, "pos_weight": POS_WEIGHT}], ids=["plain", "weight",
                                                                                         "pos_weight", "both"])
def test_matches_torch_on_hand_smoothed_targets(eps, reduction, weights):
    smoothed = LABELS * (1 - eps) + eps / 2
    logits = LOGITS.clone().requires_grad_()
    ref_logits = LOGITS.clone().requires_grad_()
    loss = ls.binary_cross_entropy_with_logits(logits, LABELS, eps, reduction=reduction, **weights)
    ref = F.binary_cross_entropy_with_logits(ref_logits, smoothed, reduction=reduction, **weights)
    torch.testing.assert_close(loss, ref)
    loss.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad)


def test_eps_one_makes_every_target_one_half():
    loss = ls.binary_cross_entropy_with_logits(LOGITS, LABELS, 1.0, reduction="none")
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(LOGITS, torch.full_like(LABELS, 0.5),
                                                                        reduction="none"))


def test_per_label_eps_tensor_broadcasts():
    eps = torch.tensor([0.0, 0.1, 0.2, 0.3], dtype=torch.float64)
    loss = ls.binary_cross_entropy_with_logits(LOGITS, LABELS, eps, reduction="none")
    ref = F.binary_cross_entropy_with_logits(LOGITS, LABELS * (1 - eps) + eps / 2, reduction="none")
    torch.testing.assert_close(loss, ref)


def test_module_matches_functional():
    module = ls.BCEWithLogitsLoss(0.2, weight=WEIGHT, pos_weight=POS_WEIGHT, reduction="sum")
    ref = F.binary_cross_entropy_with_logits(LOGITS, LABELS * 0.8 + 0.1, weight=WEIGHT, pos_weight=POS_WEIGHT,
                                             reduction="sum")
    torch.testing.assert_close(module(LOGITS, LABELS), ref)
    assert set(dict(module.named_buffers())) == {"weight", "pos_weight"}


BAD_INPUTS = {
    "eps above 1": (lambda: ls.binary_cross_entropy_with_logits(LOGITS, LABELS, 1.5), r"^label_smoothing .*1\.5"),
    "eps NaN": (lambda: ls.binary_cross_entropy_with_logits(LOGITS, LABELS, NAN),
                r"^label_smoothing .*nan"),
    "eps tensor NaN": (lambda: ls.binary_cross_entropy_with_logits(LOGITS, LABELS, torch.tensor([0.1, NAN, 0, 0])),
                       r"^label_smoothing .*got nan"),
    "eps tensor shape": (lambda: ls.binary_cross_entropy_with_logits(LOGITS, LABELS, torch.zeros(3)),
                         r"^label_smoothing .*broadcast.*\(6, 4\).*\(3,\)"),
    "eps tensor above 1": (lambda: ls.binary_cross_entropy_with_logits(LOGITS, LABELS, torch.full((4,), 1.5)),
                           r"^label_smoothing .*1\.5"),
    "target shape": (lambda: ls.binary_cross_entropy_with_logits(LOGITS, LABELS[:3]), r"^target .*\(6, 4\).*\(3, 4\)"),
    "logits integer": (lambda: ls.binary_cross_entropy_with_logits(LABELS.long(), LABELS), r"^input .*int64"),
    "reduction": (lambda: ls.binary_cross_entropy_with_logits(LOGITS, LABELS, reduction="avg"), r"^reduction"),
    "module eps": (lambda: ls.BCEWithLogitsLoss(2.0), r"^label_smoothing .*2\.0"),
    "target above 1": (lambda: ls.binary_cross_entropy_with_logits(LOGITS, LABELS * 1.5),
                       r"^target must hold probabilities, finite and in \[0, 1\], got 1\.5"),
    "target negative": (lambda: ls.binary_cross_entropy_with_logits(LOGITS, LABELS - 0.25),
                        r"^target must hold probabilities.*got -0\.25"),
    "target NaN": (lambda: ls.binary_cross_entropy_with_logits(LOGITS, LABELS * NAN), r"^target .*got nan"),
    "module target": (lambda: ls.BCEWithLogitsLoss(0.1)(LOGITS, torch.full_like(LABELS, 3.0)), r"^target .*got 3"),
    "weight shape": (lambda: ls.binary_cross_entropy_with_logits(LOGITS, LABELS, weight=torch.ones(2)),
                     r"^weight must broadcast to input's shape \(6, 4\), got shape \(2,\)"),
    "weight larger": (lambda: ls.binary_cross_entropy_with_logits(LOGITS, LABELS, weight=torch.ones(2, 6, 4)),
                      r"^weight must broadcast to input's shape \(6, 4\), got shape \(2, 6, 4\)"),
    "weight list": (lambda: ls.binary_cross_entropy_with_logits(LOGITS, LABELS, weight=[1.0] * 4),
                    r"^weight must be a tensor .*list"),
    "pos_weight shape": (lambda: ls.binary_cross_entropy_with_logits(LOGITS, LABELS, pos_weight=torch.ones(6)),
                         r"^pos_weight must broadcast to target's shape \(6, 4\), got shape \(6,\)"),
}


@pytest.mark.parametrize("call, message", BAD_INPUTS.values(), ids=BAD_INPUTS)
def test_bad_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_torch_raises_its_raw_size_error_where_we_name_the_weight():
    with pytest.raises(RuntimeError, match="must match the size"):
        F.binary_cross_entropy_with_logits(LOGITS, LABELS, weight=torch.ones(2))


def test_validate_args_false_takes_targets_as_written_like_torch():
    target = LABELS * 1.5 - 0.25
    torch.testing.assert_close(ls.binary_cross_entropy_with_logits(LOGITS, target, 0.1, validate_args=False),
                               F.binary_cross_entropy_with_logits(LOGITS, target * 0.9 + 0.05))


@pytest.mark.parametrize("weights", [{}, {"weight": WEIGHT, "pos_weight": POS_WEIGHT}], ids=["plain", "weighted"])
def test_empty_batch_mean_is_zero_with_zero_gradient(weights):
    """As cross_entropy's all-ignored batch: 0, where torch's mean of nothing is NaN."""
    logits = torch.zeros(0, 4, dtype=torch.float64, requires_grad=True)
    target = torch.zeros(0, 4, dtype=torch.float64)
    loss = ls.binary_cross_entropy_with_logits(logits, target, 0.1, **weights)
    assert loss.shape == () and loss.item() == 0.0
    assert torch.isnan(F.binary_cross_entropy_with_logits(logits, target, **weights))
    (grad,) = torch.autograd.grad(loss, logits)
    assert grad.shape == (0, 4)
    for reduction in ("sum", "none"):
        torch.testing.assert_close(ls.binary_cross_entropy_with_logits(logits, target, reduction=reduction),
                                   F.binary_cross_entropy_with_logits(logits, target, reduction=reduction))
