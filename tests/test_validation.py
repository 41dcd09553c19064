"""Every bad input of the API contract raises ValueError whose message names the argument and the value.

Also: ``validate_args=False`` skips the checks of tensor contents (and computes as written).
"""

from __future__ import annotations

import pytest
import torch

import labelsmooth as ls

LOGITS = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
TARGET = torch.tensor([0, 1, 2, 1])
NAN, INF = float("nan"), float("inf")


def ce(**overrides):
    """``ls.cross_entropy(LOGITS, TARGET)`` with some arguments replaced."""
    args = dict(input=LOGITS, target=TARGET)
    args.update(overrides)
    return ls.cross_entropy(args.pop("input"), args.pop("target"), **args)


# name -> (call, regex the message must match: the argument's name first, then the value received)
BAD_INPUTS = {
    "eps above 1": (lambda: ce(label_smoothing=1.5), r"^label_smoothing .*1\.5"),
    "eps NaN": (lambda: ce(label_smoothing=NAN), r"^label_smoothing .*finite.*nan"),
    "eps inf": (lambda: ce(label_smoothing=-INF), r"^label_smoothing .*finite.*-inf"),
    "eps not a number": (lambda: ce(label_smoothing="0.1"), r"^label_smoothing .*str"),
    "eps bool": (lambda: ce(label_smoothing=True), r"^label_smoothing .*bool"),
    "per-sample eps NaN": (lambda: ce(label_smoothing=torch.tensor([0.1, NAN, 0.0, 0.0])),
                           r"^label_smoothing .*every sample, got nan"),
    "per-sample eps inf": (lambda: ce(label_smoothing=torch.tensor([0.1, 0.0, INF, 0.0])),
                           r"^label_smoothing .*every sample, got inf"),
    "per-sample eps above 1": (lambda: ce(label_smoothing=torch.tensor([0.1, 1.25, 0.0, 0.0])),
                               r"^label_smoothing .*every sample, got 1\.25"),
    "per-sample eps shape": (lambda: ce(label_smoothing=torch.zeros(2)), r"^label_smoothing .*\(4,\).*\(2,\)"),
    "per-sample eps integer": (lambda: ce(label_smoothing=torch.zeros(4, dtype=torch.long)),
                               r"^label_smoothing .*int64"),
    "prior negative": (lambda: ce(distribution=torch.tensor([1.2, -0.2, 0.0])),
                       r"^distribution .*non-negative.*-0\.2"),
    "prior NaN": (lambda: ce(distribution=torch.tensor([0.5, NAN, 0.5])), r"^distribution .*finite.*nan"),
    "prior sum": (lambda: ce(distribution=torch.tensor([0.5, 0.2, 0.0])), r"^distribution must sum to 1.*0\.3"),
    "conditional row sums": (lambda: ce(distribution=torch.tensor([[0.5, 0.5, 0.0], [0.3, 0.3, 0.3],
                                                                   [0.0, 0.0, 1.0]])),
                             r"row of distribution must sum to 1.*0\.1"),
    "distribution shape": (lambda: ce(distribution=torch.full((2,), 0.5)), r"^distribution .*\(3,\).*\(2,\)"),
    "distribution name": (lambda: ce(distribution="gaussian"), r"^distribution .*'gaussian'"),
    "distribution integer": (lambda: ce(distribution=torch.tensor([1, 0, 0])), r"^distribution .*int64"),
    "distribution list": (lambda: ce(distribution=[0.3, 0.3, 0.4]), r"^distribution .*list"),
    "non_target with one class": (lambda: ls.cross_entropy(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long),
                                                           distribution="non_target"),
                                  r"non_target.*num_classes=1"),
    "target shape": (lambda: ce(target=TARGET[:3]), r"^target must have shape \(4,\).*got shape \(3,\)"),
    "soft target shape": (lambda: ce(target=torch.rand(4, 4)), r"^target .*\(4, 3\).*\(4, 4\)"),
    "target for (K,) logits": (lambda: ce(input=LOGITS[0], target=torch.tensor([1])), r"^target .*\(1,\)"),
    "target above range": (lambda: ce(target=torch.tensor([0, 3, 1, 1])), r"^target .*\[0, 3\).*got 3"),
    "target negative": (lambda: ce(target=torch.tensor([0, -1, 1, 1])), r"^target .*ignore_index=-100.*got -1"),
    "target bool": (lambda: ce(target=TARGET.bool()), r"^target .*bool"),
    "target list": (lambda: ce(target=[0, 1, 2, 1]), r"^target .*list"),
    "logits integer": (lambda: ce(input=LOGITS.long()), r"^input .*floating.*int64"),
    "logits 0-dim": (lambda: ce(input=torch.tensor(1.0)), r"^input .*class dimension"),
    "reduction": (lambda: ce(reduction="avg"), r"^reduction .*'avg'"),
    "weight shape": (lambda: ce(weight=torch.ones(4)), r"^weight .*\(3,\).*\(4,\)"),
    "weight integer": (lambda: ce(weight=torch.ones(3, dtype=torch.long)), r"^weight .*int64"),
    "impl": (lambda: ce(impl="cuda"), r"^impl .*'cuda'"),
    "softcap zero": (lambda: ce(softcap=0.0), r"^softcap .*positive.*0\.0"),
    "softcap negative": (lambda: ce(softcap=-1.0), r"^softcap .*-1\.0"),
    "z_loss": (lambda: ce(z_loss="1e-4"), r"^z_loss .*str"),
    "z_loss NaN": (lambda: ce(z_loss=NAN), r"^z_loss .*finite.*nan"),
    "z_loss inf": (lambda: ce(z_loss=INF), r"^z_loss .*finite.*inf"),
    "z_loss negative": (lambda: ce(z_loss=-1e-4), r"^z_loss .*>= 0.*-0\.0001"),
    "softcap inf": (lambda: ce(softcap=INF), r"^softcap .*finite.*inf"),
    "softcap NaN": (lambda: ce(softcap=NAN), r"^softcap .*nan"),
    "softcap bool": (lambda: ce(softcap=True), r"^softcap .*True"),
    "ignore_index None": (lambda: ce(ignore_index=None), r"^ignore_index must be an int.*None"),
    "ignore_index float": (lambda: ce(ignore_index=1.0), r"^ignore_index must be an int.*1\.0"),
    "soft target negative": (lambda: ce(target=torch.tensor([[0.5, 0.6, -0.1]] * 4)),
                             r"^target must hold probabilities.*\[0, 1\].*-0\.1"),
    "soft target NaN": (lambda: ce(target=torch.tensor([[0.5, NAN, 0.5]] * 4)),
                        r"^target must hold probabilities.*nan"),
    "soft target row sum": (lambda: ce(target=torch.full((4, 3), 0.3)),
                            r"^target as probabilities must sum to 1 .*within 0\.0001.*off by 0\.1"),
    "soft target spatial row sum": (lambda: ls.cross_entropy(torch.zeros(2, 3, 4), torch.full((2, 3, 4), 0.5)),
                                    r"^target as probabilities must sum to 1 over the class dimension 1.*0\.5"),
    "soft target with ignore_index": (lambda: ce(target=LOGITS.softmax(1), ignore_index=2),
                                      r"^ignore_index .*probability targets.*got ignore_index=2"),
    "weight total zero": (lambda: ce(target=torch.zeros(4, dtype=torch.long), weight=torch.tensor([0.0, 1, 1]),
                                     label_smoothing=0.1),
                          r"^weight must give the non-ignored targets a positive total.*got 0 over 4 targets"),
    "weight total negative": (lambda: ce(weight=torch.tensor([1.0, -2.0, 0.5])),
                              r"^weight must give the non-ignored targets a positive total.*got -2\.5 over 4"),
    "module eps": (lambda: ls.CrossEntropyLoss(label_smoothing=2.0), r"^label_smoothing .*2\.0"),
    "module reduction": (lambda: ls.CrossEntropyLoss(reduction="batchmean"), r"^reduction .*'batchmean'"),
    "smooth_targets float target": (lambda: ls.smooth_targets(torch.rand(3), 3, 0.1), r"^target .*float32"),
    "smooth_targets num_classes": (lambda: ls.smooth_targets(TARGET, 0, 0.1), r"^num_classes .*0"),
    "smooth_targets target range": (lambda: ls.smooth_targets(TARGET, 2, 0.1), r"^target .*\[0, 2\).*got 2"),
    "smooth_targets dtype": (lambda: ls.smooth_targets(TARGET, 3, 0.1, dtype=torch.long), r"^dtype .*int64"),
    "smooth_targets eps": (lambda: ls.smooth_targets(TARGET, 3, 1.1), r"^label_smoothing .*1\.1"),
    "smooth_targets prior": (lambda: ls.smooth_targets(TARGET, 3, 0.1, distribution=torch.ones(3)),
                             r"^distribution must sum to 1"),
}


