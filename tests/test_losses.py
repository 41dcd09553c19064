"""Correctness of ``labelsmooth.cross_entropy`` and ``CrossEntropyLoss`` (torch path, CPU).

References: ``torch.nn.functional.cross_entropy`` for the uniform distribution, and the dense
float64 formula of ``conftest.reference_cross_entropy`` for everything torch cannot express.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import labelsmooth as ls
from labelsmooth import engine

K = 5
SHAPES = [(6, K), (4, K, 3), (3, K, 2, 2), (K,)]
REDUCTIONS = ["none", "mean", "sum"]
DISTRIBUTIONS = ["uniform", "non_target", "prior", "conditional"]


def make_logits(shape, seed=0, dtype=torch.float64, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()


def make_target(logits_shape, seed=0, ignore_every=None, ignore_index=-100):
    """Class indices for logits of ``logits_shape``; every ``ignore_every``-th one ignored."""
    g = torch.Generator().manual_seed(seed + 1)
    shape = () if len(logits_shape) == 1 else logits_shape[:1] + logits_shape[2:]
    num_classes = logits_shape[0] if len(logits_shape) == 1 else logits_shape[1]
    target = torch.randint(0, num_classes, shape, generator=g)
    if ignore_every:
        target.view(-1)[::ignore_every] = ignore_index
    return target


def make_distribution(name, num_classes=K, seed=0):
    """A named distribution, or a random prior (K,) / class-conditional (K, K) in float64."""
    g = torch.Generator().manual_seed(seed + 2)
    if name == "prior":
        return torch.rand(num_classes, generator=g, dtype=torch.float64).softmax(0)
    if name == "conditional":
        return torch.randn(num_classes, num_classes, generator=g, dtype=torch.float64).softmax(1)
    return name


def class_weight(kind, num_classes=K, seed=0):
    if kind is None:
        return None
    g = torch.Generator().manual_seed(seed + 3)
    return 0.2 + 2 * torch.rand(num_classes, generator=g, dtype=torch.float64)


def value_and_grad(fn, logits):
    """``fn(logits)`` and the gradient of its sum (a random upstream gradient for 'none')."""
    out = fn(logits)
    upstream = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)
    (grad,) = torch.autograd.grad((out * upstream).sum(), logits)
    return out.detach(), grad


def assert_same_value_and_grad(fn, reference, logits, **tolerance):
    out, grad = value_and_grad(fn, logits)
    ref_out, ref_grad = value_and_grad(reference, logits)
    torch.testing.assert_close(out, ref_out, **tolerance)
    torch.testing.assert_close(grad, ref_grad, **tolerance)


# 1. Parity with torch for the uniform distribution ------------------------------------------------


# A single ignored target under "mean" is left out: torch gives NaN (see test_all_ignored_batch).
@pytest.mark.parametrize("shape,ignore,reduction", [
    pytest.param(shape, ignore, reduction, id=f"{shape}-{'ignore' if ignore else 'all'}-{reduction}")
    for shape in SHAPES for ignore in (False, True) for reduction in REDUCTIONS
    if not (len(shape) == 1 and ignore and reduction == "mean")])
@pytest.mark.parametrize("weight_kind", [None, "random"])
@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
def test_matches_torch_cross_entropy(shape, weight_kind, ignore, reduction, eps):
    logits = make_logits(shape)
    weight = class_weight(weight_kind)
    # (K,) logits have one 0-dim target: "ignored" makes it the ignored one; else every 2nd row.
    target = make_target(shape, ignore_every=(1 if len(shape) == 1 else 2) if ignore else None)
    assert_same_value_and_grad(
        lambda x: ls.cross_entropy(x, target, weight, reduction=reduction, label_smoothing=eps),
        lambda x: F.cross_entropy(x, target, weight, reduction=reduction, label_smoothing=eps),
        logits)


@pytest.mark.parametrize("shape", [(6, K), (4, K, 3), (K,)], ids=str)
@pytest.mark.parametrize("weight_kind", [None, "random"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
def test_soft_targets_match_torch(shape, weight_kind, reduction, eps):
    logits = make_logits(shape)
    weight = class_weight(weight_kind)
    probs = make_logits(shape, seed=7).detach().softmax(0 if len(shape) == 1 else 1)
    assert_same_value_and_grad(
        lambda x: ls.cross_entropy(x, probs, weight, reduction=reduction, label_smoothing=eps),
        lambda x: F.cross_entropy(x, probs, weight, reduction=reduction, label_smoothing=eps),
        logits)


@pytest.mark.parametrize("weight_kind", [None, "random"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_module_matches_torch_module(weight_kind, reduction):
    weight = class_weight(weight_kind)
    ours = ls.CrossEntropyLoss(weight, ignore_index=3, reduction=reduction, label_smoothing=0.2)
    theirs = torch.nn.CrossEntropyLoss(weight, ignore_index=3, reduction=reduction, label_smoothing=0.2)
    target = make_target((8, K, 2))
    assert_same_value_and_grad(lambda x: ours(x, target), lambda x: theirs(x, target),
                               make_logits((8, K, 2)))
    if weight is not None:
        assert torch.equal(dict(ours.named_buffers())["weight"], weight)


def test_module_moves_weight_and_distribution_with_to():
    weight = class_weight("random").float()
    module = ls.CrossEntropyLoss(weight, distribution=make_distribution("prior").float()).double()
    assert module.weight.dtype == torch.float64 and module.distribution.dtype == torch.float64


# 2. Independent float64 formula references ----------------------------------------------------------


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("weight_kind", [None, "random"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(7, K), (3, K, 4)], ids=str)
def test_distributions_match_formula(distribution, weight_kind, reduction, shape, reference_ce):
    dist = make_distribution(distribution)
    weight = class_weight(weight_kind)
    target = make_target(shape, ignore_every=3)
    options = dict(reduction=reduction, distribution=dist)
    assert_same_value_and_grad(
        lambda x: ls.cross_entropy(x, target, weight, label_smoothing=0.3, **options),
        lambda x: reference_ce(x, target, eps=0.3, weight=weight, **options),
        make_logits(shape))


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("eps", [-0.2, 0.5, 1.0])
def test_float_eps_including_negative_matches_formula(distribution, eps, reference_ce):
    dist = make_distribution(distribution)
    target = make_target((9, K))
    assert_same_value_and_grad(
        lambda x: ls.cross_entropy(x, target, label_smoothing=eps, distribution=dist),
        lambda x: reference_ce(x, target, eps=eps, distribution=dist),
        make_logits((9, K)))


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("shape", [(8, K), (2, K, 4)], ids=str)
def test_per_sample_eps_matches_formula(distribution, shape, reference_ce):
    dist = make_distribution(distribution)
    weight = class_weight("random")
    target = make_target(shape, ignore_every=5)
    # Per-sample eps spanning negative smoothing, none, and full smoothing.
    eps = torch.linspace(-0.3, 1.0, target.numel(), dtype=torch.float64).reshape(target.shape)
    assert_same_value_and_grad(
        lambda x: ls.cross_entropy(x, target, weight, label_smoothing=eps, distribution=dist),
        lambda x: reference_ce(x, target, eps=eps, weight=weight, distribution=dist),
        make_logits(shape))


def test_negative_eps_is_not_ignored():
    """torch rejects negative eps; here it is computed: the loss differs from eps = 0."""
    logits, target = make_logits((6, K)).detach(), make_target((6, K))
    plain = F.cross_entropy(logits, target)
    negative = ls.cross_entropy(logits, target, label_smoothing=-0.5)
    uniform_ce = -(logits.log_softmax(1)).mean(1).mean()
    torch.testing.assert_close(negative, 1.5 * plain - 0.5 * uniform_ce)


def test_zero_dim_per_sample_eps_equals_float_eps():
    logits, target = make_logits((5, K)), make_target((5, K))
    assert_same_value_and_grad(
        lambda x: ls.cross_entropy(x, target, label_smoothing=torch.tensor(0.25, dtype=torch.float64)),
        lambda x: ls.cross_entropy(x, target, label_smoothing=0.25), logits)


def reference_soft_cross_entropy(logits, probs, eps, distribution, weight, reduction):
    """Soft targets q: ``q' = (1 - eps) q + eps sum_y q_y u(. | y)``, loss ``-sum_c w_c q'_c log p_c``."""
    num_classes = logits.shape[1]
    x = logits.movedim(1, -1).reshape(-1, num_classes)
    q = probs.movedim(1, -1).reshape(-1, num_classes)
    # u(. | y) for every y as the rows of a (K, K) matrix, then mixed by q.
    u_given_y = reference_u_matrix(num_classes, distribution)
    q_smooth = (1 - eps) * q + eps * q @ u_given_y
    w = weight if weight is not None else torch.ones(num_classes, dtype=torch.float64)
    rows = -(w * q_smooth * x.log_softmax(1)).sum(1)
    shape = probs.shape[:1] + probs.shape[2:]
    return {"none": rows.reshape(shape), "sum": rows.sum(), "mean": rows.mean()}[reduction]


def reference_u_matrix(num_classes, distribution):
    eye = torch.eye(num_classes, dtype=torch.float64)
    if isinstance(distribution, torch.Tensor):
        return distribution.expand(num_classes, num_classes)
    return {"uniform": torch.full_like(eye, 1 / num_classes),
            "non_target": (1 - eye) / (num_classes - 1)}[distribution]


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("weight_kind", [None, "random"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_soft_targets_with_each_distribution_match_formula(distribution, weight_kind, reduction):
    dist = make_distribution(distribution)
    weight = class_weight(weight_kind)
    probs = make_logits((6, K, 2), seed=5).detach().softmax(1)
    assert_same_value_and_grad(
        lambda x: ls.cross_entropy(x, probs, weight, reduction=reduction, label_smoothing=0.4,
                                   distribution=dist),
        lambda x: reference_soft_cross_entropy(x, probs, 0.4, dist, weight, reduction),
        make_logits((6, K, 2)))


@pytest.mark.parametrize("distribution", ["uniform", "conditional"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_z_loss_and_softcap_match_formula(distribution, reduction, reference_ce):
    dist = make_distribution(distribution)
    weight = class_weight("random")
    target = make_target((6, K, 2), ignore_every=4)
    options = dict(distribution=dist, reduction=reduction, z_loss=1e-2, softcap=1.5)
    logits = make_logits((6, K, 2), scale=4.0)
    assert_same_value_and_grad(
        lambda x: ls.cross_entropy(x, target, weight, label_smoothing=0.2, **options),
        lambda x: reference_ce(x, target, eps=0.2, weight=weight, **options),
        logits)


def test_softcap_bounds_the_logits():
    """With softcap s, every |logit| is below s, so -log p_c <= 2 s + log K for any logits."""
    logits = torch.tensor([[1e6, -1e6, 0.0]], dtype=torch.float64)
    loss = ls.cross_entropy(logits, torch.tensor([1]), softcap=5.0)
    assert 9.0 < loss.item() <= 10.0 + math.log(3)


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_return_parts(distribution, reduction, reference_ce):
    dist = make_distribution(distribution)
    weight = class_weight("random")
    logits, target = make_logits((8, K)), make_target((8, K), ignore_every=3)
    loss, nll, smooth = ls.cross_entropy(logits, target, weight, reduction=reduction, label_smoothing=0.3,
                                         distribution=dist, return_parts=True)
    torch.testing.assert_close(loss, 0.7 * nll + 0.3 * smooth)
    torch.testing.assert_close(loss, reference_ce(logits, target, eps=0.3, weight=weight,
                                                  distribution=dist, reduction=reduction))
    torch.testing.assert_close(nll, F.cross_entropy(logits, target, weight, reduction=reduction))
    # smooth is H(u, p) with the same weights and reduction: the eps = 1 loss.
    torch.testing.assert_close(smooth, reference_ce(logits, target, eps=1.0, weight=weight,
                                                    distribution=dist, reduction=reduction))


def test_return_parts_is_a_named_tuple_without_smoothing():
    parts = ls.cross_entropy(make_logits((4, K)), make_target((4, K)), return_parts=True)
    assert isinstance(parts, ls.LossParts) and parts._fields == ("loss", "nll", "smooth")
    torch.testing.assert_close(parts.loss, parts.nll)
    assert parts.smooth.item() > 0  # computed even though eps = 0


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(5, K), (2, K, 3), (K,)], ids=str)
def test_all_ignored_batch_gives_zero_loss_and_zero_grad(reduction, shape):
    logits = make_logits(shape)
    target = torch.full(() if len(shape) == 1 else shape[:1] + shape[2:], -100)
    for options in (dict(), dict(weight=class_weight("random"), z_loss=0.1, return_parts=True,
                                 distribution="non_target")):
        out = ls.cross_entropy(logits, target, reduction=reduction, label_smoothing=0.1, **options)
        parts = out if isinstance(out, tuple) else (out,)
        (grad,) = torch.autograd.grad(sum(p.sum() for p in parts), logits)
        for part in parts:
            assert torch.equal(part, torch.zeros_like(part))
        assert torch.equal(grad, torch.zeros_like(grad))


def test_ignore_index_applies_to_both_terms():
    """A published implementation's defect: the smoothing term of an ignored row must vanish too."""
    logits = make_logits((4, K)).detach()
    target = torch.tensor([1, 7, 2, 0])
    with_ignored = ls.cross_entropy(logits, target, ignore_index=7, label_smoothing=0.5, reduction="none")
    assert with_ignored[1] == 0
    kept = torch.tensor([0, 2, 3])
    torch.testing.assert_close(
        ls.cross_entropy(logits, target, ignore_index=7, label_smoothing=0.5),
        ls.cross_entropy(logits[kept], target[kept], label_smoothing=0.5))


