"""``labelsmooth distill`` (``reproduce distillation``): does a label-smoothed teacher teach worse?

Müller, Kornblith & Hinton (2019, Section 4) distil a 2x800 MLP student from a 2x1200 MLP teacher
(Hinton et al. 2015's sizes) and find that a teacher trained with label smoothing, although a
better classifier itself, gives a worse student; Shen et al. (2021) find smoothed teachers
distil as well, and Chandrasegaran et al. (2022) that they are fine at temperature 1 but harmful
at higher temperatures. :func:`run_distillation` tests them where distillation helps: the teachers
learn from the whole training split, the students from a small stratified subset of it
(``student_train_size``, 1,200 images by default), in one run directory:

- ``teachers/``: an ordinary lab sweep (:mod:`labelsmooth.lab.sweep`) of the teacher MLP over the
  eps list and seeds (resumable, with its own report including the penultimate section);
- ``students/``: the same sweep for the student MLP on the students' subset (for
  ``student_epochs``): the students trained directly on the labels, with and without label
  smoothing (the baselines distillation must beat);
- distilled students: for every teacher cell, a student trained with
  :func:`labelsmooth.analysis.distill.distillation_loss` on the teacher's logits of the students'
  subset (from the teacher's ``final.npz``), at each temperature of ``temperatures`` for the
  eps = 0 teacher and of ``smoothed_temperatures`` for the others (both 1, 2, 4, 8 by default).
  Student ``s`` starts from the same initial weights and sees the same batch order as the directly
  trained student of seed ``s`` (the sweep's paired design), and is trained with the same optimizer;
  its validation and test metrics are recorded (the report chooses each teacher's temperature per
  seed on validation);
- ``results.json`` (every teacher and student as a run: ``model`` names the role, and
  ``label_smoothing`` is the teacher's eps for a distilled student), ``report.html`` with the
  distillation results, the teachers' penultimate-layer figures and measures, and the verdicts
  (:mod:`labelsmooth.lab.report.distillation`), and the figures as PNGs.

The teacher's *smoothness index* (:func:`~labelsmooth.analysis.distill.smoothness_index`, on the
students' training images at the distillation temperature) puts smoothed teachers and
temperature-softened hard teachers on one axis, as in the paper's comparison.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..analysis.distill import distillation_loss, smoothness_index
from .cells import METRIC_NAMES, CellGroup, epoch_order, optimizer_step
from .config import ADDED_KEYS, OPTIMIZERS, Cell, SweepConfig, as_tuples
from .data import Dataset, load_dataset, training_subset
from .presets import print_outcome
from .report.distillation import DIRECT, TEACHER, distilled_role
from .rundir import cell_file, check_run_directory, locked, open_run_directory, write_json
from .sweep import (
    DivergenceError,
    add_threads_argument,
    divergence_message,
    finish_run_directory,
    progress_bar,
    run_sweep,
    use_threads,
)

__all__ = ["QUICK", "DistillationConfig", "add_arguments", "run", "run_distillation"]


# 1. The configuration ---------------------------------------------------------------------------

# The training settings a distillation run shares with its sweeps, in the order config.json stores
# them; everything else of the teachers' and students' sweeps follows from the widths.
TRAINING_KEYS = ("dataset", "data_dir", "label_smoothing", "seeds", "epochs", "batch_size", "optimizer", "lr",
                 "momentum", "weight_decay", "train_fraction", "data_seed", "eval_batch_size", "device",
                 "remap_labels")
# config.json's keys, in its order
STORED_KEYS = ("dataset", "data_dir", "teacher_widths", "student_widths", "label_smoothing", "seeds",
               "temperatures", "smoothed_temperatures", "beta", "epochs", "batch_size", "optimizer", "lr",
               "momentum", "weight_decay", "train_fraction", "data_seed", "eval_batch_size", "device",
               "remap_labels", "student_train_size", "student_epochs")

# The distillation preset's training (the paper's optimizer, on Fashion-MNIST).
TRAINING = SweepConfig(dataset="fashion-mnist", models=("mlp",), label_smoothing=(0.0, 0.1), seeds=(0, 1, 2),
                       epochs=20, batch_size=128, optimizer="adam", lr=1e-3, eval_batch_size=1000)


@dataclass
class DistillationConfig:
    """Everything that determines a distillation run (stored as its ``config.json``).

    ``training`` is the sweep of teachers and directly trained students (its models and
    model options come from ``teacher_widths`` / ``student_widths``); distilled students use
    ``beta`` and the temperatures. ``config.json`` stores one flat object (:meth:`to_dict`);
    :meth:`from_dict` reads it (a key left out: the value of a config.json written before the key
    existed, else the preset's).

    >>> config = DistillationConfig.from_dict({"dataset": "digits", "temperatures": [1.0, 4.0]})
    >>> config.training.dataset, config.training.optimizer, config.temperatures, config.student_train_size
    ('digits', 'adam', (1.0, 4.0), None)
    >>> DistillationConfig.from_dict(config.to_dict()) == config
    True
    """

    training: SweepConfig = field(default_factory=lambda: dataclasses.replace(TRAINING))
    teacher_widths: tuple[int, ...] = (1200, 1200)
    student_widths: tuple[int, ...] = (800, 800)
    temperatures: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)           # for the eps = 0 teacher
    smoothed_temperatures: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)  # for teachers with eps > 0
    beta: float = 0.0
    student_train_size: int | None = 1200  # the students' stratified training subset (None: all)
    student_epochs: int | None = 60        # the students' epochs (None: the teachers' epochs)

    def __post_init__(self) -> None:
        as_tuples(self, ("teacher_widths", "student_widths", "temperatures", "smoothed_temperatures"))
        self.validate()

    def validate(self) -> None:
        """ValueError naming the first bad setting (the training settings are checked by SweepConfig)."""
        fixed = {name: getattr(TRAINING, name) for name in ("models", "model_options", "distributions", "shard",
                                                             "train_size")}
        if not isinstance(self.training, SweepConfig) or any(
                getattr(self.training, name) != value for name, value in fixed.items()):
            raise ValueError(f"training must be a SweepConfig with {fixed} (the MLPs come from teacher_widths "
                             f"and student_widths), got {self.training!r}")
        if 0.0 not in self.training.label_smoothing or len(self.training.label_smoothing) < 2:
            raise ValueError(f"label_smoothing must hold 0 (the hard-target teacher) and at least one "
                             f"other eps, got {list(self.training.label_smoothing)}")
        for name in ("temperatures", "smoothed_temperatures"):
            values = getattr(self, name)
            if not values or len(set(values)) != len(values) or not all(
                    isinstance(t, (int, float)) and 0 < t < float("inf") for t in values):
                raise ValueError(f"{name} must be distinct finite numbers > 0, got {list(values)}")
        if not (isinstance(self.beta, (int, float)) and 0 <= self.beta <= 1):
            raise ValueError(f"beta must be a number in [0, 1], got {self.beta!r}")
        for name in ("teacher_widths", "student_widths"):
            widths = getattr(self, name)
            if not widths or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
                raise ValueError(f"{name} must be a non-empty list of positive ints, got {list(widths)}")
        for name, least in (("student_train_size", 2), ("student_epochs", 1)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ValueError(f"{name} must be None or an integer >= {least}, got {value!r}")

    def check_dataset(self, dataset: Dataset) -> None:
        """ValueError unless ``student_train_size`` fits the teachers' training split of ``dataset``
        (at least one image per class, at most all of them)."""
        size, available = self.student_train_size, len(dataset.y_train)
        if size is not None and not dataset.num_classes <= size <= available:
            raise ValueError(f"student_train_size must be from {dataset.num_classes} (one image per class of "
                             f"{dataset.name}) to {available} (the teachers' training images), got {size}")

    def sweep_config(self, widths: tuple[int, ...]) -> SweepConfig:
        """The lab sweep of an MLP with hidden ``widths`` over this run's eps and seeds (the teachers')."""
        return dataclasses.replace(self.training, model_options={"mlp": {"widths": list(widths)}})

    def student_sweep_config(self) -> SweepConfig:
        """The sweep of the students trained directly: their widths, training subset and epochs."""
        return dataclasses.replace(self.sweep_config(self.student_widths), train_size=self.student_train_size,
                                   epochs=self.student_epochs or self.training.epochs)

    def temperatures_for(self, eps: float) -> tuple[float, ...]:
        return self.temperatures if eps == 0.0 else self.smoothed_temperatures

    def to_dict(self) -> dict:
        """The flat object config.json stores (the form every version of the lab has written)."""
        training = self.training.to_dict()
        own = json.loads(json.dumps({f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                     if f.name != "training"}))
        return {key: training[key] if key in TRAINING_KEYS else own[key] for key in STORED_KEYS}

    @classmethod
    def from_dict(cls, values: dict) -> "DistillationConfig":
        """The config of a flat object like :meth:`to_dict`'s; a key left out takes the value a stored
        config.json without it had (keys added since: :data:`~labelsmooth.lab.config.ADDED_KEYS`), else
        the preset's."""
        unknown = set(values) - set(STORED_KEYS)
        if unknown:
            raise ValueError(f"config has unknown keys {sorted(unknown)}; expected keys of {sorted(STORED_KEYS)}")
        values = {**{key: value for key, value in ADDED_KEYS.items() if key in STORED_KEYS}, **values}
        training = dataclasses.replace(TRAINING, **{k: v for k, v in values.items() if k in TRAINING_KEYS})
        return cls(training, **{k: v for k, v in values.items() if k not in TRAINING_KEYS})


