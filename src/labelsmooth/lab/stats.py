"""Mean and 95% confidence intervals over seeds, and paired differences to a baseline.

A lab run has a handful of seeds per condition, so intervals use Student's t with ``n - 1``
degrees of freedom: ``mean +- t_{0.975, n-1} * s / sqrt(n)`` with ``s`` the sample standard
deviation. scipy is not a dependency of the package, so the t quantile comes from a table for
1-30 degrees of freedom (standard values to 4 decimals) and, beyond, from the Cornish-Fisher
expansion around the normal quantile (Abramowitz & Stegun 26.7.5), accurate to better than 1e-5
there. With one seed there is no interval: ``Estimate.low``/``high`` are ``None``.

Paired differences: within a seed every eps shares initial weights and batch order, so the
effect of eps is estimated from per-seed differences ``d_s = m(eps, s) - m(0, s)``, whose
interval is narrower than the one of two independent means.

Bounded quantities (accuracy and ECE lie in [0, 1]; :data:`BOUNDS`) get intervals clipped to
their range (``bounds=``): a Student-t interval over few seeds can otherwise reach below 0 or
above 1. A difference of two values in [lo, hi] is clipped to [lo - hi, hi - lo].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["BOUNDS", "Estimate", "estimate", "paired_difference", "seeds_to_reach", "t_quantile_975"]

# quantity -> the range its values lie in (None: unbounded on that side)
BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "accuracy": (0.0, 1.0), "ece": (0.0, 1.0), "mce": (0.0, 1.0), "classwise_ece": (0.0, 1.0),
    "brier": (0.0, 2.0), "confidence_gap": (-1.0, 1.0), "nll": (0.0, None), "loss": (0.0, None),
    "aurc": (0.0, 1.0), "e_aurc": (0.0, 1.0), "auroc": (0.0, 1.0), "risk_at_80": (0.0, 1.0),
    "tightness": (0.0, None), "equidistance_cv": (0.0, None), "nc1": (0.0, None), "rise": (None, None),
}


def _clip(value: float, low: float | None, high: float | None) -> float:
    if low is not None:
        value = max(value, low)
    return value if high is None else min(value, high)

# t_{0.975, df} for df = 1..30.
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
_Z975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (two-sided 95%).

    >>> round(t_quantile_975(2), 4), round(t_quantile_975(1000), 4)
    (4.3027, 1.9623)
    """
    if not isinstance(df, (int, np.integer)) or df < 1:
        raise ValueError(f"df: expected an integer >= 1, got {df!r}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


@dataclass(frozen=True)
class Estimate:
    """A mean over ``n`` seeds and its 95% interval (``low``/``high``/``half_width`` are None when n == 1)."""

    mean: float
    low: float | None
    high: float | None
    n: int
    half_width: float | None = None  # of the Student-t interval, before any clipping

    @property
    def has_interval(self) -> bool:
        return self.low is not None

    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0 (False without an interval)."""
        return self.has_interval and (self.low > 0 or self.high < 0)

    def format(self, digits: int = 4) -> str:
        """``"0.1234 [0.1000, 0.1468]"``, or ``"0.1234 (n/a (1 seed))"`` for a single seed."""
        if not self.has_interval:
            return f"{self.mean:.{digits}f} (n/a (1 seed))"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def estimate(values: Sequence[float], bounds: tuple[float | None, float | None] | None = None) -> Estimate:
    """Mean and Student-t 95% interval of ``values`` (one per seed), clipped to ``bounds``.

    >>> e = estimate([1.0, 2.0, 3.0])
    >>> e.mean, round(e.low, 4), round(e.high, 4)
    (2.0, -0.4842, 4.4842)
    >>> round(estimate([1.0, 2.0, 3.0], bounds=(0.0, None)).low, 4)
    0.0
    >>> estimate([0.5]).format()
    '0.5000 (n/a (1 seed))'
    """
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError("values: expected at least one value, got an empty sequence")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"values: expected finite numbers, got {array.tolist()}")
    mean = float(array.mean())
    if array.size == 1:
        return Estimate(mean, None, None, 1)
    half_width = t_quantile_975(array.size - 1) * float(array.std(ddof=1)) / math.sqrt(array.size)
    low, high = bounds or (None, None)
    return Estimate(mean, _clip(mean - half_width, low, high), _clip(mean + half_width, low, high),
                    int(array.size), half_width)


def paired_difference(treatment: dict, baseline: dict,
                      bounds: tuple[float | None, float | None] | None = None) -> Estimate | None:
    """Estimate of ``treatment[s] - baseline[s]`` over the seeds ``s`` both dicts have.

    ``treatment`` and ``baseline`` map seed -> value, each value in ``bounds`` (the interval is
    clipped to the range of a difference of two such values). Returns None when no seed is shared.

    >>> paired_difference({0: 1.0, 1: 1.5, 2: 2.0}, {0: 0.5, 1: 1.0, 2: 1.4}).format(3)
    '0.533 [0.390, 0.677]'
    """
    seeds = sorted(set(treatment) & set(baseline))
    if not seeds:
        return None
    span = None
    if bounds is not None and None not in bounds:
        span = (bounds[0] - bounds[1], bounds[1] - bounds[0])
    return estimate([treatment[s] - baseline[s] for s in seeds], span)


def seeds_to_reach(half_width: float, n: int, target: float, most: int = 10_000) -> int | None:
    """Roughly how many seeds make the 95% half-width at most ``target``, if the seed-to-seed
    spread stays as observed with ``n`` seeds (half-width ``half_width``): the smallest ``m >= 2``
    with ``t_{0.975, m-1} s / sqrt(m) <= target``, ``s = half_width sqrt(n) / t_{0.975, n-1}``.
    None when even ``most`` seeds would not do.

    >>> seeds_to_reach(0.1, 3, 0.1), seeds_to_reach(0.1, 3, 0.05)
    (3, 5)
    """
    if n < 2 or half_width < 0 or target <= 0:
        raise ValueError(f"seeds_to_reach: expected n >= 2, half_width >= 0 and target > 0, got "
                         f"n={n}, half_width={half_width}, target={target}")
    spread = half_width * math.sqrt(n) / t_quantile_975(n - 1)
    for m in range(2, most + 1):
        if t_quantile_975(m - 1) * spread / math.sqrt(m) <= target:
            return m
    return None