# 3. gradcheck --------------------------------------------------------------------------------------


GRADCHECK_OPTIONS = {
    "uniform+weight+ignored": dict(weight=class_weight("random"), label_smoothing=0.2),
    "non_target": dict(distribution="non_target", label_smoothing=0.3),
    "prior": dict(distribution=make_distribution("prior"), label_smoothing=0.3),
    "conditional+weight": dict(distribution=make_distribution("conditional"), label_smoothing=0.4,
                               weight=class_weight("random")),
    "per_sample_eps": dict(label_smoothing=torch.linspace(-0.2, 0.9, 6, dtype=torch.float64)),
    "z_loss+softcap": dict(z_loss=0.05, softcap=2.0, label_smoothing=0.1),
    "sum+return_parts": dict(reduction="sum", return_parts=True, label_smoothing=0.1),
    "none": dict(reduction="none", label_smoothing=0.1, distribution="non_target"),
}


@pytest.mark.slow
@pytest.mark.parametrize("options", GRADCHECK_OPTIONS.values(), ids=GRADCHECK_OPTIONS)
def test_gradcheck(options):
    logits = make_logits((6, K))
    target = make_target((6, K), ignore_every=4)

    def loss(x):
        out = ls.cross_entropy(x, target, **options)
        return tuple(out) if isinstance(out, tuple) else out

    assert torch.autograd.gradcheck(loss, (logits,))


