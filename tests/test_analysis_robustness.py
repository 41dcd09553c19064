"""FGSM, PGD, transfer attacks and robust accuracy.

References are independent: the closed form of FGSM (and of PGD's limit) on a linear softmax
model, the margin loss as a float64 NumPy formula, the budget box checked in float64, and a
model trained here on scikit-learn's digits for the comparisons that have no closed form.
"""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from labelsmooth.analysis.pixels import Standardize
from labelsmooth.analysis.robustness import (
    Attack,
    attack_loss,
    correct_predictions,
    craft_adversarial,
    fgsm,
    margin_loss,
    pgd,
    robust_correct,
)


def linear_model(num_classes: int, dim: int, seed: int, dtype=torch.float64) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(dim, num_classes, dtype=dtype)


def pixels_with_edges(n: int, dim: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    """Uniform pixels in [0, 1], a quarter of them exactly 0 or 1 (the clipping must show)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, dim, generator=generator, dtype=dtype)
    edge = torch.rand(n, dim, generator=generator) < 0.25
    return torch.where(edge, (torch.rand(n, dim, generator=generator) < 0.5).to(dtype), x)


def softmax_np(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# 1. FGSM and PGD against the closed form on linear models -------------------------------------------------------


@pytest.mark.parametrize("standardize", [None, Standardize(0.3, 0.2)])
def test_fgsm_on_a_two_class_linear_model_moves_every_pixel_toward_the_other_template(standardize):
    # L = -log softmax(z)_y, z = W T(x) + b: grad_x = W^T (p - e_y) / std = p_{y'} (w_{y'} - w_y) / std,
    # so sign(grad) = sign(w_{y'} - w_y) whatever x: x_adv = clip(x + budget * sign(w_{y'} - w_y), 0, 1).
    model = linear_model(2, 30, seed=0)
    x, y = pixels_with_edges(40, 30, seed=1), torch.randint(0, 2, (40,), generator=torch.Generator().manual_seed(2))
    w = model.weight.detach().numpy()
    direction = np.sign(w[1 - y.numpy()] - w[y.numpy()])
    for budget in (0.05, 0.1, 0.2):
        adversarial = fgsm(model, x, y, budget, to_model_input=standardize)
        np.testing.assert_array_equal(adversarial.numpy(), np.clip(x.numpy() + budget * direction, 0, 1))


def test_fgsm_on_a_k_class_linear_model_follows_the_float64_gradient_formula():
    model = linear_model(5, 20, seed=3)
    x, y = pixels_with_edges(50, 20, seed=4), torch.randint(0, 5, (50,), generator=torch.Generator().manual_seed(5))
    w, b = model.weight.detach().numpy(), model.bias.detach().numpy()
    standardize = Standardize(0.5, 0.25)
    z = ((x.numpy() - 0.5) / 0.25) @ w.T + b
    gradient = (softmax_np(z) - np.eye(5)[y.numpy()]) @ w / 0.25  # d/dx of -log softmax(z)_y
    assert np.abs(gradient).min() > 1e-9  # every sign is meaningful
    adversarial = fgsm(model, x, y, 0.1, to_model_input=standardize)
    np.testing.assert_array_equal(adversarial.numpy(), np.clip(x.numpy() + 0.1 * np.sign(gradient), 0, 1))


def test_fgsm_on_the_margin_loss_moves_toward_the_runner_up_template():
    # margin = z_{j*} - z_y with j* the best other class: its gradient is w_{j*} - w_y.
    model = linear_model(6, 16, seed=6)
    x, y = pixels_with_edges(30, 16, seed=7), torch.randint(0, 6, (30,), generator=torch.Generator().manual_seed(8))
    w = model.weight.detach().numpy()
    z = model(x).detach().numpy()
    z[np.arange(30), y.numpy()] = -np.inf
    runner_up = z.argmax(1)
    expected = np.clip(x.numpy() + 0.2 * np.sign(w[runner_up] - w[y.numpy()]), 0, 1)
    np.testing.assert_array_equal(fgsm(model, x, y, 0.2, loss="margin").numpy(), expected)


@pytest.mark.slow
def test_pgd_on_a_two_class_linear_model_reaches_the_fgsm_corner_from_any_random_start():
    # The loss is monotone along sign(w_{y'} - w_y) in every pixel, so its maximum over the box is the
    # corner FGSM jumps to; PGD's steps (2.5 budgets in all) reach it from anywhere in the box.
    model = linear_model(2, 25, seed=9)
    x, y = pixels_with_edges(20, 25, seed=10), torch.randint(0, 2, (20,), generator=torch.Generator().manual_seed(11))
    corner = fgsm(model, x, y, 0.1)
    for seed in range(3):
        adversarial = pgd(model, x, y, 0.1, steps=10, generator=torch.Generator().manual_seed(seed))
        np.testing.assert_allclose(adversarial.numpy(), corner.numpy(), rtol=0, atol=1e-15)


# 2. The budget, the pixel range and the losses ------------------------------------------------------------------


def small_mlp(dim: int, num_classes: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(dim, 32), torch.nn.ReLU(), torch.nn.Linear(32, num_classes))


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["cross_entropy", "margin"])
@pytest.mark.parametrize("budget", [0.05, 0.1, 0.2])
def test_pgd_never_leaves_the_budget_ball_or_the_pixel_range(loss, budget):
    model = small_mlp(36, 4, seed=12)
    x = pixels_with_edges(64, 36, seed=13, dtype=torch.float32)
    y = torch.randint(0, 4, (64,), generator=torch.Generator().manual_seed(14))
    # A step far larger than the ball: every step would leave it without the projection.
    adversarial = pgd(model, x, y, budget, steps=7, step_size=3 * budget, loss=loss,
                      generator=torch.Generator().manual_seed(15))
    moved = (adversarial.double() - x.double()).abs()
    # x + budget is rounded to float32 once: at most half an ulp of 1.0 (6e-8) beyond the radius.
    assert moved.max().item() <= budget + 6e-8
    assert moved.max().item() >= budget - 1e-6  # the attack does use its budget
    assert adversarial.min().item() >= 0 and adversarial.max().item() <= 1


def test_margin_loss_matches_the_float64_formula_for_any_leading_shape():
    logits = torch.randn(3, 7, 5, generator=torch.Generator().manual_seed(16), dtype=torch.float64)
    target = torch.randint(0, 5, (3, 7), generator=torch.Generator().manual_seed(17))
    z, t = logits.numpy(), target.numpy()
    true = np.take_along_axis(z, t[..., None], -1)[..., 0]
    others = np.where(np.arange(5) == t[..., None], -np.inf, z).max(-1)
    np.testing.assert_allclose(margin_loss(logits, target).numpy(), others - true, rtol=0, atol=1e-15)
    assert ((margin_loss(logits, target) > 0) == (logits.argmax(-1) != target)).all()


def test_attack_loss_cross_entropy_is_the_float64_negative_log_softmax():
    logits = torch.randn(9, 4, generator=torch.Generator().manual_seed(18), dtype=torch.float64)
    target = torch.randint(0, 4, (9,), generator=torch.Generator().manual_seed(19))
    expected = -np.log(softmax_np(logits.numpy())[np.arange(9), target.numpy()])
    np.testing.assert_allclose(attack_loss(logits, target).numpy(), expected, rtol=1e-12)


# 3. Attacks on a trained model: PGD is the stronger attack; gradient masking is caught by transfer --------------


@pytest.fixture(scope="module")
def digits_model():
    """An MLP trained on scikit-learn's digits (pixels 0..16 scaled to [0, 1], fed standardised)."""
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    standardize = Standardize(float(x[:1400].mean()), float(x[:1400].std()))
    model = small_mlp(64, 10, seed=20)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(standardize(x[:1400])), y[:1400]).backward()
        optimizer.step()
    model.requires_grad_(False)
    return model, standardize, x[1400:], y[1400:]