# The defaults of DistillationConfig are the preset: the paper's sizes on Fashion-MNIST, the teachers
# on the whole training split (54,000 images) for 20 epochs, the students on 1,200 of them for 60
# epochs (a GPU job). --quick keeps the protocol (whole split for the teachers, 1,200 images for the
# students, T in {1, 2, 4, 8} for both teachers, three seeds) with smaller MLPs and fewer teacher
# epochs, so that it runs in a few minutes on two CPU cores.
QUICK: dict = dict(teacher_widths=(128, 128), student_widths=(64, 64), epochs=3, student_epochs=30)


# 2. Distilled students ----------------------------------------------------------------------------


@dataclass
class DistillationGroup(CellGroup):
    """Students trained together, each on its own teacher's logits and temperature.

    ``teacher_logits`` (T, N_train, K) holds the distinct teachers' logits of the training
    images, ``teacher_rows`` (C,) which teacher each student learns from, ``temperatures`` (C,)
    its temperature. Everything else (stacked weights, optimizer, evaluation) is the sweep's.
    """

    teacher_logits: Tensor | None = None
    teacher_rows: Tensor | None = None
    temperatures: tuple[float, ...] = ()
    beta: float = 0.0

    def train_epoch(self, config: SweepConfig, dataset: Dataset) -> Tensor:
        """One epoch of every student (per-seed batch order of the sweep); mean loss per student (C,)."""
        x, y = dataset.x_train, dataset.y_train
        orders = torch.stack([epoch_order(len(x), c.seed, self.epochs_done) for c in self.cells]).to(x.device)
        total = torch.zeros(len(self.cells), device=x.device)
        self.stacked.train()
        for start in range(0, len(x), config.batch_size):
            index = orders[:, start:start + config.batch_size]
            logits = self.stacked(x[index], per_cell=True)
            teacher = self.teacher_logits[self.teacher_rows[:, None], index]
            rows = torch.stack([distillation_loss(logits[c], teacher[c], y[index[c]], beta=self.beta,
                                                  temperature=t, reduction="none")
                                for c, t in enumerate(self.temperatures)])
            (rows.sum() / index.shape[1]).backward()
            optimizer_step(self.optimizer)
            self.optimizer.zero_grad(set_to_none=True)
            total += rows.detach().sum(1)
        self.epochs_done += 1
        return total / len(x)


