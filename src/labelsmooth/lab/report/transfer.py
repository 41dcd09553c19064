"""The transfer-and-representation section of a lab report: do smoothed penultimate features
collapse and transfer worse (Kornblith, Chen, Lee & Norouzi 2021)?

``section(context)`` is one of the sweep report's sections. For every eps of each model (on the
grid's cleanest labels) it rebuilds each seed's trained model from ``cells/<key>/model.pt``,
computes its penultimate features on a fixed sample of at most :data:`MAX_POINTS` images of each
split, and measures

- **class collapse**: NC1, ``tr(S_W S_B^+) / K`` (:func:`labelsmooth.analysis.representation.class_collapse`)
  of the trained classes on the training, validation and test splits side by side (what holds
  for the images a network was fitted on need not hold for images it never saw);
- **a linear probe of the trained task**: multinomial logistic regression on the frozen
  features of the training images, its L2 penalty chosen on the validation split
  (:func:`~labelsmooth.analysis.representation.choose_linear_probe`), its accuracy measured
  once on the test split;
- **a linear probe of the held-out classes**, when the sweep held classes out of training: the
  same probe fitted on those classes' training images (from the full data set, same splits),
  chosen on their validation images, scored on their test images: how well the features
  transfer to a task the network never saw; and NC1 of those classes on their validation split.

Verdicts (the report's one rule, :func:`labelsmooth.lab.report.verdicts.judge`; every eps against
eps = 0, paired over seeds, the largest eps primary): the held-out probe's test accuracy
(Kornblith et al.: worse), the trained task's probe (better) and NC1 on the validation split
(lower: more collapse; the training split's NC1 is a secondary verdict beside it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ...analysis.representation import DEFAULT_L2_GRID, choose_linear_probe, class_collapse, select_classes
from ..data import Dataset, load_run_dataset
from ..stats import BOUNDS, estimate
from .context import Condition, ReportContext, SectionOutput
from .html import escape, table
from .overview import ACCURACY_MARGIN
from .penultimate import cell_models, penultimate_activations
from .verdicts import Claim, judge

__all__ = ["MAX_POINTS", "CellRepresentation", "cell_representation", "held_out_splits", "section",
           "split_samples"]

# features are computed for at most this many images per split (a fixed random sample)
MAX_POINTS = 5000
# split name -> the Dataset attribute suffix holding it
SPLITS = {"train": "train", "validation": "holdout", "test": "test"}
TRANSFER_MARGIN = 0.01   # one point of held-out probe accuracy
RELATIVE_MARGIN = 0.1    # of the eps = 0 NC1
# L-BFGS iterations per probe: enough for its accuracy to settle (the report needs no more digits),
# a tenth of the library's default, which runs on to float64 rounding
PROBE_ITERATIONS = 100

SOURCE = ("Kornblith, Chen, Lee & Norouzi 2021, Why Do Better Loss Functions Lead to Less Transferable "
          "Features? (NeurIPS 2021)")
TRANSFER = Claim("transfer", "Smoothed features transfer worse",
                 "Label smoothing makes the penultimate features transfer worse: a linear probe on them for "
                 "classes the network was not trained on is less accurate.", SOURCE, predicts="deterioration")
PROBE = Claim("probe-trained-task", "Smoothing improves the trained task (linear probe)",
              "Label smoothing improves the accuracy of the task the network was trained on, here as read by a "
              "linear probe of its frozen penultimate features.", SOURCE)
COLLAPSE = Claim("class-collapse", "Smoothing collapses the classes",
                 "Label smoothing collapses each class's penultimate features (lower NC1, the within-class "
                 "over the between-class scatter), discarding within-class information other tasks need.",
                 SOURCE, predicts="deterioration")


# 1. Data ---------------------------------------------------------------------------------------------------


def _sample(x: Tensor, y: Tensor, max_points: int) -> tuple[Tensor, Tensor]:
    """At most ``max_points`` rows of ``(x, y)``: a fixed random sample (seed 0), in their order."""
    index = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:max_points].sort().values
    return x[index], y[index]


def split_samples(dataset: Dataset, max_points: int = MAX_POINTS) -> dict[str, tuple[Tensor, Tensor]]:
    """split -> (x, y): at most ``max_points`` images of the training, validation and test splits."""
    return {split: _sample(getattr(dataset, f"x_{attr}"), getattr(dataset, f"y_{attr}"), max_points)
            for split, attr in SPLITS.items()}


def held_out_splits(full: Dataset, classes: Sequence[int],
                    max_points: int = MAX_POINTS) -> dict[str, tuple[Tensor, Tensor]]:
    """split -> (x, y) of the held-out ``classes`` in ``full`` (every class), labels renumbered 0..m-1.

    A split with no image of one of the classes is refused (ValueError naming the split and class):
    a probe could neither be fitted, chosen nor scored for it.
    """
    found = {}
    for split, attr in SPLITS.items():
        x, y = getattr(full, f"x_{attr}"), getattr(full, f"y_{attr}")
        subset = select_classes(y, classes, split=f"probe {split} split", class_names=full.class_names)
        found[split] = _sample(x[subset.indices], subset.labels, max_points)
    return found


# 2. Measures per cell --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CellRepresentation:
    """One trained model's measures: ``nc1`` per split (trained classes); the trained-task probe's test
    accuracy and chosen penalty; the held-out probe's (None without held-out classes) and the held-out
    classes' NC1 on their validation split."""

    nc1: dict[str, float]
    probe_accuracy: float
    probe_l2: float
    transfer_accuracy: float | None = None
    transfer_l2: float | None = None
    held_out_nc1: float | None = None


