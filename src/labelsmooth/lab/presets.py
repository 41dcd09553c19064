"""Named experiments for ``labelsmooth reproduce NAME [--quick] [--out DIR] [sweep flags]``.

A preset is a set of sweep settings (the dests of ``sweep.add_sweep_arguments``) plus a shorter
``--quick`` variant. On the command line every sweep flag can still be given and wins over the
preset; flags not given take the preset's value, then the sweep's default.

Presets (registry :data:`PRESETS`):

- ``seed-fashion-mnist``: the blog experiment behind the over-fitting claim (a small 3-conv CNN
  on 6,000 Fashion-MNIST images, 200 epochs, eps in {0, 0.05, 0.1}) with its defects fixed
  (a 10-class output layer, a 6,000-image validation split evaluated every epoch and the full
  10,000-image test set once at the end, unsmoothed NLL reported beside the smoothed loss, no
  DataLoader workers): Fashion-MNIST, 10% of the training
  set, seed-cnn, seeds {0, 1, 2}, batch 32, SGD lr 1e-3 momentum 0.9.
- ``overfitting``: a regime where the eps = 0 baseline demonstrably over-fits (its validation
  NLL passes a minimum and rises), so the over-fitting claim can be tested; see its rationale.
- ``label-noise``: noise rate in {0, 0.2, 0.4, 0.6} x eps in {-0.2, 0, 0.1, 0.3} x 3 seeds, clean
  validation and test labels: does smoothing mitigate label noise, and negative smoothing at high
  noise? See its rationale.
- ``shift``: networks trained without two Fashion-MNIST classes, evaluated under rotations and
  pixel noise and on the unseen classes (the report's distribution-shift section); see its rationale.
- ``transfer``: a network trained on five Fashion-MNIST classes, its frozen features probed on the
  other five (Kornblith et al. 2021: smoothed features transfer worse); see its rationale.
- ``adversarial``: robust accuracy under white-box, margin-loss and transfer attacks
  (:mod:`labelsmooth.lab.adversarial`), evaluated after training; see its rationale.

Every run's config.json records the preset's name and whether ``--quick`` ran.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .config import SweepConfig

__all__ = ["OTHER_COMMANDS", "PRESETS", "Preset", "add_arguments", "preset_settings", "print_outcome", "reproduce",
           "run", "sweep_namespace"]


@dataclass(frozen=True)
class Preset:
    """A named sweep: ``settings`` (sweep-argument dest -> value), the ``quick`` overrides, and a
    ``check`` of the final config (ValueError) run before anything is trained."""

    description: str
    rationale: str
    settings: dict = field(default_factory=dict)
    quick: dict = field(default_factory=dict)
    check: Callable[["SweepConfig"], None] | None = None  # refuses settings the preset cannot use


def check_adversarial_sweep(config: "SweepConfig") -> None:
    """The adversarial preset needs an eps = 0 cell and a spare seed for its transfer source."""
    from .adversarial import check_sweep

    check_sweep(config)


PRESETS: dict[str, Preset] = {
    "seed-fashion-mnist": Preset(
        description="a blog experiment behind the over-fitting claim (a small 3-conv CNN on 6,000 "
                    "Fashion-MNIST images, 200 epochs, eps in {0, 0.05, 0.1}), its defects fixed",
        rationale="The blog experiment's protocol as written (6,000 training images, its small "
                  "3-conv CNN, SGD lr 1e-3 momentum 0.9, batch 32, 200 epochs, eps 0 / 0.05 / 0.1), "
                  "with a 10-class output layer (the original had 32 outputs for 10 classes), a "
                  "validation split of 6,000 unused training images every epoch (the test set once, "
                  "at the end) and three seeds for intervals. --quick is the "
                  "same protocol stopped after 30 epochs (about a minute on two CPU cores): the "
                  "first part of the curves, with intervals over three seeds.",
        settings=dict(dataset="fashion-mnist", model=["seed-cnn"], label_smoothing=[0.0, 0.05, 0.1],
                      seeds=[0, 1, 2], epochs=200, batch_size=32, optimizer="sgd", lr=1e-3,
                      momentum=0.9, train_fraction=0.1),
        quick=dict(epochs=30),
    ),
    "overfitting": Preset(
        description="a regime where the unsmoothed baseline over-fits, so the over-fitting claim "
                    "can be tested",
        rationale="An MLP with two hidden layers of 256 units (270k parameters, 50 times the small "
                  "CNN) trained with Adam (lr 1e-3, batch 32) on 2% of Fashion-MNIST (1,200 "
                  "images): it fits its training set within a few epochs, after which the "
                  "unsmoothed model keeps sharpening its predictions and its validation NLL "
                  "rises. Measured (mean of seeds 0-2): the eps=0 validation NLL is lowest at epoch "
                  "5 (0.572), then 0.72 at epoch 15, 1.02 at 30 and 0.93 at 40 (Adam's loss spikes "
                  "once the training loss is near 0), while eps=0.05 and 0.1 stay at 0.58-0.67 "
                  "after their minima (epochs 8-9); seeds 3-7 and another training subset "
                  "(--data-seed 1) behave the same. About 40 s on two CPU cores; --quick stops at "
                  "epoch 15, well after the baseline's minimum.",
        settings=dict(dataset="fashion-mnist", model=["mlp"], mlp_widths=[256, 256],
                      label_smoothing=[0.0, 0.05, 0.1], seeds=[0, 1, 2], epochs=40, batch_size=32,
                      optimizer="adam", lr=1e-3, train_fraction=0.02),
        quick=dict(epochs=15),
    ),
    "label-noise": Preset(
        description="does smoothing mitigate noisy training labels (Lukasik et al. 2020), and is negative "
                    "smoothing better at high noise (Wei et al. 2022)?",
        rationale="A fraction r in {0, 0.2, 0.4, 0.6} of the training labels flipped (symmetric: each to a "
                  "uniformly chosen other class; --noise-kind asymmetric flips between confusable classes "
                  "instead), the validation and test labels clean, eps in {-0.2, 0, 0.1, 0.3}, seeds 0-2: "
                  "48 cells, trained stacked. The model is an MLP with two hidden layers of 64 units "
                  "(55k parameters) trained with Adam (lr 1e-3, batch 32) on 5% of Fashion-MNIST (3,000 "
                  "images): it has the capacity to fit wrong labels, which is what smoothing is claimed to "
                  "resist, and 48 such cells are cheap to train stacked on a CPU. The full preset trains "
                  "60 epochs (the longer it trains, the more flipped labels an unsmoothed model fits; the "
                  "report measures how many); --quick stops at epoch 10. With eps < 0 the loss is unbounded "
                  "below: once a model fits its training labels (on clean labels within 2 epochs here) it "
                  "runs away, with or without weight decay 5e-4; the report names the cells where it did.",
        settings=dict(dataset="fashion-mnist", model=["mlp"], mlp_widths=[64, 64],
                      label_smoothing=[-0.2, 0.0, 0.1, 0.3], label_noise=[0.0, 0.2, 0.4, 0.6],
                      noise_kind="symmetric", seeds=[0, 1, 2], epochs=60, batch_size=32, optimizer="adam",
                      lr=1e-3, train_fraction=0.05),
        quick=dict(epochs=10),
    ),
    "shift": Preset(
        description="calibration under rotations and pixel noise, and detection of two classes never "
                    "trained on (Ovadia et al. 2019; smoothing reported to hurt max-softmax detection)",
        rationale="The small CNN trained with Adam (lr 1e-3, batch 64) on 20% of Fashion-MNIST without two "
                  "classes, Shirt (a look-alike of T-shirt/top, Pullover and Coat: hard to tell apart from the "
                  "known classes) and Bag (unlike every garment: easy), for eps 0, 0.1 (the common default) and "
                  "0.3 (strong enough to change confidence visibly), seeds 0-2. The report rotates the known "
                  "classes' test images by up to 90 degrees and adds Gaussian pixel noise (std up to 0.4 on "
                  "[0, 1] pixels), and scores how well each model tells the two unseen classes from the "
                  "known ones. --quick stops at epoch 8 (a few minutes on two CPU cores) instead of 30.",
        settings=dict(dataset="fashion-mnist", model=["seed-cnn"], label_smoothing=[0.0, 0.1, 0.3],
                      seeds=[0, 1, 2], epochs=30, batch_size=64, optimizer="adam", lr=1e-3,
                      train_fraction=0.2, held_out_classes=[6, 8]),
        quick=dict(epochs=8),
    ),
    "transfer": Preset(
        description="do smoothed penultimate features collapse and transfer worse to classes held out of "
                    "training? (Kornblith et al. 2021)",
        rationale="The small CNN trained with Adam (lr 1e-3, batch 64) on five Fashion-MNIST classes (T-shirt/top, "
                  "Trouser, Pullover, Dress, Coat) for 30 epochs; Sandal, Shirt, Sneaker, Bag and Ankle boot are "
                  "held out of training, and the report fits a linear probe on the frozen penultimate features "
                  "for them (penalty chosen on their validation images, accuracy on their test images) and "
                  "measures class collapse (NC1). eps in {0, 0.1, 0.3}: 0.1 is the setting Kornblith et al. "
                  "test, 0.3 a strong one where a collapse should show if it exists (the primary contrast), "
                  "three seeds for paired intervals. --quick trains on a fifth of the training images for 10 "
                  "epochs (under 3 minutes with --threads 1 on a busy two-core machine, report included).",
        settings=dict(dataset="fashion-mnist", model=["seed-cnn"], held_out_classes=[5, 6, 7, 8, 9],
                      label_smoothing=[0.0, 0.1, 0.3], seeds=[0, 1, 2], epochs=30, batch_size=64,
                      optimizer="adam", lr=1e-3, train_fraction=1.0),
        quick=dict(epochs=10, train_fraction=0.2),
    ),
    "adversarial": Preset(
        description="does smoothing make a model robust to adversarial examples, or only mask its gradient? "
                    "(Goibert & Dohmatob 2019 against Fu et al. 2020)",
        rationale="An MLP with two hidden layers of 256 units trained with Adam (lr 1e-3, batch 64) on half of "
                  "Fashion-MNIST's training set for 20 epochs, at eps 0 (the baseline), 0.1 (the common default) "
                  "and 0.3 (strong smoothing, where a masking effect should be largest), seeds 0-2, plus seed 3, "
                  "whose eps=0 model is the independent source of the transfer attacks (seed 3 is not "
                  "evaluated). After training, every model is attacked on a fixed sample of 1,000 test images "
                  "with FGSM and PGD-20 (L-infinity budgets 0.05, 0.1, 0.2 on [0, 1] pixels) on its own "
                  "cross-entropy, PGD-20 on the margin loss, and FGSM and PGD-20 transferred from the source "
                  "model. --quick trains on 10% of the training set for 8 epochs and attacks 500 test images.",
        settings=dict(dataset="fashion-mnist", model=["mlp"], mlp_widths=[256, 256],
                      label_smoothing=[0.0, 0.1, 0.3], seeds=[0, 1, 2, 3], epochs=20, batch_size=64,
                      optimizer="adam", lr=1e-3,
                      train_fraction=0.5),
        quick=dict(epochs=8, train_fraction=0.1),
        check=check_adversarial_sweep,
    ),
}


# Experiments that are other commands, reachable as `labelsmooth reproduce NAME` too (with that
# command's options): NAME -> (command, description).
OTHER_COMMANDS = {"distillation": ("distill", "do smoothed teachers distil worse to a student trained on a small "
                                              "subset? (Müller et al. 2019 against Shen et al. 2021 and "
                                              "Chandrasegaran et al. 2022; the options of labelsmooth distill)")}


def preset_settings(name: str, *, quick: bool = False) -> dict:
    """The sweep settings of preset ``name`` (with its --quick overrides when ``quick``).

    >>> [preset_settings("seed-fashion-mnist", quick=q)["epochs"] for q in (False, True)]
    [200, 30]
    """
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    preset = PRESETS[name]
    return {**preset.settings, **(preset.quick if quick else {})}


def default_out_dir(name: str, quick: bool) -> Path:
    return Path("runs") / (f"{name}-quick" if quick else name)


# dests of `labelsmooth reproduce` that are not sweep settings
REPRODUCE_ONLY_FLAGS = ("preset", "quick", "threads", "no_progress")


class _PresetFlags:
    """Adds the sweep's flags with ``default=SUPPRESS``: only flags given on the command line
    reach the namespace, so the preset supplies the rest. Their help drops the sweep's default."""

    def __init__(self, group) -> None:
        self.group = group

    def add_argument(self, *names, **options):
        options["default"] = argparse.SUPPRESS
        options["help"] = re.sub(r"\s*\(default:[^)]*\)", "", options.get("help") or "")
        return self.group.add_argument(*names, **options)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``NAME``, ``--quick``, and every sweep flag (given ones win over the preset)."""
    from .sweep import add_sweep_arguments, add_threads_argument

    experiments = {**{n: p.description for n, p in PRESETS.items()},
                   **{n: text for n, (_, text) in OTHER_COMMANDS.items()}}
    parser.add_argument("preset", choices=list(experiments), metavar="NAME",
                        help="; ".join(f"{n}: {text}" for n, text in experiments.items()))
    parser.add_argument("--quick", action="store_true",
                        help="the preset's short version (a couple of minutes on two CPU cores)")
    add_threads_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_sweep_arguments(_PresetFlags(parser.add_argument_group(
        "sweep settings (each overrides the preset; see labelsmooth sweep --help)")))


def sweep_namespace(name: str, quick: bool, given: dict) -> argparse.Namespace:
    """Sweep arguments: the sweep's defaults, overridden by the preset, overridden by ``given``.

    >>> args = sweep_namespace("seed-fashion-mnist", True, {"dataset": "digits"})
    >>> args.dataset, args.epochs, args.lr, args.out
    ('digits', 30, 0.001, 'runs/seed-fashion-mnist-quick')
    """
    from .sweep import add_sweep_arguments

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    add_sweep_arguments(parser)
    parser.set_defaults(**preset_settings(name, quick=quick), out=str(default_out_dir(name, quick)))
    namespace = parser.parse_args([])
    for key, value in given.items():
        setattr(namespace, key, value)
    return namespace


def reproduce(name: str, *, quick: bool = False, progress: bool = True, **overrides) -> Path:
    """Run preset ``name`` (sweep settings in ``overrides`` win); return the run directory.

    A complete run directory is left as it is (the sweep says so); a different one is refused.
    The run's config.json records ``preset`` and ``quick``.
    """
    from .sweep import config_from_args, run_sweep

    args = sweep_namespace(name, quick, overrides)
    out = Path(args.out)
    config = dataclasses.replace(config_from_args(args), preset=name, quick=quick)
    if PRESETS[name].check is not None:
        PRESETS[name].check(config)
    run_sweep(config, out, progress=progress)
    return out


def print_outcome(run_dir: Path) -> None:
    """The run's text summary (headline numbers, verdicts) and where its report is (if it is)."""
    summary = run_dir / "summary.txt"
    if summary.is_file():
        print(summary.read_text(encoding="utf-8"), end="")
    report = run_dir / "report.html"
    print(f"Report: {report.resolve()}" if report.is_file() else f"No report in {run_dir} (run: labelsmooth "
          f"report {run_dir})")


def run(args: argparse.Namespace) -> int:
    from .sweep import use_threads

    use_threads(args)
    given = {k: v for k, v in vars(args).items() if k not in REPRODUCE_ONLY_FLAGS}
    args.out = given.get("out", str(default_out_dir(args.preset, args.quick)))  # for Ctrl-C's resume line
    print(f"Preset {args.preset}{' --quick' if args.quick else ''}: {PRESETS[args.preset].rationale}")
    try:
        out = reproduce(args.preset, quick=args.quick, progress=not args.no_progress, **given)
    except (ValueError, OSError) as error:  # bad settings, missing data, a run directory of another sweep
        print(f"labelsmooth reproduce: error: {error}", file=sys.stderr)
        return 2
    print_outcome(out)
    return 0
