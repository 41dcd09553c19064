"""What every report section reads (:class:`ReportContext`) and returns (:class:`SectionOutput`).

A section is one function ``section(context: ReportContext) -> SectionOutput``: it reads the run
through the context (``results.json`` and ``config.json``, the runs grouped by condition, each
finished cell's logits from ``final.npz``, the run's scope), writes its figures into
``context.run_dir`` (:func:`labelsmooth.lab.report.html.embed_figure`), and returns its title
(the table of contents links to it), its HTML (without the heading) and its verdict records
(:func:`labelsmooth.lab.report.verdicts.judge`). The builder renders the verdicts under the
section, writes them to ``verdicts.json`` and summarises the primary ones at the top of the page.

Grouping: a *condition* is everything of a cell but its seed (:class:`Condition`);
:meth:`ReportContext.groups` maps each condition to ``{seed: run}``. Contrasts pair an eps != 0
condition with its eps = 0 baseline of the same label-noise rate (:func:`baseline_of`) seed by
seed; the *primary* contrast of a claim is the largest eps against eps = 0, on the grid's cleanest
labels (:meth:`ReportContext.is_primary`).

Run directories written before the lab kept a validation split (their ``config.json`` has no
``"validation_split"``) are *legacy*: their per-epoch metrics came from the test split, so
verdicts that would choose on them are "not applicable" (:attr:`ReportContext.legacy_reason`),
and the page says so at its top.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ...calibration.metrics import accuracy, expected_calibration_error, negative_log_likelihood
from ..config import VALIDATION_SPLIT
from ..rundir import cell_file, read_json

__all__ = ["CellLogits", "Condition", "ReportContext", "SectionOutput", "baseline_of", "condition_label",
           "final_metric", "group_runs", "per_seed", "prediction_metrics"]

DATASET_NAMES = {"fashion-mnist": "Fashion-MNIST", "digits": "scikit-learn's digits"}


@dataclass
class SectionOutput:
    """A section's title (heading and table-of-contents entry), HTML body and verdict records."""

    title: str
    html: str
    verdicts: list[dict] = field(default_factory=list)


@dataclass(frozen=True, order=True)
class Condition:
    """One arm of the grid: everything but the seed (``label_noise``: the fraction of training
    labels flipped; 0 for runs without label noise)."""

    model: str
    distribution: str
    label_smoothing: float
    label_noise: float = 0.0


def group_runs(results: dict) -> dict[Condition, dict[int, dict]]:
    """condition -> seed -> run, conditions sorted by (model, distribution, eps, noise rate)."""
    config = results.get("config") or {}
    groups: dict[Condition, dict[int, dict]] = {}
    for run in results["runs"]:
        condition = Condition(str(run.get("model", config.get("model", ""))),
                              str(run.get("distribution", config.get("distribution", "uniform"))),
                              float(run["label_smoothing"]), float(run.get("label_noise") or 0.0))
        groups.setdefault(condition, {})[int(run["seed"])] = run
    return dict(sorted(groups.items()))


def baseline_of(condition: Condition, groups: dict) -> Condition | None:
    """The eps = 0 condition a treatment is paired with (same model and noise rate; same
    distribution if any)."""
    if condition.label_smoothing == 0.0:
        return None
    same = Condition(condition.model, condition.distribution, 0.0, condition.label_noise)
    if same in groups:
        return same
    return next((c for c in groups if c.model == condition.model and c.label_noise == condition.label_noise
                 and c.label_smoothing == 0.0), None)


def condition_label(condition: Condition, groups: dict) -> str:
    """``"eps=0.1"``, plus the noise rate, distribution and model when the grid varies them."""
    label = f"eps={condition.label_smoothing:g}"
    if len({c.label_noise for c in groups}) > 1:
        label += f" noise={condition.label_noise:g}"
    if len({c.distribution for c in groups}) > 1:
        label += f" {condition.distribution}"
    if len({c.model for c in groups}) > 1:
        label += f" {condition.model}"
    return label


def final_metric(name: str) -> Callable[[dict], float | None]:
    """Per-run accessor of a final test-split metric (None for unfinished runs)."""
    def value(run: dict) -> float | None:
        found = (run.get("test") or {}).get(name)
        return None if found is None else float(found)
    return value


def per_seed(runs: dict[int, dict], value: Callable[[dict], float | None]) -> dict[int, float]:
    """seed -> ``value(run)`` of the runs where it is not None."""
    found = {seed: value(run) for seed, run in runs.items()}
    return {seed: v for seed, v in found.items() if v is not None}


def prediction_metrics(logits: Tensor, target: Tensor) -> dict[str, float]:
    """Accuracy, NLL (nats) and ECE (15 equal-width bins) of logits (N, K) for targets (N,): the
    numbers every report section compares models on."""
    options = dict(from_logits=True, validate_args=False)
    return {"accuracy": float(accuracy(logits, target, **options)),
            "nll": float(negative_log_likelihood(logits, target, **options)),
            "ece": float(expected_calibration_error(logits, target, **options))}