def _probe(features: dict[str, tuple[Tensor, Tensor]], l2_grid: Sequence[float]) -> tuple[float, float]:
    """(test accuracy, penalty) of the probe fitted on the training split, chosen on the validation split."""
    choice = choose_linear_probe(*features["train"], *features["validation"], l2_grid=l2_grid,
                                 max_iter=PROBE_ITERATIONS)
    return choice.probe.accuracy(*features["test"]), choice.probe.l2


def cell_representation(model, trained: dict[str, tuple[Tensor, Tensor]],
                        held_out: dict[str, tuple[Tensor, Tensor]] | None = None, *,
                        l2_grid: Sequence[float] = DEFAULT_L2_GRID) -> CellRepresentation:
    """The measures of one model (``model.penultimate``) on the splits of :func:`split_samples` and,
    when given, :func:`held_out_splits`."""
    features = {split: (penultimate_activations(model, x), y) for split, (x, y) in trained.items()}
    nc1 = {split: class_collapse(h, y).nc1 for split, (h, y) in features.items()}
    accuracy, l2 = _probe(features, l2_grid)
    if held_out is None:
        return CellRepresentation(nc1, accuracy, l2)
    other = {split: (penultimate_activations(model, x), y) for split, (x, y) in held_out.items()}
    transfer, transfer_l2 = _probe(other, l2_grid)
    return CellRepresentation(nc1, accuracy, l2, transfer, transfer_l2, class_collapse(*other["validation"]).nc1)


# 3. The section ----------------------------------------------------------------------------------------------


def _conditions(context: ReportContext) -> list[tuple[Condition, list[Condition]]]:
    """(eps = 0 condition, its eps > 0 conditions) per model and distribution, on the grid's lowest noise rate."""
    found: dict[Condition, list[Condition]] = {}
    for treated, base in context.pairs():
        lowest = min(c.label_noise for c in context.groups if c.model == treated.model)
        if treated.label_noise == lowest:
            found.setdefault(base, []).append(treated)
    return list(found.items())


def _values(cells: dict, condition: Condition, measure) -> dict[int, float]:
    return {seed: value for seed, cell in cells.get(condition, {}).items() if (value := measure(cell)) is not None}


