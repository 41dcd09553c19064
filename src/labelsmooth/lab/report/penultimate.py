"""The penultimate-layer section of a lab report: does label smoothing make tight, equidistant
class clusters (Müller, Kornblith & Hinton 2019, Section 2)?

``section(context)`` is one of the sweep report's sections. For each model of a
sweep it rebuilds the eps = 0 and the largest-eps models of every seed from
``cells/<key>/model.pt``, computes their penultimate activations on (a fixed sample of) the
training and test images, and reports

- figures like Müller et al. (2019, Figure 1): activations of three classes projected onto the
  plane through their templates, columns eps = 0 and eps > 0, rows train and test, for two
  triples (:data:`CLASS_TRIPLES`: one with two look-alike classes, one of three unlike ones),
  written as ``penultimate_<model>_<k1>-<k2>-<k3>.png`` and embedded, every panel of a figure on
  the same axes so eps = 0 and eps > 0 compare at a glance;
- the measures of :func:`labelsmooth.analysis.penultimate.cluster_measures` in the span of all
  K templates (the part of activation space the softmax sees), in the full penultimate space,
  and in each triple's plane, as mean [95% interval] over seeds;
- verdicts on "smoothing tightens clusters" and "smoothing makes them equidistant", from the
  per-seed paired differences in the templates' span, separately on the training and the test
  split (a change on the training images alone may not generalise), by the report's one rule
  (:func:`labelsmooth.lab.report.verdicts.judge`; smallest effect that matters: 10% of the
  eps = 0 value).

``penultimate_section(context, figure_dir)`` is the same for any sweep directory's context, so
the distillation experiment can show its teachers in its own report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from ...analysis.penultimate import (
    ProjectionPanel,
    cluster_measures,
    plot_projection_grid,
    template_plane,
    template_subspace,
)
from ..data import Dataset, load_run_dataset
from ..models import build_model
from ..rundir import cell_file
from ..stats import BOUNDS, estimate
from .context import Condition, ReportContext, SectionOutput
from .html import embed_figure, escape, figure_grid, figure_text, table
from .verdicts import Claim, judge

__all__ = [
    "CLASS_TRIPLES",
    "MAX_POINTS",
    "batched_outputs",
    "cell_models",
    "load_cell_model",
    "penultimate_activations",
    "penultimate_section",
    "section",
]

# data set name -> [(three classes, why these)]; the first two classes of a "look-alike" triple
# resemble each other, the paper's second kind of figure.
CLASS_TRIPLES: dict[str, list[tuple[tuple[int, int, int], str]]] = {
    "fashion-mnist": [((0, 6, 1), "two look-alike classes (T-shirt/top, Shirt) and an unlike one"),
                      ((1, 7, 8), "three unlike classes")],
    "digits": [((3, 8, 1), "two look-alike digits (3, 8) and an unlike one"),
               ((0, 1, 4), "three unlike digits")],
}
# activations are computed for at most this many images per split (a fixed random sample)
MAX_POINTS = 5000
SPLITS = ("train", "test")
# a change smaller than this fraction of the eps = 0 value does not matter for the claim
RELATIVE_MARGIN = 0.1


def class_triples(dataset: str, num_classes: int) -> list[tuple[tuple[int, int, int], str]]:
    """The triples to draw for ``dataset``: :data:`CLASS_TRIPLES`, else the first and last three classes."""
    if dataset in CLASS_TRIPLES:
        return CLASS_TRIPLES[dataset]
    first = ((0, 1, 2), "the first three classes")
    last = ((num_classes - 3, num_classes - 2, num_classes - 1), "the last three classes")
    return [first] if num_classes < 6 else [first, last]


# 1. Models and activations -------------------------------------------------------------------


def load_cell_model(run_dir: Path, run: dict, config: dict, dataset: Dataset) -> nn.Module | None:
    """The trained model of one cell (``model.pt`` with ``weights_only=True``), or None if absent.

    A ``model.pt`` that does not fit the model the config names (for example one written by an
    older version of the model code) raises ValueError saying so.
    """
    path = cell_file(run_dir, run, "model.pt")
    if path is None:
        return None
    options = (config.get("model_options") or {}).get(run["model"], {})
    model = build_model(run["model"], dataset.num_classes, dataset.in_shape, **options)
    try:
        model.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
    except RuntimeError as error:
        raise ValueError(f"{path} does not fit model {run['model']!r} with options {options} "
                         f"({' '.join(str(error).split())[:300]})") from error
    return model.eval()


def cell_models(context: ReportContext, conditions: Sequence[Condition], dataset: Dataset,
                skipped: list[str]) -> Iterator[tuple[Condition, int, nn.Module]]:
    """(condition, seed, model) of every cell of ``conditions`` with a ``model.pt``; a model file that does
    not fit is left out, and an HTML line saying so appended to ``skipped``."""
    for condition in conditions:
        for seed, run in context.groups[condition].items():
            try:
                model = load_cell_model(context.run_dir, run, context.config, dataset)
            except ValueError as error:
                skipped.append(f"<p>Skipped a cell: {escape(error)}</p>")
                continue
            if model is not None:
                yield condition, seed, model


def batched_outputs(function: Callable[[Tensor], Tensor], x: Tensor, batch_size: int = 1000) -> Tensor:
    """``function`` of every row of ``x``, in batches of ``batch_size``, without autograd, concatenated."""
    with torch.inference_mode():
        return torch.cat([function(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def penultimate_activations(model: nn.Module, x: Tensor, batch_size: int = 1000) -> Tensor:
    """``model.penultimate`` of every row of ``x``, in batches, without autograd: (N, D)."""
    return batched_outputs(model.penultimate, x, batch_size)


def split_sample(dataset: Dataset, max_points: int = MAX_POINTS) -> dict[str, tuple[Tensor, Tensor]]:
    """split -> (x, y): at most ``max_points`` images per split, a fixed random sample (seed 0)."""
    generator = torch.Generator().manual_seed(0)
    found = {}
    for split in SPLITS:
        x, y = getattr(dataset, f"x_{split}"), getattr(dataset, f"y_{split}")
        index = torch.randperm(len(x), generator=generator)[:max_points].sort().values
        found[split] = (x[index], y[index])
    return found


# 2. Measures per cell ------------------------------------------------------------------------


@dataclass
class CellActivations:
    """One trained model's penultimate activations per split and its class templates (K, D)."""

    activations: dict[str, tuple[Tensor, Tensor]]
    templates: Tensor


