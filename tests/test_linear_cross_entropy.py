"""Correctness of ``labelsmooth.linear_cross_entropy`` (the chunked fused linear + CE, CPU).

References: the materialised logits ``F.linear(hidden, weight, bias)`` fed to
``torch.nn.functional.cross_entropy`` (uniform distribution), to the dense float64 formula of
``conftest.reference_cross_entropy`` (every distribution), and to ``labelsmooth.cross_entropy``.
Sizes are odd on purpose: N and V are not multiples of the token chunk or the vocabulary block.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import labelsmooth as ls

N, D, V = 13, 6, 37
REDUCTIONS = ["none", "mean", "sum"]
DISTRIBUTIONS = ["uniform", "non_target", "prior", "conditional"]
# Both schedules: whole-vocabulary tiles (a scalar loss forms its gradient in forward) and
# vocabulary blocks (backward recomputes the tiles). 4 token chunks (the last of 1 token);
# 4 vocabulary blocks (the last of 7 columns).
SCHEDULES = {"gradient_in_forward": dict(chunk_size=4), "recompute": dict(chunk_size=4, vocab_chunk_size=10)}
TILES = SCHEDULES["recompute"]


def make_head(n=N, d=D, v=V, seed=0, dtype=torch.float64, scale=1.0, leading=None):
    """hidden (n, d) (or leading + (d,)), weight (v, d), bias (v,), all requiring grad."""
    g = torch.Generator().manual_seed(seed)
    shape = (leading or (n,)) + (d,)
    hidden = torch.randn(shape, generator=g, dtype=torch.float64)
    weight = scale * torch.randn(v, d, generator=g, dtype=torch.float64)
    bias = 0.5 * torch.randn(v, generator=g, dtype=torch.float64)
    return tuple(t.to(dtype).requires_grad_() for t in (hidden, weight, bias))


def make_target(shape, v=V, seed=0, ignore_every=None):
    g = torch.Generator().manual_seed(seed + 1)
    target = torch.randint(0, v, shape, generator=g)
    if ignore_every:
        target.view(-1)[::ignore_every] = -100
    return target


def make_distribution(name, v=V, seed=0):
    """A named distribution, or a random (v,) prior / (v, v) class-conditional table in float64."""
    g = torch.Generator().manual_seed(seed + 2)
    random_tables = {"prior": lambda: torch.rand(v, generator=g, dtype=torch.float64).softmax(0),
                     "conditional": lambda: torch.randn(v, v, generator=g, dtype=torch.float64).softmax(1)}
    return random_tables[name]() if name in random_tables else name


def class_weight(v=V, seed=0):
    g = torch.Generator().manual_seed(seed + 3)
    return 0.2 + 2 * torch.rand(v, generator=g, dtype=torch.float64)


def value_and_grads(fn, tensors):
    """``fn(*tensors)`` and the gradients of ``sum(out * upstream)`` w.r.t. the tensors needing one."""
    out = fn(*tensors)
    upstream = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)
    leaves = [t for t in tensors if t is not None and t.requires_grad]
    grads = torch.autograd.grad((out * upstream).sum(), leaves)
    return out.detach(), grads


def assert_same(fn, reference, tensors, **tolerance):
    out, grads = value_and_grads(fn, tensors)
    ref_out, ref_grads = value_and_grads(reference, tensors)
    torch.testing.assert_close(out, ref_out, **tolerance)
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(grad, ref_grad, **tolerance)


# 1. Exact against the materialised logits, every option --------------------------------------------


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("with_weight", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
def test_uniform_matches_torch_on_materialised_logits(schedule, reduction, with_weight, eps):
    weight = class_weight() if with_weight else None
    target = make_target((N,), ignore_every=4)
    assert_same(
        lambda h, w, b: ls.linear_cross_entropy(h, w, target, b, reduction=reduction, label_smoothing=eps,
                                                class_weight=weight, **SCHEDULES[schedule]),
        lambda h, w, b: F.cross_entropy(F.linear(h, w, b), target, weight, reduction=reduction,
                                        label_smoothing=eps),
        make_head())


@pytest.mark.slow
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("softcap", [None, 2.5])
@pytest.mark.parametrize("with_weight", [False, True])
def test_every_option_matches_formula_and_core(schedule, distribution, reduction, softcap, with_weight,
                                               reference_ce):
    dist = make_distribution(distribution)
    weight = class_weight() if with_weight else None
    target = make_target((N,), ignore_every=3)
    options = dict(reduction=reduction, distribution=dist, z_loss=0.01, softcap=softcap)

    def fused(h, w, b):
        return ls.linear_cross_entropy(h, w, target, b, label_smoothing=0.3, class_weight=weight,
                                       **options, **SCHEDULES[schedule])

    assert_same(fused, lambda h, w, b: reference_ce(F.linear(h, w, b).double(), target, eps=0.3,
                                                    weight=weight, **options), make_head())
    assert_same(fused, lambda h, w, b: ls.cross_entropy(F.linear(h, w, b), target, weight,
                                                        label_smoothing=0.3, **options), make_head())


@pytest.mark.slow
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("softcap", [None, 4.0])
def test_per_sample_and_negative_eps_match_formula(schedule, distribution, softcap, reference_ce):
    dist = make_distribution(distribution)
    target = make_target((N,), ignore_every=5)
    for eps in (torch.linspace(-0.3, 1.0, N, dtype=torch.float64), -0.2):
        assert_same(
            lambda h, w, b, eps=eps: ls.linear_cross_entropy(h, w, target, b, reduction="sum", label_smoothing=eps,
                                                             distribution=dist, softcap=softcap,
                                                             **SCHEDULES[schedule]),
            lambda h, w, b, eps=eps: reference_ce(F.linear(h, w, b), target, reduction="sum", eps=eps,
                                                  distribution=dist, softcap=softcap),
            make_head())


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_batch_time_hidden_matches_torch(reduction):
    """(B, T, D) hidden with (B, T) targets, as an LM head sees them."""
    hidden, weight, bias = make_head(leading=(3, 5))
    target = make_target((3, 5), ignore_every=6)
    assert_same(
        lambda h, w, b: ls.linear_cross_entropy(h, w, target, b, reduction=reduction, label_smoothing=0.1,
                                                chunk_size=4),
        lambda h, w, b: F.cross_entropy(F.linear(h, w, b).movedim(-1, 1), target, reduction=reduction,
                                        label_smoothing=0.1),
        (hidden, weight, bias))


@pytest.mark.parametrize("chunk_size", [1, 5, N, N + 7, None])
@pytest.mark.parametrize("vocab_chunk_size", [1, 7, V, V + 5, None])
def test_tile_sizes_do_not_change_the_result(chunk_size, vocab_chunk_size):
    target = make_target((N,), ignore_every=4)
    dist = make_distribution("prior")
    assert_same(
        lambda h, w, b: ls.linear_cross_entropy(h, w, target, b, label_smoothing=0.2, distribution=dist,
                                                z_loss=0.05, chunk_size=chunk_size,
                                                vocab_chunk_size=vocab_chunk_size),
        lambda h, w, b: ls.cross_entropy(F.linear(h, w, b), target, label_smoothing=0.2, distribution=dist,
                                         z_loss=0.05),
        make_head())


def test_return_parts_match_core():
    hidden, weight, bias = make_head()
    target = make_target((N,), ignore_every=3)
    options = dict(label_smoothing=0.25, distribution="non_target", return_parts=True)
    ours = ls.linear_cross_entropy(hidden, weight, target, bias, **options, **TILES)
    reference = ls.cross_entropy(F.linear(hidden, weight, bias), target, **options)
    for part, ref_part in zip(ours, reference, strict=True):
        torch.testing.assert_close(part, ref_part)
    # the parts carry gradients: nll alone matches the unsmoothed torch loss
    assert_same(
        lambda h, w, b: ls.linear_cross_entropy(h, w, target, b, **options, **TILES).nll,
        lambda h, w, b: F.cross_entropy(F.linear(h, w, b), target),
        (hidden, weight, bias))


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_no_bias_and_frozen_head(schedule):
    hidden, weight, _ = make_head()
    weight.requires_grad_(False)
    target = make_target((N,))
    assert_same(
        lambda h, w: ls.linear_cross_entropy(h, w, target, label_smoothing=0.1, **SCHEDULES[schedule]),
        lambda h, w: F.cross_entropy(F.linear(h, w), target, label_smoothing=0.1),
        (hidden, weight))


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_all_ignored_batch_gives_zero_loss_and_zero_grads(schedule):
    hidden, weight, bias = make_head()
    target = torch.full((N,), -100)
    loss = ls.linear_cross_entropy(hidden, weight, target, bias, label_smoothing=0.1, **SCHEDULES[schedule])
    loss.backward()
    assert loss.item() == 0.0
    for t in (hidden, weight, bias):
        assert torch.count_nonzero(t.grad) == 0


@pytest.mark.parametrize("reduction, vocab_chunk_size, schedule", [
    ("mean", None, "_GradientInForward"), ("sum", None, "_GradientInForward"),
    ("none", None, "_RecomputedStatistics"), ("mean", 10, "_RecomputedStatistics")])
def test_schedule_follows_reduction_and_vocabulary_blocks(reduction, vocab_chunk_size, schedule):
    hidden, weight, bias = make_head()
    loss = ls.linear_cross_entropy(hidden, weight, make_target((N,)), bias, reduction=reduction,
                                   vocab_chunk_size=vocab_chunk_size)
    function = loss.grad_fn if reduction != "none" else loss.grad_fn.next_functions[0][0]
    while not type(function).__name__.startswith("_"):  # walk back to the custom Function
        function = function.next_functions[0][0]
    assert type(function).__name__ == schedule + "Backward"


def test_gradient_in_forward_refuses_a_second_backward():
    hidden, weight, bias = make_head()
    loss = ls.linear_cross_entropy(hidden, weight, make_target((N,)), bias, label_smoothing=0.1)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward through the same loss twice"):
        loss.backward()


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_no_tensor_of_logits_size_is_saved_for_backward(schedule):
    """The graph keeps nothing with N x V elements; the materialised path does (the check can fail)."""
    n, v = 64, 300
    hidden, weight, bias = make_head(n=n, v=v)
    target = make_target((n,), v=v)
    sizes = []

    def record(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(record, lambda t: t):
        ls.linear_cross_entropy(hidden, weight, target, bias, label_smoothing=0.1, chunk_size=16,
                                vocab_chunk_size=None if schedule == "gradient_in_forward" else 128)
    assert max(sizes, default=0) < n * v
    sizes.clear()
    with torch.autograd.graph.saved_tensors_hooks(record, lambda t: t):
        F.cross_entropy(F.linear(hidden, weight, bias), target, label_smoothing=0.1)
    assert max(sizes) >= n * v


# 2. Low precision ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bf16_inputs_against_fp32_reference():
    """bf16 hidden/head against fp32 on the same (bf16-representable) values.

    Tolerance: logits come from a bf16 matmul (relative rounding 2^-8), so the loss may differ by
    about 2^-8 * max|z| and each gradient by about 2^-7 of its largest entry; we allow 1e-2 and
    2e-2 of the largest entry (the materialised bf16 path is off by about 0.7e-2 here).
    """
    n = 64
    hidden, weight, bias = make_head(n=n, dtype=torch.bfloat16)
    target = make_target((n,), ignore_every=7)
    fused = ls.linear_cross_entropy(hidden, weight, target, bias, label_smoothing=0.1, chunk_size=1,
                                    vocab_chunk_size=16)
    fused.backward()
    assert fused.dtype == torch.bfloat16 and weight.grad.dtype == torch.bfloat16
    fp32 = [t.detach().float().requires_grad_() for t in (hidden, weight, bias)]
    reference = F.cross_entropy(F.linear(*fp32), target, label_smoothing=0.1)
    reference.backward()
    torch.testing.assert_close(fused.float(), reference, atol=1e-2, rtol=1e-2)
    for t, ref in zip((hidden, weight, bias), fp32, strict=True):
        scale = ref.grad.abs().max()
        assert (t.grad.float() - ref.grad).abs().max() <= 2e-2 * scale


@pytest.mark.slow
def test_bf16_weight_gradient_is_summed_in_fp32():
    """512 tokens with one target and hidden ~ 1: dW[y] ~ -512, built from 256 two-token tiles.

    A bf16 running sum would stall (its spacing near 512 is 4, each tile adds about 2); the fp32
    sum stays within bf16's own rounding (2^-8) of the fp32 reference.
    """
    n, v = 512, 8
    g = torch.Generator().manual_seed(0)
    hidden = (1 + 0.01 * torch.randn(n, D, generator=g)).bfloat16().requires_grad_()
    weight = (0.1 * torch.randn(v, D, generator=g)).bfloat16().requires_grad_()
    target = torch.zeros(n, dtype=torch.long)
    ls.linear_cross_entropy(hidden, weight, target, reduction="sum", chunk_size=2).backward()
    reference = weight.detach().float().requires_grad_()
    F.cross_entropy(F.linear(hidden.detach().float(), reference), target, reduction="sum").backward()
    torch.testing.assert_close(weight.grad.float(), reference.grad, rtol=2**-8, atol=1e-3)


# 3. Gradient filtering ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("vocab_chunk_size", [None, 300])
def test_filtering_is_within_its_stated_bound(vocab_chunk_size):
    """Skipped entries of dL/dz are g_lse * p with p < filter_eps; the module docstring's bound.

    Here reduction="sum", no z-loss, uniform smoothing and class weights w, so
    g_lse_n = (1 - eps) w_y + eps * mean(w) for every kept row.
    """
    n, v, eps, filter_eps = 40, 700, 0.1, 1e-3
    hidden, weight, bias = make_head(n=n, v=v, scale=5.0)  # peaked softmax: many blocks negligible
    target = make_target((n,), v=v, ignore_every=9)
    w = class_weight(v)
    options = dict(reduction="sum", label_smoothing=eps, class_weight=w, chunk_size=2,
                   vocab_chunk_size=vocab_chunk_size)
    tensors = (hidden, weight, bias)
    exact = ls.linear_cross_entropy(hidden, weight, target, bias, **options)
    filtered = ls.linear_cross_entropy(hidden, weight, target, bias, filter_eps=filter_eps, **options)
    torch.testing.assert_close(filtered, exact)  # the forward is never filtered

    with torch.no_grad():
        valid = target != -100
        p = F.linear(hidden, weight, bias).softmax(1)
        small = torch.where((p < filter_eps) & valid[:, None], p, 0.0)  # what filtering may drop
        g_lse = (1 - eps) * w[target.clamp(min=0)] + eps * w.mean()
        dropped = g_lse[:, None] * small
        bound_hidden = dropped.sum(1, keepdim=True) * weight.norm(dim=1).max()
        bound_weight = dropped.T @ hidden.abs()
        bound_bias = dropped.sum(0)
    grad_h, grad_w, grad_b = torch.autograd.grad(filtered, tensors)
    exact_h, exact_w, exact_b = torch.autograd.grad(exact, tensors)
    assert ((grad_h - exact_h).norm(dim=1, keepdim=True) <= bound_hidden + 1e-12).all()
    assert ((grad_w - exact_w).abs() <= bound_weight + 1e-12).all()
    assert ((grad_b - exact_b).abs() <= bound_bias + 1e-12).all()
    assert (grad_w - exact_w).abs().max() > 0, "nothing was filtered: the test would not test anything"


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("distribution", ["non_target", "conditional"])
def test_filtering_keeps_smoothing_and_target_terms_exact(schedule, distribution):
    """With a threshold below every softmax value nothing is skipped: identical to the exact path."""
    hidden, weight, bias = make_head()
    target = make_target((N,), ignore_every=4)
    dist = make_distribution(distribution)
    options = dict(label_smoothing=0.3, distribution=dist, class_weight=class_weight(), **SCHEDULES[schedule])
    assert_same(lambda h, w, b: ls.linear_cross_entropy(h, w, target, b, filter_eps=1e-300, **options),
                lambda h, w, b: ls.linear_cross_entropy(h, w, target, b, **options),
                (hidden, weight, bias))


# 4. Bad input --------------------------------------------------------------------------------------------


def _call(**overrides):
    hidden, weight, bias = make_head()
    args = dict(hidden=hidden, weight=weight, target=make_target((N,)), bias=bias)
    args.update(overrides)
    return ls.linear_cross_entropy(**args)


@pytest.mark.parametrize("overrides, match", [
    (dict(hidden=torch.ones(N, D, dtype=torch.long)), "hidden must be a floating"),
    (dict(weight=torch.randn(V, D + 1, dtype=torch.float64)), r"weight must have shape \(V, 6\)"),
    (dict(weight=torch.ones(V, D, dtype=torch.long)), "weight must be a floating tensor on hidden's device"),
    (dict(bias=torch.randn(V + 1, dtype=torch.float64)), r"bias must have shape \(37,\)"),
    (dict(target=torch.zeros(N + 1, dtype=torch.long)), r"target must have shape \(13,\)"),
    (dict(target=torch.zeros(N)), "target must hold integer class indices"),
    (dict(target=torch.full((N,), V)), r"target must hold class indices in \[0, 37\)"),
    (dict(label_smoothing=1.5), "label_smoothing must be finite and at most 1"),
    (dict(reduction="avg"), "reduction must be one of"),
    (dict(class_weight=torch.ones(V - 1, dtype=torch.float64)), r"class_weight must have shape \(37,\)"),
    (dict(distribution=torch.ones(V + 1)), "distribution as a tensor must have shape"),
    (dict(chunk_size=0), "chunk_size must be a positive int"),
    (dict(vocab_chunk_size=2.5), "vocab_chunk_size must be a positive int"),
    (dict(filter_eps=1.5), r"filter_eps must be a float in \(0, 1\)"),
    (dict(filter_eps=1e-3, softcap=5.0), "filter_eps cannot be combined with softcap"),
    (dict(softcap=-1.0), "softcap must be a positive float"),
    (dict(impl="triton", filter_eps=1e-3), "impl='triton' .* does not take filter_eps"),
    (dict(impl="triton", reduction="none"), "impl='triton' .* does not take a gradient of a loss that is not"),
    (dict(impl="cuda"), "impl must be 'auto', 'chunked' or 'triton'"),
])
def test_bad_input_raises_value_error(overrides, match):
    with pytest.raises(ValueError, match=match):
        _call(**overrides)