# quantity -> (claim, split, per-cell value, whether primary for the primary condition, bounds); higher is
# better for each: a more accurate probe, a higher NC1 (more within-class information kept for other tasks)
QUANTITIES = (
    ("probe accuracy, held-out classes", TRANSFER, "test", lambda c: c.transfer_accuracy, True, "accuracy"),
    ("probe accuracy, trained classes", PROBE, "test", lambda c: c.probe_accuracy, True, "accuracy"),
    ("NC1, trained classes", COLLAPSE, "validation", lambda c: c.nc1["validation"], True, "nc1"),
    ("NC1, trained classes", COLLAPSE, "train", lambda c: c.nc1["train"], False, "nc1"),
    ("NC1, held-out classes", COLLAPSE, "validation", lambda c: c.held_out_nc1, False, "nc1"),
)


def _verdicts(cells: dict, base: Condition, treated: Condition, context: ReportContext) -> list[dict]:
    verdicts = []
    for quantity, claim, split, measure, primary, bounds in QUANTITIES:
        baseline = _values(cells, base, measure)
        if not baseline:
            continue
        margin = (RELATIVE_MARGIN * sum(baseline.values()) / len(baseline) if bounds == "nc1" else
                  TRANSFER_MARGIN if claim is TRANSFER else ACCURACY_MARGIN)
        verdicts.append(judge(claim, _values(cells, treated, measure), baseline, section="transfer and representation",
                              split=split, contrast=context.contrast(treated, base), quantity=quantity,
                              primary=primary and context.is_primary(treated), better="higher", margin=margin,
                              scope=context.scope, bounds=bounds))
    return verdicts


def _cell(values: dict[int, float], bounds: str) -> str:
    return estimate(list(values.values()), BOUNDS[bounds]).format(3) if values else "-"


def _table(cells: dict, conditions: list[Condition], context: ReportContext, held_out: bool) -> str:
    header = ["condition", "seeds", "network test accuracy", "probe test accuracy (trained classes)"]
    header += ["probe test accuracy (held-out classes)"] if held_out else []
    header += [f"NC1 ({split})" for split in SPLITS] + (["NC1 held-out classes (validation)"] if held_out else [])
    rows = []
    for condition in conditions:
        runs = context.groups[condition]
        accuracy = {s: float(runs[s]["test"]["accuracy"]) for s in cells.get(condition, {})
                    if (runs[s].get("test") or {}).get("accuracy") is not None}
        row = [context.label(condition), str(len(cells.get(condition, {}))), _cell(accuracy, "accuracy"),
               _cell(_values(cells, condition, lambda c: c.probe_accuracy), "accuracy")]
        row += [_cell(_values(cells, condition, lambda c: c.transfer_accuracy), "accuracy")] if held_out else []
        row += [_cell(_values(cells, condition, lambda c, s=s: c.nc1[s]), "nc1") for s in SPLITS]
        row += [_cell(_values(cells, condition, lambda c: c.held_out_nc1), "nc1")] if held_out else []
        rows.append(row)
    return table(header, rows)


def _direction(cells: dict, base: Condition, treated: Condition, split: str) -> str | None:
    """How the seed-mean NC1 moves from ``base`` to ``treated`` on ``split``: "lower", "higher" or None."""
    before = _values(cells, base, lambda c: c.nc1[split])
    after = _values(cells, treated, lambda c: c.nc1[split])
    if not before or not after:
        return None
    return "lower" if sum(after.values()) / len(after) < sum(before.values()) / len(before) else "higher"


def _reconciliation(cells: dict, base: Condition, treated: Condition, context: ReportContext) -> str:
    """A sentence on whether smoothing moves NC1 the same way on images trained on and images not trained on."""
    moves = {split: _direction(cells, base, treated, split) for split in SPLITS}
    if None in moves.values():
        return ""
    said = ", ".join(f"{moves[s]} on the {s} split" for s in SPLITS)
    if len(set(moves.values())) == 1:
        return f"<p>{escape(context.contrast(treated, base))}: NC1 is {escape(said)}: the splits agree.</p>"
    return (f"<p>{escape(context.contrast(treated, base))}: NC1 is {escape(said)}. The splits disagree: the "
            f"training split describes images the network was fitted on, the validation and test splits images "
            f"it never saw; a claim about the learned representation is judged on the validation split.</p>")


