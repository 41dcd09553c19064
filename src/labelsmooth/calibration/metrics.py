"""Calibration metrics on predicted probabilities: the ECE family, Brier score, NLL, accuracy.

Every metric takes ``probs`` (N, K) class probabilities and ``target`` (N,) class indices (torch
tensors or NumPy arrays). Pass ``from_logits=True`` to give logits instead: they go through a
softmax. Nothing is guessed: without the switch, ``probs`` must hold probabilities (in [0, 1],
rows summing to 1), or a ValueError says what came.

Binning (shared by every binned metric). A sample with confidence ``c`` falls in bin ``b`` when
``edge[b-1] < c <= edge[b]``: bins are (lo, hi], the first bin also holds ``c = 0`` exactly and
the top bin holds ``c = 1`` exactly.

- ``binning="width"``: ``n_bins`` equal-width bins, edges ``k / n_bins`` (rounded to the
  confidences' dtype).
- ``binning="mass"``: equal-mass (adaptive) bins. The sorted confidences are cut into
  ``n_bins`` chunks of as-equal-as-possible size (the first ``N % n_bins`` chunks get one more),
  and each chunk's *largest* confidence is its bin's upper edge. Ties are handled by the (lo, hi]
  rule: a confidence equal to an edge goes to the lower bin, so tied confidences always share one
  bin, the result does not depend on sample order, and a bin may hold more or fewer than
  ``N / n_bins`` samples (or none) when ties straddle a cut.

Per bin ``b`` with ``n_b`` samples, mean confidence ``conf_b`` and mean outcome ``acc_b`` (for
top-label metrics, the accuracy of the arg-max prediction; the first index wins ties):

    l1  (ECE):  sum_b (n_b / N) |acc_b - conf_b|
    l2:         sqrt(sum_b (n_b / N) (acc_b - conf_b)^2)
    max (MCE):  max over non-empty bins of |acc_b - conf_b|

Statistics are accumulated in float64; results are 0-dim float64 tensors on the input's device.
Bootstrap intervals of these metrics are in :mod:`.bootstrap`, the streaming (batch by batch)
calibration error in :mod:`.streaming`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn

from .._checks import ContentChecks, check_class_indices, sum_tolerance

__all__ = [
    "BINNINGS",
    "MIN_PROBABILITY",
    "NORMS",
    "BinStatistics",
    "accuracy",
    "bin_statistics",
    "brier_score",
    "check_inputs",
    "check_probabilities",
    "classwise_calibration_error",
    "confidence_gap",
    "debiased_l2_calibration_error",
    "expected_calibration_error",
    "maximum_calibration_error",
    "negative_log_likelihood",
    "top_label",
]

ArrayLike = object  # a torch.Tensor or anything torch.as_tensor accepts (a NumPy array)


# 1. Input checks ---------------------------------------------------------------------------------


def _as_tensor(value: ArrayLike, name: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{name} must be a tensor or an array, got {type(value).__name__}") from error


def check_inputs(probs: ArrayLike, target: ArrayLike, *, from_logits: bool,
                 validate_args: bool = True) -> tuple[Tensor, Tensor]:
    """Check shapes, dtypes and (when ``validate_args``) contents of probabilities or logits.

    Returns the values unchanged but for fp16/bf16 -> fp32, and int64 targets on their device.
    Row sums are checked within the tolerance of the dtype the probabilities came in.

    >>> check_inputs([[0.1, 3.0]], [1], from_logits=True)[0]
    tensor([[0.1000, 3.0000]])
    """
    probs, target = _as_tensor(probs, "probs"), _as_tensor(target, "target")
    what = "logits" if from_logits else "probabilities"
    if not probs.is_floating_point():
        raise ValueError(f"probs must be a floating tensor of {what}, got dtype {probs.dtype}")
    if probs.dim() != 2:
        raise ValueError(f"probs must have shape (N, K) ({what} of N samples over K classes), "
                         f"got shape {tuple(probs.shape)}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target must be an integer tensor of class indices, got dtype {target.dtype}")
    if target.shape != probs.shape[:1]:
        raise ValueError(f"target must have shape ({probs.shape[0]},), one class index per row of "
                         f"probs {tuple(probs.shape)}, got shape {tuple(target.shape)}")
    if probs.shape[0] == 0:
        raise ValueError("probs must hold at least one sample, got shape (0, K)")
    tolerance = sum_tolerance(probs.dtype, probs.shape[1])  # of the given dtype, before the cast
    if probs.dtype in (torch.float16, torch.bfloat16):
        probs = probs.float()
    target = target.to(device=probs.device, dtype=torch.int64)
    if validate_args:
        checks = ContentChecks()
        # Checks raise in the order added: with a NaN, the finiteness message comes first.
        checks.add(torch.isfinite(probs).all(), lambda: f"probs must be finite {what}, got NaN or infinity")
        if not from_logits:
            low, high = torch.aminmax(probs)
            checks.add((low >= 0) & (high <= 1),
                       lambda lo, hi: f"probs must lie in [0, 1] (pass from_logits=True for logits), "
                                      f"got values in [{lo:.4g}, {hi:.4g}]", low, high)
            off = (probs.sum(1) - 1).abs().max()
            checks.add(off <= tolerance, lambda v: f"each row of probs must sum to 1 (within "
                                                   f"{tolerance:g}), off by {v:.3g}", off)
        check_class_indices(target, probs.shape[1], None, checks)
        checks.raise_if_failed()
    return probs, target


def check_probabilities(probs: ArrayLike, target: ArrayLike, *, from_logits: bool = False,
                        validate_args: bool = True) -> tuple[Tensor, Tensor]:
    """Check ``probs`` (N, K) and ``target`` (N,); return float probabilities and int64 targets.

    With ``from_logits=True`` the first argument holds logits and is soft-maxed. Contents (finite
    values, probabilities in [0, 1] with rows summing to 1, targets in [0, K)) are checked with one
    host sync when ``validate_args`` is true.

    >>> p, y = check_probabilities([[0.2, 0.8]], [1])
    >>> p.dtype, y.dtype
    (torch.float32, torch.int64)
    """
    probs, target = check_inputs(probs, target, from_logits=from_logits, validate_args=validate_args)
    return (torch.softmax(probs, dim=1) if from_logits else probs), target


def _check_bins(n_bins: int, binning: str) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    if binning not in BINNINGS:
        raise ValueError(f"binning must be one of {sorted(BINNINGS)}, got {binning!r}")


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {sorted(NORMS)}, got {norm!r}")


def _binned_inputs(probs: ArrayLike, target: ArrayLike, n_bins: int, binning: str, norm: str,
                   from_logits: bool, validate_args: bool) -> tuple[Tensor, Tensor]:
    """The argument checks every binned metric starts with; returns checked probabilities."""
    _check_bins(n_bins, binning)
    _check_norm(norm)
    return check_probabilities(probs, target, from_logits=from_logits, validate_args=validate_args)


# 2. Binning --------------------------------------------------------------------------------------


class BinStatistics(NamedTuple):
    """Per-bin sums, shape (..., n_bins): sample count, summed confidence, summed outcome."""

    count: Tensor
    confidence: Tensor
    outcome: Tensor


def _width_edges(confidence: Tensor, n_bins: int) -> Tensor:
    # k / n_bins rounded once to the confidences' dtype (torch.linspace can be an ulp off), so a
    # confidence written as 0.2 meets the edge 1/5 exactly and lands in the lower bin.
    inner = (torch.arange(1, n_bins, dtype=torch.float64, device=confidence.device) / n_bins)
    inner = inner.to(confidence.dtype)
    return inner.expand(*confidence.shape[:-1], n_bins - 1).contiguous()


def _mass_edges(confidence: Tensor, n_bins: int) -> Tensor:
    n = confidence.shape[-1]
    sizes = torch.full((n_bins,), n // n_bins, dtype=torch.int64)
    sizes[: n % n_bins] += 1
    last_of_chunk = (sizes.cumsum(0)[:-1] - 1).clamp(min=0).to(confidence.device)
    return confidence.sort(dim=-1).values.index_select(-1, last_of_chunk).contiguous()


# name -> inner edges (..., n_bins - 1) for confidences (..., N)
BINNINGS: dict[str, Callable[[Tensor, int], Tensor]] = {"width": _width_edges, "mass": _mass_edges}


def _flat_bin_index(confidence: Tensor, n_bins: int, binning: str) -> Tensor:
    """Bin of each confidence (G, N), offset by ``n_bins * g`` so groups use disjoint slots."""
    index = torch.searchsorted(BINNINGS[binning](confidence, n_bins), confidence.contiguous(), right=False)
    return index + n_bins * torch.arange(confidence.shape[0], device=index.device).unsqueeze(1)


def bin_statistics(confidence: Tensor, outcome: Tensor, n_bins: int = 15,
                   binning: str = "width") -> BinStatistics:
    """Bin each row of ``confidence`` (G, N) with its 0/1 ``outcome`` (G, N); sums (G, n_bins).

    Rows are independent groups (one per class for class-wise metrics), each binned on its own.

    >>> s = bin_statistics(torch.tensor([[0.0, 0.5, 1.0]]), torch.tensor([[0.0, 1.0, 1.0]]), 2)
    >>> s.count.tolist(), s.outcome.tolist()
    ([[2.0, 1.0]], [[1.0, 1.0]])
    """
    _check_bins(n_bins, binning)
    groups = confidence.shape[0]
    index = _flat_bin_index(confidence, n_bins, binning).reshape(-1)
    zeros = torch.zeros(groups * n_bins, dtype=torch.float64, device=confidence.device)
    sums = [zeros.scatter_add(0, index, values.reshape(-1).to(torch.float64))
            for values in (torch.ones_like(confidence), confidence, outcome)]
    return BinStatistics(*(s.reshape(groups, n_bins) for s in sums))


# 3. Norms over bins ------------------------------------------------------------------------------


def _gaps(stats: BinStatistics) -> tuple[Tensor, Tensor, Tensor]:
    """|acc_b - conf_b| (0 for empty bins), bin weights n_b / N and the non-empty mask."""
    filled = stats.count > 0
    count = stats.count.clamp(min=1)
    gap = (stats.outcome - stats.confidence).abs() / count
    return gap, stats.count / stats.count.sum(-1, keepdim=True), filled


def _l1(stats: BinStatistics) -> Tensor:
    gap, weight, _ = _gaps(stats)
    return (weight * gap).sum(-1)


def _l2(stats: BinStatistics) -> Tensor:
    gap, weight, _ = _gaps(stats)
    return (weight * gap.square()).sum(-1).sqrt()


def _max(stats: BinStatistics) -> Tensor:
    gap, _, filled = _gaps(stats)
    return torch.where(filled, gap, torch.zeros_like(gap)).amax(-1)


# name -> calibration error per group (...,) from per-bin sums (..., n_bins)
NORMS: dict[str, Callable[[BinStatistics], Tensor]] = {"l1": _l1, "l2": _l2, "max": _max}


# 4. Functional metrics ---------------------------------------------------------------------------


def top_label(probs: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Confidence ``max_k p_k`` and correctness of the arg-max prediction, each (N,)."""
    confidence, prediction = probs.max(dim=1)
    return confidence, (prediction == target).to(confidence.dtype)


