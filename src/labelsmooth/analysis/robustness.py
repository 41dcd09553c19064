"""Adversarial robustness under an L-infinity budget: FGSM, PGD, transfer attacks, robust accuracy.

Does label smoothing make a classifier robust? Goibert & Dohmatob (2019) report that it does
against white-box attacks; Fu et al. (2020) answer that the gain is *gradient masking*: smoothing
flattens the loss surface the attacker follows, and the gain vanishes once the attack does not
depend on the defended model's gradient. This module gives the attacks and the two controls:

- :func:`fgsm` (Goodfellow et al. 2015) and :func:`pgd` (Madry et al. 2018, k steps with a random
  start), in pixel space ``[0, 1]``: the perturbation ``delta`` satisfies ``|delta|_inf <= budget``
  and the adversarial image stays in ``[0, 1]``. A model fed standardised images is attacked
  through ``to_model_input`` (for example :class:`.pixels.Standardize`), never in its own input space.
- the *margin* (Carlini & Wagner 2017) loss beside cross-entropy: its gradient does not vanish when
  the softmax saturates, which is how smoothing's flat cross-entropy can mislead an attacker.
- *transfer* attacks: :func:`robust_correct` with ``source_model`` crafts the examples on another
  model (an independently trained one, typically without smoothing) and evaluates them on the
  target. A model whose own gradient is useless (zero, detached, shattered) looks robust to a
  white-box attack and is not to a transfer attack.

Shapes: ``target`` has the examples' shape ``S`` (``(N,)``, or ``(C, N)`` for C stacked cells fed
one batch each); ``pixels`` have shape ``S + image shape``; ``model(to_model_input(pixels))`` returns
logits of shape ``S + (K,)``. Each example's logits must depend on that example's input alone (a
model in eval mode; no batch statistics), so the gradient of the summed loss with respect to one
input is the gradient of that input's own loss. The model's mode and parameters are left as they
are; no ``.grad`` of a parameter is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import ContentChecks, check_class_indices, check_index_target
from .pixels import check_pixels

__all__ = [
    "ATTACKS",
    "ATTACK_LOSSES",
    "Attack",
    "attack_loss",
    "correct_predictions",
    "craft_adversarial",
    "fgsm",
    "margin_loss",
    "pgd",
    "robust_correct",
]

ATTACKS = ("fgsm", "pgd")
ATTACK_LOSSES = ("cross_entropy", "margin")
# PGD's default step: 2.5 * budget / steps (Madry et al. 2018), so the iterates can cross the ball.
DEFAULT_STEP_FACTOR = 2.5

Model = Callable[[Tensor], Tensor]


# 1. Losses the attacker maximises -------------------------------------------------------------


def margin_loss(logits: Tensor, target: Tensor) -> Tensor:
    r"""The margin (Carlini-Wagner) loss ``max_{j != y} z_j - z_y`` of every example.

    Positive exactly when the example is misclassified (ties aside). Shapes: ``logits`` (..., K)
    with K >= 2, ``target`` (...) -> (...).

    >>> margin_loss(torch.tensor([[2.0, 0.5, 1.0], [0.0, 3.0, 1.0]]), torch.tensor([0, 2]))
    tensor([-1.,  2.])
    """
    if logits.shape[-1] < 2:
        raise ValueError(f"logits must have at least 2 classes for a margin, got shape {tuple(logits.shape)}")
    true = logits.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    others = logits.masked_fill(F.one_hot(target, logits.shape[-1]).bool(), -math.inf)
    return others.amax(-1) - true


def _cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                           reduction="none").reshape(target.shape)


_LOSSES = {"cross_entropy": _cross_entropy, "margin": margin_loss}


def attack_loss(logits: Tensor, target: Tensor, loss: str = "cross_entropy") -> Tensor:
    r"""The per-example loss an attack maximises: ``-log softmax(z)_y`` or the margin loss.

    Shapes: ``logits`` (..., K), ``target`` (...) -> (...).

    >>> attack_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([1]))
    tensor([0.6931])
    """
    _check_choice(loss, ATTACK_LOSSES, "loss")
    return _LOSSES[loss](logits, target)


# 2. The attacks ---------------------------------------------------------------------------------


def _check_choice(value: str, choices: tuple[str, ...], name: str) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_positive(value, name: str, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a finite number > 0 ({what}), got {value!r}")


def _check_attack(budget: float, steps: int, step_size: float | None, loss: str) -> None:
    _check_positive(budget, "budget", "the L-infinity radius on [0, 1] pixels")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if step_size is not None:
        _check_positive(step_size, "step_size", "the pixel change per step")
    _check_choice(loss, ATTACK_LOSSES, "loss")


def _check_inputs(pixels: Tensor, target: Tensor) -> None:
    """``pixels``: floating, in [0, 1], shaped ``target.shape + image``; ``target``: class indices."""
    check_pixels(pixels)
    check_index_target(target, pixels.shape[:target.dim()] if isinstance(target, Tensor) else (),
                       shape_source="the leading dimensions of pixels", unsupported_by="by an attack")
    if target.dim() == 0 or pixels.dim() <= target.dim():
        raise ValueError(f"pixels must have the target's shape (at least one dimension of examples) "
                         f"followed by the image's shape; got pixels {tuple(pixels.shape)} and target "
                         f"{tuple(target.shape)}")


def _logits(model: Model, model_input: Tensor, target: Tensor) -> Tensor:
    logits = model(model_input)
    if not isinstance(logits, Tensor) or logits.shape[:-1] != target.shape or logits.dim() != target.dim() + 1:
        raise ValueError(f"model must return logits of shape {tuple(target.shape)} + (K,) (the target's "
                         f"shape and a class dimension), got "
                         f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}")
    checks = ContentChecks()
    check_class_indices(target, logits.shape[-1], None, checks)
    checks.raise_if_failed()
    return logits


def _perturb(model: Model, pixels: Tensor, target: Tensor, budget: float, steps: int, step_size: float,
             loss: str, start: Tensor | None, to_model_input: Model | None) -> Tensor:
    """Projected signed-gradient ascent from ``pixels + start`` (or ``pixels``) onto the budget box.

    The feasible set ``{x : |x - pixels|_inf <= budget, 0 <= x <= 1}`` is a box, so the projection is
    the clamp to ``[max(pixels - budget, 0), min(pixels + budget, 1)]``. A loss that does not depend
    on the input through autograd (a detached model) has gradient zero.
    """
    to_model_input = to_model_input or (lambda x: x)
    lower, upper = (pixels - budget).clamp(min=0), (pixels + budget).clamp(max=1)
    adversarial = pixels if start is None else torch.clamp(pixels + start, lower, upper)
    for _ in range(steps):
        adversarial = adversarial.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = _logits(model, to_model_input(adversarial), target)
            objective = _LOSSES[loss](logits, target).sum()
        gradient = (torch.autograd.grad(objective, adversarial, allow_unused=True)[0]
                    if objective.requires_grad else None)
        step = 0.0 if gradient is None else step_size * gradient.sign()
        adversarial = torch.clamp(adversarial.detach() + step, lower, upper)
    return adversarial.detach()


def fgsm(model: Model, pixels: Tensor, target: Tensor, budget: float, *, loss: str = "cross_entropy",
         to_model_input: Model | None = None) -> Tensor:
    r"""The fast gradient sign method: one step of size ``budget`` along the loss gradient's sign.

    ``x_adv = clip(x + budget * sign(grad_x L(f(T(x)), y)), 0, 1)`` with ``T = to_model_input`` and
    ``L`` cross-entropy or the margin loss. Shapes: see the module; returns pixels' shape.

    >>> model = torch.nn.Linear(2, 2)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]])), model.bias.zero_()
    >>> fgsm(model, torch.tensor([[0.5, 0.5]]), torch.tensor([0]), 0.1)  # toward class 1
    tensor([[0.4000, 0.6000]])
    """
    return Attack("fgsm", budget, loss=loss)(model, pixels, target, to_model_input=to_model_input)


def _random_start(shape: torch.Size, budget: float, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Uniform noise on ``[-budget, budget]``, drawn on the CPU (the same numbers on any device)."""
    noise = torch.rand(shape, generator=generator, dtype=like.dtype)
    return ((2 * noise - 1) * budget).to(like.device)