INTRODUCTION = (
    "<p>Kornblith et al. (2021) find that label smoothing (and other losses that beat softmax cross-entropy) "
    "improves the accuracy of the task a network is trained on while its penultimate features transfer worse "
    "to other tasks, and tie this to class collapse: each class's features huddle together and lose "
    "within-class information. Measured here on the frozen penultimate features of every trained model, on "
    "at most {max_points} images per split (a fixed sample):</p><ul>"
    "<li><b>NC1</b> (Papyan, Han &amp; Donoho 2020) = tr(S<sub>W</sub> S<sub>B</sub><sup>+</sup>) / K, the "
    "within-class scatter relative to the scatter of the class means; 0 when every class is one point. Given "
    "on the training split (images trained on), the validation split (training images not trained on) and "
    "the test split side by side: the penultimate-layer section's cluster measures use the training and test "
    "splits, and a change seen on the training images alone need not generalise. Its verdict uses the "
    "validation split (the training split's is secondary); lower NC1 is more collapse, which the claim "
    "predicts (higher is better for transfer).</li>"
    "<li><b>Linear probe</b>: a multinomial logistic regression on the frozen features of training images, its "
    "L2 penalty chosen among {grid} on the validation split (each fitted by {iterations} L-BFGS "
    "iterations), its accuracy measured once on the test split. "
    "On the trained classes it reads the trained task from the features; on classes held out of training "
    "(when the run holds some out: their images from the same splits of the full data set) it measures "
    "transfer to a task the network never saw.</li></ul>"
    "<p>Smallest effects that matter: one point of held-out probe accuracy, 0.2 points of trained-task "
    "probe accuracy (as for the network's own accuracy), 10% of the eps=0 NC1.</p>")


def section(context: ReportContext, *, max_points: int = MAX_POINTS) -> SectionOutput:
    """The transfer-and-representation section of a sweep's report."""
    title = "Transfer and representation: class collapse and linear probes"
    config = context.config
    groups = _conditions(context)
    if not groups:
        return SectionOutput(title, "<p>No eps=0 and eps&gt;0 pair of the same model in this run.</p>")
    try:
        dataset = load_run_dataset(config)
        held_out_classes = tuple(config.get("held_out_classes") or ())
        full = load_run_dataset(config, full=True) if held_out_classes else None
        held_out = held_out_splits(full, held_out_classes, max_points) if full is not None else None
    except ValueError as error:  # the data set is absent here, or a probe split lacks a held-out class
        return SectionOutput(title, f"<p>No features: {escape(error)}</p>")
    trained = split_samples(dataset, max_points)
    grid = ", ".join(f"{l2:g}" for l2 in DEFAULT_L2_GRID)
    fragments, verdicts = [INTRODUCTION.format(max_points=max_points, grid=grid, iterations=PROBE_ITERATIONS)], []
    if held_out is None:
        fragments.append("<p>This run held no classes out of training, so there is no transfer probe (the "
                         "transfer preset trains on 5 classes and probes the other 5).</p>")
    else:
        names = ", ".join(full.class_names[k] for k in held_out_classes)
        fragments.append(f"<p>Held out of training and probed: {escape(names)}.</p>")
    for base, treated in groups:
        cells: dict = {}
        for condition, seed, model in cell_models(context, [base, *treated], dataset, fragments):
            cells.setdefault(condition, {})[seed] = cell_representation(model, trained, held_out)
        if base not in cells:
            fragments.append(f"<p>{escape(base.model)}: no finished eps=0 cell with model.pt.</p>")
            continue
        fragments.append(f"<h3>{escape(base.model)}</h3>"
                         + _table(cells, [base, *treated], context, held_out is not None))
        for condition in treated:
            fragments.append(_reconciliation(cells, base, condition, context))
            verdicts += _verdicts(cells, base, condition, context)
    return SectionOutput(title, "".join(fragments), verdicts)
