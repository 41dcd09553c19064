"""Linear probes on frozen features, the held-out-class split, and class collapse (NC1).

References are independent: scikit-learn's LogisticRegression for the probe (the same strictly
convex objective, so the same solution), SciPy's pinvh and NumPy float64 for NC1, and
constructed features whose collapse is known in closed form.
"""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from labelsmooth.analysis.representation import (
    choose_linear_probe,
    class_collapse,
    fit_linear_probe,
    select_classes,
    split_classes,
)


def blobs(n: int, dim: int, num_classes: int, seed: int, spread: float = 1.0):
    """Gaussian classes around random means, unequal class sizes (labels drawn with unequal odds)."""
    rng = np.random.default_rng(seed)
    odds = np.arange(1, num_classes + 1, dtype=float)
    labels = rng.choice(num_classes, size=n, p=odds / odds.sum())
    means = rng.standard_normal((num_classes, dim)) * 2
    return means[labels] + spread * rng.standard_normal((n, dim)), labels


# 1. The probe against scikit-learn ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("num_classes, l2", [(2, 1e-2), (5, 1e-3), (5, 1e-1)])
def test_probe_solves_scikit_learns_l2_logistic_regression(num_classes, l2):
    x, y = blobs(300, 8, num_classes, seed=num_classes, spread=2.0)
    labels = y + 3  # any integer labels
    probe = fit_linear_probe(torch.from_numpy(x), torch.from_numpy(labels), l2=l2)
    assert probe.converged and probe.classes == tuple(range(3, 3 + num_classes))
    standardized = (x - x.mean(0)) / x.std(0)
    # For two classes scikit-learn fits one row w = w_1 - w_0 with penalty |w|^2 / (2 C n); the probe's
    # optimum has w_0 = -w_1, so its penalty (l2 / 2)(|w_0|^2 + |w_1|^2) is (l2 / 4)|w|^2: C = 2 / (n l2).
    c = (2 if num_classes == 2 else 1) / (len(x) * l2)
    reference = LogisticRegression(C=c, tol=1e-12, max_iter=10_000).fit(standardized, labels)
    weight, bias = probe.weight.numpy(), probe.bias.numpy()
    if num_classes == 2:
        weight, bias = weight[1:] - weight[:1], bias[1:] - bias[:1]
    else:  # softmax ignores a shift of every bias: compare them centred
        bias, reference.intercept_ = bias - bias.mean(), reference.intercept_ - reference.intercept_.mean()
    np.testing.assert_allclose(weight, reference.coef_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bias, reference.intercept_, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(probe.predict(torch.from_numpy(x)).numpy(), reference.predict(standardized))


@pytest.mark.slow
def test_probe_without_standardisation_matches_scikit_learn_on_raw_features():
    x, y = blobs(200, 4, 3, seed=11)
    probe = fit_linear_probe(x, y, l2=1e-2, standardize=False)
    reference = LogisticRegression(C=1 / (len(x) * 1e-2), tol=1e-12, max_iter=10_000).fit(x, y)
    np.testing.assert_allclose(probe.weight.numpy(), reference.coef_, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_choose_linear_probe_picks_the_penalty_with_the_best_validation_accuracy():
    x, y = blobs(400, 30, 4, seed=12, spread=4.0)
    train, val = slice(0, 60), slice(60, 400)  # few training rows, many features: the penalty matters
    grid = (1e-3, 1e-1, 10.0)
    choice = choose_linear_probe(x[train], y[train], x[val], y[val], l2_grid=grid)
    expected = {l2: float((fit_linear_probe(x[train], y[train], l2=l2).predict(x[val]).numpy() == y[val]).mean())
                for l2 in grid}
    assert choice.validation_accuracy == pytest.approx(expected)
    best = max(expected.values())
    assert choice.probe.l2 == max(l2 for l2 in grid if expected[l2] == best)


@pytest.mark.slow
def test_probe_accuracy_refuses_labels_it_was_not_fitted_on():
    x, y = blobs(50, 3, 3, seed=13)
    probe = fit_linear_probe(x, y)
    with pytest.raises(ValueError, match=r"labels hold classes \[7\], which the probe was not fitted on"):
        probe.accuracy(x[:2], np.array([0, 7]))
    with pytest.raises(ValueError, match="features must have 3 columns"):
        probe.predict(x[:, :2])
    with pytest.raises(ValueError, match="l2 must be a finite number > 0"):
        fit_linear_probe(x, y, l2=0.0)
    with pytest.raises(ValueError, match="at least 2 classes"):
        fit_linear_probe(x, np.zeros(50, dtype=int))


# 2. Held-out classes ---------------------------------------------------------------------------------------


def test_split_classes_and_select_classes_give_the_probe_its_rows():
    trained, held_out = split_classes(10, (9, 5, 7, 6, 8))
    assert trained == (0, 1, 2, 3, 4) and held_out == (5, 6, 7, 8, 9)
    labels = torch.tensor([5, 0, 9, 3, 5, 7, 6, 8, 1])
    subset = select_classes(labels, held_out)
    assert subset.indices.tolist() == [0, 2, 4, 5, 6, 7]
    assert subset.labels.tolist() == [0, 4, 0, 2, 1, 3]
    assert [held_out[k] for k in subset.labels] == labels[subset.indices].tolist()


def test_a_probe_split_with_a_class_missing_is_refused_by_name():
    names = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
             "Ankle boot")
    labels = torch.tensor([5, 6, 8, 9, 5])
    with pytest.raises(ValueError, match=r"the probe test split has no example of class 7 \(Sneaker\)"):
        select_classes(labels, (5, 6, 7, 8, 9), split="probe test split", class_names=names)


@pytest.mark.parametrize("held_out", [(3, 3), (0, 10), (1,), tuple(range(9))])
def test_split_classes_refuses_bad_held_out_classes(held_out):
    with pytest.raises(ValueError, match="held_out must be distinct class indices"):
        split_classes(10, held_out)


# 3. Class collapse ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim, num_classes", [(3, 5), (20, 4), (64, 10)])
def test_nc1_matches_the_float64_formula_with_scipys_pseudo_inverse(dim, num_classes, class_collapse_reference):
    h, y = blobs(500, dim, num_classes, seed=dim)
    collapse = class_collapse(torch.from_numpy(h).float(), torch.from_numpy(y))
    nc1, ratio = class_collapse_reference(h.astype(np.float32).astype(np.float64), y)
    assert collapse.nc1 == pytest.approx(nc1, rel=1e-9)
    assert collapse.scatter_ratio == pytest.approx(ratio, rel=1e-9)


def test_nc1_of_constructed_features_has_its_closed_form():
    # Two classes on a line at -a and +a, points at mean +- s: S_W = s^2, S_B = a^2, NC1 = s^2 / (2 a^2).
    a, s = 3.0, 0.6
    h = torch.tensor([[-a - s], [-a + s], [a - s], [a + s]], dtype=torch.float64)
    collapse = class_collapse(h, torch.tensor([0, 0, 1, 1]))
    assert collapse.nc1 == pytest.approx(s ** 2 / (2 * a ** 2), rel=1e-12)
    assert collapse.scatter_ratio == pytest.approx(s ** 2 / a ** 2, rel=1e-12)


def test_nc1_is_zero_at_full_collapse_and_scales_with_the_square_of_within_class_spread():
    h, y = blobs(300, 12, 6, seed=14)
    means = np.stack([h[y == k].mean(0) for k in range(6)])[y]
    assert class_collapse(means, y).nc1 == pytest.approx(0.0, abs=1e-20)
    base = class_collapse(h, y).nc1
    for t in (0.5, 0.1):
        assert class_collapse(means + t * (h - means), y).nc1 == pytest.approx(t ** 2 * base, rel=1e-9)
    rotation, _ = np.linalg.qr(np.random.default_rng(15).standard_normal((12, 12)))
    assert class_collapse(7.0 * h @ rotation, y).nc1 == pytest.approx(base, rel=1e-9)  # scale and rotation free


def test_class_collapse_measures_only_the_chosen_classes(class_collapse_reference):
    h, y = blobs(200, 5, 4, seed=16)
    keep = np.isin(y, (1, 3))
    chosen = class_collapse(h, y, classes=(1, 3))
    assert chosen.classes == (1, 3)
    assert chosen.nc1 == pytest.approx(class_collapse_reference(h[keep], y[keep])[0], rel=1e-9)
    with pytest.raises(ValueError, match="coincide"):
        class_collapse(np.zeros((4, 2)), np.array([0, 0, 1, 1]))
