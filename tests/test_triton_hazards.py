"""Hazards of the Triton path that a real GPU exposes, reproduced on Triton's interpreter.

- In-place gradients (``inplace_backward=True``) bump the logits' autograd version, so an
  operation that saved them (``logits = exp(raw)``, a second loss term) raises torch's in-place
  error instead of computing with the gradient; the same programs without ``inplace_backward``
  give torch's gradient. Leaf tensors, views of leaves and rows that share memory get a new
  buffer: the leaf's data stays as it was and ``.grad`` never aliases it.
- Every kernel launch runs inside the device guard of the tensor it works on (logits on cuda:1
  while cuda:0 is current), checked by recording the guard and every launch.
- Ignored rows are written as zeros without being read (NaN logits there stay harmless), and
  uniform / non-target smoothing without class weights reads no smoothing vector.
- ``validate_args=False`` makes no host synchronisation (``torch.compile(fullgraph=True)``
  traces it: a ``.item()`` would break the graph); ``validate_args=True`` makes exactly one.

The reference is torch (``F.cross_entropy`` or ``impl="torch"``).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install 'labelsmooth[gpu]')", allow_module_level=True)

import labelsmooth as ls  # noqa: E402
from labelsmooth.ops import cross_entropy_kernels as kernels  # noqa: E402
from labelsmooth.ops import utils  # noqa: E402
from labelsmooth.ops.cross_entropy import fused_cross_entropy_with_grad  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not utils.interpreter_active():
    pytest.skip("the kernels need CUDA or TRITON_INTERPRET=1 before triton is imported (conftest.py sets it)",
                allow_module_level=True)
FP32 = dict(rtol=1e-5, atol=1e-5)

ENTRIES = {
    "triton": lambda x, y, **kw: ls.cross_entropy(x, y, impl="triton", **kw),
    "fused": fused_cross_entropy_with_grad,
    "torch": lambda x, y, **kw: ls.cross_entropy(x, y, impl="torch", **kw),
}


def inputs(n=6, k=13, seed=0):
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randn(n, k, generator=generator).to(DEVICE).requires_grad_()
    target = torch.randint(0, k, (n,), generator=generator).to(DEVICE)
    return raw, target


def reference_grad(build, target):
    """d/d raw of F.cross_entropy(build(raw)) (+ whatever build adds), raw fresh from inputs()."""
    raw, _ = inputs()
    loss = build(raw, lambda x: F.cross_entropy(x, target, label_smoothing=0.1))
    (grad,) = torch.autograd.grad(loss, raw)
    return grad


# 1. In-place writes and autograd ----------------------------------------------------------------


@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_logits_saved_by_exp_raise_instead_of_a_wrong_gradient(entry):
    """logits = exp(raw): exp saved its output; overwriting it with the gradient made exp's backward
    multiply by the gradient (wrong by up to ~2 here); now autograd raises."""
    raw, target = inputs()
    logits = raw.exp()
    loss = ENTRIES[entry](logits, target, label_smoothing=0.1, inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_logits_saved_by_exp_without_inplace_give_torchs_gradient(entry):
    raw, target = inputs()
    loss = ENTRIES[entry](raw.exp(), target, label_smoothing=0.1)
    (grad,) = torch.autograd.grad(loss, raw)
    torch.testing.assert_close(grad, reference_grad(lambda r, ce: ce(r.exp()), target), **FP32)


@pytest.mark.parametrize("entry", ["triton", "torch"])
def test_a_second_loss_term_on_the_same_logits(entry):
    """A term created before the loss runs its backward after it: it saw the logits, so the
    in-place write must raise; created after the loss, it runs first and the result is right."""
    raw, target = inputs()
    logits = raw * 2
    penalty = logits.square().sum() * 0.01
    loss = ENTRIES[entry](logits, target, label_smoothing=0.1, inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (loss + penalty).backward()

    raw, target = inputs()
    logits = raw * 2
    loss = ENTRIES[entry](logits, target, label_smoothing=0.1, inplace_backward=True)
    penalty = logits.square().sum() * 0.01
    (grad,) = torch.autograd.grad(loss + penalty, raw)
    expected = reference_grad(lambda r, ce: ce(r * 2) + (r * 2).square().sum() * 0.01, target)
    torch.testing.assert_close(grad, expected, **FP32)


@pytest.mark.parametrize("entry", sorted(ENTRIES))
@pytest.mark.parametrize("layout", ["leaf", "view_of_leaf"])
def test_leaves_are_never_overwritten(entry, layout):
    """A leaf's .grad must not alias its data, and a parameter seen through a view keeps its values."""
    leaf, target = inputs()
    kept = leaf.detach().clone()
    logits = leaf if layout == "leaf" else leaf[:, :]
    loss = ENTRIES[entry](logits, target, label_smoothing=0.1, inplace_backward=True)
    loss.backward()
    assert torch.equal(leaf.detach(), kept)
    assert leaf.grad.data_ptr() != leaf.data_ptr()
    torch.testing.assert_close(leaf.grad, reference_grad(lambda r, ce: ce(r), target), **FP32)