SPAN, FULL, PLANE = "span of all templates", "full penultimate space", "plane of classes "
MEASURES = ("tightness", "equidistance_cv")


def _present(labels: Tensor) -> tuple[int, ...]:
    return tuple(labels.unique().tolist())


def _span_measures(cell: CellActivations, split: str):
    span = template_subspace(cell.templates)
    points, labels = cell.activations[split]
    return cluster_measures(span.project(points), labels, _present(labels))


def _full_measures(cell: CellActivations, split: str):
    points, labels = cell.activations[split]
    return cluster_measures(points, labels, _present(labels))


def _plane_points(cell: CellActivations, split: str, triple: tuple[int, int, int]) -> tuple[Tensor, Tensor]:
    """(coordinates (M, 2), labels (M,)) of the triple's activations in the plane of its templates."""
    points, labels = cell.activations[split]
    keep = torch.isin(labels, torch.tensor(triple))
    return template_plane(cell.templates, triple).project(points[keep]), labels[keep]


def _plane_measures(cell: CellActivations, split: str, triple: tuple[int, int, int]):
    return cluster_measures(*_plane_points(cell, split, triple), triple)


def cell_measures(cell: CellActivations, triples: Sequence[tuple[int, int, int]]) -> dict:
    """space -> split -> {measure: value} for the spaces :data:`SPAN` (when the penultimate
    width D >= K - 1; below, the templates' span is the whole space), :data:`FULL` and each
    triple's plane."""
    num_classes, width = cell.templates.shape
    spaces = {SPAN: _span_measures} if width >= num_classes - 1 else {}
    spaces[FULL] = _full_measures
    spaces.update({f"{PLANE}{t}": (lambda c, s, t=t: _plane_measures(c, s, t)) for t in triples})
    return {space: {split: {m: getattr(function(cell, split), m) for m in MEASURES} for split in SPLITS}
            for space, function in spaces.items()}