def _teacher_train_logits(teachers_dir: Path, run: dict, dataset: Dataset) -> Tensor:
    """A teacher cell's logits of the training images, checked against the data set's labels."""
    path = cell_file(teachers_dir, run, "final.npz")
    if path is None:
        raise ValueError(f"teachers: expected {teachers_dir}/cells/{run.get('cell')}/final.npz (a finished "
                         f"teacher cell), got no such file")
    with np.load(path, allow_pickle=False) as arrays:
        logits, target = arrays["train_logits"], arrays["train_target"]
    if not np.array_equal(target, dataset.y_train.cpu().numpy()):
        raise ValueError(f"teachers: the training labels in {path} differ from the data set's; the "
                         f"teachers were trained on other data (dataset, train_fraction, data_seed)")
    return torch.from_numpy(logits)


def student_subset(config: DistillationConfig, dataset: Dataset) -> Tensor:
    """Indices into the teachers' training split (``dataset``) of the students' training images:
    the stratified, seeded sample the directly trained students' sweep draws (all when
    ``student_train_size`` is None)."""
    if config.student_train_size is None:
        return torch.arange(len(dataset.y_train))
    config.check_dataset(dataset)
    y = dataset.y_train.numpy()
    return torch.from_numpy(training_subset(y, config.student_train_size, config.training.data_seed))


