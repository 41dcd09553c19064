"""Every bad input of DESIGN.md raises ValueError whose message names the argument and the value.

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
