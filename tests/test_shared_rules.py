"""Rules every class-index entry point shares through the engine, checked at each of them.

- the mean's denominator (the summed class weights of the non-ignored targets): a zero or
  negative total with non-ignored targets is a ValueError naming the weight under
  ``validate_args``; without it, it is divided by as written, like torch (inf / NaN);
- ``LossParts``: still unpacks as ``(loss, nll, smooth)``; its ``z_loss`` and ``accuracy``
  attributes equal a float64 formula and ``argmax`` on the materialised logits;
- double backward: the torch path is twice differentiable (``gradgradcheck`` in float64 and
  torch's own loss as reference); the kernels' paths refuse it with torch's once-differentiable error.

Entry points: ``cross_entropy`` (torch and Triton providers), ``cross_entropy_with_grad``,
``fused_cross_entropy_with_grad`` (Triton), ``linear_cross_entropy(class_weight=)`` (torch tiles and
Triton tiles). The Triton cases need Triton's interpreter (switched on by conftest.py on machines without CUDA).
"""

from __future__ import annotations

import copy
import importlib.util
import pickle

import pytest
import torch
import torch.nn.functional as F

import labelsmooth as ls
from labelsmooth.losses import cross_entropy_with_grad

K = 5
HAS_TRITON = importlib.util.find_spec("triton") is not None


def triton_runs_here() -> bool:
    if not HAS_TRITON:
        return False
    from labelsmooth.ops.utils import interpreter_active

    return torch.cuda.is_available() or interpreter_active()


needs_triton = pytest.mark.skipif(not triton_runs_here(), reason="triton (or its interpreter) is not available here")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def fused(*args, **kwargs):
    from labelsmooth.ops.cross_entropy import fused_cross_entropy_with_grad

    return fused_cross_entropy_with_grad(*args, **kwargs)


def linear_as_logits_loss(logits, target, weight=None, **options):
    """``linear_cross_entropy`` on (N, K) logits: hidden = the logits, head = the identity."""
    eye = torch.eye(logits.shape[1], dtype=logits.dtype, device=logits.device)
    return ls.linear_cross_entropy(logits, eye, target, class_weight=weight, chunk_size=3, vocab_chunk_size=2,
                                   **options)


def linear_triton_as_logits_loss(logits, target, weight=None, **options):
    """The same through the Triton tiles (whole-vocabulary tiles of 3 tokens)."""
    eye = torch.eye(logits.shape[1], dtype=logits.dtype, device=logits.device)
    return ls.linear_cross_entropy(logits, eye, target, class_weight=weight, chunk_size=3, impl="triton", **options)


# name -> loss(logits, target, weight, **options) with cross_entropy's signature; the weight's name
ENTRY_POINTS = {
    "torch": (lambda x, t, w=None, **o: ls.cross_entropy(x, t, w, impl="torch", **o), "weight"),
    "with_grad": (lambda x, t, w=None, **o: cross_entropy_with_grad(x, t, w, **o)[0], "weight"),
    "linear": (linear_as_logits_loss, "class_weight"),
    "triton": pytest.param(lambda x, t, w=None, **o: ls.cross_entropy(x, t, w, impl="triton", **o), "weight",
                           marks=needs_triton),
    "fused": pytest.param(lambda x, t, w=None, **o: fused(x, t, w, **o), "weight", marks=needs_triton),
    "linear_triton": pytest.param(linear_triton_as_logits_loss, "class_weight", marks=needs_triton),
}


def logits(n=4, k=K, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g, dtype=dtype).to(DEVICE)


# 1. The mean's denominator -----------------------------------------------------------------------------


