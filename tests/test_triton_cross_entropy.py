"""Tests of the Triton label-smoothed cross-entropy (labelsmooth.ops.cross_entropy).

Reference: the torch path (``impl="torch"`` and ``torch_row_statistics``, themselves tested against
``F.cross_entropy`` and a float64 formula in test_losses.py). Values and gradients are compared
for every argument of the contract. Without CUDA the kernels run on CPU through Triton's
interpreter, which must be on before ``triton`` is first imported: conftest.py switches it on;
if ``triton`` was imported without it all the same (``TRITON_INTERPRET=0`` in the environment),
the cases run in a fresh process that has it.
Sizes are small because the interpreter runs each program in Python.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install 'labelsmooth[gpu]')", allow_module_level=True)

import labelsmooth as ls  # noqa: E402
from labelsmooth.engine import torch_row_statistics  # noqa: E402
from labelsmooth.ops.cross_entropy import fused_cross_entropy_with_grad, row_statistics  # noqa: E402
from labelsmooth.ops.utils import RESIDENT_ROW_LIMIT, STREAM_BLOCK, interpreter_active  # noqa: E402
from labelsmooth.targets import resolve_smoothing  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KERNELS_RUN_HERE = DEVICE == "cuda" or interpreter_active()
FRESH_PROCESS_TEST = "test_cases_in_a_fresh_process"
# fp32 statistics summed in another order than torch's: a few ulps of the row's scale.
FP32 = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(autouse=True)
def _kernels_run_in_this_process(request):
    if not KERNELS_RUN_HERE and request.node.originalname != FRESH_PROCESS_TEST:
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set; these cases run in "
                    f"{FRESH_PROCESS_TEST}")


@pytest.mark.skipif(KERNELS_RUN_HERE, reason="the kernels run in this process")
def test_cases_in_a_fresh_process():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", f"not {FRESH_PROCESS_TEST}",
         __file__], env=dict(os.environ, TRITON_INTERPRET="1"), cwd=Path(__file__).resolve().parents[1],
        capture_output=True, text=True, timeout=600)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0 and "passed" in summary and "skipped" not in summary, \
        result.stdout[-6000:] + result.stderr[-3000:]


# Helpers -----------------------------------------------------------------------------------------


def make_inputs(n=8, k=37, *, dtype=torch.float32, seed=0, ignore=True):
    generator = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(n, k, generator=generator)).to(dtype)
    target = torch.randint(0, k, (n,), generator=generator)
    if ignore:
        target[1] = -100
    return logits.to(DEVICE), target.to(DEVICE)


DISTRIBUTIONS = {
    "uniform": lambda k, g: "uniform",
    "non_target": lambda k, g: "non_target",
    "prior": lambda k, g: torch.rand(k, generator=g, dtype=torch.float64).softmax(0).float(),
    "class_conditional": lambda k, g: torch.rand(k, k, generator=g, dtype=torch.float64).softmax(1).float(),
}


def distribution(name, k, seed=1):
    dist = DISTRIBUTIONS[name](k, torch.Generator().manual_seed(seed))
    return dist.to(DEVICE) if isinstance(dist, torch.Tensor) else dist


def class_weight(k, seed=2):
    return (0.5 + torch.rand(k, generator=torch.Generator().manual_seed(seed))).to(DEVICE)


def upstream_like(t):
    """A fixed, non-constant upstream gradient (0.5 for a scalar)."""
    return torch.linspace(0.5, 1.5, t.numel(), dtype=t.dtype, device=t.device).reshape(t.shape)


def value_and_grad(loss_fn, logits, upstream=upstream_like):
    x = logits.detach().clone().requires_grad_()
    out = loss_fn(x)
    out.backward(upstream(out))
    return out.detach(), x.grad


def assert_same_value_and_grad(loss_fn, logits, **tolerance):
    """impl="triton" against impl="torch" on the same logits: value and gradient."""
    expected = value_and_grad(lambda x: loss_fn(x, "torch"), logits)
    actual = value_and_grad(lambda x: loss_fn(x, "triton"), logits)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, **tolerance)


# 1. labelsmooth.cross_entropy(impl="triton") against impl="torch" --------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dist", sorted(DISTRIBUTIONS))
def test_every_distribution_weight_and_reduction(dist, weighted, reduction):
    """All three parts, backpropagated together, so g_lse, g_xy and g_dot are all non-trivial."""
    logits, target = make_inputs()
    kwargs = dict(weight=class_weight(37) if weighted else None, reduction=reduction, label_smoothing=0.1,
                  distribution=distribution(dist, 37), return_parts=True)

    def loss_fn(x, impl):
        parts = ls.cross_entropy(x, target, impl=impl, **kwargs)
        return parts.loss + 0.3 * parts.nll - 0.7 * parts.smooth

    assert_same_value_and_grad(loss_fn, logits, **FP32)


@pytest.mark.slow
@pytest.mark.parametrize("dist", ["uniform", "non_target", "class_conditional"])
def test_per_sample_and_negative_label_smoothing(dist):
    logits, target = make_inputs()
    eps = torch.linspace(-0.3, 0.9, 8, device=DEVICE)
    for label_smoothing in (eps, -0.2):
        assert_same_value_and_grad(
            lambda x, impl, label_smoothing=label_smoothing: ls.cross_entropy(
                x, target, weight=class_weight(37), label_smoothing=label_smoothing,
                distribution=distribution(dist, 37), impl=impl), logits, **FP32)


@pytest.mark.parametrize("z_loss, softcap", [(1e-3, None), (0.0, 4.0), (1e-2, 4.0)])
def test_z_loss_and_softcap(z_loss, softcap):
    logits, target = make_inputs()
    assert_same_value_and_grad(
        lambda x, impl: ls.cross_entropy(x, target, weight=class_weight(37), label_smoothing=0.2,
                                         distribution="non_target", z_loss=z_loss, softcap=softcap,
                                         impl=impl), logits, **FP32)


@pytest.mark.slow
@pytest.mark.parametrize("softcap", [None, 4.0])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_half_precision_and_float64_logits(dtype, softcap, reference_ce):
    """Against the float64 formula, rounded to the logits' dtype (the torch path applies softcap in
    the logits' dtype, the kernel in fp32, so they differ by fp16 rounding of the capped logits)."""
    logits, target = make_inputs(dtype=dtype)
    prior = distribution("prior", 37)
    expected_loss, expected_grad = value_and_grad(
        lambda x: reference_ce(x, target, eps=0.1, distribution=prior, softcap=softcap), logits.double())
    loss, grad = value_and_grad(
        lambda x: ls.cross_entropy(x, target, label_smoothing=0.1, distribution=prior, softcap=softcap,
                                   impl="triton"), logits)
    torch.testing.assert_close(loss, expected_loss.to(dtype))
    torch.testing.assert_close(grad, expected_grad.to(dtype))


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_inputs_with_extra_dimensions(reduction):
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 11, 3, 2, generator=generator).to(DEVICE)
    target = torch.randint(0, 11, (2, 3, 2), generator=generator).to(DEVICE)
    target[0, 1, 1] = -100
    assert_same_value_and_grad(
        lambda x, impl: ls.cross_entropy(x, target, weight=class_weight(11), reduction=reduction,
                                         label_smoothing=0.1, distribution="non_target", impl=impl),
        logits, **FP32)


