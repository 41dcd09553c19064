"""The adversarial evaluation of a finished sweep: robust accuracy of every trained model under
white-box and transfer attacks, stored in the run directory as ``adversarial.json``.

Goibert & Dohmatob (2019) report that label smoothing makes a classifier more robust to
white-box attacks; Fu et al. (2020) that the gain is gradient masking and vanishes once the
attack does not follow the smoothed model's own cross-entropy gradient. On a fixed seeded subset
of the test split (:attr:`AdversarialSettings.images`), in pixel space ``[0, 1]``, at each
L-infinity budget, every evaluated cell is attacked (:data:`ATTACKS`):

- white-box, on its own cross-entropy: FGSM and PGD-20 with a random start;
- white-box PGD-20 on the margin (Carlini-Wagner) loss, whose gradient does not vanish when the
  softmax saturates (the first control);
- transfer FGSM and PGD-20 crafted on an independently trained eps = 0 model, the *source*: the
  eps = 0 cell of the sweep's largest seed, which is not itself evaluated (the second control).
  Every evaluated model meets the same transfer examples, so the comparison is paired.

``evaluate_run(run_dir)`` writes ``adversarial.json`` after each model (atomically), so an
interrupted evaluation resumes where it stopped, and once the file is complete it is only read:
a rebuilt report shows the stored numbers (:func:`stored_evaluation`), never silently different
ones. The settings used are recorded in the file; a file with settings other than those asked for
is refused.

>>> AdversarialSettings(budgets=(0.1, -0.2))
Traceback (most recent call last):
ValueError: budget must be a finite number > 0 (the L-infinity radius on [0, 1] pixels), got -0.2
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..analysis.pixels import Standardize
from ..analysis.robustness import Attack, correct_predictions, craft_adversarial
from .data import Dataset, load_run_dataset
from .rundir import load_results, read_json, write_json

__all__ = ["ADVERSARIAL_FILE", "ATTACKS", "AdversarialSettings", "attack_of", "attack_subset", "check_sweep",
           "evaluate_run", "pixels_of", "source_cell", "stored_evaluation"]

ADVERSARIAL_FILE = "adversarial.json"
# attack id -> (attack name, loss, transfer from the source model?, what it is in words)
ATTACKS: dict[str, tuple[str, str, bool, str]] = {
    "fgsm": ("fgsm", "cross_entropy", False, "white-box FGSM (cross-entropy)"),
    "pgd": ("pgd", "cross_entropy", False, "white-box PGD-20 (cross-entropy)"),
    "pgd-margin": ("pgd", "margin", False, "white-box PGD-20 (margin loss)"),
    "transfer-fgsm": ("fgsm", "cross_entropy", True, "transfer FGSM from an independent eps=0 model"),
    "transfer-pgd": ("pgd", "cross_entropy", True, "transfer PGD-20 from an independent eps=0 model"),
}


@dataclass(frozen=True)
class AdversarialSettings:
    """What the evaluation does: the L-infinity ``budgets`` on [0, 1] pixels, the ``attacks``
    (ids of :data:`ATTACKS`), the number of test ``images`` (a subset drawn with ``subset_seed``),
    PGD's ``steps`` and the seed of its random starts (``attack_seed``). Checked when built."""

    budgets: tuple[float, ...] = (0.05, 0.1, 0.2)
    attacks: tuple[str, ...] = tuple(ATTACKS)
    images: int = 1000
    steps: int = 20
    subset_seed: int = 0
    attack_seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "budgets", tuple(self.budgets))
        object.__setattr__(self, "attacks", tuple(self.attacks))
        if not self.budgets or len(set(self.budgets)) != len(self.budgets):
            raise ValueError(f"budgets must be distinct L-infinity radii on [0, 1] pixels, got {list(self.budgets)}")
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown or not self.attacks or len(set(self.attacks)) != len(self.attacks):
            raise ValueError(f"attacks must be distinct names from {list(ATTACKS)}, got {list(self.attacks)}")
        for name in ("images", "steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("subset_seed", "attack_seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        for attack in self.attacks:  # each budget through the attack's own checks
            for budget in self.budgets:
                attack_of(attack, budget, self.steps)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def attack_of(attack: str, budget: float, steps: int = 20) -> Attack:
    """The :class:`~labelsmooth.analysis.robustness.Attack` of attack id ``attack`` at ``budget``.

    >>> attack_of("pgd-margin", 0.1).label
    'PGD-20 (margin loss), budget 0.1'
    """
    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {list(ATTACKS)}, got {attack!r}")
    name, loss, _, _ = ATTACKS[attack]
    return Attack(name, budget, loss=loss, steps=steps)


def pixels_of(dataset: Dataset, x: Tensor) -> tuple[Tensor, Standardize]:
    """Images ``x`` of ``dataset`` (standardised) as pixels in [0, 1], and the map back to the model's input."""
    to_model = dataset.pixel_map()
    if to_model is None:
        raise ValueError(f"{dataset.name}: the data set does not record the stored value of a white pixel "
                         f"(pixel_max), so attack budgets on [0, 1] pixels cannot be converted")
    return to_model.pixels(x).clamp(0, 1), to_model


def attack_subset(num_test: int, images: int, seed: int) -> Tensor:
    """Sorted indices of ``min(images, num_test)`` test images drawn without replacement with ``seed``.

    >>> attack_subset(10, 4, 0).tolist() == attack_subset(10, 4, 0).tolist(), len(attack_subset(10, 40, 0))
    (True, 10)
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(num_test, generator=generator)[:images].sort().values


def source_cell(results: dict) -> dict:
    """The run of the transfer source: the eps = 0 cell of the largest seed (first model, clean labels).

    The source is not evaluated, so no model is attacked with examples crafted on itself.
    """
    runs = [r for r in results["runs"] if float(r["label_smoothing"]) == 0.0 and not r.get("label_noise")]
    seeds = {int(r["seed"]) for r in results["runs"]}
    if len(seeds) < 2 or not runs:
        raise ValueError(f"the adversarial evaluation needs an eps=0 cell and at least 2 seeds (the largest "
                         f"trains the transfer source, which is not evaluated), got seeds {sorted(seeds)} and "
                         f"{'an' if runs else 'no'} eps=0 cell")
    return max(runs, key=lambda r: int(r["seed"]))


def check_sweep(config) -> None:
    """ValueError unless a sweep's config can train a transfer source: eps = 0 and at least 2 seeds.

    >>> from labelsmooth.lab.config import SweepConfig
    >>> check_sweep(SweepConfig(label_smoothing=(0.0, 0.1), seeds=(0,)))
    Traceback (most recent call last):
    ValueError: seeds must be at least 2 for the adversarial evaluation (the largest trains the
    transfer source, which is not evaluated), got (0,)
    """
    if 0.0 not in config.label_smoothing:
        raise ValueError(f"label_smoothing must include 0 for the adversarial evaluation (an eps=0 baseline and "
                         f"transfer source), got {config.label_smoothing}")
    if len(config.seeds) < 2:
        raise ValueError(f"seeds must be at least 2 for the adversarial evaluation (the largest trains the transfer "
                         f"source, which is not evaluated), got {config.seeds}")


def stored_evaluation(run_dir: str | os.PathLike) -> dict | None:
    """``adversarial.json`` of a run directory (None when there is none)."""
    path = Path(run_dir) / ADVERSARIAL_FILE
    return read_json(path) if path.is_file() else None


def evaluate_run(run_dir: str | os.PathLike, settings: AdversarialSettings | None = None, *,
                 say=print) -> dict:
    """Evaluate every finished cell of a run directory but the source's seed (see the module), resuming a
    partial ``adversarial.json``; return its contents.

    ``settings`` default to those already stored, else :class:`AdversarialSettings` (``images=500``
    for a ``--quick`` run). Stored ``settings`` other than those asked for raise ValueError.
    Records: ``clean[cell]`` and ``robust[cell][attack][budget]`` (accuracy on the subset), the
    ``source`` cell and seed, and ``complete``.
    """
    from .report.penultimate import load_cell_model

    run_dir = Path(run_dir)
    results = load_results(run_dir)
    config = results.get("config") or {}
    stored = stored_evaluation(run_dir)
    if settings is None:
        settings = (AdversarialSettings(**stored["settings"]) if stored else
                    AdversarialSettings(images=500 if config.get("quick") else 1000))
    if stored and stored["settings"] != settings.to_dict():
        raise ValueError(f"{run_dir / ADVERSARIAL_FILE} holds an evaluation with settings {stored['settings']}, "
                         f"not {settings.to_dict()}; remove it to evaluate again")
    if stored and stored.get("complete"):
        return stored
    source = source_cell(results)
    dataset = load_run_dataset(config)
    subset = attack_subset(len(dataset.x_test), settings.images, settings.subset_seed)
    pixels, to_model = pixels_of(dataset, dataset.x_test[subset])
    target = dataset.y_test[subset]
    batch = int(config.get("eval_batch_size", 500))
    record = stored or {"settings": settings.to_dict(), "source": {"cell": source["cell"], "seed": int(source["seed"])},
                        "images": len(subset), "clean": {}, "robust": {}, "complete": False}
    evaluated = [r for r in results["runs"] if int(r["seed"]) != int(source["seed"]) and r.get("test")]
    missing = [r for r in evaluated if r["cell"] not in record["robust"]]
    if missing:
        source_model = load_cell_model(run_dir, source, config, dataset)
        if source_model is None:
            raise ValueError(f"{run_dir}: the transfer source {source['cell']} has no saved weights (model.pt)")
        transfer = {(a, b): craft_adversarial(source_model, pixels, target, attack_of(a, b, settings.steps),
                                              to_model_input=to_model, batch_size=batch, seed=settings.attack_seed)
                    for a in settings.attacks if ATTACKS[a][2] for b in settings.budgets}
    for index, run in enumerate(missing):
        say(f"adversarial evaluation: {run['cell']} (model {index + 1} of {len(missing)})")
        model = load_cell_model(run_dir, run, config, dataset)
        if model is None:
            continue
        robust = {}
        for attack in settings.attacks:
            robust[attack] = {}
            for budget in settings.budgets:
                adversarial = transfer[attack, budget] if ATTACKS[attack][2] else craft_adversarial(
                    model, pixels, target, attack_of(attack, budget, settings.steps), to_model_input=to_model,
                    batch_size=batch, seed=settings.attack_seed)
                robust[attack][f"{budget:g}"] = _accuracy(model, adversarial, target, to_model, batch)
        record["clean"][run["cell"]] = _accuracy(model, pixels, target, to_model, batch)
        record["robust"][run["cell"]] = robust
        write_json(run_dir / ADVERSARIAL_FILE, record, durable=False)
    record["complete"] = bool(results.get("complete")) and all(r["cell"] in record["robust"] for r in evaluated)
    write_json(run_dir / ADVERSARIAL_FILE, record, durable=False)
    return record


def _accuracy(model, pixels: Tensor, target: Tensor, to_model: Standardize, batch: int) -> float:
    correct = correct_predictions(model, pixels, target, to_model_input=to_model, batch_size=batch)
    return float(correct.double().mean())