@pytest.mark.slow
def test_gradcheck_spatial_and_soft_targets():
    logits = make_logits((2, K, 3))
    target = make_target((2, K, 3), ignore_every=4)
    probs = make_logits((2, K, 3), seed=4).detach().softmax(1)
    assert torch.autograd.gradcheck(
        lambda x: ls.cross_entropy(x, target, label_smoothing=0.2, distribution="non_target"), (logits,))
    assert torch.autograd.gradcheck(
        lambda x: ls.cross_entropy(x, probs, label_smoothing=0.2, distribution=make_distribution("prior")),
        (logits,))


# 4. Properties (hypothesis) --------------------------------------------------------------------------


@st.composite
def smoothing_problems(draw, eps_range=(-0.5, 1.0)):
    """Random (logits, target, eps, distribution) with K in [2, 7] and N in [1, 5]."""
    num_classes, rows = draw(st.integers(2, 7)), draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**16))
    eps = draw(st.floats(*eps_range))
    distribution = make_distribution(draw(st.sampled_from(DISTRIBUTIONS)), num_classes, seed)
    logits = make_logits((rows, num_classes), seed, scale=draw(st.sampled_from([0.1, 3.0, 30.0])))
    return logits, make_target((rows, num_classes), seed), eps, distribution


@pytest.mark.slow
@settings(max_examples=50, deadline=None)
@given(problem=smoothing_problems())
def test_gradient_is_softmax_minus_smoothed_target(problem, smoothing_rows):
    logits, target, eps, distribution = problem
    loss = ls.cross_entropy(logits, target, reduction="sum", label_smoothing=eps, distribution=distribution)
    (grad,) = torch.autograd.grad(loss, logits)
    num_classes = logits.shape[1]
    smoothed = ((1 - eps) * F.one_hot(target, num_classes)
                + eps * smoothing_rows(target, num_classes, distribution))
    torch.testing.assert_close(grad, logits.detach().softmax(1) - smoothed)