def train_distilled_students(config: DistillationConfig, teachers_dir: Path, teacher_runs: list[dict],
                             dataset: Dataset, *, progress: bool = True) -> list[dict]:
    """Train every (teacher, temperature) student together; one result dict per student.

    ``dataset`` is the teachers' (whole training split); each student learns from the teachers'
    logits of its training subset (:func:`student_subset`) only.
    """
    sweep = config.student_sweep_config()
    device = torch.device(sweep.device)
    specs = [(row, run, t) for row, run in enumerate(teacher_runs)
             for t in config.temperatures_for(float(run["label_smoothing"]))]
    subset = student_subset(config, dataset)
    teacher_logits = torch.stack([_teacher_train_logits(teachers_dir, run, dataset)[subset] for run in teacher_runs])
    dataset = dataclasses.replace(dataset, x_train=dataset.x_train[subset], y_train=dataset.y_train[subset])
    y_train = dataset.y_train
    dataset = dataset.to(device)
    cells = [Cell("mlp", "uniform", 0.0, int(run["seed"])) for _, run, _ in specs]
    group = DistillationGroup.create(sweep, cells, dataset, device)
    group.teacher_logits = teacher_logits.to(device)
    group.teacher_rows = torch.tensor([row for row, _, _ in specs], device=device)
    group.temperatures, group.beta = tuple(t for _, _, t in specs), float(config.beta)
    history: list[list[dict]] = [[] for _ in specs]
    bar = progress_bar(sweep.epochs, progress, desc="distilled students")
    for _ in range(sweep.epochs):
        losses = group.train_epoch(sweep, dataset)
        diverged = {f"distilled-T{t:g}-{run['cell']}": {"epoch": group.epochs_done, "reason": f"train_loss {loss}"}
                    for (_, run, t), loss, reason in zip(specs, losses.tolist(), group.divergence(losses[:, None]))
                    if reason is not None}
        if diverged:
            bar.close()
            raise DivergenceError(divergence_message(diverged, sweep.lr))
        for rows, loss in zip(history, losses.tolist()):
            rows.append({"epoch": group.epochs_done, "train_loss": loss})
        bar.update(1)
    bar.close()
    test = group.metrics(group.logits(dataset.x_test, sweep.eval_batch_size), dataset.y_test).tolist()
    holdout = ([None] * len(specs) if len(dataset.x_holdout) == 0 else
               group.metrics(group.logits(dataset.x_holdout, sweep.eval_batch_size), dataset.y_holdout).tolist())
    students = []
    for (row, run, t), metrics, held, rows in zip(specs, test, holdout, history):
        students.append({
            "model": distilled_role(t), "label_smoothing": float(run["label_smoothing"]), "seed": int(run["seed"]),
            "distribution": "uniform", "cell": f"distilled-T{t:g}-{run['cell']}",
            "teacher_cell": f"teachers/{run['cell']}",
            "temperature": t, "beta": float(config.beta),
            "smoothness_index": float(smoothness_index(teacher_logits[row], y_train, temperature=t)),
            "holdout_accuracy": None if held is None else held[METRIC_NAMES.index("accuracy")],
            "holdout": None if held is None else dict(zip(METRIC_NAMES, held)), "history": rows,
            "test": dict(zip(METRIC_NAMES, metrics))})
    return students


# 3. The run -----------------------------------------------------------------------------------------


def _with_role(runs: list[dict], role: str, folder: str) -> list[dict]:
    """Sweep runs relabelled: ``model`` names the role, ``cell`` the folder of the sweep it is in."""
    return [{**run, "model": role, "cell": f"{folder}/{run['cell']}"} for run in runs]


def _teachers_dataset(config: DistillationConfig) -> Dataset:
    """The data set the teachers train on (the whole training split)."""
    training = config.training
    return load_dataset(training.dataset, data_dir=training.data_dir, train_fraction=training.train_fraction,
                        seed=training.data_seed, remap_labels=training.remap_labels)


def run_distillation(config: DistillationConfig, out_dir: str | Path, *, progress: bool = True) -> dict:
    """Teachers, direct students and distilled students into ``out_dir``; returns the results.

    Resumes the teacher and student sweeps where they stopped (distilled students are retrained
    if the run was interrupted before they finished); a finished run is left as it is (its report
    rebuilt if missing). One process at a time writes ``out_dir`` (the sweep's lock).
    """
    out = Path(out_dir)
    check_run_directory(out, config.to_dict())  # refuse another run's directory before creating anything
    dataset = _teachers_dataset(config)
    config.check_dataset(dataset)  # and a student subset the data cannot hold
    with locked(out):
        return _run_distillation(config, out, dataset, progress)


