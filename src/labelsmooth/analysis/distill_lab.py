"""``labelsmooth distill`` (``reproduce distillation``): does a label-smoothed teacher teach worse?

Müller, Kornblith & Hinton (2019, Section 4; seed 004) distil a 2x800 MLP student from a 2x1200
MLP teacher (Hinton et al. 2015's sizes) and find that a teacher trained with label smoothing,
although a better classifier itself, gives a worse student. :func:`run_distillation` repeats the
experiment on a lab data set (Fashion-MNIST by default, digits for CI) in one run directory:

- ``teachers/``: an ordinary lab sweep (``labelsmooth.lab.sweep``) of the teacher MLP over the
  eps list and seeds (resumable, with its own report including the penultimate section);
- ``students/``: the same sweep for the student MLP: the students trained directly on the
  labels, with and without label smoothing (the control);
- distilled students: for every teacher cell, a student trained with
  :func:`labelsmooth.analysis.distill.distillation_loss` on the teacher's logits of the training
  images (``final.npz``), at each temperature of ``temperatures`` for the eps = 0 teacher (the
  paper's temperature sweep) and of ``smoothed_temperatures`` for the others. Student ``s``
  starts from the same initial weights and sees the same batch order as the directly trained
  student of seed ``s`` (the sweep's paired design), and is trained with the same optimizer;
- ``results.json`` (every teacher and student as a run: ``model`` names the role, and
  ``label_smoothing`` is the teacher's eps for a distilled student), ``report.html`` with the
  distillation results, the teachers' penultimate-layer figures and measures, and the verdicts,
  and the figures as PNGs.

The teacher's *smoothness index* (:func:`~labelsmooth.analysis.distill.smoothness_index`, on the
training images at the distillation temperature) puts smoothed teachers and temperature-softened
hard teachers on one axis, as in the paper's comparison.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..lab.data import Dataset, load_dataset
from ..lab.presets import print_outcome
from ..lab.report import (
    Condition,
    _table,
    build_report,
    condition_label,
    group_runs,
    load_results,
)
from ..lab.stats import estimate, paired_difference
from ..lab.sweep import (
    OPTIMIZERS,
    Cell,
    CellGroup,
    SweepConfig,
    epoch_order,
    open_run_directory,
    run_sweep,
    write_json,
)
from .distill import distillation_loss, smoothness_index
from .lab import cell_file, embed_figure, judge_decrease, penultimate_section

__all__ = ["QUICK", "DistillationConfig", "add_arguments", "distillation_section",
           "run", "run_distillation", "teacher_penultimate_section"]

TEACHER, DIRECT = "teacher", "student, trained directly"
# an accuracy change smaller than this does not matter for the claim (the paper's MNIST effect:
# student error 0.74% -> 0.91%, 0.17 points)
ACCURACY_MARGIN = 0.001
CLAIM = "4"


def distilled_role(temperature: float) -> str:
    return f"student, distilled at T={temperature:g}"


# 1. The configuration ---------------------------------------------------------------------------


@dataclass
class DistillationConfig:
    """Everything that determines a distillation run (stored as its ``config.json``).

    Teachers and directly trained students are sweeps of ``label_smoothing`` x ``seeds`` with the
    shared training settings; distilled students use ``beta`` and the temperatures.

    >>> config = DistillationConfig(dataset="digits", temperatures=(1.0, 4.0))
    >>> DistillationConfig.from_dict(config.to_dict()) == config
    True
    """

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    teacher_widths: tuple[int, ...] = (1200, 1200)
    student_widths: tuple[int, ...] = (800, 800)
    label_smoothing: tuple[float, ...] = (0.0, 0.1)
    seeds: tuple[int, ...] = (0, 1, 2)
    temperatures: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)   # for the eps = 0 teacher
    smoothed_temperatures: tuple[float, ...] = (1.0,)        # for teachers with eps > 0
    beta: float = 0.0
    epochs: int = 20
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    train_fraction: float = 1.0
    data_seed: int = 0
    eval_batch_size: int = 1000
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("teacher_widths", "student_widths", "label_smoothing", "seeds", "temperatures",
                     "smoothed_temperatures"):
            value = getattr(self, name)
            setattr(self, name, tuple(value) if isinstance(value, (list, tuple)) else (value,))
        self.validate()

    def validate(self) -> None:
        """ValueError naming the first bad setting; the sweep settings are checked by SweepConfig."""
        if 0.0 not in self.label_smoothing or len(self.label_smoothing) < 2:
            raise ValueError(f"label_smoothing must hold 0 (the hard-target teacher) and at least one "
                             f"other eps, got {list(self.label_smoothing)}")
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
        self.sweep_config(self.teacher_widths)  # validates every shared training setting

    def sweep_config(self, widths: tuple[int, ...]) -> SweepConfig:
        """The lab sweep of an MLP with hidden ``widths`` over this run's eps and seeds."""
        return SweepConfig(
            dataset=self.dataset, data_dir=self.data_dir, models=("mlp",),
            model_options={"mlp": {"widths": list(widths)}}, label_smoothing=self.label_smoothing,
            seeds=self.seeds, distributions=("uniform",), epochs=self.epochs, batch_size=self.batch_size,
            optimizer=self.optimizer, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
            train_fraction=self.train_fraction, data_seed=self.data_seed,
            eval_batch_size=self.eval_batch_size, device=self.device)

    def temperatures_for(self, eps: float) -> tuple[float, ...]:
        return self.temperatures if eps == 0.0 else self.smoothed_temperatures

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict) -> "DistillationConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        if set(values) - known:
            raise ValueError(f"config has unknown keys {sorted(set(values) - known)}; expected keys of {sorted(known)}")
        return cls(**values)