@pytest.mark.slow
@settings(max_examples=50, deadline=None)
@given(problem=smoothing_problems(eps_range=(0.0, 1.0)))
def test_loss_is_at_least_the_entropy_of_the_smoothed_target(problem, smoothing_rows):
    """Gibbs' inequality: H(q', p) >= H(q') when q' is a distribution (eps in [0, 1])."""
    logits, target, eps, distribution = problem
    rows = ls.cross_entropy(logits, target, reduction="none", label_smoothing=eps, distribution=distribution)
    num_classes = logits.shape[1]
    smoothed = ((1 - eps) * F.one_hot(target, num_classes)
                + eps * smoothing_rows(target, num_classes, distribution))
    entropy = -torch.special.xlogy(smoothed, smoothed).sum(1)
    assert (rows.detach() >= entropy - 1e-9).all()


# 5. Low precision, compile, in-place backward ---------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("distribution", ["uniform", "non_target"])
def test_half_precision_large_logits_stay_finite_and_close(dtype, distribution):
    """Logits of magnitude 1e4 in bf16/fp16 against a float32 reference on the same values.

    The row statistics are accumulated in fp32, so the only rounding beyond fp32's is the final
    cast of the result to the half dtype: at most half an ulp. Tolerance: one ulp of the dtype
    (``finfo.eps``, 2**-7 for bf16, 2**-10 for fp16) relative, which also covers the fp32
    reference's own ~1e-7 error. Losses stay below 2e4, inside fp16's range (65504).
    """
    g = torch.Generator().manual_seed(0)
    values = (1e4 * (2 * torch.rand(16, 11, generator=g) - 1)).to(dtype)
    target = torch.randint(0, 11, (16,), generator=g)
    target[::5] = -100
    rtol = torch.finfo(dtype).eps
    for reduction in ("none", "mean"):
        logits = values.clone().requires_grad_()
        loss = ls.cross_entropy(logits, target, reduction=reduction, label_smoothing=0.1,
                                distribution=distribution)
        (grad,) = torch.autograd.grad(loss.sum(), logits)
        logits32 = values.float().requires_grad_()
        ref = ls.cross_entropy(logits32, target, reduction=reduction, label_smoothing=0.1,
                               distribution=distribution)
        if distribution == "uniform":
            torch.testing.assert_close(ref, F.cross_entropy(logits32, target, reduction=reduction,
                                                            label_smoothing=0.1))
        (ref_grad,) = torch.autograd.grad(ref.sum(), logits32)
        assert loss.dtype == dtype and torch.isfinite(loss).all() and torch.isfinite(grad).all()
        torch.testing.assert_close(loss.float(), ref, rtol=rtol, atol=0.0)
        # Gradient entries lie in [-1, 1] (divided by the row count for 'mean'): absolute tolerance.
        torch.testing.assert_close(grad.float(), ref_grad, rtol=0.0, atol=rtol * ref_grad.abs().max())


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scale", [1.0, 10.0])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_softcap_of_half_precision_logits_is_computed_in_fp32(dtype, scale, reduction):
    """Liger-Kernel's softcap case (V = 32000, softcap 30, logits ``randn * scale``; 64 of its rows).

    Reference: float64 ``F.cross_entropy(30 tanh(x / 30))`` of the same half-precision values.
    Capping in fp32 leaves the final cast as the only half-precision rounding: every gradient
    element within one ulp of the dtype (``finfo.eps`` times the power of two below it), the loss
    within one ulp. (Capping in the logits' own dtype was off by more than one ulp on 6.5% of the
    elements.)
    """
    g = torch.Generator().manual_seed(0)
    values = (scale * torch.randn(64, 32000, generator=g)).to(dtype)
    target = torch.randint(0, 32000, (64,), generator=g)
    logits, reference_logits = values.clone().requires_grad_(), values.double().requires_grad_()
    loss = ls.cross_entropy(logits, target, softcap=30.0, reduction=reduction, impl="torch")
    reference = F.cross_entropy(30.0 * torch.tanh(reference_logits / 30.0), target, reduction=reduction)
    upstream = torch.linspace(0.5, 1.5, loss.numel()).reshape(loss.shape).to(dtype)  # exact in dtype
    (grad,) = torch.autograd.grad((loss * upstream).sum(), logits)
    (ref_grad,) = torch.autograd.grad((reference * upstream.double()).sum(), reference_logits)
    eps = torch.finfo(dtype).eps
    assert loss.dtype == dtype
    torch.testing.assert_close(loss.double(), reference.detach(), rtol=eps, atol=0.0)
    ulp = eps * torch.exp2(torch.floor(torch.log2(ref_grad.abs().clamp(min=torch.finfo(dtype).tiny))))
    assert ((grad.double() - ref_grad).abs() <= ulp).all()