# Widest resident row, and the streaming block, for fp32 statistics.
RESIDENT, BLOCK = RESIDENT_ROW_LIMIT[4], STREAM_BLOCK[4][0]


def test_rows_wider_than_one_block():
    """K = RESIDENT + 37: streamed in blocks, the last one partial, the maximum in it."""
    k = RESIDENT + 37
    logits, target = make_inputs(n=3, k=k)
    logits[0, k - 5] = 40.0  # the row maximum in the partial last block: the running sum is rescaled
    target[2] = k - 1
    assert_same_value_and_grad(
        lambda x, impl: ls.cross_entropy(x, target, label_smoothing=0.1, distribution=distribution("prior", k),
                                         z_loss=1e-3, impl=impl), logits, **FP32)


def test_rows_starting_with_a_block_of_minus_infinity():
    """A masked vocabulary: the running maximum stays -inf for a whole block without producing nan."""
    k = RESIDENT + 37
    logits, target = make_inputs(n=2, k=k, ignore=False)
    logits[:, :BLOCK] = float("-inf")
    target[:] = k - 3
    expected = value_and_grad(lambda x: ls.cross_entropy(x, target, impl="torch"), logits)
    actual = value_and_grad(lambda x: ls.cross_entropy(x, target, impl="triton"), logits)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, **FP32)