# The defaults of DistillationConfig are the preset (the paper's sizes, on Fashion-MNIST); --quick
# trains on a tenth of the training images, for fewer epochs, at fewer temperatures (about 12
# minutes on one busy CPU thread; the full preset is roughly 20 times that, a GPU job).
QUICK: dict = dict(train_fraction=0.1, epochs=10, temperatures=(1.0, 4.0))


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
            self.optimizer.step()
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


def train_distilled_students(config: DistillationConfig, teachers_dir: Path, teacher_runs: list[dict],
                             dataset: Dataset, *, progress: bool = True) -> list[dict]:
    """Train every (teacher, temperature) student together; one result dict per student."""
    from tqdm.auto import tqdm

    sweep = config.sweep_config(config.student_widths)
    device = torch.device(config.device)
    specs = [(row, run, t) for row, run in enumerate(teacher_runs)
             for t in config.temperatures_for(float(run["label_smoothing"]))]
    teacher_logits = torch.stack([_teacher_train_logits(teachers_dir, run, dataset) for run in teacher_runs])
    y_train = dataset.y_train
    tensors = {f.name: getattr(dataset, f.name) for f in dataclasses.fields(dataset)}
    dataset = dataclasses.replace(dataset, **{k: v.to(device) for k, v in tensors.items() if isinstance(v, Tensor)})
    cells = [Cell("mlp", "uniform", 0.0, int(run["seed"])) for _, run, _ in specs]
    group = DistillationGroup.create(sweep, cells, dataset, device)
    group.teacher_logits = teacher_logits.to(device)
    group.teacher_rows = torch.tensor([row for row, _, _ in specs], device=device)
    group.temperatures, group.beta = tuple(t for _, _, t in specs), float(config.beta)
    history: list[list[dict]] = [[] for _ in specs]
    bar = tqdm(total=config.epochs, unit="epoch", desc="distilled students", dynamic_ncols=True,
               disable=not (progress and sys.stderr.isatty()))
    for _ in range(config.epochs):
        for rows, loss in zip(history, group.train_epoch(sweep, dataset).tolist()):
            rows.append({"epoch": group.epochs_done, "train_loss": loss})
        bar.update(1)
    bar.close()
    test = group.metrics(group.logits(dataset.x_test, config.eval_batch_size), dataset.y_test).tolist()
    holdout = ([None] * len(specs) if len(dataset.x_holdout) == 0 else
               group.metrics(group.logits(dataset.x_holdout, config.eval_batch_size), dataset.y_holdout)[:, 2].tolist())
    students = []
    for (row, run, t), metrics, held, rows in zip(specs, test, holdout, history):
        students.append({
            "model": distilled_role(t), "label_smoothing": float(run["label_smoothing"]), "seed": int(run["seed"]),
            "distribution": "uniform", "cell": f"distilled-T{t:g}-{run['cell']}",
            "teacher_cell": f"teachers/{run['cell']}",
            "temperature": t, "beta": float(config.beta),
            "smoothness_index": float(smoothness_index(teacher_logits[row], y_train, temperature=t)),
            "holdout_accuracy": held, "history": rows,
            "test": dict(zip(("loss", "nll", "accuracy", "ece"), metrics))})
    return students


