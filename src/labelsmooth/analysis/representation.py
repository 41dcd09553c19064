"""How good are a network's penultimate features beyond its own task: linear probes and class collapse.

Kornblith et al. (2021, *Why do better loss functions lead to less transferable features?*) find
that label smoothing raises the accuracy of the task a network was trained on while its
penultimate features transfer worse, and tie this to *class collapse*: the features of one class
huddle together and lose what distinguishes examples within it. Two measures of that:

- :func:`fit_linear_probe`: a multinomial logistic regression on frozen features (L2-penalised,
  fitted to convergence with torch's L-BFGS), and :func:`choose_linear_probe`, which picks the
  penalty on a validation split. A probe on classes *held out* of training
  (:func:`split_classes`, :func:`select_classes`: train the network on 5 classes, probe the other 5)
  measures transfer; a probe of the trained classes measures what a linear read-out can recover.
- :func:`class_collapse`: NC1 of Papyan, Han & Donoho (2020), ``tr(S_W S_B^+) / K``, and the
  plainer scatter ratio ``tr(S_W) / tr(S_B)``; both 0 at full collapse.

The probe is written in torch rather than taken from scikit-learn so that this library needs
only torch, and runs where the features are (a GPU included); its objective is strictly convex,
so its solution is unique and the tests compare it with scikit-learn's ``LogisticRegression``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .penultimate import _as_float64, _as_labels

__all__ = [
    "ClassCollapse",
    "ClassSubset",
    "LinearProbe",
    "ProbeChoice",
    "choose_linear_probe",
    "class_collapse",
    "fit_linear_probe",
    "select_classes",
    "split_classes",
]

# Penalties tried by choose_linear_probe (per mean example; scikit-learn's C = 1 / (n * l2)).
DEFAULT_L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
# A probe has converged when the largest partial derivative of its objective is at most this. L-BFGS
# runs on until float64 rounding stops its progress (typically near 1e-10), so the solution is as
# precise as the arithmetic allows; the parameters' error is about the gradient over l2.
GRADIENT_TOLERANCE = 1e-8


# 1. Which classes are trained on and which are probed ---------------------------------------------------


def split_classes(num_classes: int, held_out: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(trained, held_out)`` classes: the held-out ones (distinct, in range) and the rest, sorted.

    At least two classes must be on each side (a classifier, and a probe, needs two).

    >>> split_classes(10, (5, 6, 7, 8, 9))
    ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 4:
        raise ValueError(f"num_classes must be an int >= 4 (two classes trained, two held out), got {num_classes!r}")
    chosen = [int(k) for k in held_out]
    if len(set(chosen)) != len(chosen) or not all(0 <= k < num_classes for k in chosen) \
            or not 2 <= len(chosen) <= num_classes - 2:
        raise ValueError(f"held_out must be distinct class indices in [0, {num_classes}), at least 2 and "
                         f"leaving at least 2 classes to train on, got {list(held_out)}")
    return tuple(k for k in range(num_classes) if k not in chosen), tuple(sorted(chosen))


@dataclass(frozen=True)
class ClassSubset:
    """The rows of a split whose label is one of ``classes``, with labels renumbered ``0..m-1``.

    ``indices`` (M,) into the split; ``labels`` (M,) the position of each row's class in ``classes``.
    """

    indices: Tensor
    labels: Tensor
    classes: tuple[int, ...]


def select_classes(labels, classes: Sequence[int], *, split: str = "split",
                   class_names: Sequence[str] | None = None) -> ClassSubset:
    """The rows of ``labels`` (N,) in ``classes``; a class with no row is refused, by name.

    ``split`` names the split in the message (``"probe test split"``); ``class_names`` names the classes.

    >>> subset = select_classes(torch.tensor([3, 0, 5, 3, 9]), (3, 5))
    >>> subset.indices.tolist(), subset.labels.tolist()
    ([0, 2, 3], [0, 1, 0])
    >>> select_classes(torch.tensor([3, 0, 3]), (3, 5), split="probe test split")
    Traceback (most recent call last):
    ValueError: the probe test split has no example of class 5; every class of (3, 5) must appear in it
    """
    y = _as_labels(labels, len(labels))
    chosen = tuple(int(k) for k in classes)
    if len(chosen) < 2 or len(set(chosen)) != len(chosen):
        raise ValueError(f"classes must be at least 2 distinct class indices, got {list(classes)}")
    for k in chosen:
        if not bool((y == k).any()):
            name = f" ({class_names[k]})" if class_names is not None and 0 <= k < len(class_names) else ""
            raise ValueError(f"the {split} has no example of class {k}{name}; every class of {chosen} "
                             f"must appear in it")
    lookup = torch.full((max(int(y.max()), max(chosen)) + 1,), -1, dtype=torch.long)
    lookup[list(chosen)] = torch.arange(len(chosen))
    position = lookup[y.clamp(min=0)].masked_fill(y < 0, -1)
    indices = torch.nonzero(position >= 0).flatten()
    return ClassSubset(indices=indices, labels=position[indices], classes=chosen)


# 2. The linear probe ---------------------------------------------------------------------------------------


def _features(features, name: str, dtype: torch.dtype) -> Tensor:
    x = torch.as_tensor(features.detach() if isinstance(features, Tensor) else features)
    if x.dim() != 2 or not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"{name} must be a 2-D array of real features (N, D), got dtype {x.dtype} and "
                         f"shape {tuple(x.shape)}")
    return x.to(dtype)


@dataclass(frozen=True)
class LinearProbe:
    """A fitted probe: ``logits = ((x - mean) / scale) @ weight.T + bias`` over ``classes``.

    ``weight`` (m, D), ``bias`` (m,), ``mean`` and ``scale`` (D,) the training features' standardisation
    (or 0 and 1), ``classes`` the label of each output, ``l2`` the penalty, ``gradient_norm`` the
    largest partial derivative of the objective at the end (below ``GRADIENT_TOLERANCE`` once converged).
    """

    weight: Tensor
    bias: Tensor
    mean: Tensor
    scale: Tensor
    classes: tuple[int, ...]
    l2: float
    gradient_norm: float

    @property
    def converged(self) -> bool:
        return self.gradient_norm <= GRADIENT_TOLERANCE

    def logits(self, features) -> Tensor:
        """(N, D) features -> (N, m) logits, on the probe's device and dtype."""
        x = _features(features, "features", self.weight.dtype).to(self.weight.device)
        if x.shape[1] != self.weight.shape[1]:
            raise ValueError(f"features must have {self.weight.shape[1]} columns (as the probe was fitted), "
                             f"got shape {tuple(x.shape)}")
        return ((x - self.mean) / self.scale) @ self.weight.T + self.bias

    def predict(self, features) -> Tensor:
        """The predicted class label (one of ``classes``) of every row: (N,)."""
        return torch.tensor(self.classes, device=self.weight.device)[self.logits(features).argmax(1)]

    def accuracy(self, features, labels) -> float:
        """Fraction of rows whose predicted class is their label; a label outside ``classes`` is refused."""
        y = _as_labels(labels, len(labels)).to(self.weight.device)
        unknown = sorted(set(y.unique().tolist()) - set(self.classes))
        if unknown:
            raise ValueError(f"labels hold classes {unknown}, which the probe was not fitted on (its classes "
                             f"are {self.classes})")
        return float((self.predict(features) == y).double().mean())


