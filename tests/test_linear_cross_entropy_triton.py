"""``linear_cross_entropy(impl="triton")`` (Triton tiles; the interpreter on CPU) and mixed precision.

References: the dense float64 formula of ``conftest.reference_cross_entropy`` on the materialised
float64 logits (every distribution, class weights, z-loss, softcap, ignore_index), and for mixed
precision ``F.linear`` + ``F.cross_entropy`` under autocast (the behaviour users switch from),
and on upcast inputs without autocast.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

import labelsmooth as ls

N, D, V = 13, 6, 37
# ~10 ulp of fp32 at the scale of these losses and gradients
FP32 = dict(rtol=2e-5, atol=2e-5)
FP64 = dict(rtol=1e-10, atol=1e-10)

triton_needed = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def head(dtype=torch.float64, seed=0, with_bias=True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, D, generator=g, dtype=torch.float64)
    weight = torch.randn(V, D, generator=g, dtype=torch.float64)
    bias = 0.5 * torch.randn(V, generator=g, dtype=torch.float64) if with_bias else None
    target = torch.randint(0, V, (N,), generator=g)
    target[[2, 7]] = -100
    return [None if t is None else t.to(dtype).requires_grad_() for t in (hidden, weight, bias)], target


def value_and_grads(fn, tensors):
    loss = fn(*tensors)
    leaves = [t for t in tensors if t is not None]
    return (loss.detach(), *torch.autograd.grad(loss * 0.7, leaves))


def distribution(name, seed=3):
    g = torch.Generator().manual_seed(seed)
    return {"prior": lambda: torch.rand(V, generator=g, dtype=torch.float64).softmax(0),
            "conditional": lambda: torch.rand(V, V, generator=g, dtype=torch.float64).softmax(1)
            }.get(name, lambda: name)()


def device_tensors(tensors, target):
    if not torch.cuda.is_available():
        return tensors, target
    return [None if t is None else t.detach().cuda().requires_grad_() for t in tensors], target.cuda()


# 1. impl="triton" against float64 --------------------------------------------------------------------


@pytest.mark.slow
@triton_needed
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("options", [
    dict(distribution="uniform"), dict(distribution="non_target", class_weight=True),
    dict(distribution="prior", z_loss=1e-3), dict(distribution="conditional", softcap=3.0),
    dict(distribution="uniform", label_smoothing=-0.2, with_bias=False)],
    ids=["uniform", "non_target+weights", "prior+z_loss", "conditional+softcap", "negative_eps"])
def test_triton_tiles_equal_the_float64_formula(options, reduction, reference_ce):
    options = dict(options)
    tensors, target = device_tensors(*head(with_bias=options.pop("with_bias", True)))
    dist = distribution(options.pop("distribution"))
    weight = torch.linspace(0.5, 1.5, V, dtype=torch.float64) if options.pop("class_weight", False) else None
    eps = options.pop("label_smoothing", 0.1)
    kwargs = dict(label_smoothing=eps, distribution=dist, class_weight=weight, reduction=reduction, **options)

    def reference(h, w, b):
        return reference_ce(F.linear(h, w, b), target, eps=eps, distribution=dist, weight=weight,
                            reduction=reduction, **options)

    def fused(h, w, b):  # chunks of 4 tokens: the last one holds a single token
        return ls.linear_cross_entropy(h, w, target, b, impl="triton", chunk_size=4, **kwargs)

    for actual, expected in zip(value_and_grads(fused, tensors), value_and_grads(reference, tensors)):
        torch.testing.assert_close(actual, expected, **FP64)


@triton_needed
def test_triton_tiles_fp32_scalar_path_and_forward_only(reference_ce):
    """fp32 (the scalar smoothing path) against float64; no grad: any reduction, parts too."""
    tensors, target = device_tensors(*head(torch.float32))
    fused = value_and_grads(lambda h, w, b: ls.linear_cross_entropy(h, w, target, b, label_smoothing=0.1,
                                                                   impl="triton", chunk_size=5), tensors)
    expected = value_and_grads(lambda h, w, b: reference_ce(F.linear(h, w, b).double(), target, eps=0.1),
                               tensors)
    for actual, reference in zip(fused, expected):
        torch.testing.assert_close(actual, reference.float(), **FP32)
    with torch.no_grad():
        parts = ls.linear_cross_entropy(*tensors[:2], target, tensors[2], label_smoothing=0.1, reduction="none",
                                        return_parts=True, impl="triton")
        rows = reference_ce(F.linear(*(t.double() for t in tensors[:2]), tensors[2].double()), target, eps=0.1,
                            reduction="none")
    torch.testing.assert_close(parts.loss, rows.float(), **FP32)


@triton_needed
def test_triton_tiles_backpropagate_once():
    tensors, target = device_tensors(*head(torch.float32))
    loss = ls.linear_cross_entropy(*tensors[:2], target, tensors[2], impl="triton")
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward through the same loss twice"):
        loss.backward()


# 2. Mixed precision: bf16 hidden states, fp32 head ---------------------------------------------------


@pytest.mark.parametrize("impl", ["chunked", pytest.param("triton", marks=triton_needed)])
def test_bf16_hidden_with_fp32_head_under_autocast(impl):
    """As F.linear + F.cross_entropy under autocast: bf16 matmuls, fp32 loss, each gradient in its
    input's dtype; values within bf16 rounding of that reference (both round the logits and the
    gradient tiles to bf16 and sum in fp32)."""
    (hidden, weight, bias), target = head(torch.float32)
    hidden = hidden.detach().bfloat16().requires_grad_()
    tensors, target = device_tensors([hidden, weight, bias], target)
    device_type = tensors[0].device.type

    def under_autocast(fn):
        def run(*t):
            with torch.autocast(device_type, dtype=torch.bfloat16):
                return fn(*t)
        return run

    actual = value_and_grads(under_autocast(lambda h, w, b: ls.linear_cross_entropy(
        h, w, target, b, label_smoothing=0.1, impl=impl, chunk_size=4)), tensors)
    expected = value_and_grads(under_autocast(lambda h, w, b: F.cross_entropy(
        F.linear(h, w, b), target, label_smoothing=0.1)), tensors)
    assert [t.dtype for t in actual] == [t.dtype for t in expected] == [torch.float32, torch.bfloat16,
                                                                          torch.float32, torch.float32]
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("impl", ["chunked", pytest.param("triton", marks=triton_needed)])
def test_bf16_hidden_with_fp32_head_without_autocast_is_promoted(impl):
    """Without autocast F.linear refuses mixed dtypes; here they are promoted to fp32 (exact)."""
    (hidden, weight, bias), target = head(torch.float32)
    hidden = hidden.detach().bfloat16().requires_grad_()
    tensors, target = device_tensors([hidden, weight, bias], target)
    actual = value_and_grads(lambda h, w, b: ls.linear_cross_entropy(h, w, target, b, label_smoothing=0.1,
                                                                    impl=impl, chunk_size=4), tensors)
    expected = value_and_grads(lambda h, w, b: F.cross_entropy(F.linear(h.float(), w, b), target,
                                                               label_smoothing=0.1), tensors)
    assert actual[1].dtype == torch.bfloat16 and actual[0].dtype == torch.float32
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, **FP32)
