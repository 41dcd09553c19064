"""The distribution-shift section of a report: calibration away from the training distribution, and
telling images of classes never trained on from known ones.

Computed by the report, deterministically, from each finished cell's saved weights
(``cells/<key>/model.pt``) and validation logits (``final.npz``, for the temperature):

- *Shifted test images.* The known classes' test images, in pixels ``[0, 1]``, shifted by
  :func:`labelsmooth.analysis.shift.shift_images` at every strength of :data:`SHIFT_STRENGTHS`
  (rotations by +-degrees, the sign drawn per image; Gaussian pixel noise of a standard deviation
  on ``[0, 1]`` pixels), seeded (:data:`SHIFT_SEED`: every cell sees the same images, so seeds
  pair), mapped back to the model's input by :class:`labelsmooth.analysis.pixels.Standardize`.
  Test accuracy, NLL and ECE (15 equal-width bins) per strength, as trained and after
  temperature scaling (T fitted on the unshifted validation split: Guo et al. 2017's simpler fix).
- *Unknown classes.* With classes held out of training, the AUROC of telling their test images
  (negatives) from the known classes' unshifted test images (positives) by the maximum softmax
  probability and by the negative energy (:func:`labelsmooth.analysis.shift.detection_auroc`).

Verdicts (the one rule, :func:`labelsmooth.lab.report.verdicts.judge`; primary: the largest eps
against eps = 0, on rotation, the max-softmax score):

- :data:`CALIBRATION_UNDER_SHIFT` (Ovadia et al. 2019): the ECE gain of eps > 0 over eps = 0
  (``ECE(eps=0) - ECE(eps)``, paired by seed) at the strongest shift against the same gain without
  shift; the claim predicts it shrinks (smallest effect that matters: 0.01 of ECE). Precondition:
  a gain without shift (its interval above 0). The same for temperature scaling of eps = 0, the
  method Ovadia et al. tested, as a secondary verdict.
- :data:`BEATS_TEMPERATURE_SCALING_UNDER_SHIFT`: ECE of eps > 0 as trained against eps = 0
  temperature-scaled at the strongest shift (smallest effect: 10% of the reference's ECE).
- :data:`OOD_DETECTION` (Lee & Cheon 2020; Xu et al. 2024): the detection AUROC; the claim
  predicts smoothing lowers it (smallest effect: 0.01).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ...analysis.shift import OOD_SCORES, detection_auroc, shift_images
from ..data import Dataset, load_run_dataset
from ..stats import BOUNDS, estimate
from .context import Condition, ReportContext, SectionOutput, prediction_metrics
from .html import embed_figure, escape, figure_grid, table
from .penultimate import batched_outputs, load_cell_model
from .verdicts import Claim, judge

__all__ = ["BEATS_TEMPERATURE_SCALING_UNDER_SHIFT", "CALIBRATION_UNDER_SHIFT", "OOD_DETECTION", "SHIFT_SEED",
           "SHIFT_STRENGTHS", "ShiftData", "cell_scores", "section", "shift_data"]

# kind -> strengths, the first 0 (no shift): degrees of rotation; noise std on [0, 1] pixels
SHIFT_STRENGTHS = {"rotation": (0.0, 15.0, 30.0, 45.0, 60.0, 90.0), "gaussian_noise": (0.0, 0.1, 0.2, 0.4)}
SHIFT_NAMES = {"rotation": "rotation (degrees)", "gaussian_noise": "Gaussian pixel noise (std on [0, 1] pixels)"}
SHIFT_SEED = 0
METRICS = {"accuracy": ("test accuracy", "higher"), "nll": ("test NLL", "lower"), "ece": ("test ECE", "lower")}
SCORE_NAMES = {"max_softmax": "max-softmax", "energy": "energy"}
VARIANTS = ("as trained", "temperature-scaled")
GAIN_MARGIN = 0.01    # of ECE: a gain that shrinks by less does not matter
RELATIVE_MARGIN = 0.1  # of the reference's ECE, for smoothing against temperature scaling
AUROC_MARGIN = 0.01

CALIBRATION_UNDER_SHIFT = Claim(
    "calibration-under-shift", "Calibration gains shrink under shift",
    "The calibration a method gains without shift (a lower ECE than the unsmoothed model's) shrinks as the "
    "inputs drift away from the training distribution; here, for label smoothing.",
    "Ovadia et al. 2019, Can You Trust Your Model's Uncertainty? Evaluating Predictive Uncertainty Under "
    "Dataset Shift (found for temperature scaling and other methods on rotated MNIST and corrupted images; "
    "label smoothing was not among the methods tested)", predicts="deterioration")
BEATS_TEMPERATURE_SCALING_UNDER_SHIFT = Claim(
    "beats-temperature-scaling-under-shift", "Smoothing beats temperature scaling under shift",
    "Under the strongest shift, the smoothed model is better calibrated (lower ECE) than the unsmoothed model "
    "after temperature scaling fitted on unshifted validation data.",
    "the simpler fix, temperature scaling (Guo et al. 2017, On Calibration of Modern Neural Networks), whose "
    "in-distribution gains Ovadia et al. 2019 found to fade under shift")
OOD_DETECTION = Claim(
    "ood-detection", "Smoothing hurts detection of unknown classes",
    "A model trained with label smoothing tells images of classes it never saw from images of known classes "
    "worse by its maximum softmax probability.",
    "Lee & Cheon 2020, Soft Labeling Affects Out-of-Distribution Detection of Deep Neural Networks; Xu et al. "
    "2024, Adaptive Label Smoothing for Out-of-Distribution Detection", predicts="deterioration")


# 1. Data and scores per cell ---------------------------------------------------------------------


@dataclass
class ShiftData:
    """The evaluation sets of a run's ``dataset``: ``shifted`` maps (kind, strength) to the known
    classes' test images shifted so, as model inputs (N, ...), with ``target`` (N,); ``unknown`` holds the held-out
    classes' test images as model inputs (None without held-out classes), ``unknown_labels`` their
    class index in the full data set, and ``unknown_names`` (class index -> name)."""

    shifted: dict[tuple[str, float], Tensor]
    target: Tensor
    unknown: Tensor | None
    unknown_labels: Tensor | None
    unknown_names: dict[int, str]
    dataset: Dataset


def shift_data(config: dict) -> ShiftData:
    """The shifted and unknown test images of the sweep of ``config`` (see the module docstring).

    ValueError when the data set is unavailable or its pixel scale is unknown (an .npz).
    """
    dataset = load_run_dataset(config)
    to_model = dataset.pixel_map()
    if to_model is None or len(dataset.in_shape) != 3:
        raise ValueError(f"shifts are defined on images of known pixel scale (Fashion-MNIST, digits), got data set "
                         f"{dataset.name!r} with input shape {dataset.in_shape}")
    pixels = to_model.pixels(dataset.x_test.double()).clamp(0, 1)  # float32 rounding may stray past 0 or 1
    # strength 0 is the test split itself, as the other sections score it
    shifted = {(kind, strength): to_model(shift_images(pixels, kind, strength, seed=SHIFT_SEED)).float()
               if strength else dataset.x_test for kind, strengths in SHIFT_STRENGTHS.items() for strength in strengths}
    unknown = labels = None
    names: dict[int, str] = {}
    if config.get("held_out_classes"):
        full = load_run_dataset(config, full=True)
        held = torch.tensor(sorted(config["held_out_classes"]))
        rows = torch.isin(full.y_test, held)
        unknown, labels = full.x_test[rows], full.y_test[rows]
        names = {int(k): full.class_names[int(k)] for k in held}
    return ShiftData(shifted, dataset.y_test, unknown, labels, names, dataset)


def _logits(model: nn.Module, x: Tensor) -> Tensor:
    return batched_outputs(model, x).double()


def cell_scores(model: nn.Module, data: ShiftData, temperature: float | None) -> dict:
    """One trained model's numbers: ``{"shift": {variant: {(kind, strength): metrics}}, "auroc":
    {variant: {score: AUROC, (score, class): AUROC}}}``; ``variant`` "as trained", and
    "temperature-scaled" (logits / ``temperature``) when a temperature is given."""
    scales = {"as trained": 1.0, **({"temperature-scaled": temperature} if temperature is not None else {})}
    found: dict = {"shift": {v: {} for v in scales}, "auroc": {v: {} for v in scales}}
    known = None  # the logits of the unshifted test images, computed once
    for key, x in data.shifted.items():
        logits = known if key[1] == 0 and known is not None else _logits(model, x)
        known = logits if key[1] == 0 else known
        for variant, scale in scales.items():
            found["shift"][variant][key] = prediction_metrics(logits / scale, data.target)
    if data.unknown is not None:
        unknown = _logits(model, data.unknown)
        for variant, scale in scales.items():
            for score in OOD_SCORES:
                aurocs = found["auroc"][variant]
                aurocs[score] = detection_auroc(known / scale, unknown / scale, score)
                for k in data.unknown_names:
                    one_class = unknown[data.unknown_labels == k]
                    aurocs[(score, k)] = detection_auroc(known / scale, one_class / scale, score)
    return found


# 2. Figures and tables ---------------------------------------------------------------------------


def _auroc_value(by_seed: dict, variant: str, key) -> dict[int, float]:
    """seed -> the AUROC ``key`` (a score, or (score, class)) of the variant, for the seeds that have it."""
    return {seed: s["auroc"][variant][key] for seed, s in by_seed.items() if key in s["auroc"].get(variant, {})}


def _shift_value(by_seed: dict, variant: str, kind: str, strength: float, metric: str) -> dict[int, float]:
    return {seed: s["shift"][variant][(kind, strength)][metric] for seed, s in by_seed.items()
            if variant in s["shift"]}


def _lines(scores: dict, context: ReportContext) -> list[tuple[str, Condition, str]]:
    """(label, condition, variant) of each line: every condition as trained, eps = 0 temperature-scaled."""
    lines = [(context.label(c), c, "as trained") for c in scores]
    lines += [(f"{context.label(c)} temperature-scaled", c, "temperature-scaled") for c in scores
              if c.label_smoothing == 0.0 and any("temperature-scaled" in s["shift"] for s in scores[c].values())]
    return lines


def _figure(scores: dict, context: ReportContext) -> str:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 8.4), layout="constrained")
    grid = figure.subplots(len(METRICS), len(SHIFT_STRENGTHS), squeeze=False)
    for column, (kind, strengths) in enumerate(SHIFT_STRENGTHS.items()):
        for row, (metric, (name, better)) in enumerate(METRICS.items()):
            axes = grid[row][column]
            for index, (label, condition, variant) in enumerate(_lines(scores, context)):
                per = [list(_shift_value(scores[condition], variant, kind, s, metric).values()) for s in strengths]
                style = "--" if variant == "temperature-scaled" else "-"
                color = "black" if variant == "temperature-scaled" else f"C{index % 10}"
                axes.plot(strengths, [sum(v) / len(v) for v in per], style, color=color, linewidth=1.4,
                          marker="o", markersize=3, label=f"{label} ({len(per[0])} seeds)")
                if len(per[0]) > 1:
                    axes.fill_between(strengths, [min(v) for v in per], [max(v) for v in per], color=color,
                                      alpha=0.15, linewidth=0)
            axes.set_xlabel(SHIFT_NAMES[kind], fontsize=8)
            axes.set_ylabel(f"{name} ({better} is better)", fontsize=8)
            axes.grid(alpha=0.3)
            if row == 0 and column == 0:
                axes.legend(fontsize=7)
    figure.suptitle("Known classes' test images under shift: mean over seeds, band from min to max", fontsize=10)
    return embed_figure(figure, Path(context.run_dir) / "shift_curves.png",
                        "Accuracy, NLL and ECE against the strength of the shift", wide=True)


def _metrics_table(scores: dict, context: ReportContext) -> str:
    settings = [("rotation", 0.0, "no shift")] + [(kind, strengths[-1], f"{kind.replace('_', ' ')} {strengths[-1]:g}")
                                                  for kind, strengths in SHIFT_STRENGTHS.items()]
    rows = []
    for label, condition, variant in _lines(scores, context):
        row = [label, str(len(scores[condition]))]
        for metric in METRICS:
            for kind, strength, _ in settings:
                values = _shift_value(scores[condition], variant, kind, strength, metric)
                row.append(estimate(list(values.values()), BOUNDS[metric]).format() if values else "-")
        rows.append(row)
    header = ["model", "seeds"] + [f"{METRICS[m][0]}, {where}" for m in METRICS for _, _, where in settings]
    return table(header, rows)


def _auroc_table(scores: dict, context: ReportContext, names: dict[int, str]) -> str:
    columns = [(score, None) for score in OOD_SCORES] + [("max_softmax", k) for k in names]
    rows = []
    for label, condition, variant in _lines(scores, context) + [
            (f"{context.label(c)} temperature-scaled", c, "temperature-scaled") for c in scores if c.label_smoothing]:
        row = [label, str(len(scores[condition]))]
        for score, k in columns:
            values = _auroc_value(scores[condition], variant, score if k is None else (score, k))
            row.append(estimate(list(values.values()), BOUNDS["auroc"]).format() if values else "-")
        rows.append(row)
    header = ["model", "seeds"] + [f"AUROC, {SCORE_NAMES[score]}" + (f", {names[k]} only" if k is not None else "")
                                   for score, k in columns]
    return table(header, rows)


# 3. Verdicts -------------------------------------------------------------------------------------


def _gain(base: dict, treated: dict, base_variant: str, variant: str, kind: str, strength: float) -> dict[int, float]:
    """seed -> ECE(baseline) - ECE(treated) at the shift (positive: the treated model is better calibrated)."""
    reference = _shift_value(base, base_variant, kind, strength, "ece")
    mine = _shift_value(treated, variant, kind, strength, "ece")
    return {seed: reference[seed] - mine[seed] for seed in sorted(set(reference) & set(mine))}


def _gain_verdict(context: ReportContext, base: dict, treated: dict, contrast: str, variant: str, kind: str,
                  primary: bool) -> dict | None:
    strongest = SHIFT_STRENGTHS[kind][-1]
    without = _gain(base, treated, "as trained", variant, kind, 0.0)
    under = _gain(base, treated, "as trained", variant, kind, strongest)
    if not without:
        return None
    precondition = None
    found = estimate(list(without.values()))
    if found.has_interval and not found.low > 0:
        precondition = (f"without shift the ECE gain is {found.format()} (its interval does not lie above 0): no "
                        f"calibration gain to shrink")
    return judge(CALIBRATION_UNDER_SHIFT, under, without, section="distribution shift", split="test",
                 contrast=f"{contrast}: {kind.replace('_', ' ')} {strongest:g} vs no shift",
                 quantity="test ECE gain over eps=0 (ECE eps=0 - ECE), known classes", primary=primary,
                 better="higher", margin=GAIN_MARGIN, scope=context.scope, not_applicable=precondition)


def _verdicts(scores: dict, context: ReportContext) -> list[dict]:
    verdicts = []
    done_temperature = set()
    for condition, base in context.pairs():
        if condition not in scores or base not in scores:
            continue
        treated, reference = scores[condition], scores[base]
        contrast = context.contrast(condition, base)
        primary = context.is_primary(condition)
        for kind, strengths in SHIFT_STRENGTHS.items():
            record = _gain_verdict(context, reference, treated, contrast, "as trained", kind,
                                   primary and kind == "rotation")
            verdicts += [record] if record else []
            if base not in done_temperature:
                record = _gain_verdict(context, reference, reference,
                                       f"{context.label(base)} temperature-scaled vs {context.label(base)}",
                                       "temperature-scaled", kind, False)
                verdicts += [record] if record else []
            mine = _shift_value(treated, "as trained", kind, strengths[-1], "ece")
            theirs = _shift_value(reference, "temperature-scaled", kind, strengths[-1], "ece")
            if mine and theirs:
                verdicts.append(judge(
                    BEATS_TEMPERATURE_SCALING_UNDER_SHIFT, mine, theirs, section="distribution shift", split="test",
                    contrast=f"{contrast} temperature-scaled: {kind.replace('_', ' ')} {strengths[-1]:g}",
                    quantity="test ECE, known classes", primary=primary and kind == "rotation", better="lower",
                    margin=RELATIVE_MARGIN * estimate(list(theirs.values())).mean, scope=context.scope,
                    bounds="ece"))
        done_temperature.add(base)
        for score in OOD_SCORES:
            mine, theirs = (_auroc_value(s, "as trained", score) for s in (treated, reference))
            if mine and theirs:
                verdicts.append(judge(
                    OOD_DETECTION, mine, theirs, section="distribution shift", split="test", contrast=contrast,
                    quantity=f"test AUROC of the {SCORE_NAMES[score]} score, held-out classes against known ones",
                    primary=primary and score == "max_softmax", better="higher", margin=AUROC_MARGIN,
                    scope=context.scope, bounds="auroc"))
    return verdicts


# 4. The section ----------------------------------------------------------------------------------


INTRODUCTION = (
    "<p>How do the models behave away from their training distribution? The known classes' test images are "
    "rotated (each image by +{rotation} or minus that many degrees, the sign drawn per image) or get Gaussian "
    "noise on their [0, 1] pixels (standard deviation {noise}, clipped to [0, 1]); the same seeded images for "
    "every model, so seeds pair. Dashed black: the eps=0 model after temperature scaling (T fitted on the "
    "unshifted validation split), the simpler fix beside smoothing. The ECE gain of a model is the eps=0 "
    "model's ECE minus its own (positive: better calibrated). Smallest effects that matter: {gain} of ECE for "
    "a gain that shrinks, 10% of the reference's ECE for smoothing against temperature scaling, {auroc} of "
    "AUROC.</p>")


def section(context: ReportContext) -> SectionOutput:
    """Curves under shift, the metrics and AUROC tables, and the verdicts (see the module docstring)."""
    title = "Distribution shift and unknown classes"
    config = context.config
    try:
        data = shift_data(config)
    except ValueError as error:  # a DataError, an unknown data set, or one without a pixel scale
        return SectionOutput(title, f"<p>No shifted images for this run: {escape(error)}</p>")
    scores: dict[Condition, dict[int, dict]] = {}
    skipped = []
    for condition, runs in context.groups.items():
        for seed, run in runs.items():
            cell = context.cell(run)
            try:
                model = load_cell_model(context.run_dir, run, config, data.dataset) if cell else None
            except ValueError as error:
                skipped.append(str(error))
                continue
            if model is not None:
                scores.setdefault(condition, {})[seed] = cell_scores(model, data, cell.temperature)
    if not scores:
        return SectionOutput(title, "<p>No finished cell has its weights (model.pt): nothing to shift.</p>")
    html = INTRODUCTION.format(rotation=", ".join(f"{s:g}" for s in SHIFT_STRENGTHS["rotation"][1:]),
                               noise=", ".join(f"{s:g}" for s in SHIFT_STRENGTHS["gaussian_noise"][1:]),
                               gain=GAIN_MARGIN, auroc=AUROC_MARGIN)
    html += "".join(f"<p>Skipped a cell: {escape(reason)}</p>" for reason in skipped)
    html += figure_grid([_figure(scores, context)])
    html += ("<h3>At no shift and at the strongest shifts</h3><p>Mean [95% CI] over seeds, test split, known "
             "classes.</p>" + _metrics_table(scores, context))
    if data.unknown is None:
        html += ("<h3>Unknown classes</h3><p>No class was held out of training, so there is nothing unknown to "
                 "detect.</p>")
    else:
        names = ", ".join(data.unknown_names.values())
        html += (f"<h3>Unknown classes: {escape(names)}</h3><p>AUROC of telling the {len(data.unknown):,} test images "
                 f"of the classes held out of training ({escape(names)}) from the {len(data.target):,} unshifted test "
                 "images of the known classes, by the maximum softmax probability (Hendrycks &amp; Gimpel 2017) and by "
                 "the negative energy, logsumexp of the logits (Liu et al. 2020); 0.5 is chance, 1 perfect. Mean [95% "
                 "CI] over seeds.</p>" + _auroc_table(scores, context, data.unknown_names))
    return SectionOutput(title, html, _verdicts(scores, context))