@pytest.mark.parametrize("call, message", BAD_INPUTS.values(), ids=BAD_INPUTS)
def test_bad_input_raises_value_error_naming_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_ignore_index_is_allowed_out_of_range():
    loss = ce(target=torch.tensor([0, 1, 2, 5]), ignore_index=5, reduction="none")
    assert loss[3] == 0 and (loss[:3] > 0).all()
    # -100 is only the default ignore_index; with another one it is out of range.
    with pytest.raises(ValueError, match=r"^target .*ignore_index=5.*got -100"):
        ce(target=torch.tensor([0, -100, 2, 5]), ignore_index=5)


def test_validate_args_false_skips_content_checks_and_computes_as_written():
    """An unnormalised prior and a per-sample eps above 1 are used as given, per the formula."""
    logits = LOGITS.double()
    u = torch.tensor([0.5, 0.2, 0.0], dtype=torch.float64)
    eps = torch.tensor([0.1, 1.5, 0.0, 0.2], dtype=torch.float64)
    loss = ls.cross_entropy(logits, TARGET, label_smoothing=eps, distribution=u, reduction="none",
                            validate_args=False)
    log_p = logits.log_softmax(1)
    expected = -(1 - eps) * log_p.gather(1, TARGET[:, None]).squeeze(1) - eps * (u * log_p).sum(1)
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match="^label_smoothing"):
        ls.cross_entropy(logits, TARGET, label_smoothing=eps, distribution=u)
    with pytest.raises(ValueError, match="^distribution"):
        ls.cross_entropy(logits, TARGET, label_smoothing=eps.clamp(max=1), distribution=u)