# 3. The section ------------------------------------------------------------------------------


def _pairs(groups: dict) -> list[tuple[Condition, Condition]]:
    """(eps = 0 condition, largest-eps condition) per model, preferring the uniform distribution, on the
    cleanest labels of the grid (its lowest label-noise rate)."""
    pairs = []
    for model in sorted({c.model for c in groups}):
        conditions = [c for c in groups if c.model == model]
        conditions = [c for c in conditions if c.label_noise == min(c.label_noise for c in conditions)]
        distribution = "uniform" if any(c.distribution == "uniform" for c in conditions) else conditions[0].distribution
        same = [c for c in conditions if c.distribution == distribution]
        base = next((c for c in same if c.label_smoothing == 0.0), None)
        treated = max(same, key=lambda c: c.label_smoothing)
        if base is not None and treated.label_smoothing > 0:
            pairs.append((base, treated))
    return pairs


def _space_name(space: str, dataset: Dataset) -> str:
    """A space of :func:`cell_measures` for the page: a plane named by its classes' names."""
    if not space.startswith(PLANE):
        return space
    triple = [int(k) for k in space[len(PLANE):].strip("() ").split(",")]
    return "plane of " + ", ".join(dataset.class_names[k] for k in triple)


def _figure(cells: dict, pair: tuple[Condition, Condition], seed: int, triple: tuple[int, int, int],
            dataset: Dataset, context: ReportContext, path: Path) -> str:
    """The paper's grid for one triple and one seed, written to ``path``; returns an HTML figure."""
    names = {k: dataset.class_names[k] for k in triple}
    drawn = {k: figure_text(name) for k, name in names.items()}
    rows = []
    for split in SPLITS:
        row = []
        for condition in pair:
            title = f"{context.label(condition)}, {split}, seed {seed}"
            row.append(ProjectionPanel(*_plane_points(cells[condition][seed], split, triple), drawn, title))
        rows.append(row)
    caption = (f"{', '.join(names.values())}: penultimate activations projected onto the plane through "
               f"the three class templates (all panels on the same axes)")
    return embed_figure(plot_projection_grid(rows, share_axes=True), path, caption)


def _table_rows(measures: dict, pair: tuple[Condition, Condition], context: ReportContext,
                dataset: Dataset) -> list[list[str]]:
    rows = []
    base_measures = measures[pair[0]]
    spaces = next(iter(base_measures.values())).keys()
    for space in spaces:
        for split in SPLITS:
            for condition in pair:
                by_seed = measures[condition]
                row = [_space_name(space, dataset), split, context.label(condition), str(len(by_seed))]
                row += [estimate([m[space][split][name] for m in by_seed.values()], BOUNDS[name]).format(3)
                        for name in MEASURES]
                rows.append(row)
    return rows


TIGHT = Claim("tight-clusters", "Smoothing tightens the clusters",
              "Label smoothing makes each class's penultimate-layer activations a tight cluster.",
              "Müller, Kornblith & Hinton 2019, When does label smoothing help? (Section 2)")
EQUIDISTANT = Claim("equidistant-clusters", "Smoothing makes the clusters equidistant",
                    "Label smoothing makes the class clusters of the penultimate layer equidistant from each other.",
                    "Müller, Kornblith & Hinton 2019, When does label smoothing help? (Section 2)")
# measure -> (claim, what it is called)
MEASURE_CLAIMS = {"tightness": (TIGHT, "tightness (within / between)"),
                  "equidistance_cv": (EQUIDISTANT, "equidistance CV")}


def _verdicts(measures: dict, pair: tuple[Condition, Condition], context: ReportContext) -> list[dict]:
    verdicts = []
    base, treated = pair
    space = SPAN if SPAN in next(iter(measures[base].values())) else FULL
    for name, (claim, short) in MEASURE_CLAIMS.items():
        for split in SPLITS:
            values = {c: {seed: m[space][split][name] for seed, m in measures[c].items()} for c in pair}
            margin = RELATIVE_MARGIN * sum(values[base].values()) / len(values[base])
            verdicts.append(judge(claim, values[treated], values[base], section="penultimate layer", split=split,
                                  contrast=context.contrast(treated, base), quantity=f"{short}, {space}",
                                  primary=context.is_primary(treated), better="lower", margin=margin,
                                  scope=context.scope, bounds=name))
    return verdicts


