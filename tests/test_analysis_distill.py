"""Distillation loss and smoothness index against float64 formulas and torch's kl_div."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labelsmooth.analysis.distill import distillation_loss, smoothness_index


def logits_and_target(n=16, k=7, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    student = scale * torch.randn(n, k, generator=g)
    teacher = scale * torch.randn(n, k, generator=g)
    target = torch.randint(0, k, (n,), generator=g)
    return student, teacher, target


def log_softmax64(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def reference_rows(student, teacher, target, beta, temperature):
    s, t = student.double().numpy(), teacher.double().numpy()
    log_q = log_softmax64(s / temperature)
    log_p = log_softmax64(t / temperature)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=1)
    ce = -log_softmax64(s)[np.arange(len(target)), target.numpy()]
    return beta * ce + (1 - beta) * temperature ** 2 * kl


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.5, 8.0])
def test_loss_matches_a_float64_formula(beta, temperature):
    student, teacher, target = logits_and_target()
    rows = reference_rows(student, teacher, target, beta, temperature)
    for reduction, expected in (("none", rows), ("mean", rows.mean()), ("sum", rows.sum())):
        got = distillation_loss(student, teacher, target, beta=beta, temperature=temperature,
                                reduction=reduction)
        np.testing.assert_allclose(got.double().numpy(), expected, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_soft_term_matches_torch_kl_div_batchmean(temperature):
    student, teacher, target = logits_and_target(seed=1)
    beta = 0.4
    expected = (beta * F.cross_entropy(student, target)
                + (1 - beta) * temperature ** 2 * F.kl_div(F.log_softmax(student / temperature, 1),
                                                           F.softmax(teacher / temperature, 1),
                                                           reduction="batchmean"))
    got = distillation_loss(student, teacher, target, beta=beta, temperature=temperature)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("beta, temperature", [(0.0, 3.0), (0.5, 2.0), (1.0, 1.0)])
def test_gradient_is_the_closed_form_and_the_teacher_gets_none(beta, temperature):
    student, teacher, target = logits_and_target(n=8, k=5, seed=2)
    student = student.double().requires_grad_()
    teacher = teacher.double().requires_grad_()
    distillation_loss(student, teacher, target, beta=beta, temperature=temperature).backward()
    # d/ds [T^2 KL(p^T || q^T)] = T (q^T - p^T);  d/ds CE = softmax(s) - onehot(y)
    q = torch.softmax(student.detach() / temperature, 1)
    p = torch.softmax(teacher.detach() / temperature, 1)
    hard = torch.softmax(student.detach(), 1) - F.one_hot(target, 5).double()
    expected = ((1 - beta) * temperature * (q - p) + beta * hard) / len(target)
    torch.testing.assert_close(student.grad, expected)
    assert teacher.grad is None


@pytest.mark.slow
def test_gradcheck_in_float64():
    student, teacher, target = logits_and_target(n=4, k=3, seed=3)
    fn = lambda s: distillation_loss(s, teacher.double(), target, beta=0.25, temperature=2.0)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (student.double().requires_grad_(),))


@pytest.mark.parametrize("kwargs, match", [
    (dict(beta=1.5), "beta"),
    (dict(beta=-0.1), "beta"),
    (dict(temperature=0.0), "temperature"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(reduction="batchmean"), "reduction"),
])
def test_loss_rejects_bad_options(kwargs, match):
    student, teacher, target = logits_and_target()
    with pytest.raises(ValueError, match=match):
        distillation_loss(student, teacher, target, **kwargs)


def test_loss_rejects_bad_shapes_and_targets():
    student, teacher, target = logits_and_target()
    with pytest.raises(ValueError, match="teacher_logits"):
        distillation_loss(student, teacher[:, :3], target)
    with pytest.raises(ValueError, match="target"):
        distillation_loss(student, teacher, target[:3])
    with pytest.raises(ValueError, match="target"):
        distillation_loss(student, teacher, torch.full_like(target, 7))
    with pytest.raises(ValueError, match="target"):
        distillation_loss(student, teacher, target.float())


@pytest.mark.parametrize("k", [2, 10, 100])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_smoothness_index_of_exactly_smoothed_targets_is_eps(k, eps):
    target = torch.arange(12) % k
    q = torch.full((12, k), eps / k, dtype=torch.float64)
    q[torch.arange(12), target] += 1 - eps
    logits = torch.log(q.clamp_min(1e-300))
    assert float(smoothness_index(logits, target)) == pytest.approx(eps, abs=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_smoothness_index_matches_a_float64_formula(temperature):
    logits, _, target = logits_and_target(n=50, k=6, seed=4)
    log_p = log_softmax64(logits.double().numpy() / temperature)
    expected = 6 / 5 * np.mean(1 - np.exp(log_p[np.arange(50), target.numpy()]))
    assert float(smoothness_index(logits, target, temperature=temperature)) == pytest.approx(expected, rel=1e-12)


def test_smoothness_index_of_a_uniform_teacher_is_one_and_rises_with_temperature():
    target = torch.tensor([0, 1, 2])
    assert float(smoothness_index(torch.zeros(3, 3), target)) == pytest.approx(1.0)
    # for a teacher that is right (target = argmax), heating it moves mass off the target
    logits = logits_and_target(n=40, k=5, seed=5)[0]
    target = logits.argmax(1)
    values = [float(smoothness_index(logits, target, temperature=t)) for t in (0.5, 1.0, 2.0, 8.0)]
    assert values == sorted(values)


def test_smoothness_index_rejects_bad_input():
    with pytest.raises(ValueError, match="K >= 2"):
        smoothness_index(torch.zeros(3, 1), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="target"):
        smoothness_index(torch.zeros(3, 4), torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match="temperature"):
        smoothness_index(torch.zeros(3, 4), torch.tensor([0, 1, 2]), temperature=-1.0)