@pytest.mark.parametrize("entry, name", ENTRY_POINTS.values(), ids=list(ENTRY_POINTS))
@pytest.mark.parametrize("weight, target", [
    ([0.0, 1, 1, 1, 1], [0, 0, 0, 0]),      # the weights of the targets' classes are all 0
    ([1.0, -1, 1, 1, 1], [0, 1, 0, 1]),      # negative weights cancel
    ([1.0, -3, 1, 1, 1], [0, 1, 2, -100]),   # a negative total
], ids=["zero", "cancelling", "negative"])
def test_non_positive_total_class_weight_is_refused(entry, name, weight, target):
    weight = torch.tensor(weight, device=DEVICE)
    target = torch.tensor(target, device=DEVICE)
    with pytest.raises(ValueError, match=rf"^{name} must give the non-ignored targets a positive total "
                                         rf"for reduction='mean'.* over [34] targets"):
        entry(logits(), target, weight, label_smoothing=0.1)
    # sum and none do not divide: the same weights are fine there, as in torch
    for reduction in ("sum", "none"):
        torch.testing.assert_close(entry(logits(), target, weight, label_smoothing=0.1, reduction=reduction),
                                   F.cross_entropy(logits(), target, weight, label_smoothing=0.1,
                                                   reduction=reduction), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("entry, name", ENTRY_POINTS.values(), ids=list(ENTRY_POINTS))
def test_tiny_positive_total_is_divided_by_as_torch_does(entry, name):
    """The issue's 1e-30: a huge but correct mean, not a switch to the sum."""
    weight = torch.tensor([1e-30, 1, 1, 1, 1], device=DEVICE)
    target = torch.zeros(4, dtype=torch.long, device=DEVICE)
    x = logits().double()
    ours = entry(x, target, weight.double(), label_smoothing=0.1)
    torch.testing.assert_close(ours, F.cross_entropy(x, target, weight.double(), label_smoothing=0.1))
    assert ours > 1e28


@pytest.mark.parametrize("entry, name", ENTRY_POINTS.values(), ids=list(ENTRY_POINTS))
def test_without_validation_a_zero_total_is_divided_by_as_written(entry, name):
    """Documented behaviour with ``validate_args=False``: not finite, as torch's (NaN); never a sum."""
    weight = torch.tensor([0.0, 1, 1, 1, 1], device=DEVICE)
    target = torch.zeros(4, dtype=torch.long, device=DEVICE)
    assert torch.isnan(entry(logits(), target, weight, validate_args=False))
    assert torch.isnan(F.cross_entropy(logits(), target, weight))
    smoothed = entry(logits(), target, weight, label_smoothing=0.1, validate_args=False)
    assert not torch.isfinite(smoothed)
    assert not torch.isfinite(F.cross_entropy(logits(), target, weight, label_smoothing=0.1))


@pytest.mark.parametrize("entry, name", ENTRY_POINTS.values(), ids=list(ENTRY_POINTS))
def test_all_ignored_batch_with_zero_weights_is_still_zero(entry, name):
    weight = torch.tensor([0.0, 1, 1, 1, 1], device=DEVICE)
    target = torch.full((4,), -100, device=DEVICE)
    assert entry(logits(), target, weight, label_smoothing=0.1).item() == 0.0


# 2. LossParts: z-loss and accuracy -----------------------------------------------------------------------


def reference_parts(x, target, *, eps, z_loss, reduction, weight=None, ignore_index=-100):
    """(z-loss term, accuracy) from the materialised float64 logits and torch's argmax."""
    x = x.detach().double()
    valid = target != ignore_index
    z_rows = torch.where(valid, z_loss * torch.logsumexp(x, 1).square(), 0.0)
    correct = ((x.argmax(1) == target) & valid).double()
    if reduction == "none":
        return z_rows, correct
    if reduction == "sum":
        return z_rows.sum(), correct.sum()
    w = torch.ones(x.shape[1], dtype=torch.float64) if weight is None else weight.double().cpu()
    denominator = torch.where(valid.cpu(), w[torch.where(valid, target, 0).cpu()], 0.0).sum().to(x.device)
    return z_rows.sum() / denominator, correct.sum() / valid.sum().clamp(min=1)


PARTS_PROVIDERS = {
    "torch": lambda x, t, **o: ls.cross_entropy(x, t, impl="torch", **o),
    "linear": lambda x, t, weight=None, **o: linear_as_logits_loss(x, t, weight, **o),
    "triton": pytest.param(lambda x, t, **o: ls.cross_entropy(x, t, impl="triton", **o), marks=needs_triton),
    "linear_triton": pytest.param(lambda x, t, weight=None, **o: linear_triton_as_logits_loss(x, t, weight, **o),
                                  marks=needs_triton),
}


@pytest.mark.parametrize("provider", PARTS_PROVIDERS.values(), ids=list(PARTS_PROVIDERS))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_parts_carry_z_loss_and_accuracy(provider, reduction):
    x = logits(n=9, k=7, seed=3, dtype=torch.float64)
    x[2] = 0.0                      # a tie over every class: argmax is the first index
    x[5, 4] = x[5, 1] = x[5].max() + 1   # a tie of two maxima in different vocabulary blocks
    target = torch.tensor([2, 0, 0, 3, 6, 4, 1, -100, 5], device=DEVICE)
    target[0] = x[0].argmax()           # at least one correct row
    weight = torch.linspace(0.5, 2.0, 7, dtype=torch.float64, device=DEVICE)
    parts = provider(x, target, weight=weight, label_smoothing=0.2, z_loss=0.01, reduction=reduction,
                     return_parts=True)
    loss, nll, smooth = parts            # unpacking as before
    z_ref, accuracy_ref = reference_parts(x, target, eps=0.2, z_loss=0.01, reduction=reduction, weight=weight)
    torch.testing.assert_close(parts.z_loss, z_ref)
    torch.testing.assert_close(parts.accuracy, accuracy_ref)
    torch.testing.assert_close(loss, 0.8 * nll + 0.2 * smooth + parts.z_loss)
    torch.testing.assert_close(loss, F.cross_entropy(x, target, weight, label_smoothing=0.2, reduction=reduction)
                               + parts.z_loss)


def test_parts_without_z_loss_and_of_an_all_ignored_batch():
    x = logits(dtype=torch.float64)
    parts = ls.cross_entropy(x, torch.tensor([1, 2, 3, 4]), return_parts=True)
    assert torch.equal(parts.z_loss, torch.zeros(()).double())
    ignored = ls.cross_entropy(x, torch.full((4,), -100), return_parts=True, z_loss=0.1)
    assert ignored.accuracy.item() == 0.0 and ignored.z_loss.item() == 0.0


def test_parts_of_probability_targets_have_z_loss_and_no_accuracy():
    x = logits(dtype=torch.float64)
    probs = logits(seed=1, dtype=torch.float64).softmax(1)
    parts = ls.cross_entropy(x, probs, z_loss=0.02, label_smoothing=0.1, return_parts=True)
    torch.testing.assert_close(parts.z_loss, 0.02 * torch.logsumexp(x, 1).square().mean())
    torch.testing.assert_close(parts.loss, F.cross_entropy(x, probs, label_smoothing=0.1) + parts.z_loss)
    assert parts.accuracy is None


def test_parts_of_spatial_and_one_dimensional_logits_keep_the_target_shape():
    x = torch.randn(2, K, 3, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    target = torch.randint(0, K, (2, 3, 2), generator=torch.Generator().manual_seed(0))
    parts = ls.cross_entropy(x, target, reduction="none", return_parts=True)
    assert parts.accuracy.shape == parts.z_loss.shape == target.shape
    torch.testing.assert_close(parts.accuracy, (x.argmax(1) == target).double())
    single = ls.cross_entropy(x[0, :, 0, 0], target[0, 0, 0], reduction="none", return_parts=True)
    assert single.accuracy.shape == () and single.accuracy == parts.accuracy[0, 0, 0]


def test_loss_parts_keep_their_tuple_shape_and_survive_copies():
    parts = ls.cross_entropy(logits(), torch.tensor([0, 1, 2, 3]), z_loss=0.1, return_parts=True)
    assert parts._fields == ("loss", "nll", "smooth") and len(parts) == 3
    for clone in (pickle.loads(pickle.dumps(parts)), copy.deepcopy(parts), copy.copy(parts)):
        assert type(clone) is ls.LossParts
        torch.testing.assert_close(tuple(clone), tuple(parts))
        torch.testing.assert_close((clone.z_loss, clone.accuracy), (parts.z_loss, parts.accuracy))
    assert "z_loss=" in repr(parts) and "accuracy=" in repr(parts)


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=needs_triton)])
def test_parts_compile_with_fullgraph(impl):
    """The Triton path's arg-max is an output of its custom operator (fake included)."""
    torch._dynamo.reset()
    target = torch.tensor([0, 1, 2, -100], device=DEVICE)

    def loss_fn(x):
        parts = ls.cross_entropy(x, target, label_smoothing=0.1, z_loss=1e-3, return_parts=True,
                                 validate_args=False, impl=impl)
        return parts.loss, parts.z_loss, parts.accuracy

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    x = logits(dtype=torch.float64).requires_grad_()
    eager = loss_fn(x)
    torch.testing.assert_close(compiled(x), eager)