# 3. The run -----------------------------------------------------------------------------------------


def _with_role(runs: list[dict], role: str, folder: str) -> list[dict]:
    """Sweep runs relabelled: ``model`` names the role, ``cell`` the folder of the sweep it is in."""
    return [{**run, "model": role, "cell": f"{folder}/{run['cell']}"} for run in runs]


SECTIONS = ["labelsmooth.lab.report:config_section",
            "labelsmooth.analysis.distill_lab:distillation_section",
            "labelsmooth.analysis.distill_lab:teacher_penultimate_section"]


def run_distillation(config: DistillationConfig, out_dir: str | Path, *, progress: bool = True) -> dict:
    """Teachers, direct students and distilled students into ``out_dir``; returns the results.

    Resumes the teacher and student sweeps where they stopped (distilled students are retrained
    if the run was interrupted before they finished); a finished run is left as it is.
    """
    out = Path(out_dir)
    finished = open_run_directory(out, config)  # the sweep's rules: create, resume, or refuse
    if finished is not None:
        print(f"{out}: this distillation run is already complete; nothing to do.")
        return finished
    teachers = run_sweep(config.sweep_config(config.teacher_widths), out / "teachers", progress=progress)
    direct = run_sweep(config.sweep_config(config.student_widths), out / "students", progress=progress)
    dataset = load_dataset(config.dataset, data_dir=config.data_dir, train_fraction=config.train_fraction,
                           seed=config.data_seed)
    distilled = train_distilled_students(config, out / "teachers", teachers["runs"], dataset, progress=progress)
    teacher_records = _with_role(teachers["runs"], TEACHER, "teachers")
    for record, run in zip(teacher_records, teachers["runs"]):
        logits = _teacher_train_logits(out / "teachers", run, dataset)
        record["smoothness_index"] = float(smoothness_index(logits, dataset.y_train))
    runs = teacher_records + _with_role(direct["runs"], DIRECT, "students") + distilled
    results = {"config": config.to_dict(), "runs": runs, "complete": True}
    write_json(out / "results.json", results)
    build_report(out, sections=SECTIONS)
    return results


# 4. The report sections ---------------------------------------------------------------------------


def _test_values(runs: dict[int, dict], metric: str) -> dict[int, float]:
    """seed -> final test ``metric`` of the runs that have it."""
    found = {seed: (run.get("test") or {}).get(metric) for seed, run in runs.items()}
    return {seed: float(value) for seed, value in found.items() if value is not None}


def _accuracy(runs: dict[int, dict]) -> dict[int, float]:
    return _test_values(runs, "accuracy")


def _mean_of(runs: dict[int, dict], key: str) -> float | None:
    values = [run[key] for run in runs.values() if run.get(key) is not None]
    return sum(values) / len(values) if values else None


def _best_by_holdout(groups: dict, eps: float) -> Condition | None:
    """The distilled-student condition of the eps teacher with the best mean hold-out accuracy."""
    candidates = [c for c in groups if c.model.startswith("student, distilled") and c.label_smoothing == eps
                  and _mean_of(groups[c], "holdout_accuracy") is not None]
    return max(candidates, key=lambda c: _mean_of(groups[c], "holdout_accuracy"), default=None)


