"""The penultimate-layer picture of Müller, Kornblith & Hinton (2019), made measurable.

*When does label smoothing help?* (NeurIPS 2019, Section 2) picks three classes, takes the plane
through their *templates* (the rows ``w_k`` of the last layer's weight, since the logit of class
``k`` is ``w_k . a + b_k`` for the penultimate activation ``a``), projects the activations of
examples of those classes onto that plane and plots them. With label smoothing the clusters come
out tighter and closer to equidistant. Here:

- :func:`template_plane` builds the plane's orthonormal basis from ``w2 - w1`` and ``w3 - w1``
  (QR) and :meth:`TemplateSubspace.project` gives every activation its coordinates ``(a.u, a.v)``.
  (A popular public reproduction orthonormalises the three templates through the origin and then
  runs PCA; that is a different plane and not the paper's method.)
- :func:`template_subspace` does the same for any number of classes (all K by default): the
  span of the template differences is the part of activation space that moves the softmax.
- :func:`cluster_measures` turns the picture into numbers: how spread each class is relative to
  the distance between classes, and how equal the distances between class means are.
- :func:`plot_projection_grid` draws the paper's figure: columns eps = 0 and eps > 0, rows train
  and test (matplotlib, imported only when called).

Everything is computed in float64 with torch; arrays may be tensors or NumPy arrays.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

__all__ = [
    "ClusterMeasures",
    "ProjectionPanel",
    "TemplateSubspace",
    "cluster_measures",
    "plot_projection_grid",
    "template_plane",
    "template_subspace",
]

# A diagonal entry of R below this fraction of the longest template difference means the
# templates are affinely dependent (three templates on one line).
_DEGENERATE_TOLERANCE = 1e-10


def _as_float64(x, name: str, dim: int) -> Tensor:
    """``x`` (tensor or array) as a float64 CPU tensor with ``dim`` dimensions."""
    t = torch.as_tensor(x.detach() if isinstance(x, Tensor) else x).cpu()
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"{name} must hold real numbers, got dtype {t.dtype}")
    if t.dim() != dim:
        raise ValueError(f"{name} must have {dim} dimensions, got shape {tuple(t.shape)}")
    return t.to(torch.float64)


def _as_labels(labels, n: int, name: str = "labels") -> Tensor:
    t = torch.as_tensor(labels.detach() if isinstance(labels, Tensor) else labels).cpu()
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or t.shape != (n,):
        raise ValueError(f"{name} must be {n} integer class indices, shape ({n},), got "
                         f"dtype {t.dtype} and shape {tuple(t.shape)}")
    return t.long()


def _check_classes(classes: Sequence[int], num_classes: int | None = None,
                   count: int | None = None) -> tuple[int, ...]:
    """Distinct class indices (at least 2; exactly ``count``; below ``num_classes`` when given)."""
    chosen = tuple(int(k) for k in classes)
    in_range = all(0 <= k < (num_classes if num_classes is not None else math.inf) for k in chosen)
    if len(chosen) < 2 or len(set(chosen)) != len(chosen) or not in_range \
            or (count is not None and len(chosen) != count):
        bound = f" in [0, {num_classes})" if num_classes is not None else ""
        raise ValueError(f"classes must be {count or 'at least 2'} distinct class indices{bound}, "
                         f"got {list(chosen)}")
    return chosen


# 1. The plane through three class templates -----------------------------------------------------


@dataclass(frozen=True)
class TemplateSubspace:
    """The affine span of the templates of ``m`` classes, as an orthonormal basis (D, m - 1).

    For three classes (``template_plane``) the columns are ``u`` (along ``w2 - w1``) and ``v``
    (the part of ``w3 - w1`` orthogonal to ``u``); ``classes`` are the class indices, in order.
    """

    basis: Tensor
    classes: tuple[int, ...]

    def project(self, activations) -> Tensor:
        """Coordinates ``(a.u, a.v, ...)`` of every row ``a`` of ``activations`` (N, D) -> (N, m - 1)."""
        a = _as_float64(activations, "activations", 2)
        if a.shape[1] != self.basis.shape[0]:
            raise ValueError(f"activations must have {self.basis.shape[0]} features (the templates' "
                             f"width), got shape {tuple(a.shape)}")
        return a @ self.basis


def template_subspace(weight, classes: Sequence[int] | None = None, *,
                      count: int | None = None) -> TemplateSubspace:
    r"""Orthonormal basis of the span of the template differences ``w_k - w_1`` (QR).

    ``[w_2 - w_1, ..., w_m - w_1] = Q R`` (reduced QR) with the signs fixed so that
    ``diag(R) > 0``; the basis is ``Q`` (D, m - 1). Distances measured in it are the part of the
    activations that moves the logits' differences, which is what the softmax sees.

    Args:
        weight: the last layer's weight (K, D); row ``k`` is the template of class ``k``.
        classes: distinct class indices ``(k_1, ..., k_m)``; all K classes when None.
        count: the number of classes required (3 for the paper's plane), or None.
    """
    w = _as_float64(weight, "weight", 2)
    chosen = _check_classes(range(w.shape[0]) if classes is None else classes, w.shape[0], count)
    if w.shape[1] < len(chosen) - 1:
        raise ValueError(f"weight must have at least {len(chosen) - 1} features to span the "
                         f"templates of {len(chosen)} classes, got shape {tuple(w.shape)}")
    differences = (w[list(chosen[1:])] - w[chosen[0]]).T
    q, r = torch.linalg.qr(differences)
    diagonal = torch.diagonal(r)
    if diagonal.abs().min() <= _DEGENERATE_TOLERANCE * differences.norm(dim=0).max():
        raise ValueError(f"the templates of classes {chosen} are affinely dependent (for three "
                         f"classes: they lie on one line); they span no {len(chosen) - 1}-D subspace")
    return TemplateSubspace(basis=q * torch.sign(diagonal), classes=chosen)


def template_plane(weight, classes: Sequence[int]) -> TemplateSubspace:
    r"""The plane through the templates ``w1, w2, w3`` of three classes (Müller et al. 2019, Sec. 2).

    Basis ``u = (w2 - w1) / |w2 - w1|`` and ``v`` the unit vector along the part of ``w3 - w1``
    orthogonal to ``u`` (QR of ``[w2 - w1, w3 - w1]``); a point's coordinates are ``(a.u, a.v)``.

    Args:
        weight: the last layer's weight (K, D); row ``k`` is the template of class ``k``.
        classes: three distinct class indices ``(k1, k2, k3)``.

    Example: templates at (0, 0, 1), (3, 0, 1), (0, 4, 1) span the plane z = 1.
        >>> import torch
        >>> w = torch.tensor([[0., 0., 1.], [3., 0., 1.], [0., 4., 1.]])
        >>> template_plane(w, (0, 1, 2)).project(w)
        tensor([[0., 0.],
                [3., 0.],
                [0., 4.]], dtype=torch.float64)
    """
    return template_subspace(weight, classes, count=3)


# 2. Measures of the clusters --------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterMeasures:
    """How tight and how equidistant the class clusters are (all ratios, so scale-free).

    ``spread[i]``: RMS distance of class ``classes[i]``'s points from their mean;
    ``mean_distance``: mean distance between two class means;
    ``tightness = mean(spread) / mean_distance`` (within / between; smaller is tighter);
    ``equidistance_cv``: coefficient of variation (std / mean) of the distances between class
    means (0 when they are all equal). Both compare activations with activations: a template
    lives in another space (its units are logit per activation), so a spread measured against the
    distance between templates would change under a rescaling that leaves the network unchanged.
    """

    classes: tuple[int, ...]
    spread: tuple[float, ...]
    mean_distance: float
    tightness: float
    equidistance_cv: float

    def as_dict(self) -> dict:
        return asdict(self)


def _pairwise_distances(points: Tensor) -> Tensor:
    """Distances ``|p_i - p_j|`` for every pair ``i < j`` of rows of ``points`` (M, d)."""
    pairs = list(itertools.combinations(range(points.shape[0]), 2))
    first, second = (torch.tensor(side) for side in zip(*pairs))
    return (points[first] - points[second]).norm(dim=1)


def cluster_measures(points, labels, classes: Sequence[int]) -> ClusterMeasures:
    r"""Tightness and equidistance of the clusters that ``classes`` form in ``points``.

    For class ``k`` with points ``x_i`` and mean ``m_k``: ``spread_k = sqrt(mean_i |x_i - m_k|^2)``.
    With ``d_jk = |m_j - m_k|`` over the pairs of ``classes``::

        tightness       = mean_k spread_k / mean_{j<k} d_jk
        equidistance_cv = std_{j<k} d_jk / mean_{j<k} d_jk      (population std)

    Args:
        points: (N, d) activations, full-width (d = D) or projected (d = 2).
        labels: (N,) class index of every row; rows of other classes are ignored.
        classes: the classes to measure (at least 2, each present in ``labels``).

    Example: two classes whose points sit at distance 1 from their means, means 10 apart.
        >>> import torch
        >>> x = torch.tensor([[-1., 0.], [1., 0.], [9., 0.], [11., 0.]])
        >>> m = cluster_measures(x, torch.tensor([0, 0, 1, 1]), (0, 1))
        >>> m.spread, m.mean_distance, m.tightness, m.equidistance_cv
        ((1.0, 1.0), 10.0, 0.1, 0.0)
    """
    x = _as_float64(points, "points", 2)
    y = _as_labels(labels, x.shape[0])
    chosen = _check_classes(classes)
    counts = [int((y == k).sum()) for k in chosen]
    if min(counts) == 0:
        raise ValueError(f"every class in classes must have points; classes {list(chosen)} have "
                         f"counts {counts}")
    means = torch.stack([x[y == k].mean(0) for k in chosen])
    spread = [float(((x[y == k] - means[i]) ** 2).sum(1).mean().sqrt()) for i, k in enumerate(chosen)]
    distances = _pairwise_distances(means)
    mean_distance = float(distances.mean())
    mean_spread = sum(spread) / len(spread)
    return ClusterMeasures(
        classes=chosen,
        spread=tuple(spread),
        mean_distance=mean_distance,
        tightness=mean_spread / mean_distance if mean_distance > 0 else math.inf,
        equidistance_cv=float(distances.std(correction=0)) / mean_distance if mean_distance > 0 else math.inf,
    )


# 3. The figure ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProjectionPanel:
    """One scatter of the figure: projected points, their labels, and what to call them.

    ``coords`` (M, 2) and ``labels`` (M,) as returned by :meth:`TemplateSubspace.project` for the
    rows of the three classes; ``class_names`` maps a class index to its name; ``title`` heads the panel.
    """

    coords: Tensor
    labels: Tensor
    class_names: dict[int, str]
    title: str


def plot_projection_grid(panels: Sequence[Sequence[ProjectionPanel]], path: str | Path | None = None,
                         *, max_points_per_class: int = 300, seed: int = 0, share_axes: bool = False):
    """Draw panels as a grid (rows x columns), one colour per class; save a PNG to ``path``.

    The paper's layout is rows train / test and columns eps = 0 / eps > 0, the same three classes
    everywhere. At most ``max_points_per_class`` points per class are drawn (a fixed random
    subset, ``seed``), so large data sets stay readable. ``share_axes`` gives every panel the
    same axis ranges (those of all drawn points, 5% margin, equal scales), so panels compare
    at a glance. Returns the matplotlib Figure (built without pyplot, so nothing global is left
    open).
    """
    from matplotlib.figure import Figure

    rows = [list(row) for row in panels]
    if not rows or not rows[0] or any(len(row) != len(rows[0]) for row in rows):
        raise ValueError(f"panels must be a non-empty rectangular grid, got row lengths {[len(r) for r in rows]}")
    generator = torch.Generator().manual_seed(seed)
    fig = Figure(figsize=(3.4 * len(rows[0]), 3.2 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(rows[0]), squeeze=False)
    drawn = []
    for ax, panel in zip(axes.flat, itertools.chain.from_iterable(rows)):
        labels = _as_labels(panel.labels, len(panel.coords), "panel.labels")
        for i, k in enumerate(sorted(panel.class_names)):
            index = torch.nonzero(labels == k).flatten()
            index = index[torch.randperm(len(index), generator=generator)[:max_points_per_class]]
            points = torch.as_tensor(panel.coords)[index].double()
            drawn.append(points)
            ax.scatter(points[:, 0], points[:, 1], s=6, alpha=0.5, color=f"C{i % 10}",
                       label=panel.class_names[k], rasterized=True)
        ax.set_title(panel.title, fontsize=9)
        ax.set_aspect("equal", adjustable="box" if share_axes else "datalim")
        ax.tick_params(labelsize=7)
    every = torch.cat(drawn) if drawn else torch.empty(0, 2, dtype=torch.float64)
    if share_axes and len(every):
        low, high = every.min(0).values, every.max(0).values
        center, half = (low + high) / 2, float((high - low).max()) / 2 * 1.05 or 1.0
        for ax in axes.flat:
            ax.set_xlim(float(center[0]) - half, float(center[0]) + half)
            ax.set_ylim(float(center[1]) - half, float(center[1]) + half)
    axes.flat[0].legend(fontsize=7, markerscale=2, loc="best")
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