@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_rows_sharing_memory_get_a_new_buffer(entry):
    """Expanded rows (stride 0) of a non-leaf: in place they would race and could not hold four
    different gradients; the gradient reaching the leaf is the sum of the rows' gradients."""
    raw, target = inputs(n=1)
    target = torch.tensor([0, 3, 7, 12], device=DEVICE)
    logits = (raw * 1).expand(4, -1)
    loss = ENTRIES[entry](logits, target, label_smoothing=0.1, inplace_backward=True)
    (grad,) = torch.autograd.grad(loss, raw)
    fresh = raw.detach().clone().requires_grad_()
    F.cross_entropy(fresh.expand(4, -1), target, label_smoothing=0.1).backward()
    torch.testing.assert_close(grad, fresh.grad, **FP32)


# 2. Launches: device guard, smoothing path, ignored rows -----------------------------------------


@pytest.fixture
def launches(monkeypatch):
    """Every kernel launch as (kernel name, constexpr/launch kwargs, device made current or None)."""
    recorded, current = [], []

    class RecordingGuard:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            current.append(self.device)

        def __exit__(self, *exc):
            current.pop()

    monkeypatch.setitem(utils.DEVICE_GUARDS, torch.device(DEVICE).type, RecordingGuard)
    for name in ("_statistics_kernel", "_gradient_kernel", "_statistics_and_gradient_kernel", "_scale_rows_kernel"):
        kernel = getattr(kernels, name)

        class Recording:
            def __init__(self, kernel, name):
                self.kernel, self.name = kernel, name

            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    recorded.append((self.name, kwargs, current[-1] if current else None, args))
                    return self.kernel[grid](*args, **kwargs)
                return launch

        monkeypatch.setattr(kernels, name, Recording(kernel, name))
    return recorded


@pytest.mark.parametrize("entry", ["triton", "fused"])
def test_every_launch_runs_inside_the_device_guard(entry, launches):
    raw, target = inputs()
    logits = raw * 1
    ENTRIES[entry](logits, target, label_smoothing=0.1, z_loss=1e-3, reduction="none").sum().mul(2).backward()
    assert len(launches) >= 2
    for name, _, device, _ in launches:
        assert device == logits.device, name


@pytest.mark.parametrize("distribution, weighted, mode", [
    ("uniform", False, kernels.SCALAR_SMOOTHING), ("non_target", False, kernels.SCALAR_SMOOTHING),
    ("uniform", True, kernels.VECTOR_SMOOTHING), ("prior", False, kernels.VECTOR_SMOOTHING),
    ("table", False, kernels.MATRIX_SMOOTHING)])
@pytest.mark.parametrize("entry", ["triton", "fused"])
def test_which_smoothing_operand_is_read(entry, distribution, weighted, mode, launches):
    """The scalar path passes no vector; the result equals torch's either way."""
    raw, target = inputs()
    k = raw.shape[1]
    dist = {"prior": torch.full((k,), 1.0 / k, device=DEVICE),
            "table": torch.full((k, k), 1.0 / k, device=DEVICE)}.get(distribution, distribution)
    weight = torch.linspace(0.5, 1.5, k, device=DEVICE) if weighted else None
    loss = ENTRIES[entry](raw * 1, target, weight=weight, label_smoothing=0.2, distribution=dist)
    (grad,) = torch.autograd.grad(loss, raw)
    expected = ls.cross_entropy(raw, target, weight, label_smoothing=0.2, distribution=dist, impl="torch")
    (expected_grad,) = torch.autograd.grad(expected, raw)
    torch.testing.assert_close((loss, grad), (expected, expected_grad), **FP32)
    forward = [kwargs for name, kwargs, _, _ in launches if name != "_scale_rows_kernel"]
    assert forward[0]["SMOOTHING"] == mode
    if mode == kernels.SCALAR_SMOOTHING:  # the smoothing pointer is a stand-in: the lse buffer
        args = next(args for name, _, _, args in launches if name != "_scale_rows_kernel")
        assert all(not (isinstance(a, torch.Tensor) and a.shape == (k,) and a.dtype == torch.float32
                        and torch.allclose(a, torch.full_like(a, 1.0 / k))) for a in args)


