"""labelsmooth.integrations.timm against timm's own losses and Mixup (timm 1.0.29).

timm's package imports torchvision at import time, and no torchvision wheel loads beside a CPU
build of torch installed from a local file (PyPI's torchvision is built against the CUDA build):
there, ``import timm`` fails. The losses and Mixup are plain torch / NumPy files, so
``import_timm_pieces`` imports them from the installed timm's own files when the package itself
cannot be imported (and imports them normally where it can). The values compared are timm's.

Tolerance: float64 on both sides, rtol 1e-12 (the same formula, other summation order).
"""

from __future__ import annotations

import importlib.util
import inspect
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import labelsmooth
from labelsmooth.integrations.timm import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

pytestmark = pytest.mark.usefixtures("single_thread")
TIGHT = dict(rtol=1e-12, atol=1e-14)


def import_timm_pieces() -> None:
    """Import timm.loss and timm.data.mixup, from timm's own files where ``import timm`` fails."""
    import importlib
    import importlib.util
    import sys
    import types
    from pathlib import Path

    try:
        importlib.import_module("timm.loss")
        importlib.import_module("timm.data.mixup")
        return
    except (ImportError, RuntimeError):  # no torchvision, or one built for another torch
        for name in [name for name in sys.modules if name == "timm" or name.startswith("timm.")]:
            del sys.modules[name]
    root = Path(importlib.util.find_spec("timm").submodule_search_locations[0])
    for package in ("timm", "timm.loss", "timm.data"):
        module = types.ModuleType(package)
        module.__path__ = [str(root.joinpath(*package.split(".")[1:]))]
        sys.modules[package] = module
        if "." in package:
            setattr(sys.modules["timm"], package.split(".")[1], module)
    for name in ("timm.loss.cross_entropy", "timm.loss.binary_cross_entropy", "timm.data.mixup"):
        module, parent = importlib.import_module(name), sys.modules[name.rsplit(".", 1)[0]]
        for attribute in dir(module):
            if attribute[0].isupper():  # the classes: LabelSmoothingCrossEntropy, Mixup, ...
                setattr(parent, attribute, getattr(module, attribute))


@pytest.fixture(scope="module")
def timm():
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed (make .venv/.installed installs it)")
    before = set(sys.modules)
    import_timm_pieces()
    yield sys.modules["timm"]
    for name in set(sys.modules) - before:
        if name == "timm" or name.startswith("timm."):
            del sys.modules[name]


def logits_and_target(n=12, k=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * 3
    return logits, torch.randint(k, (n,), generator=g)


def loss_and_grad(loss_fn, logits, target):
    logits = logits.clone().requires_grad_()
    loss = loss_fn(logits, target)
    return loss.detach(), torch.autograd.grad(loss, logits)[0]


def test_constructors_are_timms(timm):
    for ours, theirs in ((LabelSmoothingCrossEntropy, timm.loss.LabelSmoothingCrossEntropy),
                         (SoftTargetCrossEntropy, timm.loss.SoftTargetCrossEntropy)):
        timm_parameters = inspect.signature(theirs).parameters
        our_parameters = inspect.signature(ours).parameters
        for name, parameter in timm_parameters.items():
            assert our_parameters[name].default == parameter.default
    ours, theirs = LabelSmoothingCrossEntropy(0.2), timm.loss.LabelSmoothingCrossEntropy(0.2)
    assert (ours.smoothing, ours.confidence) == (theirs.smoothing, theirs.confidence)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5, -0.1])
def test_label_smoothing_cross_entropy_equals_timms(timm, smoothing):
    logits, target = logits_and_target()
    expected = loss_and_grad(timm.loss.LabelSmoothingCrossEntropy(smoothing=smoothing), logits, target)
    got = loss_and_grad(LabelSmoothingCrossEntropy(smoothing=smoothing), logits, target)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, **TIGHT)