def fit_linear_probe(features, labels, *, l2: float = 1e-4, standardize: bool = True, max_iter: int = 1000,
                     dtype: torch.dtype = torch.float64) -> LinearProbe:
    r"""Multinomial logistic regression on frozen features, by L-BFGS (strong Wolfe line search).

    Minimises ``(1/n) sum_i -log softmax(W x_i + b)_{y_i} + (l2 / 2) |W|_F^2`` (the bias is not
    penalised), the objective of scikit-learn's ``LogisticRegression(C=1 / (n * l2))`` for three
    classes or more (for two, which it fits with one row ``w_1 - w_0``: ``C = 2 / (n * l2)``), with
    ``x_i`` standardised per feature by the training features' mean and standard deviation when
    ``standardize`` (a constant feature keeps scale 1). Strictly convex for ``l2 > 0``: one solution.

    Args:
        features: (n, D) frozen features, any device; fitted in ``dtype`` there.
        labels: (n,) class labels (any integers; at least two distinct).

    >>> x = torch.tensor([[0.0], [1.0], [3.0], [4.0]])
    >>> probe = fit_linear_probe(x, torch.tensor([7, 7, 9, 9]))
    >>> probe.predict(torch.tensor([[0.5], [3.5]])).tolist(), probe.converged
    ([7, 9], True)
    """
    x = _features(features, "features", dtype)
    y = _as_labels(labels, x.shape[0]).to(x.device)
    if not (isinstance(l2, (int, float)) and not isinstance(l2, bool) and 0 < l2 < math.inf):
        raise ValueError(f"l2 must be a finite number > 0 (the penalty makes the solution unique), got {l2!r}")
    classes = torch.unique(y)
    if len(classes) < 2:
        raise ValueError(f"labels must hold at least 2 classes to fit a probe, got {classes.tolist()}")
    target = torch.searchsorted(classes, y)
    mean = x.mean(0) if standardize else x.new_zeros(x.shape[1])
    scale = x.std(0, correction=0) if standardize else x.new_ones(x.shape[1])
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    z = (x - mean) / scale
    weight = x.new_zeros(len(classes), x.shape[1], requires_grad=True)
    bias = x.new_zeros(len(classes), requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, history_size=20,
                                  tolerance_grad=0.0, tolerance_change=0.0,
                                  line_search_fn="strong_wolfe")

    def objective() -> Tensor:
        optimizer.zero_grad()
        value = F.cross_entropy(z @ weight.T + bias, target) + 0.5 * l2 * (weight ** 2).sum()
        value.backward()
        return value

    with torch.enable_grad():
        optimizer.step(objective)
        objective()
    gradient_norm = max(float(weight.grad.abs().max()), float(bias.grad.abs().max()))
    return LinearProbe(weight=weight.detach(), bias=bias.detach(), mean=mean, scale=scale,
                       classes=tuple(classes.tolist()), l2=float(l2), gradient_norm=gradient_norm)