@pytest.mark.slow
@pytest.mark.parametrize("softcap", [None, 20.0])
@pytest.mark.parametrize("k", [37, RESIDENT + 37], ids=["resident", "streamed"])
def test_accuracy_comes_from_the_statistics_pass(k, softcap):
    """parts.accuracy from the kernel's own arg-max: ties go to the first index, across blocks too
    (torch.argmax's rule). The arg-max is that of the logits the loss sees, capped in fp32 as on
    the torch path: with softcap 20, 300 and 200 both cap to exactly 20.0 and tie. Reference:
    torch.argmax of the logits capped by torch in fp32."""
    logits, target = make_inputs(n=6, k=k)
    logits[0, [3, k - 2]] = 50.0                   # a tie: in the first and (streamed) the last block
    logits[2, :BLOCK if k > RESIDENT else 5] = float("-inf")  # a masked first block
    logits[3, [k - 4, 7]] = torch.tensor([300.0, 200.0], device=DEVICE)  # differ raw, tie when capped
    target[[0, 3, 4]] = torch.tensor([3, 7, -100], device=DEVICE)
    target[5] = logits[5].argmax()
    capped = logits if softcap is None else softcap * torch.tanh(logits / softcap)
    valid = target != -100
    expected = ((capped.argmax(1) == target) & valid).float()
    parts = ls.cross_entropy(logits, target, label_smoothing=0.1, softcap=softcap, reduction="none",
                             return_parts=True, impl="triton")
    torch.testing.assert_close(parts.accuracy, expected)
    mean = ls.cross_entropy(logits, target, label_smoothing=0.1, softcap=softcap, return_parts=True, impl="triton")
    torch.testing.assert_close(mean.accuracy, expected.sum() / valid.sum())
    if softcap is not None:
        assert expected[3] == 1 and logits[3].argmax() == k - 4  # the capped tie decides row 3