def expected_calibration_error(probs: ArrayLike, target: ArrayLike, n_bins: int = 15, *,
                               binning: str = "width", norm: str = "l1", from_logits: bool = False,
                               validate_args: bool = True) -> Tensor:
    """Top-label calibration error: ECE (``norm="l1"``), RMS (``"l2"``) or MCE (``"max"``).

    ``sum_b (n_b / N) |acc_b - conf_b|`` for l1, over ``n_bins`` bins (see the module docstring
    for the bins and the other norms). Shapes: probs (N, K), target (N,); returns a 0-dim tensor.

    >>> p = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    >>> round(expected_calibration_error(p, torch.tensor([0, 1, 1]), n_bins=5).item(), 4)
    0.2
    """
    probs, target = _binned_inputs(probs, target, n_bins, binning, norm, from_logits, validate_args)
    confidence, correct = top_label(probs, target)
    stats = bin_statistics(confidence.unsqueeze(0), correct.unsqueeze(0), n_bins, binning)
    return NORMS[norm](stats)[0]


def maximum_calibration_error(probs: ArrayLike, target: ArrayLike, n_bins: int = 15, *,
                              binning: str = "width", from_logits: bool = False,
                              validate_args: bool = True) -> Tensor:
    """MCE: the largest ``|acc_b - conf_b|`` over non-empty bins (``norm="max"`` of the ECE).

    >>> p = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    >>> round(maximum_calibration_error(p, torch.tensor([0, 1, 1]), n_bins=5).item(), 4)
    0.25
    """
    return expected_calibration_error(probs, target, n_bins, binning=binning, norm="max",
                                      from_logits=from_logits, validate_args=validate_args)