# 3. Double backward -------------------------------------------------------------------------------------


DOUBLE_BACKWARD_OPTIONS = {
    "plain": dict(),
    "eps+weight+ignored": dict(label_smoothing=0.2, weight=torch.linspace(0.5, 2, K, dtype=torch.float64)),
    "z_loss+softcap": dict(z_loss=0.05, softcap=2.0, label_smoothing=0.1),
    "non_target+none": dict(distribution="non_target", label_smoothing=0.3, reduction="none"),
    "conditional+sum": dict(distribution=torch.eye(K, dtype=torch.float64).roll(1, 1) * 0.5 + 0.5 / K,
                            label_smoothing=0.4, reduction="sum"),
    "per_sample_eps": dict(label_smoothing=torch.linspace(-0.2, 0.9, 6, dtype=torch.float64)),
}


@pytest.mark.slow
@pytest.mark.parametrize("options", DOUBLE_BACKWARD_OPTIONS.values(), ids=list(DOUBLE_BACKWARD_OPTIONS))
def test_gradgradcheck_on_the_torch_path(options):
    x = torch.randn(6, K, generator=torch.Generator().manual_seed(1), dtype=torch.float64).requires_grad_()
    target = torch.tensor([0, 4, -100, 2, 1, 3])
    assert torch.autograd.gradgradcheck(lambda a: ls.cross_entropy(a, target, impl="torch", **options), (x,))


