"""Seeded label noise: exact counts, flips to other classes, the asymmetric mappings, determinism.

References are independent: counts computed here from the rate, NumPy comparisons of old and new
labels, and a chi-square test (SciPy) that a symmetric flip picks every other class equally often.
"""

import numpy as np
import pytest
import torch
from scipy.stats import binom, chisquare

from labelsmooth.lab.noise import DIGITS_CONFUSABLE, FASHION_MNIST_CONFUSABLE, flip_labels


def balanced_labels(n: int, num_classes: int, seed: int) -> torch.Tensor:
    return torch.randint(0, num_classes, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4, 0.6, 0.85])
def test_symmetric_noise_flips_exactly_round_r_n_labels_each_to_another_class(rate):
    y = balanced_labels(1001, 10, seed=0)
    noisy = flip_labels(y, rate, num_classes=10, seed=3)
    old, new, flipped = y.numpy(), noisy.labels.numpy(), noisy.flipped.numpy()
    assert len(flipped) == int(np.floor(rate * 1001 + 0.5))
    np.testing.assert_array_equal(np.flatnonzero(old != new), flipped)  # flipped = exactly the changed ones
    assert noisy.rate == pytest.approx(len(flipped) / 1001)
    assert noisy.labels.dtype == torch.int64 and new.min() >= 0 and new.max() < 10


def test_symmetric_noise_moves_a_label_to_every_other_class_equally_often():
    y = torch.full((20_000,), 3)
    noisy = flip_labels(y, 0.5, num_classes=6, seed=4)
    counts = np.bincount(noisy.labels[noisy.flipped].numpy(), minlength=6)
    assert counts[3] == 0
    assert chisquare(np.delete(counts, 3)).pvalue > 1e-3


def test_which_labels_are_flipped_is_uniform_over_examples():
    # Over 40 seeds each index is flipped Binomial(40, 0.3) times if the choice is uniform.
    y = balanced_labels(10_000, 10, seed=5)
    hits = np.zeros(10_000, dtype=int)
    for seed in range(40):
        hits[flip_labels(y, 0.3, num_classes=10, seed=seed).flipped.numpy()] += 1
    edges = [0, 9, 11, 13, 15, 41]  # bins [0, 9), [9, 11), ..., [15, 41)
    observed = np.histogram(hits, bins=edges)[0]
    expected = np.diff(binom.cdf(np.array(edges) - 1, 40, 0.3)) * len(hits)
    assert chisquare(observed, expected * observed.sum() / expected.sum()).pvalue > 1e-3


@pytest.mark.parametrize("mapping", [FASHION_MNIST_CONFUSABLE, DIGITS_CONFUSABLE])
@pytest.mark.parametrize("rate", [0.1, 0.3, 0.45])
def test_asymmetric_noise_moves_round_r_n_k_labels_of_each_source_class_to_its_partner(mapping, rate):
    y = balanced_labels(3000, 10, seed=6)
    noisy = flip_labels(y, rate, num_classes=10, kind="asymmetric", mapping=mapping, seed=7)
    old, new = y.numpy(), noisy.labels.numpy()
    np.testing.assert_array_equal(np.flatnonzero(old != new), noisy.flipped.numpy())
    for k in range(10):
        moved = (old == k) & (old != new)
        if k in mapping:
            assert moved.sum() == int(np.floor(rate * (old == k).sum() + 0.5))
            assert (new[moved] == mapping[k]).all()
        else:
            assert moved.sum() == 0


def test_fashion_mnist_swaps_keep_every_class_count_up_to_rounding():
    y = torch.arange(10).repeat_interleave(600)  # 600 of each class, as a balanced training set
    noisy = flip_labels(y, 0.4, num_classes=10, kind="asymmetric", mapping=FASHION_MNIST_CONFUSABLE)
    np.testing.assert_array_equal(np.bincount(noisy.labels.numpy(), minlength=10), np.full(10, 600))
    assert len(noisy.flipped) == 6 * 240


@pytest.mark.parametrize("kind, mapping", [("symmetric", None), ("asymmetric", FASHION_MNIST_CONFUSABLE)])
def test_the_draw_depends_on_the_seed_alone_and_nests_across_rates(kind, mapping):
    y = balanced_labels(2000, 10, seed=8)
    low, high = (flip_labels(y, rate, num_classes=10, kind=kind, mapping=mapping, seed=11) for rate in (0.2, 0.4))
    again = flip_labels(y, 0.2, num_classes=10, kind=kind, mapping=mapping, seed=11)
    assert torch.equal(low.labels, again.labels) and torch.equal(low.flipped, again.flipped)
    assert set(low.flipped.tolist()) <= set(high.flipped.tolist())
    assert torch.equal(low.labels[low.flipped], high.labels[low.flipped])
    other = flip_labels(y, 0.2, num_classes=10, kind=kind, mapping=mapping, seed=12)
    assert not torch.equal(other.flipped, low.flipped)
    state = torch.random.get_rng_state()
    flip_labels(y, 0.2, num_classes=10, kind=kind, mapping=mapping, seed=13)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched


def test_labels_keep_their_device_and_the_input_is_not_modified():
    y = balanced_labels(50, 4, seed=9)
    before = y.clone()
    noisy = flip_labels(y, 0.5, num_classes=4, seed=0)
    assert torch.equal(y, before) and noisy.labels.device == y.device and noisy.flipped.dtype == torch.int64


@pytest.mark.parametrize("rate, kind, message", [
    (1.0, "symmetric", r"label_noise must be a fraction of training labels in \[0, 1\), got 1.0"),
    (-0.1, "symmetric", r"label_noise must be a fraction of training labels in \[0, 1\)"),
    (float("nan"), "symmetric", r"label_noise must be a fraction"),
    (True, "symmetric", r"label_noise must be a fraction"),
    (0.9, "symmetric", r"label_noise must be below 0.9 for symmetric noise over 10 classes"),
    (0.5, "asymmetric", r"label_noise must be below 0.5 for asymmetric noise"),
    (0.2, "pairwise", r"kind must be one of \('symmetric', 'asymmetric'\)"),
])
def test_bad_rates_and_kinds_are_refused_naming_label_noise(rate, kind, message):
    with pytest.raises(ValueError, match=message):
        flip_labels(balanced_labels(20, 10, seed=1), rate, num_classes=10, kind=kind,
                    mapping=FASHION_MNIST_CONFUSABLE)


def test_bad_labels_and_mappings_are_refused():
    y = balanced_labels(20, 10, seed=2)
    with pytest.raises(ValueError, match=r"labels must hold class indices in \[0, 3\), got"):
        flip_labels(y, 0.1, num_classes=3)
    with pytest.raises(ValueError, match="labels must be a 1-D integer tensor"):
        flip_labels(y.float(), 0.1, num_classes=10)
    with pytest.raises(ValueError, match="mapping must give asymmetric noise its confusable classes"):
        flip_labels(y, 0.1, num_classes=10, kind="asymmetric")
    with pytest.raises(ValueError, match=r"mapping must send classes in \[0, 10\) to other classes.*\(3, 3\)"):
        flip_labels(y, 0.1, num_classes=10, kind="asymmetric", mapping={3: 3})
