"""Images in pixel space ``[0, 1]``, where attacks and shifts are defined, and the map to a model's input.

An L-infinity budget of 0.1, a rotation's zero padding or Gaussian noise of standard deviation 0.2
mean something on pixels in ``[0, 1]``; on standardised inputs they would depend on the data
set's mean and standard deviation. Attacks (:mod:`.robustness`) and shifts (:mod:`.shift`) work on
pixels and reach the model through ``to_model_input``, for the lab's models :class:`Standardize`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from .._checks import ContentChecks, first_offender

__all__ = ["Standardize", "check_pixels"]


@dataclass(frozen=True)
class Standardize:
    """The map from pixels in ``[0, 1]`` to a model's standardised input: ``(pixels - mean) / std``.

    ``mean`` and ``std`` are on the ``[0, 1]`` pixel scale (a data set stored as 0..255 bytes and
    standardised by its raw mean and std has ``mean = raw_mean / 255``, ``std = raw_std / 255``).

    >>> import torch
    >>> s = Standardize(mean=0.5, std=0.25)
    >>> s(torch.tensor([0.0, 1.0])), s.pixels(torch.tensor([-2.0, 2.0]))
    (tensor([-2.,  2.]), tensor([0., 1.]))
    """

    mean: float
    std: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
            raise ValueError(f"Standardize needs a finite mean and a finite std > 0, got mean={self.mean!r}, "
                             f"std={self.std!r}")

    def __call__(self, pixels: Tensor) -> Tensor:
        return (pixels - self.mean) / self.std

    def pixels(self, standardized: Tensor) -> Tensor:
        """The inverse map: ``standardized * std + mean``."""
        return standardized * self.std + self.mean


def check_pixels(pixels: Tensor, name: str = "pixels") -> None:
    """``pixels`` must be a floating tensor with every value in ``[0, 1]`` (one host sync).

    >>> import torch
    >>> check_pixels(torch.tensor([0.0, 1.5]))
    Traceback (most recent call last):
    ValueError: pixels must lie in [0, 1] (images, not standardised inputs: pass to_model_input), got 1.5
    """
    if not isinstance(pixels, Tensor) or not pixels.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor of images in [0, 1], got "
                         f"{pixels.dtype if isinstance(pixels, Tensor) else type(pixels).__name__}")
    checks = ContentChecks()
    outside = ~((pixels >= 0) & (pixels <= 1))
    checks.add(~outside.any(), lambda v: f"{name} must lie in [0, 1] (images, not standardised inputs: "
                                         f"pass to_model_input), got {v:.6g}",
               first_offender(pixels.detach(), outside))
    checks.raise_if_failed()
