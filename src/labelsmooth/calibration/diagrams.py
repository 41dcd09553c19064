"""Reliability diagrams: accuracy against confidence per bin, with a confidence histogram beneath.

A calibrated model's bars follow the diagonal. Bars below it (confidence above accuracy) are
over-confidence, bars above it under-confidence; the hatched band between each bar's accuracy
and its mean confidence is the gap (red: over-confident, orange: under-confident). The
histogram beneath shows where the predictions sit, with the mean confidence and the accuracy
marked (mean confidence below accuracy is under-confidence overall). Equal-width bins only.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend change;
matplotlib is imported when a diagram is drawn)::

    reliability_diagram(probs, target, "model.png")
    reliability_diagrams({"eps=0": (p0, y), "eps=0.1": (p1, y)}, "sweep.png")          # side by side
    reliability_diagrams({...}, "overlay.png", layout="overlay")
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

from .metrics import NORMS, ArrayLike, bin_statistics, check_probabilities, top_label

__all__ = ["LAYOUTS", "ReliabilityBins", "reliability_bins", "reliability_diagram", "reliability_diagrams"]

_GAP_COLOR, _UNDER_COLOR, _BAR_COLOR = "#d62728", "#ff7f0e", "#1f77b4"
# (legend label, colour, opacity, sign of confidence - accuracy); an under-confidence gap lies over
# the accuracy bar, so it is drawn nearly opaque to read as orange rather than a blend with blue.
_GAPS = (("over-confidence gap", _GAP_COLOR, 0.45, 1), ("under-confidence gap", _UNDER_COLOR, 0.85, -1))


class ReliabilityBins:
    """Per-bin numbers a diagram draws, as float lists of length ``n_bins``."""

    def __init__(self, probs: ArrayLike, target: ArrayLike, n_bins: int, from_logits: bool) -> None:
        probs, target = check_probabilities(probs, target, from_logits=from_logits)
        confidence, correct = top_label(probs, target)
        stats = bin_statistics(confidence.unsqueeze(0), correct.unsqueeze(0), n_bins, "width")
        count = stats.count[0]
        self.n_bins = n_bins
        self.count = count.tolist()
        self.fraction = (count / count.sum()).tolist()
        self.accuracy = (stats.outcome[0] / count.clamp(min=1)).tolist()
        self.confidence = (stats.confidence[0] / count.clamp(min=1)).tolist()
        self.ece = float(NORMS["l1"](stats)[0])
        self.mean_confidence = float(confidence.double().mean())
        self.overall_accuracy = float(correct.double().mean())

    @property
    def filled(self) -> list[int]:
        return [b for b, n in enumerate(self.count) if n > 0]


def reliability_bins(probs: ArrayLike, target: ArrayLike, n_bins: int = 15, *,
                     from_logits: bool = False) -> ReliabilityBins:
    """Bin top-label predictions for a diagram (checks the inputs like the metrics do).

    >>> import torch
    >>> bins = reliability_bins(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 0]), 5)
    >>> bins.filled, bins.accuracy[3], bins.accuracy[4]
    ([3, 4], 0.0, 1.0)
    """
    return ReliabilityBins(probs, target, n_bins, from_logits)


def _draw_bars(bins: ReliabilityBins, ax, ax_hist, label: str) -> None:
    width = 1.0 / bins.n_bins
    centers = [(b + 0.5) * width for b in range(bins.n_bins)]
    filled = bins.filled
    ax.bar([centers[b] for b in filled], [bins.accuracy[b] for b in filled], width=width,
           color=_BAR_COLOR, edgecolor="black", linewidth=0.5)
    for _, color, alpha, sign in _GAPS:
        side = [b for b in filled if sign * (bins.confidence[b] - bins.accuracy[b]) > 0]
        ax.bar([centers[b] for b in side], [abs(bins.confidence[b] - bins.accuracy[b]) for b in side],
               bottom=[min(bins.confidence[b], bins.accuracy[b]) for b in side], width=width, color=color,
               alpha=alpha, edgecolor="black", hatch="//", linewidth=0.5)
    ax.set_title(f"{label}\nECE {bins.ece:.3f}", fontsize=10)
    ax_hist.bar(centers, bins.fraction, width=width, color="gray", edgecolor="black", linewidth=0.5)
    ax_hist.axvline(bins.mean_confidence, color=_GAP_COLOR, linestyle="--", label="mean confidence")
    ax_hist.axvline(bins.overall_accuracy, color=_BAR_COLOR, linestyle="-", label="accuracy")


def _draw_line(bins: ReliabilityBins, ax, ax_hist, label: str) -> None:
    filled = bins.filled
    line, = ax.plot([bins.confidence[b] for b in filled], [bins.accuracy[b] for b in filled],
                    marker="o", markersize=3, label=f"{label} (ECE {bins.ece:.3f})")
    edges = [b / bins.n_bins for b in range(bins.n_bins + 1)]
    ax_hist.stairs(bins.fraction, edges, color=line.get_color())


def _frame(ax, ax_hist, show_ylabel: bool) -> None:
    ax.plot([0, 1], [0, 1], linestyle=":", color="black", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal", adjustable="box")
    ax.tick_params(labelbottom=False)
    ax_hist.set_xlim(0, 1)
    ax_hist.set_xlabel("confidence")
    if show_ylabel:
        ax.set_ylabel("accuracy")
        ax_hist.set_ylabel("fraction")


def _side_by_side(figure, models: dict[str, ReliabilityBins]) -> None:
    grid = figure.add_gridspec(2, len(models), height_ratios=[3, 1], hspace=0.08)
    for column, (label, bins) in enumerate(models.items()):
        ax, ax_hist = figure.add_subplot(grid[0, column]), figure.add_subplot(grid[1, column])
        _draw_bars(bins, ax, ax_hist, label)
        _frame(ax, ax_hist, column == 0)
    from matplotlib.patches import Patch

    handles = [figure.axes[0].get_lines()[0], Patch(facecolor=_BAR_COLOR, edgecolor="black", label="accuracy")]
    handles += [Patch(facecolor=color, alpha=alpha, edgecolor="black", hatch="//", label=name)
                for name, color, alpha, _ in _GAPS]
    figure.axes[0].legend(handles=handles, loc="upper left", fontsize=7)
    figure.axes[1].legend(loc="upper left", fontsize=7)


def _overlay(figure, models: dict[str, ReliabilityBins]) -> None:
    grid = figure.add_gridspec(2, 1, height_ratios=[3, 1], hspace=0.08)
    ax, ax_hist = figure.add_subplot(grid[0]), figure.add_subplot(grid[1])
    for label, bins in models.items():
        _draw_line(bins, ax, ax_hist, label)
    _frame(ax, ax_hist, True)
    ax.legend(loc="upper left", fontsize=7)


# layout name -> (draw function, figure size for n models)
LAYOUTS: dict[str, tuple[Callable, Callable[[int], tuple[float, float]]]] = {
    "side_by_side": (_side_by_side, lambda n: (3.2 * n, 4.6)),
    "overlay": (_overlay, lambda n: (4.6, 5.6)),
}


def reliability_diagrams(models: Mapping[str, tuple[ArrayLike, ArrayLike]], path: str | Path | None = None,
                         *, n_bins: int = 15, layout: str = "side_by_side", from_logits: bool = False,
                         title: str | None = None, dpi: int = 110):
    """Reliability diagrams of several models: one panel each (``"side_by_side"``) or one shared
    panel (``"overlay"``). ``models`` maps a label to ``(probs, target)`` (or logits with
    ``from_logits=True``). Saves a PNG at ``path`` when given; returns the matplotlib Figure.

    >>> import os, tempfile, torch
    >>> p = torch.softmax(torch.randn(100, 3, generator=torch.Generator().manual_seed(0)), 1)
    >>> y = torch.zeros(100, dtype=torch.long)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     fig = reliability_diagrams({"a": (p, y), "b": (p, y)}, os.path.join(tmp, "d.png"))
    ...     os.path.getsize(os.path.join(tmp, "d.png")) > 1000
    True
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
    if not models:
        raise ValueError("models must name at least one (probs, target) pair, got none")
    from matplotlib.figure import Figure

    binned = {str(label): reliability_bins(p, y, n_bins, from_logits=from_logits)
              for label, (p, y) in models.items()}
    draw, size = LAYOUTS[layout]
    figure = Figure(figsize=size(len(binned)), layout="constrained")
    draw(figure, binned)
    if title:
        figure.suptitle(title)
    if path is not None:
        figure.savefig(Path(path), format="png", dpi=dpi)
    return figure


def reliability_diagram(probs: ArrayLike, target: ArrayLike, path: str | Path | None = None, *,
                        n_bins: int = 15, label: str = "model", from_logits: bool = False, dpi: int = 110):
    """Reliability diagram of one model (see :func:`reliability_diagrams`); returns the Figure.

    >>> import torch
    >>> p = torch.softmax(torch.randn(50, 4, generator=torch.Generator().manual_seed(0)), 1)
    >>> reliability_diagram(p, torch.zeros(50, dtype=torch.long), label="mine").axes[0].get_title()[:8]
    'mine\\nECE'
    """
    return reliability_diagrams({label: (probs, target)}, path, n_bins=n_bins, from_logits=from_logits, dpi=dpi)
