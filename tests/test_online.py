"""``OnlineLabelSmoothing`` against a hand computation of Zhang et al.'s per-class mean prediction
and against the float64 class-conditional reference loss.
"""

from __future__ import annotations

import pytest
import torch

import labelsmooth as ls

K = 4
NAN, INF = float("nan"), float("inf")


def batch(seed, rows=12):
    g = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(rows, K, generator=g), torch.randint(0, K, (rows,), generator=g)


def hand_class_means(batches, ignore_index=-100):
    """Per class y: mean softmax over the samples of class y predicted correctly, or None."""
    sums, counts = {}, {}
    for logits, target in batches:
        for row, y in zip(logits.double().softmax(1), target.tolist()):
            if y != ignore_index and int(row.argmax()) == y:
                sums[y] = sums.get(y, 0) + row
                counts[y] = counts.get(y, 0) + 1
    return {y: sums[y] / counts[y] for y in sums}


def expected_distribution(previous, batches, ignore_index=-100):
    expected = previous.double().clone()
    for y, mean in hand_class_means(batches, ignore_index).items():
        expected[y] = mean
    return expected


def test_update_and_step_match_hand_computation():
    ols = ls.OnlineLabelSmoothing(K, label_smoothing=0.5)
    first_epoch = [batch(0), batch(1)]
    first_epoch[1][1][:3] = -100  # ignored rows never count
    for logits, target in first_epoch:
        ols.update(logits, target)
    ols.step()
    uniform = torch.full((K, K), 1.0 / K)
    expected = expected_distribution(uniform, first_epoch)
    torch.testing.assert_close(ols.distribution.double(), expected, rtol=1e-6, atol=1e-7)
    # Second epoch: only class 0 is classified correctly, so only row 0 changes; sums were reset.
    logits = torch.tensor([[5.0, 0.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0]])
    target = torch.tensor([0, 1])
    ols.update(logits, target)
    ols.step()
    expected[0] = logits[0].double().softmax(0)
    torch.testing.assert_close(ols.distribution.double(), expected, rtol=1e-6, atol=1e-7)


def test_unseen_rows_keep_the_initial_distribution():
    initial = torch.eye(K) * 0.5 + 0.5 / K
    ols = ls.OnlineLabelSmoothing(K, initial=initial)
    logits, target = torch.tensor([[0.0, 9.0, 0.0, 0.0]]), torch.tensor([1])
    ols.update(logits, target)
    ols.step()
    for y in (0, 2, 3):
        assert torch.equal(ols.distribution[y], initial[y])
    torch.testing.assert_close(ols.distribution[1], logits[0].softmax(0))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_loss_is_class_conditional_smoothing(reduction, reference_ce):
    ols = ls.OnlineLabelSmoothing(K, label_smoothing=0.3, reduction=reduction)
    for seed in range(3):
        ols.update(*batch(seed))
    ols.step()
    logits, target = batch(9)
    logits = logits.double().requires_grad_()
    target[::4] = -100
    loss = ols(logits, target)
    expected = reference_ce(logits, target, eps=0.3, distribution=ols.distribution.double(),
                            reduction=reduction)
    torch.testing.assert_close(loss, expected)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    (expected_grad,) = torch.autograd.grad(expected.sum(), logits)
    torch.testing.assert_close(grad, expected_grad)


def test_auto_update_only_in_training_mode():
    logits, target = batch(3)
    expected = expected_distribution(torch.full((K, K), 1.0 / K), [(logits, target)])
    ols = ls.OnlineLabelSmoothing(K, auto_update=True).eval()
    ols(logits, target)
    ols.step()
    torch.testing.assert_close(ols.distribution, torch.full((K, K), 1.0 / K))
    ols.train()
    ols(logits, target)
    ols.step()
    torch.testing.assert_close(ols.distribution.double(), expected, rtol=1e-6, atol=1e-7)