def _comparison(groups: dict, treated: Condition, base: Condition, statement: str, how: str) -> dict:
    """Verdict on "a student of the smoothed teacher is less accurate" from per-seed pairs."""
    scope = f"{condition_label(treated, groups)} vs {condition_label(base, groups)}"
    treated_values, base_values = _accuracy(groups[treated]), _accuracy(groups[base])
    difference = paired_difference(treated_values, base_values)
    verdict, reason = judge_decrease(difference, ACCURACY_MARGIN,
                                     f"a loss of {ACCURACY_MARGIN * 100:g} accuracy points in the student")
    evidence = (f"{verdict.capitalize()}: {reason}. {how} Student test accuracy: "
                f"{condition_label(base, groups)} {estimate(list(base_values.values())).format()}, "
                f"{condition_label(treated, groups)} {estimate(list(treated_values.values())).format()}; "
                f"paired difference {difference.format() if difference else 'n/a (no shared seed)'}.")
    return dict(claim=CLAIM, statement=statement, scope=scope, verdict=verdict, evidence=evidence)


STATEMENT = ("A teacher trained with label smoothing makes a worse teacher for knowledge distillation "
             "(seed 004; Müller et al. 2019, Section 4)")


def _verdicts(groups: dict) -> list[dict]:
    verdicts = []
    for eps in sorted({c.label_smoothing for c in groups if c.label_smoothing > 0}):
        for t in sorted({float(run["temperature"]) for c, runs in groups.items() if c.label_smoothing == eps
                         for run in runs.values() if "temperature" in run}):
            treated, base = Condition(distilled_role(t), "uniform", eps), Condition(distilled_role(t), "uniform", 0.0)
            if treated in groups and base in groups:
                verdicts.append(_comparison(groups, treated, base, STATEMENT,
                                            f"Both teachers distilled at the same temperature T={t:g}."))
        best_smoothed, best_hard = _best_by_holdout(groups, eps), _best_by_holdout(groups, 0.0)
        # (at one shared temperature this is the comparison above)
        if best_smoothed is not None and best_hard is not None and best_smoothed.model != best_hard.model:
            verdicts.append(_comparison(groups, best_smoothed, best_hard, STATEMENT,
                                        "Each teacher at the temperature whose students have the best mean "
                                        "hold-out accuracy (chosen without the test set)."))
    return verdicts


def _table_rows(groups: dict) -> list[list[str]]:
    rows = []
    def order(item) -> tuple:
        condition, runs = item
        return (condition.model != TEACHER, condition.model == DIRECT,
                next(iter(runs.values())).get("temperature", 0.0), condition.label_smoothing)

    for condition, runs in sorted(groups.items(), key=order):
        indices = [run["smoothness_index"] for run in runs.values() if run.get("smoothness_index") is not None]
        held = [run["holdout_accuracy"] for run in runs.values() if run.get("holdout_accuracy") is not None]
        metrics = [list(_test_values(runs, name).values()) for name in ("accuracy", "nll", "ece")]
        rows.append([condition.model, f"{condition.label_smoothing:g}", str(len(runs)),
                     estimate(indices).format(3) if indices else "-", estimate(held).format() if held else "-"]
                    + [estimate(values).format() if values else "-" for values in metrics])
    return rows