@pytest.mark.slow
def test_pgd_is_at_least_as_strong_as_fgsm_on_a_trained_model(digits_model):
    model, standardize, x, y = digits_model
    clean = correct_predictions(model, x, y, to_model_input=standardize).float().mean().item()
    assert clean > 0.9
    gaps = []
    for budget in (0.05, 0.2):
        for loss in ("cross_entropy", "margin"):
            fgsm_accuracy = robust_correct(model, x, y, Attack("fgsm", budget, loss=loss),
                                           to_model_input=standardize).float().mean().item()
            pgd_accuracy = robust_correct(model, x, y, Attack("pgd", budget, loss=loss),
                                          to_model_input=standardize, seed=1).float().mean().item()
            assert pgd_accuracy <= fgsm_accuracy < clean
            gaps.append(fgsm_accuracy - pgd_accuracy)
    assert max(gaps) > 0.01  # and strictly stronger somewhere


@pytest.mark.parametrize("masking", ["detached", "quantized"])
def test_a_model_without_a_useful_gradient_is_not_robust_under_the_transfer_control(digits_model, masking):
    model, standardize, x, y = digits_model
    if masking == "detached":
        def masked(inputs):  # the same function, its output cut from the graph
            return model(inputs).detach()
    else:
        def masked(inputs):  # inputs rounded to 1/64 of a standard deviation: gradient zero almost everywhere
            return model(torch.round(inputs * 64) / 64)
    clean = correct_predictions(masked, x, y, to_model_input=standardize).float().mean().item()
    attack = Attack("fgsm", 0.1)
    white_box = robust_correct(masked, x, y, attack, to_model_input=standardize).float().mean().item()
    transfer = robust_correct(masked, x, y, attack, source_model=model,
                              to_model_input=standardize).float().mean().item()
    assert white_box == clean  # the white-box attack sees a zero gradient and moves nothing
    assert transfer < clean - 0.4  # crafted on the differentiable twin, the examples fool it