INTRODUCTION = (
    "<p>Müller et al. (2019) project the penultimate activations of three classes onto the plane "
    "through the three classes' templates (rows of the last layer's weight; orthonormal basis from "
    "w2 - w1 and w3 - w1) and see tighter clusters with label smoothing. The numbers make it "
    "testable: <b>tightness</b> = mean over classes of the RMS distance of a class's points from their "
    "mean, divided by the mean distance between class means (within / between; lower is tighter); "
    "<b>equidistance CV</b> = standard deviation / mean of the distances between class means (0 when "
    "all are equal). They are given in the span of all K templates (the part of the activations "
    "that changes the softmax), in the full penultimate space, and in each triple's plane; mean and "
    "95% interval over seeds, on at most {max_points} images per split: <b>train</b> is a fixed sample of the "
    "images the networks were trained on, <b>test</b> the test split. Verdicts are given for the "
    "training and the test split separately, in the templates' span; the smallest effect that matters "
    "is 10% of the eps=0 value. The two can disagree: on the training images the clusters show what the "
    "network fitted, on test images what it learned; the transfer-and-representation section gives one "
    "collapse measure (NC1) on the training, validation and test splits side by side and judges it on "
    "the validation split.</p>")


def penultimate_section(context: ReportContext, figure_dir: Path, *, max_points: int = MAX_POINTS) -> SectionOutput:
    """The section for the sweep of ``context``; figures written into ``figure_dir``."""
    figure_dir = Path(figure_dir)
    title = "Penultimate layer: tight, equidistant clusters?"
    config = context.config
    pairs = _pairs(context.groups)
    if not pairs:
        return SectionOutput(title, "<p>No eps=0 and eps&gt;0 pair of the same model in this run.</p>")
    try:
        dataset = load_run_dataset(config)
    except ValueError as error:  # a DataError, or a data set name this installation does not know
        return SectionOutput(title, f"<p>The data set is not available here, so no activations: {escape(error)}</p>")
    samples = split_sample(dataset, max_points)
    # with classes held out of training the data set's own triples may name absent classes
    triples = class_triples(config.get("dataset", "") if dataset.classes is None else "", dataset.num_classes)
    fragments, verdicts = [INTRODUCTION.format(max_points=max_points)], []
    for pair in pairs:
        cells: dict = {}
        for condition, seed, model in cell_models(context, pair, dataset, fragments):
            cells.setdefault(condition, {})[seed] = CellActivations(
                {split: (penultimate_activations(model, x), y) for split, (x, y) in samples.items()},
                model.classifier.weight.detach().double())
        seeds = sorted(set(cells.get(pair[0], {})) & set(cells.get(pair[1], {})))
        if not seeds:
            fragments.append(f"<p>{escape(pair[0].model)}: no finished cells with model.pt for both eps.</p>")
            continue
        measures = {c: {s: cell_measures(cells[c][s], [t for t, _ in triples]) for s in seeds} for c in pair}
        fragments.append(f"<h3>{escape(pair[0].model)}: {escape(context.contrast(pair[1], pair[0]))}</h3>")
        figures = [_figure(cells, pair, seeds[0], triple, dataset, context,
                           figure_dir / f"penultimate_{pair[0].model}_{'-'.join(map(str, triple))}.png")
                   for triple, _ in triples]
        reasons = "".join(f"<li>{escape(', '.join(dataset.class_names[k] for k in triple))}: {escape(why)}</li>"
                          for triple, why in triples)
        fragments.append(f"<p>The figures' classes:</p><ul>{reasons}</ul>" + figure_grid(figures))
        fragments.append(table(["space", "split", "condition", "seeds", "tightness", "equidistance CV"],
                               _table_rows(measures, pair, context, dataset)))
        verdicts += _verdicts(measures, pair, context)
    return SectionOutput(title, "".join(fragments), verdicts)


def section(context: ReportContext) -> SectionOutput:
    """The penultimate-layer section of a sweep's report (figures written into its run directory)."""
    return penultimate_section(context, context.run_dir)