def accuracy(probs: ArrayLike, target: ArrayLike, *, from_logits: bool = False,
             validate_args: bool = True) -> Tensor:
    """Top-1 accuracy of the arg-max prediction (the first index wins ties).

    >>> accuracy(torch.tensor([[0.9, 0.1], [0.8, 0.2]]), torch.tensor([0, 1])).item()
    0.5
    """
    probs, target = check_inputs(probs, target, from_logits=from_logits, validate_args=validate_args)
    return _correct_rows(probs, target).mean()


def classwise_calibration_error(probs: ArrayLike, target: ArrayLike, n_bins: int = 15, *,
                                binning: str = "width", norm: str = "l1",
                                from_logits: bool = False, validate_args: bool = True) -> Tensor:
    """Class-wise calibration error (Kull et al. 2019): the mean over classes of each class's error.

    Class k is scored as a binary forecaster: confidence ``p_k``, outcome ``[y == k]``, binned
    on its own (``binning``), reduced with ``norm``; the K results are averaged.

    >>> p = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    >>> round(classwise_calibration_error(p, torch.tensor([0, 1, 1]), n_bins=5).item(), 4)
    0.3667
    """
    probs, target = _binned_inputs(probs, target, n_bins, binning, norm, from_logits, validate_args)
    outcome = nn.functional.one_hot(target, probs.shape[1]).to(probs.dtype)
    stats = bin_statistics(probs.T, outcome.T, n_bins, binning)
    return NORMS[norm](stats).mean()