@pytest.mark.parametrize("inplace_backward", [False, True])
def test_double_backward_matches_torch(inplace_backward):
    """A gradient penalty (the gradient's norm, differentiated again) as with torch's loss."""
    x = torch.randn(5, K, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    target = torch.tensor([[0, 4], [-100, 2], [1, 3], [2, 2], [4, 0]])
    weight = torch.linspace(0.5, 2, K, dtype=torch.float64)

    def penalty(loss_fn):
        leaf = x.clone().requires_grad_()
        (grad,) = torch.autograd.grad(loss_fn(leaf * 1.0), leaf, create_graph=True)
        (second,) = torch.autograd.grad(grad.square().sum(), leaf)
        return grad.detach(), second

    ours = penalty(lambda a: ls.cross_entropy(a, target, weight, label_smoothing=0.3, impl="torch",
                                              inplace_backward=inplace_backward))
    torch.testing.assert_close(ours, penalty(lambda a: F.cross_entropy(a, target, weight, label_smoothing=0.3)))


KERNEL_PATHS = {
    "linear": lambda x, t: linear_as_logits_loss(x, t, label_smoothing=0.1),
    "triton": pytest.param(lambda x, t: ls.cross_entropy(x, t, impl="triton", label_smoothing=0.1),
                           marks=needs_triton),
    "fused": pytest.param(lambda x, t: fused(x, t, label_smoothing=0.1), marks=needs_triton),
    "linear_triton": pytest.param(lambda x, t: linear_triton_as_logits_loss(x, t, label_smoothing=0.1),
                                  marks=needs_triton),
}


@pytest.mark.parametrize("loss_fn", KERNEL_PATHS.values(), ids=list(KERNEL_PATHS))
def test_kernel_paths_refuse_double_backward_clearly(loss_fn):
    """Refused at the backward with create_graph=True: torch's once_differentiable alone would give a
    gradient cut off from x, so that the penalty below would silently add nothing to x.grad."""
    x = logits().requires_grad_()
    loss = loss_fn(x * 1.0, torch.tensor([0, 1, 2, 3], device=DEVICE))
    with pytest.raises(RuntimeError, match=r"differentiable once only: backward with create_graph=True .*"
                                           r"impl=\"torch\""):
        torch.autograd.grad(loss, x, create_graph=True)