@pytest.mark.parametrize("softcap", [None, 4.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inplace_backward_overwrites_the_logits_with_the_gradient(dtype, softcap, reference_ce):
    """Logits computed from a leaf (as a layer's output is): backward writes into their storage."""
    logits, target = make_inputs(dtype=dtype)
    expected_loss, expected_grad = (t.to(dtype) for t in value_and_grad(
        lambda x: reference_ce(x, target, eps=0.1, softcap=softcap), logits.double()))
    leaf = logits.clone().requires_grad_()
    x = leaf * 1  # not a leaf, nothing saves it
    loss = ls.cross_entropy(x, target, label_smoothing=0.1, softcap=softcap, inplace_backward=True,
                            impl="triton")
    loss.backward(upstream_like(loss))
    tolerance = FP32 if dtype == torch.float32 else {}
    torch.testing.assert_close(loss.detach(), expected_loss, **tolerance)
    torch.testing.assert_close(leaf.grad, expected_grad, **tolerance)
    torch.testing.assert_close(x.detach(), expected_grad, **tolerance)  # the storage holds the gradient


def test_all_targets_ignored_give_zero_loss_and_zero_gradient():
    logits, target = make_inputs()
    target[:] = -100
    loss, grad = value_and_grad(lambda x: ls.cross_entropy(x, target, label_smoothing=0.1, impl="triton"), logits)
    assert loss.item() == 0.0
    assert torch.count_nonzero(grad).item() == 0


@pytest.mark.parametrize("layout", ["transposed", "row_slice"])
def test_strided_logits(layout):
    """A transposed view (copied to unit column stride) and a slice of wider rows (read in place)."""
    generator = torch.Generator().manual_seed(4)
    wide = torch.randn(37 if layout == "transposed" else 8, 8 if layout == "transposed" else 50,
                       generator=generator).to(DEVICE)
    logits = wide.t() if layout == "transposed" else wide[:, 5:42]
    target = torch.randint(0, 37, (8,), generator=generator).to(DEVICE)
    assert_same_value_and_grad(
        lambda x, impl: ls.cross_entropy(x, target, label_smoothing=0.1, impl=impl),
        logits if layout == "transposed" else logits.contiguous(), **FP32)
    lse, _, _ = row_statistics(logits, target, None, None)
    torch.testing.assert_close(lse, logits.logsumexp(1), **FP32)


# 2. The provider itself, for arbitrary upstream gradients -----------------------------------------


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("dist", [None, "non_target", "prior", "class_conditional"])
def test_row_statistics_match_the_torch_provider(dist, softcap):
    logits, target = make_inputs(ignore=False)
    smoothing = None if dist is None else resolve_smoothing(distribution(dist, 37), 37, class_weight(37),
                                                            torch.float32, torch.device(DEVICE), None)
    generator = torch.Generator().manual_seed(5)
    upstream = [torch.randn(8, generator=generator).to(DEVICE) for _ in range(3)]
    results = []
    for provider in (torch_row_statistics, row_statistics):
        x = logits.clone().requires_grad_()
        stats = provider(x, target, smoothing, softcap)
        (grad,) = torch.autograd.grad(stats, x, upstream)
        results.append((*stats, grad))
    for actual, expected in zip(results[1], results[0]):
        torch.testing.assert_close(actual, expected, **FP32)


@pytest.mark.parametrize("dist", ["prior", "class_conditional"])
def test_out_of_range_targets_read_nothing(dist):
    """validate_args=False lets bad targets through: such a row gets x_y = dot = 0, no stray read."""
    logits, target = make_inputs(ignore=False)
    target[2], target[5] = 37 + 1000, -7
    smoothing = resolve_smoothing(distribution(dist, 37), 37, None, torch.float32, torch.device(DEVICE), None)
    x = logits.clone().requires_grad_()
    lse, target_logit, dot = row_statistics(x, target, smoothing, None)
    bad = torch.zeros(8, dtype=torch.bool, device=DEVICE)
    bad[[2, 5]] = True
    torch.testing.assert_close(lse, logits.logsumexp(1), **FP32)
    assert target_logit[bad].tolist() == [0.0, 0.0] and dot[bad].tolist() == [0.0, 0.0]
    good_stats = torch_row_statistics(logits[~bad], target[~bad], smoothing, None)
    torch.testing.assert_close(target_logit[~bad], good_stats[1], **FP32)
    torch.testing.assert_close(dot[~bad], good_stats[2], **FP32)
    (grad,) = torch.autograd.grad(lse.sum() + target_logit.sum() + dot.sum(), x)
    torch.testing.assert_close(grad[bad], logits[bad].softmax(1), **FP32)  # no one-hot, no smoothing part


# 3. fused_cross_entropy_with_grad: the gradient computed in forward ------------------------------


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("dist", sorted(DISTRIBUTIONS))
def test_fused_matches_the_torch_path(dist, reduction):
    logits, target = make_inputs()
    kwargs = dict(weight=class_weight(37), reduction=reduction, label_smoothing=0.15,
                  distribution=distribution(dist, 37))
    expected = value_and_grad(lambda x: ls.cross_entropy(x, target, impl="torch", **kwargs), logits)
    actual = value_and_grad(lambda x: fused_cross_entropy_with_grad(x, target, **kwargs), logits)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, **FP32)


@pytest.mark.parametrize("case", [
    dict(z_loss=1e-3, softcap=4.0),
    dict(label_smoothing=torch.linspace(-0.3, 0.9, 8), distribution="non_target", z_loss=1e-2),
    dict(label_smoothing=-0.2, weight="weighted", reduction="sum", softcap=2.0),
    dict(label_smoothing=0.0, reduction="sum"),
], ids=["z_loss+softcap", "per_sample_eps", "negative_eps", "no_smoothing"])
def test_fused_every_option(case):
    logits, target = make_inputs()
    kwargs = dict(dict(label_smoothing=0.1), **case)
    if isinstance(kwargs["label_smoothing"], torch.Tensor):
        kwargs["label_smoothing"] = kwargs["label_smoothing"].to(DEVICE)
    if kwargs.get("weight") == "weighted":
        kwargs["weight"] = class_weight(37)
    expected = value_and_grad(lambda x: ls.cross_entropy(x, target, impl="torch", **kwargs), logits)
    actual = value_and_grad(lambda x: fused_cross_entropy_with_grad(x, target, **kwargs), logits)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, **FP32)


