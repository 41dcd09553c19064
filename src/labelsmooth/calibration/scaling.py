"""Post-hoc calibrators: map a trained model's logits to better-calibrated probabilities.

Each is fitted on held-out data (never the test set) and shares one interface::

    calibrator = TemperatureScaling().fit(val_logits, val_target)   # -> self
    probs = calibrator.transform(test_logits)                        # (N, K) probabilities
    calibrator.temperature                                           # the fitted parameter

- :class:`TemperatureScaling` (Guo et al. 2017): ``softmax(z / T)``, one scalar ``T > 0``.
- :class:`VectorScaling`: ``softmax(w * z + b)``, ``w, b`` in R^K.
- :class:`PlattScaling`: one-vs-rest logistic regression (scikit-learn) on each class's log-odds.
- :class:`IsotonicCalibration`: one-vs-rest isotonic regression (scikit-learn) on each class's
  probability.

The one-vs-rest calibrators give K separate binary probabilities; they are renormalised to sum
to 1 per row. Temperature and vector scaling are fitted in float64 by L-BFGS on the NLL and keep
the arg-max of each row (vector scaling may change it). ``CALIBRATORS`` maps names to classes.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .metrics import MIN_PROBABILITY, ArrayLike, check_inputs

__all__ = [
    "CALIBRATORS",
    "Calibrator",
    "IsotonicCalibration",
    "PlattScaling",
    "TemperatureScaling",
    "VectorScaling",
]


class Calibrator:
    """Base class: ``fit(logits, target) -> self``, ``transform(logits) -> probs``."""

    num_classes: int | None = None

    def fit(self, logits: ArrayLike, target: ArrayLike) -> "Calibrator":
        logits, target = check_inputs(logits, target, from_logits=True)
        self.num_classes = logits.shape[1]
        self._fit(logits.to(torch.float64), target)
        return self

    def transform(self, logits: ArrayLike) -> Tensor:
        """Calibrated probabilities (N, K), in the logits' dtype (at least float32)."""
        if self.num_classes is None:
            raise ValueError(f"{type(self).__name__} must be fitted (call fit) before transform")
        logits = torch.as_tensor(logits)
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must have shape (N, {self.num_classes}) like the logits the "
                             f"calibrator was fitted on, got shape {tuple(logits.shape)}")
        # Only the logits are checked here; zeros stand in for the targets.
        logits, _ = check_inputs(logits, torch.zeros(logits.shape[0], dtype=torch.int64), from_logits=True)
        return self._transform(logits.to(torch.float64)).to(logits.dtype)

    def fit_transform(self, logits: ArrayLike, target: ArrayLike) -> Tensor:
        return self.fit(logits, target).transform(logits)

    def _fit(self, logits: Tensor, target: Tensor) -> None:
        raise NotImplementedError

    def _transform(self, logits: Tensor) -> Tensor:
        raise NotImplementedError