@pytest.mark.parametrize("entry", ["triton", "fused"])
def test_ignored_rows_are_not_read(entry):
    """NaN logits in ignored rows: the fused kernel skips them (z-loss too); the plain path's
    backward writes zeros without reading for rows whose upstream gradients are all zero (its
    forward, which does not know which rows are ignored, reads them; z-loss would then give
    0 * NaN upstream). Loss and gradient equal torch's on clean rows."""
    raw, target = inputs()
    target[[1, 4]] = -100
    poisoned = raw.detach().clone()
    poisoned[[1, 4]] = float("nan")
    x = poisoned.requires_grad_()
    z_loss = 1e-3 if entry == "fused" else 0.0
    loss = ENTRIES[entry](x * 1, target, label_smoothing=0.1, z_loss=z_loss)
    (grad,) = torch.autograd.grad(loss, x)
    clean = raw.detach().clone().requires_grad_()
    expected = ls.cross_entropy(clean, target, label_smoothing=0.1, z_loss=z_loss, impl="torch")
    (expected_grad,) = torch.autograd.grad(expected, clean)
    torch.testing.assert_close((loss, grad), (expected, expected_grad), **FP32)


# 3. Host synchronisation -------------------------------------------------------------------------


class _CountHostSyncs(TorchDispatchMode):
    """Counts the reads of device values by the host: each ``.tolist()`` or ``.item()`` call (one
    transfer each on CUDA, however many values) and any other operator that needs a value on the
    host (``_local_scalar_dense``: ``bool(t)``, ``int(t)``; ``nonzero``)."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.syncs, self.inside = 0, False
        for name in ("tolist", "item"):
            monkeypatch.setattr(torch.Tensor, name, self._counted(getattr(torch.Tensor, name)))

    def _counted(self, method):
        def counted(tensor, *args):
            self.syncs += 1
            self.inside = True
            try:
                return method(tensor, *args)
            finally:
                self.inside = False
        return counted

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.inside and ("_local_scalar_dense" in str(func) or "nonzero" in str(func)):
            self.syncs += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("entry", ["triton", "fused"])
@pytest.mark.parametrize("validate_args, syncs", [(True, 1), (False, 0)])
def test_host_syncs(entry, validate_args, syncs, monkeypatch):
    raw, target = inputs()
    target[2] = -100
    prior = torch.full((raw.shape[1],), 1.0 / raw.shape[1], device=DEVICE)
    logits = raw * 1
    eps = torch.full((6,), 0.1, device=DEVICE)
    with _CountHostSyncs(monkeypatch) as counter:
        loss = ENTRIES[entry](logits, target, label_smoothing=eps, distribution=prior, validate_args=validate_args)
        loss.backward()
    assert counter.syncs == syncs


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["triton", "fused"])
def test_compiles_with_fullgraph(entry):
    """torch.compile(fullgraph=True) (aot_eager: no C++ compiler needed) traces the custom operators;
    a host sync or an untraceable call would fail here. Values and gradients equal eager torch."""
    torch._dynamo.reset()
    raw, target = inputs()
    target[2] = -100

    def loss_fn(x, y):
        return ENTRIES[entry](x * 1, y, label_smoothing=0.1, z_loss=1e-3, validate_args=False,
                              inplace_backward=True)

    loss = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")(raw, target)
    (grad,) = torch.autograd.grad(loss, raw)
    clean = raw.detach().clone().requires_grad_()
    expected = ls.cross_entropy(clean, target, label_smoothing=0.1, z_loss=1e-3, impl="torch")
    (expected_grad,) = torch.autograd.grad(expected, clean)
    torch.testing.assert_close((loss, grad), (expected, expected_grad), **FP32)