def test_validate_args_false_still_checks_arguments():
    """Argument checks (types, shapes, names) do not depend on tensor contents and always run."""
    with pytest.raises(ValueError, match="^label_smoothing"):
        ce(label_smoothing=1.5, validate_args=False)
    with pytest.raises(ValueError, match="^target must have shape"):
        ce(target=TARGET[:3], validate_args=False)


def test_probability_targets_within_their_dtype_tolerance_are_accepted():
    """Smoothed targets rounded to bf16 sum to 1 only within bf16's precision."""
    target = ls.smooth_targets(TARGET, 3, 0.1, dtype=torch.bfloat16)
    assert (target.float().sum(1) - 1).abs().max() > 1e-4  # would fail fp32's tolerance
    loss = ce(input=LOGITS.bfloat16(), target=target)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(LOGITS.bfloat16(), target))


def test_validate_args_false_takes_probability_targets_as_written_like_torch():
    target = torch.tensor([[0.5, 0.6, -0.1]] * 4)
    torch.testing.assert_close(ce(target=target, validate_args=False),
                               torch.nn.functional.cross_entropy(LOGITS, target))


def test_negative_ignore_index_with_probability_targets_matches_nothing_as_in_torch():
    """torch refuses only a non-negative ignore_index with probability targets."""
    target = LOGITS.softmax(1).roll(1, 0)
    torch.testing.assert_close(ce(target=target, ignore_index=-1),
                               torch.nn.functional.cross_entropy(LOGITS, target, ignore_index=-1))
    with pytest.raises(RuntimeError, match="ignore_index is not supported for floating point target"):
        torch.nn.functional.cross_entropy(LOGITS, target, ignore_index=2)