# 4. Data sets in batches, stacked cells, seeds ---------------------------------------------------------------


@pytest.mark.slow
def test_craft_adversarial_does_not_depend_on_the_batch_size_and_follows_the_seed():
    model = small_mlp(16, 3, seed=21)
    x = pixels_with_edges(50, 16, seed=22, dtype=torch.float32)
    y = torch.randint(0, 3, (50,), generator=torch.Generator().manual_seed(23))
    attack = Attack("pgd", 0.1, steps=5)
    whole = craft_adversarial(model, x, y, attack, batch_size=50, seed=4)
    torch.testing.assert_close(craft_adversarial(model, x, y, attack, batch_size=7, seed=4), whole,
                               rtol=0, atol=0)
    assert not torch.equal(craft_adversarial(model, x, y, attack, batch_size=50, seed=5), whole)
    # The same random start through the batched helper and through pgd itself.
    torch.testing.assert_close(pgd(model, x, y, 0.1, steps=5, generator=torch.Generator().manual_seed(4)),
                               whole, rtol=0, atol=0)


def test_stacked_cells_each_attacked_on_their_own_examples_match_separate_attacks():
    models = [small_mlp(12, 3, seed=s) for s in (24, 25)]

    def stacked(inputs):  # (2, N, 12) -> (2, N, 3): cell c sees its own batch
        return torch.stack([m(inputs[c]) for c, m in enumerate(models)])

    x = pixels_with_edges(30, 12, seed=26, dtype=torch.float32)
    y = torch.randint(0, 3, (30,), generator=torch.Generator().manual_seed(27))
    attack = Attack("pgd", 0.1, steps=4, random_start=False, loss="margin")
    together = craft_adversarial(stacked, x.expand(2, -1, -1), y.expand(2, -1), attack, batch_size=8)
    for c, m in enumerate(models):
        torch.testing.assert_close(together[c], craft_adversarial(m, x, y, attack), rtol=0, atol=0)
    correct = correct_predictions(stacked, together, y.expand(2, -1), batch_size=8)
    assert correct.shape == (2, 30)
    for c, m in enumerate(models):
        assert torch.equal(correct[c], m(together[c]).argmax(-1) == y)


def test_attacks_write_no_parameter_gradient_and_work_under_no_grad():
    model = small_mlp(8, 3, seed=28)
    x, y = torch.rand(5, 8), torch.tensor([0, 1, 2, 0, 1])
    with torch.no_grad():
        adversarial = fgsm(model, x, y, 0.1)
    assert not torch.equal(adversarial, x)
    assert all(p.grad is None for p in model.parameters())


# 5. Bad input --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="cw", budget=0.1), "attack must be one of"),
    (dict(name="pgd", budget=0.1, loss="hinge"), "loss must be one of"),
    (dict(name="pgd", budget=0.0), "budget must be a finite number > 0"),
    (dict(name="fgsm", budget=-0.1), "budget must be a finite number > 0"),
    (dict(name="pgd", budget=float("nan")), "budget must be a finite number > 0"),
    (dict(name="pgd", budget=True), "budget must be a finite number > 0"),
    (dict(name="pgd", budget=0.1, steps=0), "steps must be an int >= 1"),
    (dict(name="pgd", budget=0.1, steps=2.0), "steps must be an int >= 1"),
    (dict(name="pgd", budget=0.1, step_size=0.0), "step_size must be a finite number > 0"),
])
def test_bad_attack_options_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Attack(**kwargs)


def test_bad_inputs_are_refused_with_what_was_expected():
    model = small_mlp(4, 3, seed=29)
    x, y = torch.rand(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match=r"pixels must lie in \[0, 1\].*to_model_input"):
        fgsm(model, x * 3 - 1, y, 0.1)
    with pytest.raises(ValueError, match="target must have shape"):
        fgsm(model, x, y[:5], 0.1)
    with pytest.raises(ValueError, match=r"target must hold class indices in \[0, 3\), got 3"):
        fgsm(model, x, torch.tensor([0, 1, 2, 0, 1, 3]), 0.1)
    with pytest.raises(ValueError, match="model must return logits of shape"):
        fgsm(lambda inputs: model(inputs)[:, 0], x, y, 0.1)
    with pytest.raises(ValueError, match="budget must be"):
        pgd(model, x, y, 0)
    with pytest.raises(ValueError, match=r"start must be a tensor of pixels' shape \(6, 4\)"):
        Attack("pgd", 0.1)(model, x, y, start=torch.zeros(6, 3))
    with pytest.raises(ValueError, match="attack must be an Attack"):
        craft_adversarial(model, x, y, "pgd")
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        correct_predictions(model, x, y, batch_size=0)
    with pytest.raises(ValueError, match="std > 0"):
        Standardize(0.5, 0.0)
