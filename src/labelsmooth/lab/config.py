"""A sweep's configuration (:class:`SweepConfig`, stored as its ``config.json``) and its grid of cells.

A *cell* is one (model, distribution, label-noise rate, eps, seed); :func:`grid_cells` lists them
in the grid's order (model, distribution, noise rate, eps, seed), or one shard's share of them
(``--shard i/n``, see :mod:`labelsmooth.lab.shard`). A noise rate ``r > 0`` means the cell trains
on labels of which a seeded fraction ``r`` was flipped (:mod:`labelsmooth.lab.noise`; the
validation and test labels stay clean).

Besides the settings, ``config.json`` records what the sweep derived from them (:data:`DERIVED_KEYS`:
the sizes of the training, validation and test splits), which a resumed run need not repeat.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Callable

import torch
from torch import Tensor

from .models import MODELS
from .noise import DIGITS_CONFUSABLE, FASHION_MNIST_CONFUSABLE, NOISE_KINDS
from .shard import format_shard, select_cells

__all__ = ["ADDED_KEYS", "CONFUSABLE_CLASSES", "DERIVED_KEYS", "DISTRIBUTIONS", "OPTIMIZERS", "RESUME_IGNORES",
           "VALIDATION_SPLIT", "Cell", "SweepConfig", "as_tuples", "grid_cells", "is_device_name"]

DISTRIBUTIONS = ("uniform", "non_target")
# Keys config.json records beside the settings: facts the sweep derived from them (split sizes).
DERIVED_KEYS = frozenset({"split_sizes"})
# Config keys that may differ when a run directory is resumed: where the data lives, not what it
# is, and what was derived from the settings.
RESUME_IGNORES = frozenset({"data_dir"}) | DERIVED_KEYS
# The split that per-epoch metrics and every choice (best epoch, temperature) use: training images
# not trained on (lab.data's hold-out). Run directories written before it existed lack the key,
# and are neither resumed nor overwritten (lab.rundir.check_run_directory).
VALIDATION_SPLIT = "holdout"
# Keys added to config.json after run directories with a validation split existed -> the value
# such an older directory had (preset, quick and validation_split came with the split itself).
# student_train_size is a distillation run's (lab.distill), whose config.json shares these rules.
ADDED_KEYS = {"remap_labels": False, "label_noise": [0.0], "noise_kind": "symmetric", "held_out_classes": [],
              "train_size": None, "student_train_size": None}
# data set -> the confusable classes asymmetric label noise flips between (lab.noise)
CONFUSABLE_CLASSES = {"fashion-mnist": FASHION_MNIST_CONFUSABLE, "digits": DIGITS_CONFUSABLE}

# name -> constructor(params, config); both are elementwise, so stacking cells changes nothing.
OPTIMIZERS: dict[str, Callable[[list[Tensor], "SweepConfig"], torch.optim.Optimizer]] = {
    "sgd": lambda params, c: torch.optim.SGD(params, lr=c.lr, momentum=c.momentum,
                                             weight_decay=c.weight_decay),
    "adam": lambda params, c: torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay),
}


def is_device_name(name: object) -> bool:
    """Whether ``name`` is a device torch can parse (whether it is present is checked when training).

    >>> [is_device_name(n) for n in ("cpu", "cuda:1", "gpu0", 3)]
    [True, True, False, False]
    """
    try:
        return isinstance(name, str) and torch.device(name) is not None
    except RuntimeError:
        return False


def as_tuples(config, names: tuple[str, ...]) -> None:
    """Make each field ``names`` of a config a tuple: a list or tuple as is, a single value as ``(value,)``."""
    for name in names:
        value = getattr(config, name)
        setattr(config, name, tuple(value) if isinstance(value, (list, tuple)) else (value,))


@dataclass
class SweepConfig:
    """Everything that determines a sweep's numbers (stored as the run's ``config.json``).

    >>> config = SweepConfig(label_smoothing=(0.0, 0.1), epochs=2)
    >>> SweepConfig.from_dict(config.to_dict()) == config
    True
    """

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    models: tuple[str, ...] = ("seed-cnn",)
    model_options: dict = field(default_factory=dict)  # model name -> keyword options
    label_smoothing: tuple[float, ...] = (0.0, 0.05, 0.1)
    seeds: tuple[int, ...] = (0,)
    distributions: tuple[str, ...] = ("uniform",)
    epochs: int = 20
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    train_fraction: float = 1.0
    train_size: int | None = None  # train on a stratified sample of this many training images
    held_out_classes: tuple[int, ...] = ()  # classes left out of training, validation and test
    label_noise: tuple[float, ...] = (0.0,)  # fractions of training labels flipped (a grid axis)
    noise_kind: str = "symmetric"
    data_seed: int = 0
    eval_batch_size: int = 500
    device: str = "cpu"
    shard: str | None = None
    remap_labels: bool = False
    preset: str | None = None      # the `labelsmooth reproduce` preset that made the settings
    quick: bool = False            # whether that preset ran in its --quick version
    validation_split: str = VALIDATION_SPLIT

    def __post_init__(self) -> None:
        as_tuples(self, ("models", "label_smoothing", "seeds", "distributions", "label_noise"))
        self.held_out_classes = tuple(self.held_out_classes)
        self.validate()

    def validate(self) -> None:
        """ValueError naming the first bad setting, what was expected and what came."""
        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}")

        def distinct(values: tuple) -> bool:
            return len(set(values)) == len(values) and len(values) > 0

        need(distinct(self.models) and all(m in MODELS for m in self.models), "models",
             f"distinct names from {sorted(MODELS)}")
        need(isinstance(self.model_options, dict) and set(self.model_options) <= set(self.models)
             and all(isinstance(v, dict) for v in self.model_options.values()), "model_options",
             "a dict from a model name of the sweep to a dict of its options")
        need(distinct(self.label_smoothing) and all(
            isinstance(e, (int, float)) and math.isfinite(e) and e <= 1 for e in self.label_smoothing),
            "label_smoothing", "distinct finite numbers at most 1")
        need(distinct(self.seeds) and all(isinstance(s, int) and s >= 0 for s in self.seeds), "seeds",
             "distinct non-negative integers")
        need(distinct(self.distributions) and set(self.distributions) <= set(DISTRIBUTIONS),
             "distributions", f"distinct names from {list(DISTRIBUTIONS)}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name, "an integer >= 1")
        need(self.optimizer in OPTIMIZERS, "optimizer", f"one of {sorted(OPTIMIZERS)}")
        need(math.isfinite(self.lr) and self.lr > 0, "lr", "a finite number > 0")
        need(0 <= self.momentum < 1, "momentum", "in [0, 1)")
        need(math.isfinite(self.weight_decay) and self.weight_decay >= 0, "weight_decay",
             "a finite number >= 0")
        need(0 < self.train_fraction <= 1, "train_fraction", "in (0, 1]")
        need(self.train_size is None or (isinstance(self.train_size, int) and not isinstance(self.train_size, bool)
                                         and self.train_size >= 2), "train_size", "None or an integer >= 2")
        need(len(set(self.held_out_classes)) == len(self.held_out_classes) and all(
            isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in self.held_out_classes),
            "held_out_classes", "distinct non-negative class indices")
        need(distinct(self.label_noise) and all(
            isinstance(r, (int, float)) and not isinstance(r, bool) and 0 <= r < 1 for r in self.label_noise),
            "label_noise", "distinct fractions of training labels in [0, 1)")
        need(self.noise_kind in NOISE_KINDS, "noise_kind", f"one of {list(NOISE_KINDS)}")
        if self.noise_kind == "asymmetric" and any(self.label_noise):
            need(self.dataset in CONFUSABLE_CLASSES, "dataset",
                 f"one of {sorted(CONFUSABLE_CLASSES)} for asymmetric label noise (the data sets whose "
                 f"confusable classes are known)")
            need(not self.held_out_classes, "held_out_classes",
                 "empty with asymmetric label noise (its confusable classes are those of the full data set)")
            need(max(self.label_noise) < 0.5, "label_noise",
                 "below 0.5 for asymmetric noise (at 0.5 most labels of a source class name its partner)")
        need(isinstance(self.data_seed, int) and self.data_seed >= 0, "data_seed", "a non-negative integer")
        need(is_device_name(self.device), "device", "a torch device such as cpu, cuda or cuda:1")
        need(isinstance(self.remap_labels, bool), "remap_labels", "true or false")
        need(self.preset is None or isinstance(self.preset, str), "preset", "None or a preset's name")
        need(isinstance(self.quick, bool), "quick", "true or false")
        need(self.validation_split == VALIDATION_SPLIT, "validation_split", repr(VALIDATION_SPLIT))
        if self.shard is not None:
            self.shard = format_shard(self.shard)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, values: dict) -> "SweepConfig":
        """The config of a stored ``config.json`` (its :data:`DERIVED_KEYS` are dropped)."""
        values = {k: v for k, v in values.items() if k not in DERIVED_KEYS}
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"config has unknown keys {sorted(unknown)}; expected keys of "
                             f"{sorted(f.name for f in fields(cls))}")
        return cls(**values)


@dataclass(frozen=True)
class Cell:
    """One cell of the grid; ``key`` names its folder under ``cells/``."""

    model: str
    distribution: str
    label_smoothing: float
    seed: int
    label_noise: float = 0.0

    @property
    def key(self) -> str:
        """``<model>-<distribution>-eps<eps>[-noise<r>]-seed<seed>`` (clean cells keep the older form)."""
        noise = f"-noise{self.label_noise:g}" if self.label_noise else ""
        return f"{self.model}-{self.distribution}-eps{self.label_smoothing:g}{noise}-seed{self.seed}"

    def describe(self) -> dict:
        return {"label_smoothing": self.label_smoothing, "seed": self.seed, "label_noise": self.label_noise,
                "distribution": self.distribution, "model": self.model, "cell": self.key}


def grid_cells(config: SweepConfig, *, sharded: bool = True) -> list[Cell]:
    """Every cell in grid order (model, distribution, noise rate, eps, seed), or this shard's share of them.

    >>> [c.key for c in grid_cells(SweepConfig(label_smoothing=(0, 0.1), seeds=(0, 1)))][:2]
    ['seed-cnn-uniform-eps0-seed0', 'seed-cnn-uniform-eps0-seed1']
    >>> [c.key for c in grid_cells(SweepConfig(label_smoothing=(0,), label_noise=(0, 0.2)))]
    ['seed-cnn-uniform-eps0-seed0', 'seed-cnn-uniform-eps0-noise0.2-seed0']
    """
    cells = [Cell(m, d, float(e), s, float(r)) for m in config.models for d in config.distributions
             for r in config.label_noise for e in config.label_smoothing for s in config.seeds]
    if not sharded or config.shard is None:
        return cells
    return select_cells(cells, config.shard)
