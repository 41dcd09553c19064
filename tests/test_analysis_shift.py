"""Shifted images (rotation, Gaussian noise), OOD scores and AUROC.

References are independent: torch.rot90 and flips for right angles, SciPy's ndimage.rotate
(bilinear, zero outside the frame) for any angle, a Kolmogorov-Smirnov test of the noise, SciPy's
logsumexp in float64 for the scores, and scikit-learn's roc_auc_score for AUROC (ties included).
"""

import numpy as np
import pytest
import scipy.ndimage
import torch
from scipy.special import logsumexp
from scipy.stats import kstest
from sklearn.metrics import roc_auc_score

from labelsmooth.analysis.shift import (
    auroc,
    detection_auroc,
    energy,
    max_softmax,
    ood_score,
    rotate,
    shift_images,
)


def images(n: int, height: int, width: int, seed: int, channels: int = 2, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(n, channels, height, width, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# 1. Rotation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [7, 8, 28])
def test_right_angle_rotations_are_exact_pixel_permutations(size):
    x = images(3, size, size, seed=size)
    torch.testing.assert_close(rotate(x, 90.0), torch.rot90(x, 1, dims=(-2, -1)), rtol=0, atol=0)
    torch.testing.assert_close(rotate(x, -90.0), torch.rot90(x, -1, dims=(-2, -1)), rtol=0, atol=0)
    torch.testing.assert_close(rotate(x, 0.0), x, rtol=0, atol=0)


def test_half_turn_of_a_non_square_image_flips_both_axes():
    x = images(2, 5, 8, seed=1)
    torch.testing.assert_close(rotate(x, 180.0), x.flip(-2, -1), rtol=0, atol=0)


@pytest.mark.parametrize("degrees", [30.0, 45.0, 137.0])
def test_any_angle_matches_scipys_bilinear_rotation_with_zero_outside(degrees):
    x = images(2, 9, 9, seed=2, channels=1, dtype=torch.float64)
    expected = np.stack([scipy.ndimage.rotate(img[0], degrees, reshape=False, order=1, mode="grid-constant",
                                              cval=0.0) for img in x.numpy()])
    np.testing.assert_allclose(rotate(x, degrees)[:, 0].numpy(), expected, rtol=0, atol=1e-12)


def test_one_angle_per_image():
    x = images(3, 6, 6, seed=3)
    both = rotate(x, torch.tensor([90.0, 0.0, -90.0]))
    for i, k in enumerate((1, 0, -1)):
        torch.testing.assert_close(both[i], torch.rot90(x[i], k, dims=(-2, -1)), rtol=0, atol=0)


def test_seeded_rotation_turns_each_image_by_the_strength_one_way_or_the_other():
    x = images(40, 10, 10, seed=4)
    shifted = shift_images(x, "rotation", 90.0, seed=5)
    left, right = torch.rot90(x, 1, dims=(-2, -1)), torch.rot90(x, -1, dims=(-2, -1))
    is_left = ((shifted - left).abs().amax((1, 2, 3)) == 0)
    is_right = ((shifted - right).abs().amax((1, 2, 3)) == 0)
    assert bool((is_left ^ is_right).all()) and 5 < int(is_left.sum()) < 35
    assert torch.equal(shifted, shift_images(x, "rotation", 90.0, seed=5))
    assert not torch.equal(shifted, shift_images(x, "rotation", 90.0, seed=6))
    assert torch.equal(shift_images(x, "rotation", 0.0), x)


# 2. Gaussian noise ---------------------------------------------------------------------------------------


def test_gaussian_noise_has_the_stated_standard_deviation_and_stays_in_range():
    x = torch.full((50, 1, 10, 10), 0.5)
    shifted = shift_images(x, "gaussian_noise", 0.05, seed=7)  # 10 sd from either edge: clipping is negligible
    assert kstest(((shifted - x) / 0.05).flatten().numpy(), "norm").pvalue > 1e-3
    strong = shift_images(images(20, 8, 8, seed=8), "gaussian_noise", 0.5, seed=7)
    assert strong.min() == 0 and strong.max() == 1  # clipped, and the clip is reached
    assert torch.equal(shifted, shift_images(x, "gaussian_noise", 0.05, seed=7))
    assert not torch.equal(shifted, shift_images(x, "gaussian_noise", 0.05, seed=8))
    assert torch.equal(shift_images(x, "gaussian_noise", 0.0), x)


def test_shifts_leave_the_global_rng_alone():
    state = torch.random.get_rng_state()
    shift_images(images(4, 6, 6, seed=9), "gaussian_noise", 0.2, seed=1)
    shift_images(images(4, 6, 6, seed=9), "rotation", 30, seed=1)
    assert torch.equal(state, torch.random.get_rng_state())


@pytest.mark.parametrize("kind, strength, message", [
    ("blur", 1.0, "kind must be one of"),
    ("rotation", -10.0, r"strength must be a finite number >= 0 \(degrees\)"),
    ("gaussian_noise", float("inf"), r"strength must be a finite number >= 0 \(the noise's standard deviation"),
])
def test_bad_shifts_are_refused(kind, strength, message):
    with pytest.raises(ValueError, match=message):
        shift_images(images(2, 4, 4, seed=0), kind, strength)


def test_bad_images_are_refused():
    with pytest.raises(ValueError, match=r"pixels must lie in \[0, 1\]"):
        shift_images(images(2, 4, 4, seed=0) * 2 - 1, "gaussian_noise", 0.1)
    with pytest.raises(ValueError, match=r"pixels must be images \(N, C, H, W\) to rotate"):
        rotate(torch.rand(3, 16), 10.0)
    with pytest.raises(ValueError, match="degrees must be one finite angle or one per image"):
        rotate(images(3, 4, 4, seed=0), torch.tensor([1.0, 2.0]))


# 3. Scores and AUROC -------------------------------------------------------------------------------------


def test_scores_match_float64_formulas():
    logits = torch.randn(20, 7, generator=torch.Generator().manual_seed(10), dtype=torch.float64) * 3
    z = logits.numpy()
    np.testing.assert_allclose(max_softmax(logits).numpy(), np.exp(z.max(1) - logsumexp(z, axis=1)), rtol=1e-12)
    for t in (1.0, 2.5):
        np.testing.assert_allclose(energy(logits, t).numpy(), -t * logsumexp(z / t, axis=1), rtol=1e-12)
        np.testing.assert_allclose(ood_score(logits, "energy", temperature=t).numpy(),
                                   t * logsumexp(z / t, axis=1), rtol=1e-12)
    with pytest.raises(ValueError, match="score must be one of"):
        ood_score(logits, "entropy")
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        energy(logits, 0.0)


@pytest.mark.parametrize("seed, levels", [(11, None), (12, 5), (13, 2)])
def test_auroc_matches_scikit_learn_with_and_without_ties(seed, levels):
    rng = np.random.default_rng(seed)
    positive, negative = rng.normal(0.7, 1, 300), rng.normal(0, 1, 170)
    if levels is not None:  # coarse scores: many ties within and across the two groups
        positive, negative = np.round(positive * levels / 3), np.round(negative * levels / 3)
    expected = roc_auc_score(np.r_[np.ones(300), np.zeros(170)], np.r_[positive, negative])
    assert auroc(torch.from_numpy(positive), negative) == pytest.approx(expected, abs=1e-12)


def test_auroc_at_its_extremes():
    assert auroc([2.0, 3.0], [0.0, 1.0]) == 1.0
    assert auroc([0.0, 1.0], [2.0, 3.0]) == 0.0
    assert auroc([1.0, 1.0, 1.0], [1.0, 1.0]) == 0.5
    with pytest.raises(ValueError, match="negative must be a non-empty 1-D array"):
        auroc([1.0], [])
    with pytest.raises(ValueError, match="positive must hold no NaN"):
        auroc([float("nan")], [1.0])


@pytest.mark.parametrize("score", ["max_softmax", "energy"])
def test_detection_auroc_is_the_auroc_of_the_scores_with_known_inputs_as_positives(score):
    generator = torch.Generator().manual_seed(14)
    known = torch.randn(60, 5, generator=generator, dtype=torch.float64) * 3
    unknown = torch.randn(40, 5, generator=generator, dtype=torch.float64)
    z = np.r_[known.numpy(), unknown.numpy()]
    scores = np.exp(z.max(1) - logsumexp(z, axis=1)) if score == "max_softmax" else logsumexp(z / 2, axis=1) * 2
    expected = roc_auc_score(np.r_[np.ones(60), np.zeros(40)], scores)
    assert detection_auroc(known, unknown, score, temperature=2.0) == pytest.approx(expected, abs=1e-12)