def debiased_l2_calibration_error(probs: ArrayLike, target: ArrayLike, n_bins: int = 15, *,
                                  binning: str = "mass", from_logits: bool = False,
                                  validate_args: bool = True) -> Tensor:
    """Debiased top-label L2 calibration error (Kumar, Liang, Ma 2019, "Verified Uncertainty
    Calibration").

    The plug-in ``(acc_b - conf_b)^2`` overestimates the squared gap by the variance of ``acc_b``;
    the estimator subtracts it per bin, then clips the total at 0::

        sqrt(max(0, sum_b (n_b / N) [(acc_b - conf_b)^2 - acc_b (1 - acc_b) / (n_b - 1)]))

    Bins with fewer than two samples contribute 0. Equal-mass bins by default, as in the paper.

    One bin, six predictions at 0.9 of which half are right: sqrt(0.4^2 - 0.25 / 5):

    >>> p = torch.tensor([[0.9, 0.1]] * 6)
    >>> y = torch.tensor([0, 0, 0, 1, 1, 1])
    >>> round(debiased_l2_calibration_error(p, y, n_bins=1).item(), 4)
    0.3317
    """
    probs, target = _binned_inputs(probs, target, n_bins, binning, "l2", from_logits, validate_args)
    confidence, correct = top_label(probs, target)
    stats = bin_statistics(confidence.unsqueeze(0), correct.unsqueeze(0), n_bins, binning)
    count = stats.count[0]
    usable = count >= 2
    accuracy = stats.outcome[0] / count.clamp(min=1)
    plug_in = (accuracy - stats.confidence[0] / count.clamp(min=1)).square()
    variance = accuracy * (1 - accuracy) / (count - 1).clamp(min=1)
    per_bin = torch.where(usable, plug_in - variance, torch.zeros_like(plug_in))
    return ((count / count.sum()) * per_bin).sum().clamp(min=0).sqrt()