@pytest.mark.slow
def test_compile_fullgraph_without_validation(reference_ce):
    """torch.compile(fullgraph=True) traces the whole loss, custom autograd.Function included.

    The "aot_eager" backend traces forward and backward like inductor does, without inductor's
    C++ compilation (tens of seconds on a cold cache); benchmarks/loss_cpu.py runs inductor.
    """
    torch._dynamo.reset()
    weight = class_weight("random")
    options = dict(distribution="non_target", z_loss=1e-3)

    def loss_fn(x, t):
        return ls.cross_entropy(x, t, weight, label_smoothing=0.1, validate_args=False, **options)

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    target = make_target((6, K), ignore_every=3)
    assert_same_value_and_grad(lambda x: compiled(x, target),
                               lambda x: reference_ce(x, target, eps=0.1, weight=weight, **options),
                               make_logits((6, K)))


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_forward_in_row_blocks_matches_formula(distribution, monkeypatch, reference_ce):
    """Large inputs run the engine's forward in row blocks; 3 rows per block leaves a ragged last block."""
    monkeypatch.setattr(engine, "FORWARD_BLOCK_ELEMENTS", 3 * K)
    dist = make_distribution(distribution)
    weight = class_weight("random")
    target = make_target((4, K, 5), ignore_every=3)
    assert_same_value_and_grad(
        lambda x: ls.cross_entropy(x, target, weight, label_smoothing=0.3, distribution=dist, z_loss=0.01),
        lambda x: reference_ce(x, target, eps=0.3, weight=weight, distribution=dist, z_loss=0.01),
        make_logits((4, K, 5)))


