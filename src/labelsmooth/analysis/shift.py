"""Distribution shift and out-of-distribution inputs: shifted images, OOD scores, AUROC.

Two questions about a smoothed classifier away from its training distribution:

- *Calibration under shift.* Ovadia et al. (2019) find that calibration gained in distribution
  shrinks as the inputs drift. :func:`shift_images` makes the drift, of increasing strength and
  seeded: rotations (:func:`rotate`, in degrees) and Gaussian pixel noise (standard deviation on
  ``[0, 1]`` pixels, clipped back to ``[0, 1]``). Accuracy, NLL and ECE on the shifted images come
  from :mod:`labelsmooth.calibration`.
- *Out-of-distribution detection.* A model trained without some classes should give their images
  lower scores than images of the classes it knows. :func:`ood_score` gives the maximum softmax
  probability (Hendrycks & Gimpel 2017) or the negative energy ``T logsumexp(z / T)`` (Liu et al.
  2020), both higher for inputs the model considers known; :func:`auroc` measures how well a score
  separates known from unknown inputs (0.5: not at all; 1: perfectly), with the ROC AUC that
  :mod:`labelsmooth.calibration.selective` also uses for misclassification detection.

Everything here is torch alone (no torchvision): rotation resamples with ``affine_grid`` and
``grid_sample``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..calibration.selective import roc_auc
from .pixels import check_pixels

__all__ = ["OOD_SCORES", "SHIFTS", "auroc", "detection_auroc", "energy", "max_softmax", "ood_score",
           "rotate", "shift_images"]

SHIFTS = ("rotation", "gaussian_noise")
OOD_SCORES = ("max_softmax", "energy")


# 1. Shifted images ------------------------------------------------------------------------------------------


def rotate(pixels: Tensor, degrees: float | Tensor) -> Tensor:
    r"""Rotate images about their centre by ``degrees`` (counter-clockwise as displayed, row 0 on top).

    Bilinear resampling, computed in float64; what comes in from outside the frame is 0 (black,
    the background of Fashion-MNIST and digits). The output pixel at centred coordinates ``(u, v)`` (column, row;
    rows pointing down) takes the input at ``(u cos t - v sin t, u sin t + v cos t)``.

    Args:
        pixels: (N, C, H, W) images in ``[0, 1]``.
        degrees: one angle for all images, or one per image (N,).

    >>> x = torch.tensor([[[[0.1, 0.2], [0.3, 0.4]]]])
    >>> rotate(x, 90.0).round(decimals=4)
    tensor([[[[0.2000, 0.4000],
              [0.1000, 0.3000]]]])
    """
    check_pixels(pixels)
    if pixels.dim() != 4:
        raise ValueError(f"pixels must be images (N, C, H, W) to rotate, got shape {tuple(pixels.shape)}")
    n, _, height, width = pixels.shape
    angle = torch.as_tensor(degrees, dtype=torch.float64).flatten()
    if angle.numel() not in (1, n) or not torch.isfinite(angle).all():
        raise ValueError(f"degrees must be one finite angle or one per image ({n}), got "
                         f"{degrees if angle.numel() == 1 else f'{angle.numel()} values'}")
    t = torch.deg2rad(angle.expand(n))
    cos, sin = torch.cos(t), torch.sin(t)
    zero = torch.zeros_like(t)
    # In affine_grid's normalised coordinates x = 2u / W, y = 2v / H, hence the aspect-ratio factors.
    theta = torch.stack([torch.stack([cos, -sin * height / width, zero], 1),
                         torch.stack([sin * width / height, cos, zero], 1)], 1)
    # In float64, so that a right angle moves pixel centres onto pixel centres to within rounding.
    grid = F.affine_grid(theta.to(pixels.device), list(pixels.shape), align_corners=False)
    return F.grid_sample(pixels.double(), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False).to(pixels.dtype)


def _check_strength(kind: str, strength: float) -> None:
    if kind not in SHIFTS:
        raise ValueError(f"kind must be one of {SHIFTS}, got {kind!r}")
    unit = "degrees" if kind == "rotation" else "the noise's standard deviation on [0, 1] pixels"
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength < math.inf:
        raise ValueError(f"strength must be a finite number >= 0 ({unit}), got {strength!r}")


def shift_images(pixels: Tensor, kind: str, strength: float, *, seed: int = 0) -> Tensor:
    r"""``pixels`` shifted by ``kind`` at ``strength``, seeded (the global RNG is untouched).

    ``"rotation"``: each image rotated by ``+strength`` or ``-strength`` degrees, the sign drawn
    per image (so the shift's size is exactly the strength and neither direction is favoured).
    ``"gaussian_noise"``: ``clip(x + strength * z, 0, 1)`` with ``z ~ N(0, 1)`` per pixel. Strength
    0 returns the images unchanged. Noise is drawn on the CPU: the same on every device.

    Args:
        pixels: (N, ...) images in ``[0, 1]``; (N, C, H, W) for rotation.

    >>> x = torch.full((2, 1, 4, 4), 0.5)
    >>> y = shift_images(x, "gaussian_noise", 0.1, seed=0)
    >>> y.shape, bool((y >= 0).all() and (y <= 1).all()), bool(torch.equal(y, shift_images(x, "gaussian_noise", 0.1)))
    (torch.Size([2, 1, 4, 4]), True, True)
    """
    _check_strength(kind, strength)
    check_pixels(pixels)
    generator = torch.Generator().manual_seed(seed)
    if kind == "rotation":
        signs = torch.randint(0, 2, (pixels.shape[0],), generator=generator) * 2 - 1
        return rotate(pixels, signs.double() * strength) if strength else pixels.clone()
    noise = torch.randn(pixels.shape, generator=generator, dtype=pixels.dtype).to(pixels.device)
    return (pixels + strength * noise).clamp(0, 1)


# 2. Scores of "known" and their AUROC ------------------------------------------------------------------


def max_softmax(logits: Tensor) -> Tensor:
    r"""The maximum softmax probability ``max_k softmax(z)_k`` of every row: (..., K) -> (...).

    >>> max_softmax(torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]]))
    tensor([0.5000, 0.7500])
    """
    return torch.softmax(logits, -1).amax(-1)


def energy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    r"""The free energy ``E(x) = -T logsumexp(z / T)`` of every row (Liu et al. 2020): (..., K) -> (...).

    Lower energy means the model considers the input more in-distribution.

    >>> energy(torch.tensor([[0.0, 0.0]]))
    tensor([-0.6931])
    """
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return -temperature * torch.logsumexp(logits / temperature, -1)


def ood_score(logits: Tensor, score: str = "max_softmax", *, temperature: float = 1.0) -> Tensor:
    r"""A per-row score that is *higher* for inputs the model considers known: (..., K) -> (...).

    ``"max_softmax"``: :func:`max_softmax`; ``"energy"``: the negative energy ``T logsumexp(z / T)``.

    >>> ood_score(torch.tensor([[0.0, 0.0]]), "energy")
    tensor([0.6931])
    """
    if score not in OOD_SCORES:
        raise ValueError(f"score must be one of {OOD_SCORES}, got {score!r}")
    return max_softmax(logits) if score == "max_softmax" else -energy(logits, temperature)


def _scores(values, name: str) -> Tensor:
    s = torch.as_tensor(values.detach() if isinstance(values, Tensor) else values).cpu()
    if s.dim() != 1 or s.numel() == 0 or not (s.is_floating_point() or s.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"{name} must be a non-empty 1-D array of real scores, got dtype {s.dtype} and shape "
                         f"{tuple(s.shape)}")
    s = s.double()
    if torch.isnan(s).any():
        raise ValueError(f"{name} must hold no NaN, got {int(torch.isnan(s).sum())} NaN values")
    return s


def auroc(positive, negative) -> float:
    r"""Area under the ROC curve of telling ``positive`` scores from ``negative`` ones (higher = positive).

    ``AUROC = P(s+ > s-) + P(s+ = s-) / 2`` over all pairs: the library's one ROC AUC,
    :func:`labelsmooth.calibration.selective.roc_auc` (mid-ranks, ties counted 1/2; the same number as
    scikit-learn's ``roc_auc_score``), on the two groups of scores.

    Args:
        positive: (n+,) scores of the positives (e.g. known-class inputs); negative: (n-,).

    >>> auroc(torch.tensor([0.9, 0.5]), torch.tensor([0.5, 0.1]))
    0.875
    """
    pos, neg = _scores(positive, "positive"), _scores(negative, "negative")
    labels = torch.cat([torch.ones(len(pos), dtype=torch.bool), torch.zeros(len(neg), dtype=torch.bool)])
    return float(roc_auc(torch.cat([pos, neg]), labels))


def detection_auroc(known_logits: Tensor, unknown_logits: Tensor, score: str = "max_softmax", *,
                    temperature: float = 1.0) -> float:
    """AUROC of :func:`ood_score` for telling known-class inputs (positives) from unknown ones.

    Shapes: ``known_logits`` (n+, K), ``unknown_logits`` (n-, K) from the same model.

    >>> detection_auroc(torch.tensor([[4.0, 0.0], [0.0, 3.0]]), torch.tensor([[0.1, 0.0]]))
    1.0
    """
    return auroc(ood_score(known_logits, score, temperature=temperature),
                 ood_score(unknown_logits, score, temperature=temperature))