def _correct_rows(probs: Tensor, target: Tensor) -> Tensor:
    return (probs.argmax(1) == target).to(torch.float64)


def _gap_rows(probs: Tensor, target: Tensor) -> Tensor:
    confidence, correct = top_label(probs, target)
    return confidence.to(torch.float64) - correct.to(torch.float64)


def _brier_rows(probs: Tensor, target: Tensor) -> Tensor:
    outcome = nn.functional.one_hot(target, probs.shape[1]).to(torch.float64)
    return (probs.to(torch.float64) - outcome).square().sum(1)


def _log_probabilities(values: Tensor, from_logits: bool) -> Tensor:
    values = values.to(torch.float64)
    return torch.log_softmax(values, dim=1) if from_logits else values.clamp(min=MIN_PROBABILITY).log()


def _nll_rows(log_probs: Tensor, target: Tensor) -> Tensor:
    return -log_probs.gather(1, target.unsqueeze(1)).squeeze(1)


def confidence_gap(probs: ArrayLike, target: ArrayLike, *, from_logits: bool = False,
                   validate_args: bool = True) -> Tensor:
    """Mean top-label confidence minus accuracy: > 0 over-confident, < 0 under-confident overall.

    Unlike the ECE it keeps the sign (and lets bins cancel): label smoothing that over-corrects
    shows up as a negative gap.

    >>> p = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    >>> round(confidence_gap(p, torch.tensor([0, 1, 1])).item(), 4)
    0.1333
    """
    probs, target = check_probabilities(probs, target, from_logits=from_logits,
                                        validate_args=validate_args)
    return _gap_rows(probs, target).mean()


def brier_score(probs: ArrayLike, target: ArrayLike, *, from_logits: bool = False,
                validate_args: bool = True) -> Tensor:
    """Multiclass Brier score ``mean_i sum_k (p_ik - [y_i == k])^2`` (Brier 1950; range [0, 2]).

    >>> round(brier_score(torch.tensor([[0.75, 0.25]]), torch.tensor([0])).item(), 4)
    0.125
    """
    probs, target = check_probabilities(probs, target, from_logits=from_logits,
                                        validate_args=validate_args)
    return _brier_rows(probs, target).mean()


# Probabilities below this are clipped before the log, so a zero probability costs -log(1e-12)
# (about 27.6 nats) instead of infinity (isotonic calibrators do output exact zeros).
MIN_PROBABILITY = 1e-12


def negative_log_likelihood(probs: ArrayLike, target: ArrayLike, *, from_logits: bool = False,
                            validate_args: bool = True) -> Tensor:
    """Mean ``-log p_y`` in nats; probabilities clipped at ``MIN_PROBABILITY`` (logits are exact).

    >>> round(negative_log_likelihood(torch.tensor([[0.5, 0.5]]), torch.tensor([0])).item(), 4)
    0.6931
    """
    values, target = check_inputs(probs, target, from_logits=from_logits, validate_args=validate_args)
    return _nll_rows(_log_probabilities(values, from_logits), target).mean()