@dataclass
class CellLogits:
    """One finished cell's logits (float64) and targets from its ``final.npz``.

    ``validation`` is None when the file has no hold-out split; ``early_test`` is None for runs
    written before the lab kept the early-stopped weights. ``temperature`` is fitted by minimum
    NLL on the validation split (None without one).
    """

    test: tuple[Tensor, Tensor]
    validation: tuple[Tensor, Tensor] | None
    early_test: Tensor | None

    @cached_property
    def temperature(self) -> float | None:
        from ...calibration.scaling import TemperatureScaling

        return None if self.validation is None else TemperatureScaling().fit(*self.validation).temperature

    @classmethod
    def read(cls, path: Path) -> "CellLogits":
        with np.load(path, allow_pickle=False) as arrays:
            data = {key: arrays[key] for key in arrays.files}
        if "test_logits" not in data or "test_target" not in data:
            raise ValueError(f"{path}: expected arrays 'test_logits' and 'test_target', got {sorted(data)}")

        def pair(split: str) -> tuple[Tensor, Tensor] | None:
            if f"{split}_logits" not in data or len(data[f"{split}_logits"]) == 0:
                return None
            return (torch.from_numpy(data[f"{split}_logits"]).double(),
                    torch.from_numpy(data[f"{split}_target"]).long())

        early = data.get("early_test_logits")
        return cls(pair("test"), pair("holdout"), None if early is None else torch.from_numpy(early).double())


@dataclass
class ReportContext:
    """One run directory as the report's sections read it (see the module docstring)."""

    results: dict
    run_dir: Path
    _cells: dict = field(default_factory=dict, repr=False)

    @property
    def config(self) -> dict:
        return self.results.get("config") or {}

    @cached_property
    def groups(self) -> dict[Condition, dict[int, dict]]:
        return group_runs(self.results)

    def label(self, condition: Condition) -> str:
        return condition_label(condition, self.groups)

    def contrast(self, condition: Condition, base: Condition) -> str:
        return f"{self.label(condition)} vs {self.label(base)}"

    def pairs(self) -> list[tuple[Condition, Condition]]:
        """(eps > 0 condition, its eps = 0 baseline) for every treated condition that has one."""
        return [(c, b) for c in self.groups if (b := baseline_of(c, self.groups)) is not None]

    @cached_property
    def primary_condition(self) -> Condition | None:
        """The largest eps of the first model (its uniform distribution when it has one) with a baseline,
        on the lowest label-noise rate."""
        treated = [c for c, _ in self.pairs()]
        if not treated:
            return None
        model = treated[0].model
        same = [c for c in treated if c.model == model]
        same = [c for c in same if c.label_noise == min(c.label_noise for c in same)]
        uniform = [c for c in same if c.distribution == "uniform"] or same
        return max(uniform, key=lambda c: c.label_smoothing)

    def is_primary(self, condition: Condition) -> bool:
        return condition == self.primary_condition

    @cached_property
    def legacy(self) -> bool:
        """Whether the run predates the validation split (its per-epoch metrics are on the test split)."""
        config = self.config
        if "teacher_widths" in config:  # a distillation run: its teachers' sweep says
            path = self.run_dir / "teachers" / "config.json"
            config = read_json(path) if path.is_file() else {}
        return config.get("validation_split") != VALIDATION_SPLIT

    @property
    def legacy_reason(self) -> str:
        return ("this run was recorded by an older version of the lab, whose per-epoch metrics came from the "
                "test split, so nothing can be chosen on them without choosing on the test set; rerun it "
                "to get this verdict")

    @property
    def validation_name(self) -> str:
        """What the per-epoch val_* metrics were computed on."""
        return ("the test split (this run predates the lab's validation split)" if self.legacy else
                "the validation split (training images not trained on)")

    @cached_property
    def scope(self) -> str:
        """Data (classes held out, label noise), model(s), epochs, seeds, and quick or full, in words."""
        config = self.config
        dataset = str(config.get("dataset", "?"))
        data = DATASET_NAMES.get(dataset, Path(dataset).name)
        sizes = config.get("split_sizes") or {}
        models = config.get("models") or [config.get("model", "?")]
        if "teacher_widths" in config:  # a distillation run: its sweeps record the split sizes
            path = self.run_dir / "teachers" / "config.json"
            sizes = (read_json(path).get("split_sizes") or {}) if path.is_file() else {}
            models = [f"MLP teachers {'x'.join(map(str, config['teacher_widths']))} and students "
                      f"{'x'.join(map(str, config.get('student_widths', [])))}"]
        if sizes.get("train"):
            data += f" ({sizes['train']:,} training images)"
        if config.get("student_train_size"):
            data += f", students trained on {config['student_train_size']:,} of them"
            if config.get("student_epochs"):
                data += f" for {config['student_epochs']} epochs (teachers: {config.get('epochs', '?')})"
        if config.get("held_out_classes"):
            data += f", classes {', '.join(map(str, config['held_out_classes']))} held out of training"
        if any(config.get("label_noise") or ()):
            rates = ", ".join(f"{r:g}" for r in config["label_noise"])
            data += f", {config.get('noise_kind', 'symmetric')} label noise at rates {rates}"
        seeds = sorted({seed for runs in self.groups.values() for seed in runs})
        epochs = config.get("epochs", "?")
        text = f"{data}, {', '.join(map(str, models))}, {epochs} epochs, {len(seeds)} seed{'s' * (len(seeds) != 1)}"
        preset = config.get("preset")
        if preset and config.get("quick"):
            return (f"{text}; the quick version of the {preset} preset, stopped early (without --quick it runs "
                    f"the full protocol)")
        if preset:
            return f"{text}; the full {preset} preset"
        return text

    def cell(self, run: dict) -> CellLogits | None:
        """The cell's logits from ``final.npz``, read once; None when the cell has none."""
        key = run.get("cell")
        if key not in self._cells:
            path = cell_file(self.run_dir, run, "final.npz")
            self._cells[key] = None if path is None else CellLogits.read(path)
        return self._cells[key]

