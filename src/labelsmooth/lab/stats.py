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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["Estimate", "estimate", "paired_difference", "t_quantile_975"]

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
    """A mean over ``n`` seeds and its 95% interval (``low``/``high`` are None when n == 1)."""

    mean: float
    low: float | None
    high: float | None
    n: int

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


def estimate(values: Sequence[float]) -> Estimate:
    """Mean and Student-t 95% interval of ``values`` (one per seed).

    >>> e = estimate([1.0, 2.0, 3.0])
    >>> e.mean, round(e.low, 4), round(e.high, 4)
    (2.0, -0.4842, 4.4842)
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
    return Estimate(mean, mean - half_width, mean + half_width, int(array.size))


def paired_difference(treatment: dict, baseline: dict) -> Estimate | None:
    """Estimate of ``treatment[s] - baseline[s]`` over the seeds ``s`` both dicts have.

    ``treatment`` and ``baseline`` map seed -> value. Returns None when no seed is shared.

    >>> paired_difference({0: 1.0, 1: 1.5, 2: 2.0}, {0: 0.5, 1: 1.0, 2: 1.4}).format(3)
    '0.533 [0.390, 0.677]'
    """
    seeds = sorted(set(treatment) & set(baseline))
    if not seeds:
        return None
    return estimate([treatment[s] - baseline[s] for s in seeds])