def test_masked_logits_match_torch():
    """Logits of -inf (masked classes) other than the target's give torch's finite loss and gradient."""
    logits = make_logits((6, K)).detach()
    logits[:, 3:] = -math.inf
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    assert_same_value_and_grad(lambda x: ls.cross_entropy(x, target), lambda x: F.cross_entropy(x, target),
                               logits.requires_grad_())


def masked_rows_with_own_eps():
    """Logits with masked (-inf) classes that are no row's target, and one eps per row, some 0."""
    logits = make_logits((4, K)).detach()
    logits[:, 3:] = -math.inf
    target = torch.tensor([0, 1, 2, 0])
    eps = torch.tensor([0.0, 0.1, 0.0, 0.3], dtype=torch.float64)
    return logits, target, eps


def per_row_torch(logits, target, eps, weight=None):
    """torch's loss (reduction="none") and gradient row by row, each with its own scalar eps."""
    losses, grads = [], []
    for row, y, e in zip(logits, target, eps.tolist()):
        x = row.unsqueeze(0).clone().requires_grad_()
        loss = F.cross_entropy(x, y.unsqueeze(0), weight, label_smoothing=e, reduction="sum")
        loss.backward()
        losses.append(loss.detach())
        grads.append(x.grad[0])
    return torch.stack(losses), torch.stack(grads)


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("return_parts", [False, True])
def test_masked_logits_with_eps_zero_in_a_per_row_eps_give_torch_finite_loss(impl, return_parts):
    """A row with eps = 0 puts no mass on its masked classes: its loss is its NLL (finite, as torch
    gives), not 0 x inf = nan; a row with eps > 0 and masked classes has an infinite loss, as torch."""
    if impl == "triton":
        pytest.importorskip("triton")
    logits, target, eps = masked_rows_with_own_eps()
    want_loss, want_grad = per_row_torch(logits, target, eps)
    x = logits.clone().requires_grad_()
    out = ls.cross_entropy(x, target, reduction="none", label_smoothing=eps, return_parts=return_parts, impl=impl)
    loss = out.loss if return_parts else out
    loss.sum().backward()
    torch.testing.assert_close(loss.detach(), want_loss)
    torch.testing.assert_close(x.grad, want_grad)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_masked_classes_ignored_rows_and_per_row_eps_match_torch_row_by_row(data):
    """Any non-target classes masked with -inf, ignored rows, class weights and one eps per row
    in [0, 1] (0 and 1 included): torch's loss and gradient, row by row (ignored rows: 0)."""
    rows = data.draw(st.integers(1, 6))
    logits = make_logits((rows, K), seed=data.draw(st.integers(0, 99))).detach()
    target = torch.tensor(data.draw(st.lists(st.sampled_from([-100, *range(K)]), min_size=rows, max_size=rows)))
    for i, y in enumerate(target.tolist()):
        masked = data.draw(st.sets(st.sampled_from([c for c in range(K) if c != y]), max_size=K - 2))
        logits[i, sorted(masked)] = -math.inf
    eps = torch.tensor(data.draw(st.lists(st.sampled_from([0.0, 0.1, 0.5, 1.0]), min_size=rows, max_size=rows)),
                       dtype=torch.float64)
    weight = class_weight(data.draw(st.sampled_from([None, "random"])))
    valid = target != -100
    want_loss, want_grad = torch.zeros(rows, dtype=torch.float64), torch.zeros(rows, K, dtype=torch.float64)
    if valid.any():
        want_loss[valid], want_grad[valid] = per_row_torch(logits[valid], target[valid], eps[valid], weight)
    x = logits.clone().requires_grad_()
    loss = ls.cross_entropy(x, target, weight, reduction="none", label_smoothing=eps)
    loss.sum().backward()
    torch.testing.assert_close(loss.detach(), want_loss)
    torch.testing.assert_close(x.grad, want_grad)
    direct_loss, direct_grad = ls.cross_entropy_with_grad(logits, target, weight, reduction="none", label_smoothing=eps)
    torch.testing.assert_close(direct_loss, want_loss)
    torch.testing.assert_close(direct_grad, want_grad)