@pytest.mark.parametrize("upstream", ["one", "rows"])
def test_fused_upstream_gradients_of_one_and_per_row(upstream):
    """A factor of exactly 1 leaves the stored gradient as is; others rescale their row."""
    logits, target = make_inputs()
    scale = {"one": lambda t: torch.ones_like(t),
             "rows": lambda t: torch.tensor([1.0, 2.0, 1.0, -0.5, 0.0, 1.0, 3.0, 1.0], device=DEVICE)}[upstream]
    kwargs = dict(reduction="none", label_smoothing=0.1, distribution="non_target")
    expected = value_and_grad(lambda x: ls.cross_entropy(x, target, impl="torch", **kwargs), logits, scale)
    actual = value_and_grad(lambda x: fused_cross_entropy_with_grad(x, target, **kwargs), logits, scale)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, **FP32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_in_place_and_with_extra_dimensions(dtype):
    logits, target = make_inputs(dtype=dtype)
    expected_loss, expected_grad = value_and_grad(
        lambda x: ls.cross_entropy(x, target, label_smoothing=0.1, impl="torch"), logits)
    leaf = logits.clone().requires_grad_()
    x = leaf * 1  # not a leaf, nothing saves it
    loss = fused_cross_entropy_with_grad(x, target, label_smoothing=0.1, inplace_backward=True)
    tolerance = FP32 if dtype == torch.float32 else {}
    expected_stored = (upstream_like(loss) ** -1 * expected_grad.float()).to(dtype)  # grad for upstream 1
    torch.testing.assert_close(x.detach(), expected_stored, **tolerance)  # written during forward
    loss.backward(upstream_like(loss))
    torch.testing.assert_close(loss.detach(), expected_loss, **tolerance)
    torch.testing.assert_close(leaf.grad, expected_grad, **tolerance)

    images = logits.reshape(2, 4, 37).movedim(2, 1)  # (N, K, d1)
    image_target = target.reshape(2, 4)
    expected = value_and_grad(lambda x: ls.cross_entropy(x, image_target, label_smoothing=0.1, impl="torch"), images)
    actual = value_and_grad(lambda x: fused_cross_entropy_with_grad(x, image_target, label_smoothing=0.1,
                                                                    inplace_backward=True), images)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, **tolerance)


def test_fused_without_grad_leaves_the_logits_alone():
    logits, target = make_inputs()
    kept = logits.clone()
    loss = fused_cross_entropy_with_grad(logits, target, label_smoothing=0.1, inplace_backward=True)
    torch.testing.assert_close(loss, ls.cross_entropy(logits, target, label_smoothing=0.1, impl="torch"), **FP32)
    assert torch.equal(logits, kept)


def test_fused_all_targets_ignored():
    logits, target = make_inputs()
    target[:] = -100
    loss, grad = value_and_grad(lambda x: fused_cross_entropy_with_grad(x, target, label_smoothing=0.1), logits)
    assert loss.item() == 0.0
    assert torch.count_nonzero(grad).item() == 0


def test_fused_rejects_what_it_does_not_take():
    logits, target = make_inputs()
    with pytest.raises(ValueError, match="class-index targets"):
        fused_cross_entropy_with_grad(logits, logits.softmax(1))
    with pytest.raises(ValueError, match="target must hold class indices"):
        fused_cross_entropy_with_grad(logits, torch.full_like(target, 37))
    with pytest.raises(ValueError, match="softcap"):
        fused_cross_entropy_with_grad(logits, target, softcap=-1.0)