def _figure(groups: dict, path: Path) -> str:
    """Student test accuracy against the teacher's smoothness index; written to ``path`` and embedded."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    axes = figure.add_subplot()
    for index, eps in enumerate(sorted({c.label_smoothing for c in groups})):
        points = sorted((estimate([r["smoothness_index"] for r in runs.values()]).mean,
                         estimate(list(_accuracy(runs).values())), c.model) for c, runs in groups.items()
                        if c.label_smoothing == eps and c.model.startswith("student, distilled"))
        if points:
            x = [p[0] for p in points]
            axes.errorbar(x, [p[1].mean for p in points], marker="o", color=f"C{index}", capsize=3,
                          yerr=[[p[1].mean - (p[1].low if p[1].has_interval else p[1].mean) for p in points],
                                [(p[1].high if p[1].has_interval else p[1].mean) - p[1].mean for p in points]],
                          label=f"distilled from the eps={eps:g} teacher")
            for xi, p in zip(x, points):
                axes.annotate(p[2].rsplit(" ", 1)[-1], (xi, p[1].mean), fontsize=7, xytext=(3, 3),
                              textcoords="offset points")
        direct = Condition(DIRECT, "uniform", eps)
        if direct in groups and _accuracy(groups[direct]):
            axes.axhline(estimate(list(_accuracy(groups[direct]).values())).mean, color=f"C{index}",
                         linestyle="--", linewidth=1, label=f"student trained directly, eps={eps:g}")
    axes.set_xlabel("teacher's smoothness index at the distillation temperature")
    axes.set_ylabel("student test accuracy (mean over seeds, 95% CI)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return embed_figure(figure, path, "Student test accuracy against the teacher's smoothness index")


def distillation_section(results: dict, run_dir: Path) -> tuple[str, list[dict]]:
    """Teachers and students with 95% intervals, the accuracy-vs-smoothness figure, the verdicts."""
    config = results.get("config") or {}
    groups = group_runs(results)
    intro = (
        "<h2>Knowledge distillation: does a smoothed teacher teach worse?</h2>"
        f"<p>Teachers: MLP {'x'.join(map(str, config.get('teacher_widths', [])))}; students: MLP "
        f"{'x'.join(map(str, config.get('student_widths', [])))}, trained on "
        f"{config.get('dataset', '?')} with the same optimizer and epochs. A distilled student minimises "
        f"beta * CE(student, y) + (1 - beta) * T^2 * KL(softmax(teacher / T) || softmax(student / T)) "
        f"with beta = {config.get('beta', '?')}; the eps=0 teacher is distilled at several temperatures T "
        "(the paper's temperature sweep). Each student of seed s starts from the same weights and sees "
        "the same batches as the directly trained student of seed s, so differences are paired by seed. "
        "Smoothness index = K/(K-1) * mean over training images of (1 - teacher's probability of the true "
        "class at T): the mass a teacher puts on wrong classes on the label-smoothing scale (a teacher "
        "that fits eps-smoothed targets exactly has index eps). Hold-out accuracy (training images not "
        "used for training) chooses the best temperature without touching the test set.</p>")
    table = _table(["role", "eps (teacher's for distilled students)", "seeds", "teacher smoothness index",
                    "hold-out accuracy", "test accuracy", "test NLL", "test ECE"], _table_rows(groups))
    figure = _figure(groups, Path(run_dir) / "distillation_students.png")
    return intro + table + f'<div class="figures">{figure}</div>', _verdicts(groups)


def teacher_penultimate_section(results: dict, run_dir: Path) -> tuple[str, list[dict]]:
    """The penultimate-layer section of the teachers' sweep, figures written into ``run_dir``."""
    teachers = Path(run_dir) / "teachers"
    html, verdicts = penultimate_section(load_results(teachers), teachers, Path(run_dir))
    verdicts = [{**v, "scope": f"teachers, {v['scope']}"} for v in verdicts]
    return html.replace("<h2>Penultimate layer:", "<h2>Teachers' penultimate layer:", 1), verdicts


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
    "--epochs": ("epochs", int, "epochs of every teacher and student"),
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
    defaults = DistillationConfig()
    for flag, (name, kind, text) in FLAGS.items():
        default = getattr(defaults, name)
        shown = " ".join(map(str, default)) if name in LIST_FIELDS else default
        parser.add_argument(flag, dest=name, type=kind, default=None, nargs="+" if name in LIST_FIELDS else None,
                            help=f"{text} (default: {shown}; --quick: {QUICK[name]})" if name in QUICK
                            else f"{text} (default: {shown})")
    parser.add_argument("--quick", action="store_true",
                        help="a short version: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    parser.add_argument("--out", default=None, help="run directory (default: runs/distillation[-quick])")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> DistillationConfig:
    """Preset, then --quick overrides, then every flag that was given."""
    given = {name: getattr(args, name) for name, *_ in FLAGS.values() if getattr(args, name, None) is not None}
    return DistillationConfig(**{**(QUICK if args.quick else {}), **given})


def run(args: argparse.Namespace) -> int:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = Path(args.out or Path("runs") / ("distillation-quick" if args.quick else "distillation"))
    try:
        run_distillation(config_from_args(args), out, progress=not args.no_progress)
    except ValueError as error:  # bad settings, missing data, a run directory that is not ours
        print(f"labelsmooth distill: error: {error}", file=sys.stderr)
        return 2
    print_outcome(out)
    return 0
