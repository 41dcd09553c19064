"""``labelsmooth demo`` (what ``make demo`` runs): the Fashion-MNIST experiment, quick, with its report.

Runs ``labelsmooth reproduce seed-fashion-mnist --quick --out runs/demo-seed-fashion-mnist``
when the Fashion-MNIST files can be read; otherwise says so plainly and runs the same preset on
scikit-learn's bundled digits, all of its training images (``runs/demo-seed-fashion-mnist-digits``).
Rerunning on a complete run directory retrains nothing: the sweep says it is complete and the
demo points to the report. Before training it prints what it trains and where the report will
be; while training, a progress bar on a terminal, else (CI, ``> log``) one line per epoch. It
ends by printing the headline numbers and where the report is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PRESET = "seed-fashion-mnist"
OUT_DIR = Path("runs") / f"demo-{PRESET}"
# digits has 1,437 training images; the preset's 10% would leave 144, so the fallback trains on all
FALLBACK = {"dataset": "digits", "train_fraction": 1.0}


def fashion_mnist_problem(data_dir: str | None) -> str | None:
    """Why Fashion-MNIST cannot be read (None when it can)."""
    from .data import DataError, load_dataset

    try:
        load_dataset("fashion-mnist", data_dir=data_dir, train_fraction=0.1)
    except DataError as error:
        return str(error)
    return None


def plan(settings: dict, out: Path) -> str:
    """What the demo trains and where its report goes, in two lines.

    >>> print(plan({"dataset": "digits", "model": ["mlp"], "label_smoothing": [0.0, 0.1], "seeds": [0],
    ...             "epochs": 2, "train_fraction": 1.0}, Path("runs/x")))
    Training mlp on digits (all of its training images), eps 0, 0.1 x seeds 0, 2 epochs each.
    The report will be runs/x/report.html.
    """
    fraction = settings["train_fraction"]
    share = "all of its training images" if fraction == 1 else f"{fraction:.0%} of its training images"
    return (f"Training {' and '.join(settings['model'])} on {settings['dataset']} ({share}), eps "
            f"{', '.join(f'{e:g}' for e in settings['label_smoothing'])} x seeds "
            f"{', '.join(map(str, settings['seeds']))}, {settings['epochs']} epochs each.\n"
            f"The report will be {out / 'report.html'}.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .sweep import add_threads_argument

    parser.add_argument("--out", type=Path, default=None,
                        help=f"run directory (default {OUT_DIR}, or {OUT_DIR}-digits on the fallback)")
    parser.add_argument("--data-dir", default=None,
                        help="folder of the Fashion-MNIST IDX files (default: LABELSMOOTH_DATA or "
                             "/usr/share/datasets/fashion-mnist)")
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    from .presets import preset_settings, print_outcome, reproduce
    from .sweep import use_threads

    use_threads(args)
    overrides = {"data_dir": args.data_dir} if args.data_dir else {}
    out = args.out or OUT_DIR
    problem = fashion_mnist_problem(args.data_dir)
    if problem:
        print("=" * 78)
        print("NOTICE: Fashion-MNIST is not available, so the demo runs the same preset on "
              f"scikit-learn's 8x8 digits instead.\n{problem}")
        print("=" * 78)
        overrides.update(FALLBACK)
        out = args.out or OUT_DIR.with_name(f"{OUT_DIR.name}-{FALLBACK['dataset']}")
    args.out = out  # for Ctrl-C's resume line
    print(plan({**preset_settings(PRESET, quick=True), **overrides}, out), flush=True)
    try:
        run_dir = reproduce(PRESET, quick=True, out=str(out), **overrides)
    except (ValueError, OSError) as error:
        print(f"labelsmooth demo: error: {error}", file=sys.stderr)
        return 2
    print_outcome(run_dir)
    return 0