@dataclass(frozen=True)
class ProbeChoice:
    """The probe with the best validation accuracy, and every penalty's validation accuracy."""

    probe: LinearProbe
    validation_accuracy: dict[float, float]


def choose_linear_probe(train_features, train_labels, val_features, val_labels, *,
                        l2_grid: Sequence[float] = DEFAULT_L2_GRID, **options) -> ProbeChoice:
    """Fit a probe for every penalty in ``l2_grid`` on the training split, keep the best on validation.

    Ties go to the larger penalty (the simpler probe). ``options`` go to :func:`fit_linear_probe`.
    Nothing is chosen on a test split: evaluate the returned probe there.

    >>> x = torch.tensor([[0.0], [1.0], [3.0], [4.0]]); y = torch.tensor([0, 0, 1, 1])
    >>> choice = choose_linear_probe(x, y, x, y, l2_grid=(1e-3, 1e-1))
    >>> choice.probe.l2, choice.validation_accuracy
    (0.1, {0.001: 1.0, 0.1: 1.0})
    """
    if not l2_grid:
        raise ValueError("l2_grid must hold at least one penalty, got none")
    probes = {float(l2): fit_linear_probe(train_features, train_labels, l2=l2, **options) for l2 in l2_grid}
    accuracy = {l2: probe.accuracy(val_features, val_labels) for l2, probe in probes.items()}
    best = max(accuracy, key=lambda l2: (accuracy[l2], l2))
    return ProbeChoice(probe=probes[best], validation_accuracy=accuracy)


# 3. Class collapse -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassCollapse:
    """NC1 and the scatter ratio of some features (both scale-free; 0 when every class is one point).

    ``nc1 = tr(S_W S_B^+) / K`` (Papyan et al. 2020); ``scatter_ratio = tr(S_W) / tr(S_B)``;
    ``within`` and ``between`` are ``tr(S_W)`` and ``tr(S_B)``; ``classes`` the K classes measured.
    """

    nc1: float
    scatter_ratio: float
    within: float
    between: float
    classes: tuple[int, ...]


def class_collapse(features, labels, classes: Sequence[int] | None = None) -> ClassCollapse:
    r"""Within-class variability relative to the spread of the class means (neural collapse NC1).

    With the rows of the K ``classes`` (all classes present by default), class means ``mu_k``, the
    mean of the class means ``mu = (1/K) sum_k mu_k``, and N the number of those rows::

        S_W = (1/N) sum_i (h_i - mu_{y_i}) (h_i - mu_{y_i})^T
        S_B = (1/K) sum_k (mu_k - mu) (mu_k - mu)^T
        NC1 = tr(S_W S_B^+) / K          scatter_ratio = tr(S_W) / tr(S_B)

    ``S_B^+`` is the Moore-Penrose pseudo-inverse (``S_B`` has rank at most K - 1). For balanced
    classes these are Papyan, Han & Donoho's (2020) definitions. Computed in float64 on the CPU.

    Args:
        features: (N, D) features; labels: (N,) class labels.

    Example: 1-D classes at -1 and +1, each point 0.5 from its mean: S_W = 0.25, S_B = 1, K = 2.
        >>> h = torch.tensor([[-1.5], [-0.5], [0.5], [1.5]])
        >>> c = class_collapse(h, torch.tensor([0, 0, 1, 1]))
        >>> round(c.nc1, 12), round(c.scatter_ratio, 12)
        (0.125, 0.25)
    """
    h = _as_float64(features, "features", 2)
    y = _as_labels(labels, h.shape[0])
    subset = select_classes(y, torch.unique(y).tolist() if classes is None else classes)
    h, y = h[subset.indices], subset.labels
    num_classes = len(subset.classes)
    means = torch.zeros(num_classes, h.shape[1], dtype=torch.float64).index_add_(0, y, h)
    means /= torch.bincount(y, minlength=num_classes).unsqueeze(1).double()
    centred = h - means[y]
    within = centred.T @ centred / h.shape[0]
    spread = means - means.mean(0)
    between = spread.T @ spread / num_classes
    between_trace = float(torch.trace(between))
    if between_trace <= 0:
        raise ValueError(f"the class means of classes {subset.classes} coincide: class collapse is undefined "
                         f"when the classes are not separated at all")
    nc1 = float(torch.trace(within @ torch.linalg.pinv(between, hermitian=True))) / num_classes
    return ClassCollapse(nc1=nc1, scatter_ratio=float(torch.trace(within)) / between_trace,
                         within=float(torch.trace(within)), between=between_trace, classes=subset.classes)