def mixed_batch(timm, label_smoothing, k=10, seed=0):
    """timm's Mixup (mixup and cutmix, per element) on a batch of 8 images; NumPy's RNG seeded."""
    np.random.seed(seed)
    g = torch.Generator().manual_seed(seed)
    images, target = torch.randn(8, 1, 8, 8, generator=g), torch.randint(k, (8,), generator=g)
    mixup = timm.data.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem", label_smoothing=label_smoothing,
                            num_classes=k)
    return mixup(images, target)


def as_float64_probabilities(soft_target):
    """Mixup's float32 rows, whose sums are 1 within float32 rounding, in float64 with sums of 1."""
    q = soft_target.double()
    return q / q.sum(1, keepdim=True)


def test_soft_target_cross_entropy_equals_timms_on_mixup_targets(timm):
    images, soft_target = mixed_batch(timm, label_smoothing=0.1)
    assert soft_target.shape == (8, 10) and not torch.equal(soft_target, soft_target.round())
    logits = torch.nn.Linear(64, 10).double()(images.flatten(1).double())
    q = as_float64_probabilities(soft_target)
    expected = loss_and_grad(timm.loss.SoftTargetCrossEntropy(), logits.detach(), q)
    got = loss_and_grad(SoftTargetCrossEntropy(), logits.detach(), q)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, **TIGHT)


def test_smoothing_in_the_loss_equals_smoothing_in_mixup(timm):
    _, smoothed_by_mixup = mixed_batch(timm, label_smoothing=0.1)
    _, plain = mixed_batch(timm, label_smoothing=0.0)  # the same lambdas and pairs (same seed)
    logits = logits_and_target(n=8)[0]
    # timm's Mixup builds its targets in float32: the two agree to float32 rounding
    torch.testing.assert_close(SoftTargetCrossEntropy(label_smoothing=0.1)(logits, as_float64_probabilities(plain)),
                               timm.loss.SoftTargetCrossEntropy()(logits, smoothed_by_mixup.double()),
                               rtol=1e-6, atol=0)


def test_documented_differences_from_timm(timm):
    logits, target = logits_and_target()
    target[3] = -100
    with pytest.raises((RuntimeError, IndexError)):
        timm.loss.LabelSmoothingCrossEntropy(0.1)(logits, target)
    kept = target != -100
    torch.testing.assert_close(LabelSmoothingCrossEntropy(0.1)(logits, target),
                               timm.loss.LabelSmoothingCrossEntropy(0.1)(logits[kept], target[kept]), **TIGHT)
    target[3] = 10
    with pytest.raises(ValueError, match="target"):
        LabelSmoothingCrossEntropy(0.1)(logits, target)
    # class indices work in SoftTargetCrossEntropy (timm's needs probabilities)
    target[3] = 4
    torch.testing.assert_close(SoftTargetCrossEntropy()(logits, target), F.cross_entropy(logits, target), **TIGHT)


@pytest.mark.parametrize("k", [2, 10])
def test_binary_cross_entropy_conventions_are_as_documented(timm, k):
    logits, target = logits_and_target(k=k)
    eps, onehot = 0.2, F.one_hot(target, k).double()
    timm_targets = onehot * (1 - eps) + eps / k  # off eps/K, on 1 - eps + eps/K
    ours_targets = onehot * (1 - eps) + eps / 2
    timm_loss = timm.loss.BinaryCrossEntropy(smoothing=eps)(logits, target)
    ours = labelsmooth.binary_cross_entropy_with_logits(logits, onehot, eps)
    torch.testing.assert_close(timm_loss, F.binary_cross_entropy_with_logits(logits, timm_targets), **TIGHT)
    torch.testing.assert_close(ours, F.binary_cross_entropy_with_logits(logits, ours_targets), **TIGHT)
    assert torch.isclose(ours, timm_loss, rtol=1e-12) == (k == 2)


@pytest.mark.slow
def test_the_timm_mixup_example_runs(timm, example):
    bootstrap = (inspect.getsource(import_timm_pieces) + "\nimport_timm_pieces()\nimport runpy, sys\n"
                 "runpy.run_path(sys.argv[1], run_name='__main__')\n")
    out = example("timm_mixup.py", python_code=bootstrap)
    accuracy = float(out.split("test accuracy")[-1])
    assert accuracy > 0.8, out  # ten classes: chance is 0.1