def _run_distillation(config: DistillationConfig, out: Path, dataset: Dataset, progress: bool) -> dict:
    finished = open_run_directory(out, config.to_dict())  # the sweep's rules: create, resume, or refuse
    if finished is not None:
        if (out / "report.html").is_file():
            print(f"{out}: this distillation run is already complete; nothing to do.")
        else:
            print(f"{out}: this distillation run is complete but its report is missing; rebuilding the report.")
            finish_run_directory(out)
        return finished
    teachers = run_sweep(config.sweep_config(config.teacher_widths), out / "teachers", progress=progress)
    direct = run_sweep(config.student_sweep_config(), out / "students", progress=progress)
    distilled = train_distilled_students(config, out / "teachers", teachers["runs"], dataset, progress=progress)
    teacher_records = _with_role(teachers["runs"], TEACHER, "teachers")
    for record, run in zip(teacher_records, teachers["runs"]):
        logits = _teacher_train_logits(out / "teachers", run, dataset)
        record["smoothness_index"] = float(smoothness_index(logits, dataset.y_train))
    runs = teacher_records + _with_role(direct["runs"], DIRECT, "students") + distilled
    results = {"config": config.to_dict(), "runs": runs, "complete": True}
    write_json(out / "results.json", results)
    finish_run_directory(out)
    return results


# 5. Command line -------------------------------------------------------------------------------------

# flag -> (config field, type, help)
FLAGS = {
    "--dataset": ("dataset", str, "fashion-mnist, digits or an .npz path"),
    "--data-dir": ("data_dir", str, "folder of the Fashion-MNIST IDX files"),
    "--teacher-widths": ("teacher_widths", int, "hidden widths of the teacher MLP"),
    "--student-widths": ("student_widths", int, "hidden widths of the student MLP"),
    "--label-smoothing": ("label_smoothing", float, "teachers' eps (must include 0); also the direct students'"),
    "--seeds": ("seeds", int, "seeds of teachers and students"),
    "--temperatures": ("temperatures", float, "distillation temperatures for the eps=0 teacher"),
    "--smoothed-temperatures": ("smoothed_temperatures", float, "temperatures for teachers with eps > 0"),
    "--beta": ("beta", float, "weight of the hard-label cross-entropy in the student's loss"),
    "--student-train-size": ("student_train_size", int, "the students' training images: a stratified sample of the "
                                                        "teachers' training split"),
    "--epochs": ("epochs", int, "epochs of the teachers"),
    "--student-epochs": ("student_epochs", int, "epochs of every student"),
    "--batch-size": ("batch_size", int, "batch size"),
    "--optimizer": ("optimizer", str, f"one of {sorted(OPTIMIZERS)}"),
    "--lr": ("lr", float, "learning rate"),
    "--momentum": ("momentum", float, "SGD momentum"),
    "--weight-decay": ("weight_decay", float, "weight decay"),
    "--train-fraction": ("train_fraction", float, "stratified fraction of the training set"),
    "--data-seed": ("data_seed", int, "seed of the training subsample and hold-out split"),
    "--eval-batch-size": ("eval_batch_size", int, "evaluation batch size"),
    "--device": ("device", str, "cpu, cuda, ..."),
}
LIST_FIELDS = {"teacher_widths", "student_widths", "label_smoothing", "seeds", "temperatures",
               "smoothed_temperatures"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The settings of :class:`DistillationConfig` (defaults: the preset), ``--quick``, ``--out``."""
    defaults = DistillationConfig().to_dict()
    for flag, (name, kind, text) in FLAGS.items():
        default = defaults[name]
        shown = " ".join(map(str, default)) if name in LIST_FIELDS else default
        parser.add_argument(flag, dest=name, type=kind, default=None, nargs="+" if name in LIST_FIELDS else None,
                            help=f"{text} (default: {shown}; --quick: {QUICK[name]})" if name in QUICK
                            else f"{text} (default: {shown})")
    parser.add_argument("--quick", action="store_true",
                        help="a short version: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    parser.add_argument("--remap-labels", action="store_true", default=None,
                        help="number the labels of an .npz data set 0..K-1 in increasing order")
    parser.add_argument("--out", default=None, help="run directory (default: runs/distillation[-quick])")
    add_threads_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> DistillationConfig:
    """Preset, then --quick overrides, then every flag that was given."""
    given = {name: getattr(args, name) for name in [*(name for name, *_ in FLAGS.values()), "remap_labels"]
             if getattr(args, name, None) is not None}
    return DistillationConfig.from_dict({**DistillationConfig().to_dict(), **(QUICK if args.quick else {}), **given})


def run(args: argparse.Namespace) -> int:
    use_threads(args)
    args.out = out = Path(args.out or Path("runs") / ("distillation-quick" if args.quick else "distillation"))
    try:
        run_distillation(config_from_args(args), out, progress=not args.no_progress)
    except (ValueError, OSError) as error:  # bad settings, missing data, a run directory that is not ours
        print(f"labelsmooth distill: error: {error}", file=sys.stderr)
        return 2
    print_outcome(out)
    return 0