def pgd(model: Model, pixels: Tensor, target: Tensor, budget: float, *, steps: int = 20,
        step_size: float | None = None, random_start: bool = True, loss: str = "cross_entropy",
        to_model_input: Model | None = None, generator: torch.Generator | None = None) -> Tensor:
    r"""Projected gradient descent (Madry et al. 2018): ``steps`` signed-gradient steps, projected.

    ``x_0 = clip(x + U[-budget, budget])`` (or ``x`` without ``random_start``), then
    ``x_{t+1} = Proj(x_t + step_size * sign(grad L(f(T(x_t)), y)))`` where ``Proj`` clamps to
    ``[max(x - budget, 0), min(x + budget, 1)]``. ``step_size`` defaults to ``2.5 * budget / steps``.
    ``generator`` seeds the random start. Shapes: see the module; returns pixels' shape.

    >>> model = torch.nn.Linear(2, 2)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]])), model.bias.zero_()
    >>> pgd(model, torch.tensor([[0.5, 0.5]]), torch.tensor([0]), 0.1, steps=10, random_start=False)
    tensor([[0.4000, 0.6000]])
    """
    attack = Attack("pgd", budget, loss=loss, steps=steps, step_size=step_size, random_start=random_start)
    start = _random_start(pixels.shape, budget, pixels, generator) if random_start else None
    return attack(model, pixels, target, to_model_input=to_model_input, start=start)