def test_state_dict_round_trip_keeps_distribution_and_accumulators():
    ols = ls.OnlineLabelSmoothing(K, label_smoothing=0.4)
    ols.update(*batch(0))
    ols.step()
    ols.update(*batch(1))  # mid-epoch: the accumulators must travel too
    restored = ls.OnlineLabelSmoothing(K, label_smoothing=0.4)
    restored.load_state_dict(ols.state_dict())
    for name, tensor in ols.state_dict().items():
        assert torch.equal(restored.state_dict()[name], tensor), name
    ols.step()
    restored.step()
    assert torch.equal(restored.distribution, ols.distribution)
    logits, target = batch(5)
    assert torch.equal(restored(logits, target), ols(logits, target))


BAD_ARGUMENTS = {
    "num_classes": (lambda: ls.OnlineLabelSmoothing(1), r"^num_classes .*1"),
    "label_smoothing": (lambda: ls.OnlineLabelSmoothing(K, label_smoothing=1.5), r"^label_smoothing .*1\.5"),
    "reduction": (lambda: ls.OnlineLabelSmoothing(K, reduction="avg"), r"^reduction .*'avg'"),
    "initial": (lambda: ls.OnlineLabelSmoothing(K, initial=torch.ones(K)), r"^initial .*\(4,\)"),
    "update logits": (lambda: ls.OnlineLabelSmoothing(K).update(torch.zeros(3, 5), torch.zeros(3, dtype=torch.long)),
                      r"^logits .*\(N, 4\).*\(3, 5\)"),
    "update target": (lambda: ls.OnlineLabelSmoothing(K).update(torch.zeros(3, K), torch.zeros(2, dtype=torch.long)),
                      r"^target .*\(3,\).*\(2,\)"),
    "update NaN logit": (lambda: ls.OnlineLabelSmoothing(K).update(torch.tensor([[0.0, 1.0, NAN, 0.0]]),
                                                                   torch.tensor([1])),
                         r"^logits must be finite to update the smoothing distribution.*got nan"),
    "update infinite logit": (lambda: ls.OnlineLabelSmoothing(K).update(torch.tensor([[INF, 0.0, 0.0, 0.0]]),
                                                                        torch.tensor([0])),
                              r"^logits must be finite.*got inf"),
    "update target range": (lambda: ls.OnlineLabelSmoothing(K).update(torch.zeros(2, K), torch.tensor([0, 4])),
                            r"^target must hold class indices in \[0, 4\).*got 4"),
    "update float target": (lambda: ls.OnlineLabelSmoothing(K).update(torch.zeros(2, K), torch.zeros(2)),
                            r"^target must be an integer tensor.*float32"),
    "forward wrong K": (lambda: ls.OnlineLabelSmoothing(K)(torch.zeros(3, 5), torch.zeros(3, dtype=torch.long)),
                        r"^input must hold logits over num_classes=4 classes.*got shape \(3, 5\)"),
    "auto_update wrong K": (lambda: ls.OnlineLabelSmoothing(K, auto_update=True)(torch.zeros(3, 3),
                                                                                 torch.zeros(3, dtype=torch.long)),
                            r"^input must hold logits over num_classes=4"),
    "initial rows": (lambda: ls.OnlineLabelSmoothing(K, initial=torch.full((K, K), 0.2)),
                     r"^each row of initial must sum to 1.*off by 0\.2"),
    "ignore_index None": (lambda: ls.OnlineLabelSmoothing(K, ignore_index=None), r"^ignore_index .*None"),
}


@pytest.mark.parametrize("call, message", BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS)
def test_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_refused_update_leaves_the_distribution_untouched():
    """The issue's case: a NaN logit used to poison a row silently and fail an epoch later."""
    ols = ls.OnlineLabelSmoothing(K)
    ols.update(*batch(0))
    sums, counts = ols._sums.clone(), ols._counts.clone()
    logits, target = batch(1)
    logits[3, 1] = NAN
    with pytest.raises(ValueError, match="^logits must be finite"):
        ols.update(logits, target)
    assert torch.equal(ols._sums, sums) and torch.equal(ols._counts, counts)
    ols.step()
    assert torch.isfinite(ols.distribution).all()


def test_validate_args_false_skips_the_content_checks():
    ols = ls.OnlineLabelSmoothing(K, validate_args=False, initial=torch.full((K, K), 0.2))
    ols.update(torch.tensor([[NAN, 0.0, 0.0, 0.0]]), torch.tensor([1]))  # accepted as written
    assert ols(torch.zeros(2, K), torch.tensor([0, 1])).isfinite()
