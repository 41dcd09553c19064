"""``labelsmooth.cross_entropy_with_grad``: the loss and its gradient without autograd.

Reference: the dense float64 formula of ``conftest.reference_cross_entropy``, differentiated by
autograd (value, and the gradient of the summed loss).
"""

from __future__ import annotations

import pytest
import torch

import labelsmooth as ls

K = 5


def logits_of(shape, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(shape, generator=g, dtype=torch.float64)


def target_of(shape, seed=0, ignore_every=None):
    g = torch.Generator().manual_seed(seed + 1)
    target = torch.randint(0, K, shape[:1] + shape[2:], generator=g)
    if ignore_every:
        target.view(-1)[::ignore_every] = -100
    return target


def distribution_of(name):
    g = torch.Generator().manual_seed(7)
    if name == "prior":
        return torch.rand(K, generator=g, dtype=torch.float64).softmax(0)
    if name == "conditional":
        return torch.randn(K, K, generator=g, dtype=torch.float64).softmax(1)
    return name


def reference(reference_ce, logits, target, **options):
    x = logits.clone().requires_grad_()
    loss = reference_ce(x, target, **options)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad


@pytest.mark.parametrize("shape", [(7, K), (3, K, 4)], ids=str)
@pytest.mark.parametrize("distribution", ["uniform", "non_target", "prior", "conditional"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_matches_the_formula_and_its_autograd_gradient(shape, distribution, weighted, reduction, reference_ce):
    logits, target = logits_of(shape), target_of(shape, ignore_every=3)
    weight = 0.3 + torch.rand(K, generator=torch.Generator().manual_seed(5), dtype=torch.float64) if weighted else None
    eps = torch.linspace(-0.2, 0.9, target.numel(), dtype=torch.float64).view(target.shape)
    dist = distribution_of(distribution)
    loss, grad = ls.cross_entropy_with_grad(logits, target, weight, reduction=reduction, label_smoothing=eps,
                                            distribution=dist)
    want_loss, want_grad = reference(reference_ce, logits, target, eps=eps, distribution=dist, weight=weight,
                                     reduction=reduction)
    torch.testing.assert_close(loss, want_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("eps", [0.0, 0.3, -0.2, "0-dim"], ids=str)
@pytest.mark.parametrize("distribution", ["uniform", "non_target"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_named_distributions_with_one_eps_and_any_ignore_index(eps, distribution, reduction, reference_ce):
    """(N, K) logits with a named distribution take a shorter path: one eps for every row (a float
    or a 0-dim tensor), int32 targets and an ignore_index that is itself a class."""
    logits, target = logits_of((9, K)), target_of((9, K)).to(torch.int32)
    eps = torch.tensor(0.15, dtype=torch.float64) if eps == "0-dim" else eps
    options = dict(ignore_index=1, reduction=reduction, distribution=distribution)
    loss, grad = ls.cross_entropy_with_grad(logits, target, label_smoothing=eps, **options)
    want_loss, want_grad = reference(reference_ce, logits, target.long(), eps=eps, **options)
    assert (target == 1).any() and grad[target == 1].eq(0).all()
    torch.testing.assert_close(loss, want_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-12, atol=1e-12)


def test_an_ignored_row_stays_zero_whatever_its_logits():
    logits = logits_of((3, K))
    logits[1] = float("nan")
    loss, grad = ls.cross_entropy_with_grad(logits, torch.tensor([0, -100, 2]), label_smoothing=0.1, reduction="none")
    assert loss[1].item() == 0.0 and not grad[1].any() and loss.isfinite().all()


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_z_loss_and_softcap(reduction, reference_ce):
    logits, target = logits_of((6, K, 2), scale=5.0), target_of((6, K, 2), ignore_every=4)
    options = dict(reduction=reduction, z_loss=0.02, softcap=2.5, distribution=distribution_of("conditional"))
    loss, grad = ls.cross_entropy_with_grad(logits, target, label_smoothing=0.2, **options)
    want_loss, want_grad = reference(reference_ce, logits, target, eps=0.2, **options)
    torch.testing.assert_close(loss, want_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-12, atol=1e-12)


def test_all_ignored_gives_zero_loss_and_gradient():
    logits = logits_of((4, K))
    loss, grad = ls.cross_entropy_with_grad(logits, torch.full((4,), -100), label_smoothing=0.1)
    assert loss.item() == 0.0 and not grad.any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_input_gives_its_dtype_and_the_fp32_result(dtype):
    logits, target = logits_of((16, K)).to(dtype), target_of((16, K))
    loss, grad = ls.cross_entropy_with_grad(logits, target, label_smoothing=0.1)
    x = logits.float().requires_grad_()
    want = torch.nn.functional.cross_entropy(x, target, label_smoothing=0.1)
    want.backward()
    assert loss.dtype == dtype and grad.dtype == dtype and grad.shape == logits.shape
    torch.testing.assert_close(loss.float(), want.detach(), rtol=1e-2 if dtype == torch.bfloat16 else 1e-6, atol=0)
    torch.testing.assert_close(grad.float(), x.grad, rtol=1e-2 if dtype == torch.bfloat16 else 1e-6,
                               atol=1e-3 if dtype == torch.bfloat16 else 1e-7)


def test_leaves_the_logits_and_autograd_alone():
    logits = logits_of((5, K)).requires_grad_()
    before = logits.detach().clone()
    loss, grad = ls.cross_entropy_with_grad(logits, target_of((5, K)), label_smoothing=0.1)
    assert not loss.requires_grad and not grad.requires_grad and logits.grad is None
    assert torch.equal(logits.detach(), before)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="class-index targets"):
        ls.cross_entropy_with_grad(logits_of((4, K)), torch.rand(4, K, dtype=torch.float64))
    with pytest.raises(ValueError, match="class-index targets"):
        ls.cross_entropy_with_grad(logits_of((K,)), torch.tensor(1))
    with pytest.raises(ValueError, match=r"target must have shape \(4,\)"):
        ls.cross_entropy_with_grad(logits_of((4, K)), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="target"):
        ls.cross_entropy_with_grad(logits_of((4, K)), torch.tensor([0, 1, 2, K]))
    with pytest.raises(ValueError, match="reduction"):
        ls.cross_entropy_with_grad(logits_of((4, K)), target_of((4, K)), reduction="avg")
    with pytest.raises(ValueError, match="distribution must be one of"):
        ls.cross_entropy_with_grad(logits_of((4, K)), target_of((4, K)), distribution="gaussian")
    with pytest.raises(ValueError, match="label_smoothing must be finite and at most 1 for every sample"):
        ls.cross_entropy_with_grad(logits_of((4, K)), target_of((4, K)),
                                   label_smoothing=torch.tensor([0.1, 1.5, 0.0, 0.2]))


def test_a_masked_target_logit_gives_an_infinite_loss_as_torch():
    """x_y = -inf: nll and smooth are both +inf; their combination must stay inf, not inf - inf."""
    logits = torch.tensor([[float("-inf"), 0.0, 1.0], [0.5, 0.0, 1.0]])
    target = torch.tensor([0, 2])
    want = torch.nn.functional.cross_entropy(logits, target, label_smoothing=0.1, reduction="none")
    loss, _ = ls.cross_entropy_with_grad(logits, target, label_smoothing=0.1, reduction="none")
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(ls.cross_entropy(logits, target, label_smoothing=0.1, reduction="none"), want)