# 3. A named attack, and its use over a data set in batches ---------------------------------------


@dataclass(frozen=True)
class Attack:
    """One attack as a lab option names it: ``name`` in :data:`ATTACKS`, ``budget``, ``loss``, PGD's steps.

    ``steps``, ``step_size`` and ``random_start`` apply to PGD (FGSM is one step of size ``budget``
    from the clean image). Checked when built; :attr:`label` names it in a report.

    >>> Attack("pgd", 0.1, loss="margin").label
    'PGD-20 (margin loss), budget 0.1'
    """

    name: str
    budget: float
    loss: str = "cross_entropy"
    steps: int = 20
    step_size: float | None = None
    random_start: bool = True

    def __post_init__(self) -> None:
        _check_choice(self.name, ATTACKS, "attack")
        _check_attack(self.budget, self.steps, self.step_size, self.loss)

    @property
    def label(self) -> str:
        kind = "FGSM" if self.name == "fgsm" else f"PGD-{self.steps}"
        return f"{kind} ({self.loss.replace('_', '-')} loss), budget {self.budget:g}"

    def __call__(self, model: Model, pixels: Tensor, target: Tensor, *, to_model_input: Model | None = None,
                 start: Tensor | None = None) -> Tensor:
        """Adversarial pixels for one batch (shapes: see the module).

        ``start``: PGD's random start, of pixels' shape; drawn from the global RNG when None (to
        reproduce a run, pass it, or use :func:`craft_adversarial` with a seed).
        """
        _check_inputs(pixels, target)
        if start is not None and (not isinstance(start, Tensor) or start.shape != pixels.shape):
            raise ValueError(f"start must be a tensor of pixels' shape {tuple(pixels.shape)}, got "
                             f"{tuple(start.shape) if isinstance(start, Tensor) else type(start).__name__}")
        return self._run(model, pixels, target, to_model_input, start)

    def _run(self, model: Model, pixels: Tensor, target: Tensor, to_model_input: Model | None,
             start: Tensor | None) -> Tensor:
        if self.name == "fgsm":
            return _perturb(model, pixels, target, self.budget, 1, self.budget, self.loss, None, to_model_input)
        if not self.random_start:
            start = None
        elif start is None:
            start = _random_start(pixels.shape, self.budget, pixels, None)
        step_size = self.step_size or DEFAULT_STEP_FACTOR * self.budget / self.steps
        return _perturb(model, pixels, target, self.budget, self.steps, step_size, self.loss, start,
                        to_model_input)