def _minimize_nll(parameters: list[Tensor], calibrated_logits: Callable[[], Tensor],
                  target: Tensor, max_iter: int) -> None:
    """Minimise ``cross_entropy(calibrated_logits(), target)`` over ``parameters`` with L-BFGS."""
    optimizer = torch.optim.LBFGS(parameters, lr=1.0, max_iter=max_iter, tolerance_grad=1e-10,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(calibrated_logits(), target)
        loss.backward()
        return loss

    optimizer.step(closure)


class TemperatureScaling(Calibrator):
    """``p = softmax(z / T)``; ``T`` minimises the NLL on held-out logits (Guo et al. 2017).

    The optimiser works on ``log T``, so ``T`` stays positive. ``T > 1`` softens an over-confident
    model, ``T < 1`` sharpens an under-confident one; the arg-max never changes.

    >>> g = torch.Generator().manual_seed(0)
    >>> logits = torch.randn(2000, 5, generator=g) * 2
    >>> target = torch.multinomial(logits.softmax(1), 1, generator=g).squeeze(1)
    >>> t = TemperatureScaling().fit(logits * 3, target).temperature   # over-confident by 3
    >>> 2.8 < t < 3.2
    True
    """

    def __init__(self, max_iter: int = 100) -> None:
        self.max_iter = max_iter
        self.log_temperature = torch.zeros((), dtype=torch.float64)

    @property
    def temperature(self) -> float:
        return float(self.log_temperature.exp())

    def _fit(self, logits: Tensor, target: Tensor) -> None:
        log_t = torch.zeros((), dtype=torch.float64, device=logits.device, requires_grad=True)
        _minimize_nll([log_t], lambda: logits * torch.exp(-log_t), target, self.max_iter)
        self.log_temperature = log_t.detach()

    def _transform(self, logits: Tensor) -> Tensor:
        return torch.softmax(logits * torch.exp(-self.log_temperature.to(logits.device)), dim=1)


class VectorScaling(Calibrator):
    """``p = softmax(w * z + b)`` with a per-class scale ``w`` and bias ``b`` (Guo et al. 2017).

    >>> g = torch.Generator().manual_seed(0)
    >>> logits = torch.randn(500, 3, generator=g)
    >>> target = torch.multinomial(logits.softmax(1), 1, generator=g).squeeze(1)
    >>> VectorScaling().fit(logits, target).scale.shape
    torch.Size([3])
    """

    def __init__(self, max_iter: int = 200) -> None:
        self.max_iter = max_iter
        self.scale: Tensor | None = None
        self.bias: Tensor | None = None

    def _fit(self, logits: Tensor, target: Tensor) -> None:
        scale = torch.ones(logits.shape[1], dtype=torch.float64, device=logits.device, requires_grad=True)
        bias = torch.zeros(logits.shape[1], dtype=torch.float64, device=logits.device, requires_grad=True)
        _minimize_nll([scale, bias], lambda: logits * scale + bias, target, self.max_iter)
        self.scale, self.bias = scale.detach(), bias.detach()

    def _transform(self, logits: Tensor) -> Tensor:
        return torch.softmax(logits * self.scale.to(logits.device) + self.bias.to(logits.device), dim=1)


def _renormalise(columns: list[np.ndarray]) -> Tensor:
    """Stack K one-vs-rest probabilities (N,) each and make rows sum to 1 (uniform if all 0)."""
    probs = torch.from_numpy(np.stack(columns, axis=1).astype(np.float64))
    total = probs.sum(1, keepdim=True)
    uniform = torch.full_like(probs, 1.0 / probs.shape[1])
    return torch.where(total > 0, probs / total.clamp(min=MIN_PROBABILITY), uniform)


def _class_log_odds(logits: Tensor) -> np.ndarray:
    """``log p_k - log(1 - p_k)`` per class (N, K), computed stably from the logits."""
    log_p = torch.log_softmax(logits, dim=1)
    return (log_p - torch.log1p(-log_p.exp().clamp(max=1 - 1e-15))).cpu().numpy()


class PlattScaling(Calibrator):
    """One-vs-rest Platt scaling: ``p_k = sigmoid(a_k * s_k + c_k)``, renormalised over k.

    ``s_k`` is class k's log-odds under the model's softmax; ``a_k, c_k`` come from a
    scikit-learn ``LogisticRegression`` fitted on ``[y == k]`` (``C=1e6``: practically
    unpenalised). ``coefficients`` (K, 2) holds ``(a_k, c_k)``.

    >>> g = torch.Generator().manual_seed(0)
    >>> logits = torch.randn(300, 3, generator=g)
    >>> target = torch.randint(3, (300,), generator=g)
    >>> PlattScaling().fit(logits, target).coefficients.shape
    (3, 2)
    """

    def __init__(self) -> None:
        self.models: list = []

    @property
    def coefficients(self) -> np.ndarray:
        return np.array([[m.coef_[0, 0], m.intercept_[0]] for m in self.models])

    def _fit(self, logits: Tensor, target: Tensor) -> None:
        from sklearn.linear_model import LogisticRegression

        features, y = _class_log_odds(logits), target.cpu().numpy()
        self.models = []
        for k in range(logits.shape[1]):
            outcome = (y == k).astype(np.int64)
            if outcome.min() == outcome.max():
                only = f"class {k}" if outcome[0] else "other classes"
                raise ValueError(f"target must hold both class {k} and other classes to fit a "
                                 f"one-vs-rest calibrator, got only {only}")
            self.models.append(LogisticRegression(C=1e6, max_iter=1000).fit(features[:, k:k + 1], outcome))

    def _transform(self, logits: Tensor) -> Tensor:
        features = _class_log_odds(logits)
        columns = [m.predict_proba(features[:, k:k + 1])[:, 1] for k, m in enumerate(self.models)]
        return _renormalise(columns).to(logits.device)


class IsotonicCalibration(Calibrator):
    """One-vs-rest isotonic regression (Zadrozny & Elkan 2002) on each class's probability.

    A scikit-learn ``IsotonicRegression`` (non-decreasing, clipped to [0, 1] and to the fitted
    range) maps ``p_k`` to ``P(y = k | p_k)``; the K results are renormalised per row (a row
    whose K values are all 0 becomes uniform). ``models`` holds the K fitted regressions.

    >>> g = torch.Generator().manual_seed(0)
    >>> logits = torch.randn(300, 3, generator=g)
    >>> target = torch.randint(3, (300,), generator=g)
    >>> IsotonicCalibration().fit(logits, target).transform(logits).sum(1).allclose(torch.ones(300))
    True
    """

    def __init__(self) -> None:
        self.models: list = []

    def _fit(self, logits: Tensor, target: Tensor) -> None:
        from sklearn.isotonic import IsotonicRegression

        probs, y = torch.softmax(logits, dim=1).cpu().numpy(), target.cpu().numpy()
        self.models = [IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
                       .fit(probs[:, k], (y == k).astype(np.float64)) for k in range(logits.shape[1])]

    def _transform(self, logits: Tensor) -> Tensor:
        probs = torch.softmax(logits, dim=1).cpu().numpy()
        return _renormalise([m.predict(probs[:, k]) for k, m in enumerate(self.models)]).to(logits.device)


# name -> calibrator class (the CLI's --method)
CALIBRATORS: dict[str, type[Calibrator]] = {
    "temperature": TemperatureScaling,
    "vector": VectorScaling,
    "platt": PlattScaling,
    "isotonic": IsotonicCalibration,
}
