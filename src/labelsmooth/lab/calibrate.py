"""``labelsmooth calibrate``: score (and fix) the calibration of your own model's saved logits.

    labelsmooth calibrate TEST.npz [--fit-on VAL.npz] [--method temperature] [--out DIR] [--n-bins 15]

Each .npz holds two arrays: ``logits`` (N, K) floats and ``target`` (N,) class indices (as
written by ``numpy.savez(path, logits=..., target=...)``; loaded with ``allow_pickle=False``).
The command prints accuracy, ECE, MCE, class-wise ECE, Brier, NLL and mean confidence - accuracy
with bootstrap intervals; with ``--fit-on`` it fits a calibrator (temperature scaling by
default) on that held-out file and prints the same metrics after calibration. With ``--out`` it
writes ``reliability.png`` there (side by side before / after when a calibrator was fitted).
A bad file gives a one-line error and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..calibration.bootstrap import SUMMARY_METRICS, ConfidenceInterval, calibration_summary
from ..calibration.diagrams import reliability_diagrams
from ..calibration.metrics import check_inputs
from ..calibration.scaling import CALIBRATORS, Calibrator, TemperatureScaling

ARRAYS = ("logits", "target")
# Errors that mean "this file is not a valid logits file": reported in one line.
_FILE_ERRORS = (ValueError, OSError, zipfile.BadZipFile, EOFError)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("logits_file", type=Path, metavar="LOGITS.npz",
                        help="arrays 'logits' (N, K) and 'target' (N,) of the data to score")
    parser.add_argument("--fit-on", type=Path, metavar="VAL.npz",
                        help="held-out arrays 'logits' and 'target' to fit the calibrator on "
                             "(never the file being scored)")
    parser.add_argument("--method", choices=sorted(CALIBRATORS), default="temperature",
                        help="calibrator fitted with --fit-on (default: temperature)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="directory for reliability.png (created if missing)")
    parser.add_argument("--n-bins", type=int, default=15, help="equal-width bins (default: 15)")
    parser.add_argument("--n-resamples", type=int, default=200,
                        help="bootstrap resamples for the 95%% intervals (default: 200)")


def load_logits(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked ``(logits, target)`` from an .npz file; ValueError naming the file otherwise."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [name for name in ARRAYS if name not in data.files]
            if missing:
                raise ValueError(f"expected arrays {list(ARRAYS)}, missing {missing} "
                                 f"(found {sorted(data.files)})")
            logits, target = data["logits"], data["target"]
        return check_inputs(logits, target, from_logits=True)
    except _FILE_ERRORS as error:
        message = str(error) if isinstance(error, ValueError) else f"not a readable .npz file ({error})"
        raise ValueError(f"{path}: {message}") from error


def _format(interval: ConfidenceInterval) -> str:
    return f"{interval.estimate:.4f} [{interval.low:.4f}, {interval.high:.4f}]"


def _describe(calibrator: Calibrator, method: str) -> str:
    if isinstance(calibrator, TemperatureScaling):
        return f"after temperature scaling (T = {calibrator.temperature:.4f})"
    return f"after {method} calibration"


def _table(columns: dict[str, dict[str, ConfidenceInterval]]) -> str:
    titles = list(columns)
    width = max(len(t) for t in titles) + 2
    lines = [f"{'metric':<24}" + "".join(f"{t:<{width}}" for t in titles)]
    for name, metric in SUMMARY_METRICS.items():
        lines.append(f"{metric.title:<24}" + "".join(f"{_format(columns[t][name]):<{width}}" for t in titles))
    return "\n".join(line.rstrip() for line in lines)


def run(args: argparse.Namespace) -> int:
    """Print the metrics table (before and after calibration) and write the diagram."""
    if args.n_bins < 1 or args.n_resamples < 1:
        print(f"labelsmooth calibrate: error: --n-bins and --n-resamples must be at least 1, got "
              f"{args.n_bins} and {args.n_resamples}", file=sys.stderr)
        return 2
    try:
        logits, target = load_logits(args.logits_file)
        fitted = None
        if args.fit_on is not None:
            fit_logits, fit_target = load_logits(args.fit_on)
            if fit_logits.shape[1] != logits.shape[1]:
                raise ValueError(f"{args.fit_on}: logits have {fit_logits.shape[1]} classes, "
                                 f"{args.logits_file} has {logits.shape[1]}")
            fitted = CALIBRATORS[args.method]().fit(fit_logits, fit_target)
    except ValueError as error:
        print(f"labelsmooth calibrate: error: {error}", file=sys.stderr)
        return 2
    models = {"as given": (torch.softmax(logits.double(), 1), target)}
    if fitted is not None:
        models[_describe(fitted, args.method)] = (fitted.transform(logits.double()), target)
    columns = {title: calibration_summary(probs, y, n_bins=args.n_bins, n_resamples=args.n_resamples)
               for title, (probs, y) in models.items()}
    print(f"{args.logits_file}: {logits.shape[0]} samples, {logits.shape[1]} classes; "
          f"{args.n_bins} equal-width bins; 95% bootstrap intervals ({args.n_resamples} resamples)")
    if fitted is not None:
        print(f"calibrator: {args.method}, fitted on {args.fit_on}")
    print(_table(columns))
    print("(ECE, MCE and class-wise ECE are biased upward on finite samples; their bootstrap "
          "interval can lie above a small estimate.)")
    if args.out is not None:
        path = args.out / "reliability.png"
        try:
            args.out.mkdir(parents=True, exist_ok=True)
            reliability_diagrams(models, path, n_bins=args.n_bins)
        except OSError as error:  # a read-only or full file system
            print(f"labelsmooth calibrate: error: --out: cannot write {path}: {error.strerror or error}",
                  file=sys.stderr)
            return 2
        print(f"reliability diagram: {path}")
    return 0