def _batches(target: Tensor, batch_size: int):
    """Index tuples taking ``batch_size`` examples at a time along the last axis of ``target``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    lead = (slice(None),) * (target.dim() - 1)
    return [lead + (slice(i, i + batch_size),) for i in range(0, target.shape[-1], batch_size)]


def craft_adversarial(model: Model, pixels: Tensor, target: Tensor, attack: Attack, *,
                      to_model_input: Model | None = None, batch_size: int = 512, seed: int = 0) -> Tensor:
    """Adversarial pixels for a whole data set, ``batch_size`` examples at a time.

    PGD's random start for the whole set is drawn first from a generator seeded by ``seed`` (on the
    CPU), so the result does not depend on ``batch_size`` or the device. Shapes: see the module.

    >>> model = torch.nn.Linear(4, 3)
    >>> x, y = torch.rand(10, 4), torch.randint(0, 3, (10,))
    >>> a = craft_adversarial(model, x, y, Attack("pgd", 0.05, steps=3), batch_size=4)
    >>> bool(((a - x).abs() <= 0.05 + 1e-6).all()), a.shape
    (True, torch.Size([10, 4]))
    """
    if not isinstance(attack, Attack):
        raise ValueError(f"attack must be an Attack (e.g. Attack('pgd', 0.1)), got {type(attack).__name__}")
    _check_inputs(pixels, target)
    start = None
    if attack.name == "pgd" and attack.random_start:
        start = _random_start(pixels.shape, attack.budget, pixels, torch.Generator().manual_seed(seed))
    return torch.cat([attack._run(model, pixels[index], target[index], to_model_input,
                                  None if start is None else start[index])
                      for index in _batches(target, batch_size)], dim=target.dim() - 1)


def correct_predictions(model: Model, pixels: Tensor, target: Tensor, *, to_model_input: Model | None = None,
                        batch_size: int = 512) -> Tensor:
    """Whether the model's top class is the target, per example (bool, the target's shape).

    Accuracy is ``correct.float().mean(-1)``; keep the per-example values to pair models
    evaluated on the same examples.

    >>> correct_predictions(torch.nn.Identity(), torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 0]))
    tensor([ True, False])
    """
    _check_inputs(pixels, target)
    to_model_input = to_model_input or (lambda x: x)
    with torch.no_grad():
        return torch.cat([_logits(model, to_model_input(pixels[index]), target[index]).argmax(-1) == target[index]
                          for index in _batches(target, batch_size)], dim=target.dim() - 1)


def robust_correct(model: Model, pixels: Tensor, target: Tensor, attack: Attack, *,
                   source_model: Model | None = None, to_model_input: Model | None = None,
                   batch_size: int = 512, seed: int = 0) -> Tensor:
    """Whether ``model`` still classifies each example correctly under ``attack`` (bool, target's shape).

    White-box (``source_model=None``): the examples are crafted on ``model`` itself. Transfer: crafted
    on ``source_model`` (same ``to_model_input``) and evaluated on ``model``. Robust accuracy is
    ``robust_correct(...).float().mean(-1)``. To evaluate many
    targets on one transfer set, call :func:`craft_adversarial` once and
    :func:`correct_predictions` per target.

    >>> model = torch.nn.Linear(4, 3)
    >>> x, y = torch.rand(8, 4), torch.randint(0, 3, (8,))
    >>> robust_correct(model, x, y, Attack("fgsm", 0.1)).shape
    torch.Size([8])
    """
    adversarial = craft_adversarial(source_model or model, pixels, target, attack,
                                    to_model_input=to_model_input, batch_size=batch_size, seed=seed)
    return correct_predictions(model, adversarial, target, to_model_input=to_model_input, batch_size=batch_size)