def test_masked_logits_with_a_scalar_eps_of_zero_and_parts_give_torch_finite_loss():
    logits, target, _ = masked_rows_with_own_eps()
    parts = ls.cross_entropy(logits, target, reduction="none", label_smoothing=0.0, return_parts=True)
    torch.testing.assert_close(parts.loss, F.cross_entropy(logits, target, reduction="none"))
    torch.testing.assert_close(parts.loss, parts.nll)


@pytest.mark.parametrize("z_loss", [0.0, 1e-3])  # 1e-3: the general path, not the short one
def test_cross_entropy_with_grad_masked_logits_with_eps_zero_in_a_per_row_eps(z_loss):
    logits, target, eps = masked_rows_with_own_eps()
    want_loss, want_grad = per_row_torch(logits, target, eps)
    if z_loss:
        lse = torch.logsumexp(logits, 1)
        want_loss = want_loss + z_loss * lse.square()
        want_grad = want_grad + 2 * z_loss * (lse.unsqueeze(1) * logits.softmax(1))
    loss, grad = ls.cross_entropy_with_grad(logits, target, reduction="none", label_smoothing=eps, z_loss=z_loss)
    torch.testing.assert_close(loss, want_loss)
    torch.testing.assert_close(grad, want_grad)


def test_masking_with_the_dtypes_minimum_smooths_over_the_unmasked_classes_only(reference_ce):
    """The documented way to smooth only over unmasked classes: a prior with zero mass on them and
    their logits at the dtype's minimum (not -inf, where 0 x -inf is NaN). The float64 formula on
    the unmasked classes alone, with the prior's unmasked part (it sums to 1), is the reference."""
    logits = make_logits((4, K)).detach()
    logits[:, 3:] = torch.finfo(logits.dtype).min
    target = torch.tensor([0, 1, 2, 1])
    prior = torch.tensor([0.5, 0.3, 0.2, 0.0, 0.0], dtype=torch.float64)
    loss, grad = value_and_grad(
        lambda x: ls.cross_entropy(x, target, label_smoothing=0.2, distribution=prior, reduction="none"),
        logits.clone().requires_grad_())
    want_loss, want_grad = value_and_grad(
        lambda x: reference_ce(x, target, eps=0.2, distribution=prior[:3], reduction="none"),
        logits[:, :3].clone().requires_grad_())
    torch.testing.assert_close(loss, want_loss)
    torch.testing.assert_close(grad[:, :3], want_grad)
    torch.testing.assert_close(grad[:, 3:], torch.zeros(4, K - 3, dtype=torch.float64))

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("distribution", ["uniform", "conditional"])
def test_inplace_backward_gives_the_same_gradient(dtype, distribution):
    dist = make_distribution(distribution)
    target = make_target((6, K), ignore_every=4)
    options = dict(label_smoothing=0.2, distribution=dist if isinstance(dist, str) else dist.to(dtype))
    ref_logits = make_logits((6, K), dtype=dtype)
    ls.cross_entropy(ref_logits, target, **options).backward()
    logits = make_logits((6, K), dtype=dtype)
    ls.cross_entropy(logits, target, inplace_backward=True, **options).backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad)
