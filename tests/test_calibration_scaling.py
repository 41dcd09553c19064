"""Post-hoc calibrators: known temperatures recovered, scipy as the NLL-minimum reference, ECE reduced."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar

from labelsmooth.calibration.metrics import expected_calibration_error, negative_log_likelihood
from labelsmooth.calibration.scaling import (
    CALIBRATORS,
    IsotonicCalibration,
    PlattScaling,
    TemperatureScaling,
    VectorScaling,
)


def calibrated_logits(n: int, k: int, seed: int, scale: float = 2.0):
    """Logits and labels drawn from their own softmax: calibrated by construction."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * scale
    target = torch.multinomial(logits.softmax(1), 1, generator=g).squeeze(1)
    return logits, target


def test_temperature_recovers_known_temperature():
    logits, target = calibrated_logits(20000, 10, seed=0)
    fitted = TemperatureScaling().fit((logits * 2.5).float(), target)
    assert fitted.temperature == pytest.approx(2.5, abs=0.1)


def test_temperature_is_the_nll_minimum_found_by_scipy():
    logits, target = calibrated_logits(3000, 6, seed=1)
    logits = logits * 0.4  # under-confident: T < 1
    nll = lambda t: F.cross_entropy(logits / t, target).item()  # noqa: E731
    reference = minimize_scalar(nll, bounds=(0.05, 20), method="bounded", options={"xatol": 1e-8}).x
    fitted = TemperatureScaling().fit(logits, target)
    assert fitted.temperature == pytest.approx(reference, rel=1e-4)
    assert fitted.temperature < 1
    probs = fitted.transform(logits)
    assert torch.allclose(probs, (logits / reference).softmax(1), atol=1e-5)
    assert torch.equal(probs.argmax(1), logits.argmax(1))


@pytest.mark.slow
def test_vector_scaling_recovers_per_class_distortion_and_beats_temperature():
    logits, target = calibrated_logits(20000, 4, seed=2)
    scale = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64)
    bias = torch.tensor([0.3, 0.0, -0.5, 1.0], dtype=torch.float64)
    distorted = (logits - bias) / scale  # the true logits are scale * distorted + bias
    fitted = VectorScaling().fit(distorted, target)
    # Softmax ignores a common shift of the bias: compare bias differences.
    assert torch.allclose(fitted.scale, scale, atol=0.1)
    assert torch.allclose(fitted.bias - fitted.bias[1], bias - bias[1], atol=0.1)
    vector_nll = negative_log_likelihood(fitted.transform(distorted), target)
    temperature_probs = TemperatureScaling().fit(distorted, target).transform(distorted)
    temperature_nll = negative_log_likelihood(temperature_probs, target)
    assert vector_nll < temperature_nll


@pytest.mark.parametrize("calibrator", [PlattScaling, IsotonicCalibration, TemperatureScaling, VectorScaling])
def test_calibrators_reduce_ece_of_an_over_confident_model(calibrator):
    logits, target = calibrated_logits(8000, 5, seed=3)
    over_confident = logits * 3
    fit_logits, test_logits = over_confident[:4000], over_confident[4000:]
    fit_target, test_target = target[:4000], target[4000:]
    before = expected_calibration_error(test_logits, test_target, from_logits=True).item()
    probs = calibrator().fit(fit_logits, fit_target).transform(test_logits)
    after = expected_calibration_error(probs, test_target).item()
    assert before > 0.15
    assert after < 0.4 * before
    assert torch.allclose(probs.sum(1), torch.ones(4000, dtype=probs.dtype), atol=1e-6)


def test_one_vs_rest_uses_scikit_learn_per_class():
    from sklearn.isotonic import IsotonicRegression

    logits, target = calibrated_logits(600, 3, seed=4)
    fitted = IsotonicCalibration().fit(logits, target)
    p = logits.softmax(1).numpy()
    columns = np.stack([IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip")
                        .fit(p[:, k], target.numpy() == k).predict(p[:, k]) for k in range(3)], 1)
    expected = columns / columns.sum(1, keepdims=True)
    assert np.allclose(fitted.transform(logits).numpy(), expected, atol=1e-12)


def test_output_dtype_follows_the_logits():
    logits, target = calibrated_logits(300, 3, seed=5)
    for name, calibrator in CALIBRATORS.items():
        assert calibrator().fit(logits.float(), target).transform(logits.float()).dtype == torch.float32, name


def test_bad_inputs():
    logits, target = calibrated_logits(100, 3, seed=6)
    with pytest.raises(ValueError, match="must be fitted"):
        TemperatureScaling().transform(logits)
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        TemperatureScaling().fit(logits, target).transform(logits[:, :2])
    with pytest.raises(ValueError, match="finite logits"):
        TemperatureScaling().fit(torch.full((2, 3), float("nan")), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="target must have shape"):
        VectorScaling().fit(logits, target[:5])
    with pytest.raises(ValueError, match="class 2 and other classes"):
        PlattScaling().fit(logits, target.clamp(max=1))
