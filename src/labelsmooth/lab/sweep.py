"""``labelsmooth sweep``: train every cell of a label-smoothing grid at once, resumably.

A *cell* is one (model, distribution, label-noise rate, eps, seed) of the grid
(:mod:`labelsmooth.lab.config`). :func:`run_sweep` trains all cells of one model together,
stacked (:mod:`labelsmooth.lab.cells`), one model after the other, and records into the run
directory (:mod:`labelsmooth.lab.rundir`) after every epoch.

Label noise (``--label-noise r ...``): a cell of rate ``r > 0`` trains on the training labels with
a seeded fraction ``r`` flipped (:mod:`labelsmooth.lab.noise`: one draw per seed, nested across
rates; symmetric, or between confusable classes with ``--noise-kind asymmetric``); its validation
and test labels, and every metric computed on them, stay clean. The draws of every (rate, seed)
are recorded in the run directory's ``label_noise.npz`` before training starts.

Per epoch and cell: ``train_loss`` (the smoothed objective per image, averaged over the epoch
as it was trained), and on the validation split (training images not trained on, see
:mod:`labelsmooth.lab.data`) ``val_loss`` (the smoothed objective), ``val_nll`` (unsmoothed),
``val_accuracy``, ``val_ece`` (15 equal-width bins). Each cell's weights of the epoch with the
lowest ``val_nll`` are kept (early stopping chosen on validation). The test split is read only
after the last epoch: the same four metrics for the final weights (``test``) and for the kept
ones (``early_stopped``), and each cell's ``final.npz`` and ``model.pt`` (see
:mod:`labelsmooth.lab.rundir`). ``results.json`` also records the run's provenance
(:mod:`labelsmooth.lab.provenance`, with the seconds spent training over every resume). A
checkpoint (weights, optimizer state, histories) is written atomically after every epoch; an
interrupted sweep resumes from it and ends with the same numbers, bit for bit on the CPU, as one
that was not interrupted. One process writes a run directory at a time (a lock, held from the
moment the directory is opened until its report and verdicts are written; see
:mod:`labelsmooth.lab.rundir`). A complete run whose report is missing (killed while writing it)
gets its report (and ``verdicts.json``, ``summary.txt``) rebuilt when rerun.

Divergence: a cell whose training loss, validation metrics or weights stop being finite numbers
stops recording there (its history ends at its last finite epoch, and it gets no test metrics,
no early-stopped record and no cell files); the run is then not complete and
:class:`DivergenceError` names the cells, the epoch and suggests a lower learning rate. The
other cells of its model keep training: cell ``c``'s weights only reach its own rows of the loss,
so a diverged neighbour cannot change their numbers (the test suite checks them against a run
without it), and their results are kept, early-stopped weights included. A rerun reports the same
divergence without training again.

Data parallel: under ``torchrun --nproc-per-node N -m labelsmooth sweep ...`` (or after any
``torch.distributed.init_process_group``) the processes train every cell together, data
parallel (:mod:`labelsmooth.lab.ranks`). Rank 0 alone reads and writes the run directory and
broadcasts its decisions (resume, complete, refuse) and the checkpoint, so every rank ends with
the same outcome.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .cells import HISTORY_COLUMNS, METRIC_NAMES, CellGroup, initial_model
from .config import CONFUSABLE_CLASSES, DISTRIBUTIONS, OPTIMIZERS, SweepConfig, grid_cells
from .data import Dataset, load_run_dataset
from .models import MODELS
from .noise import NOISE_KINDS, NoisyLabels, draw_arrays, sweep_draws
from .provenance import provenance
from .ranks import Ranks, torchrun_process_group
from .report.builder import build_report
from .report.transfer import held_out_splits
from .rundir import (
    Progress,
    check_run_directory,
    load_checkpoint,
    locked,
    open_run_directory,
    record_label_noise,
    save_checkpoint,
    write_cell_files,
    write_json,
    write_metrics_csv,
)

__all__ = ["DivergenceError", "add_arguments", "add_sweep_arguments", "add_threads_argument", "config_from_args",
           "finish_run_directory", "progress_bar", "run", "run_sweep", "use_threads"]


class DivergenceError(ValueError):
    """Training diverged (non-finite loss, metrics or weights); the message names the cells and epochs."""


def divergence_message(diverged: dict[str, dict], lr: float) -> str:
    """One line naming the diverged cells, their epochs and reasons, and what to try."""
    cells = "; ".join(f"cell {key} at epoch {d['epoch']} ({d['reason']})" for key, d in diverged.items())
    return (f"training diverged: {cells}. Its training stopped, the other cells' results are kept and the run "
            f"is not complete; try a lower learning rate than --lr {lr:g} (with another --out)")


class EpochLines:
    """Progress as one printed line per epoch (for logs and CI), with tqdm's ``update`` /
    ``set_postfix_str`` / ``close``."""

    def __init__(self, total: int, initial: int, desc: str | None) -> None:
        self.n, self.total, self.desc, self.postfix = initial, total, f"{desc}: " if desc else "", ""

    def set_postfix_str(self, text: str) -> None:
        self.postfix = f", {text}"

    def update(self, n: int) -> None:
        self.n += n
        print(f"{self.desc}{self.n}/{self.total} epochs{self.postfix}", flush=True)

    def close(self) -> None:
        pass


def progress_bar(total: int, enabled: bool, *, initial: int = 0, desc: str | None = None):
    """Progress over epochs when ``enabled``: a tqdm bar on stderr when both stdout and stderr are
    a terminal, else (CI, ``> log``) one line per epoch on stdout (:class:`EpochLines`)."""
    from tqdm.auto import tqdm

    if enabled and not (sys.stdout.isatty() and sys.stderr.isatty()):
        return EpochLines(total, initial, desc)
    return tqdm(total=total, initial=initial, desc=desc, unit="epoch", dynamic_ncols=True, disable=not enabled)


def finish_run_directory(out: Path) -> None:
    """The last steps of a complete run, repeatable: drop the checkpoint, write the report."""
    (out / "checkpoint.pt").unlink(missing_ok=True)
    build_report(out)


def run_sweep(config: SweepConfig, out_dir: str | os.PathLike, *, progress: bool = True) -> dict:
    """Train every cell of ``config`` into ``out_dir`` (create, resume, or report complete).

    Returns the results dict (as in ``results.json``). A finished run directory with the same
    config is left untouched (its report rebuilt if missing); one with a different config, or
    one another process is writing, raises :class:`~labelsmooth.lab.rundir.RunDirectoryError`;
    a run in which cells diverged raises :class:`DivergenceError` after recording the others.
    Ends by building the report (:func:`~labelsmooth.lab.report.builder.build_report`). Inside
    an initialized ``torch.distributed`` group every rank calls it and trains data-parallel;
    rank 0 alone touches ``out_dir`` (see the module docstring), and every rank returns the results.
    """
    with contextlib.ExitStack() as lock:
        return _run_sweep(config, Path(out_dir), progress, lock)


def _open_locked(out: Path, recorded: dict, lock: contextlib.ExitStack) -> dict | None:
    lock.enter_context(locked(out))
    return open_run_directory(out, recorded)


def _run_sweep(config: SweepConfig, out: Path, progress: bool, lock: contextlib.ExitStack) -> dict:
    ranks = Ranks.current()
    say = print if ranks.writes else (lambda *args, **kwargs: None)
    finished = ranks.first(lambda: check_run_directory(out, config.to_dict()))
    if finished is not None:
        if ranks.writes and not (out / "report.html").is_file():
            say(f"{out}: this sweep is complete but its report is missing; rebuilding the report.")
            with locked(out):
                finish_run_directory(out)
        else:
            say(f"{out}: this sweep is already complete; nothing to do.")
        return finished
    started = time.perf_counter()
    device = ranks.device(config.device)
    # Data and models are checked before the run directory is made, so a bad setting leaves nothing.
    dataset = load_run_dataset(config.to_dict()).to(device)
    if config.held_out_classes:  # the report probes them: every split of the full data set must hold each
        held_out_splits(load_run_dataset(config.to_dict(), full=True), config.held_out_classes)
    draws = noise_draws(config, dataset)
    for model in config.models:
        initial_model(config, model, 0, dataset)
    ranks.check_splits(config, dataset)
    recorded = {**config.to_dict(), "split_sizes": {"train": len(dataset.x_train), "validation": len(dataset.x_holdout),
                                                    "test": len(dataset.x_test)}}
    finished = ranks.first(lambda: _open_locked(out, recorded, lock))
    if finished is not None:  # another process finished this sweep while the data loaded
        say(f"{out}: this sweep is already complete; nothing to do.")
        return finished
    if draws and ranks.writes:
        record_label_noise(out, draw_arrays(dataset.y_train, draws))
    if dataset.original_labels is not None:
        say(f"{config.dataset}: labels {list(dataset.original_labels)} are classes 0..{dataset.num_classes - 1} "
            f"(--remap-labels; recorded as original_labels in results.json)")
    checkpoint_path = out / "checkpoint.pt"
    cells = grid_cells(config)
    # a model's cells, sorted by seed: the cells of a seed share one input batch
    groups = {m: sorted((c for c in cells if c.model == m), key=lambda c: config.seeds.index(c.seed))
              for m in config.models}
    groups = {m: g for m, g in groups.items() if g}
    progress_state, saved_group = Progress(), None
    saved = ranks.first(lambda: load_checkpoint(checkpoint_path))
    if saved is not None:
        progress_state = Progress(saved["histories"], saved["tests"], saved["early_stopped"],
                                  saved.get("diverged", {}), saved["wall_seconds"])
        saved_group = (saved["group_model"], saved["group"]) if saved["group"] else None
        say(f"{out}: resuming an unfinished sweep ({len(progress_state.tests)} of {len(cells)} cells "
            f"finished, {sum(len(h) for h in progress_state.histories.values())} cell-epochs recorded).")
    made = provenance(config.device)
    spent_before = progress_state.wall_seconds

    def checkpoint(group: CellGroup | None) -> None:
        """The checkpoint first, then results.json (:func:`record`): a results.json never holds
        epochs that a resume would not find in the checkpoint."""
        progress_state.wall_seconds = spent_before + time.perf_counter() - started
        if ranks.writes:
            save_checkpoint(checkpoint_path, config, progress_state, group)

    def record() -> dict:
        progress_state.wall_seconds = spent_before + time.perf_counter() - started
        results = progress_state.results(recorded, cells)
        if dataset.original_labels is not None:
            results["original_labels"] = list(dataset.original_labels)
        results["provenance"] = {**made, "wall_seconds": round(progress_state.wall_seconds, 1)}
        if ranks.writes:
            write_json(out / "results.json", results, durable=results["complete"])
            write_metrics_csv(out / "metrics.csv", results["runs"])
        return results

    stopped = progress_state.tests.keys() | progress_state.diverged.keys()
    epochs_done = sum(config.epochs if all(c.key in stopped for c in g)
                      else len(progress_state.histories.get(g[0].key, [])) for g in groups.values())
    bar = progress_bar(len(groups) * config.epochs, progress and ranks.writes, initial=epochs_done)
    try:
        for model, group_cells in groups.items():
            if all(c.key in stopped for c in group_cells):
                continue
            group = CellGroup.create(config, group_cells, dataset, device, ranks,
                                     train_targets=cell_targets(group_cells, dataset, draws))
            if saved_group is not None and saved_group[0] == model:
                group.load_state_dict(saved_group[1])
            while group.epochs_done < config.epochs and not all(c.key in stopped for c in group_cells):
                train_loss = group.train_epoch(config, dataset)
                val = group.metrics(group.logits(dataset.x_holdout, config.eval_batch_size), dataset.y_holdout)
                group.remember_best(val[:, METRIC_NAMES.index("nll")])
                epoch_values = torch.cat([train_loss[:, None], val], 1)
                values = epoch_values.tolist()
                for cell, row, reason in zip(group_cells, values, group.divergence(epoch_values)):
                    if reason is not None and cell.key not in stopped:
                        progress_state.diverged[cell.key] = {"epoch": group.epochs_done, "reason": reason}
                        stopped.add(cell.key)
                    if cell.key not in stopped:
                        progress_state.histories.setdefault(cell.key, []).append(
                            dict(zip(HISTORY_COLUMNS, [group.epochs_done, *row])))
                checkpoint(group)
                record()
                live = [r[3] for c, r in zip(group_cells, values) if c.key not in stopped]
                bar.set_postfix_str(f"{model} val_acc {np.mean(live) if live else float('nan'):.3f}")
                bar.update(1)
            live = [index for index, cell in enumerate(group_cells) if cell.key not in stopped]
            if live:
                finish_group(out, group, live, dataset, config, progress_state)
                stopped.update(group_cells[index].key for index in live)
            checkpoint(None)
            record()
    finally:
        bar.close()
    results = record()
    if progress_state.diverged:  # the checkpoint stays: a rerun reports this without training again
        raise DivergenceError(divergence_message(progress_state.diverged, config.lr))
    if ranks.writes:
        finish_run_directory(out)
    return results


def noise_draws(config: SweepConfig, dataset: Dataset) -> dict[tuple[float, int], NoisyLabels]:
    """(noise rate, seed) -> the flipped training labels of the grid's cells with label noise (all
    seeds, whatever the shard, so every shard records the same draws); {} without label noise."""
    mapping = CONFUSABLE_CLASSES.get(config.dataset) if config.noise_kind == "asymmetric" else None
    return sweep_draws(dataset.y_train.cpu(), config.label_noise, config.seeds, num_classes=dataset.num_classes,
                       kind=config.noise_kind, mapping=mapping, data_seed=config.data_seed)


def cell_targets(cells: list, dataset: Dataset, draws: dict) -> torch.Tensor | None:
    """(C, N_train): each cell's training labels (its noise rate's draw for its seed), or None when
    every cell trains on the data set's own labels."""
    if not any(cell.label_noise for cell in cells):
        return None
    return torch.stack([draws[cell.label_noise, cell.seed].labels.to(dataset.y_train.device) if cell.label_noise
                        else dataset.y_train for cell in cells])


def finish_group(out: Path, group: CellGroup, live: list[int], dataset, config: SweepConfig,
                 progress_state: Progress) -> None:
    """After a model's last epoch: the test split, read now and only now (the final weights, then the
    weights of each cell's epoch of lowest validation NLL), the files and test records of the cells
    ``live`` (indices into ``group.cells``: those that did not diverge)."""
    def logits(x: torch.Tensor) -> torch.Tensor:
        return group.logits(x, config.eval_batch_size)

    final = {"test": logits(dataset.x_test), "holdout": logits(dataset.x_holdout), "train": logits(dataset.x_train)}
    with group.best_weights():
        early = {"test": logits(dataset.x_test), "holdout": logits(dataset.x_holdout)}
    test = group.metrics(final["test"], dataset.y_test).tolist()
    early_test = group.metrics(early["test"], dataset.y_test).tolist()
    best_epochs, best_nll = group.best["epoch"].tolist(), group.best["nll"].tolist()
    targets = {split: getattr(dataset, f"y_{split}").cpu().numpy().astype(np.int64) for split in final}
    for index in live:
        cell = group.cells[index]
        arrays = {f"{split}_logits": value[index].float().cpu().numpy() for split, value in final.items()}
        arrays.update({f"{split}_target": target for split, target in targets.items()})
        arrays.update({f"early_{split}_logits": value[index].float().cpu().numpy() for split, value in early.items()})
        write_cell_files(out, cell, index, group, arrays)
        progress_state.tests[cell.key] = dict(zip(METRIC_NAMES, test[index]))
        progress_state.early_stopped[cell.key] = {"epoch": best_epochs[index], "validation_nll": best_nll[index],
                                                  "test": dict(zip(METRIC_NAMES, early_test[index]))}


def add_sweep_arguments(parser) -> None:
    """The flags that make a :class:`SweepConfig` (shared with ``labelsmooth reproduce``)."""
    d = SweepConfig()
    parser.add_argument("--dataset", default=d.dataset,
                        help="fashion-mnist, digits (bundled with scikit-learn) or a path to an .npz "
                             "with arrays x, y [, x_test, y_test, x_val, y_val, class_names] "
                             f"(default: {d.dataset})")
    parser.add_argument("--data-dir", default=None,
                        help="folder of the Fashion-MNIST IDX files (default: $LABELSMOOTH_DATA or "
                             "/usr/share/datasets/fashion-mnist)")
    parser.add_argument("--model", nargs="+", default=list(d.models), choices=sorted(MODELS),
                        help=f"model(s) to train (default: {' '.join(d.models)})")
    parser.add_argument("--mlp-widths", nargs="+", type=int, default=[256, 256],
                        help="hidden widths of --model mlp (default: 256 256)")
    parser.add_argument("--resnet-width", type=int, default=16,
                        help="channels of the first stage of --model resnet (default: 16)")
    parser.add_argument("--label-smoothing", nargs="+", type=float, default=list(d.label_smoothing),
                        help="eps values (default: 0 0.05 0.1)")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(d.seeds),
                        help="seeds: initial weights and batch order (default: 0)")
    parser.add_argument("--distribution", nargs="+", default=list(d.distributions), choices=DISTRIBUTIONS,
                        help="smoothing distribution(s) (default: uniform)")
    parser.add_argument("--epochs", type=int, default=d.epochs, help=f"(default: {d.epochs})")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help=f"(default: {d.batch_size})")
    parser.add_argument("--optimizer", default=d.optimizer, choices=sorted(OPTIMIZERS),
                        help=f"(default: {d.optimizer})")
    parser.add_argument("--lr", type=float, default=d.lr, help=f"learning rate (default: {d.lr})")
    parser.add_argument("--momentum", type=float, default=d.momentum,
                        help=f"SGD momentum (default: {d.momentum})")
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay,
                        help=f"(default: {d.weight_decay})")
    parser.add_argument("--train-fraction", type=float, default=d.train_fraction,
                        help="stratified fraction of the training set to train on; the validation "
                             "split (per-epoch metrics, every choice) comes from the rest (at 1.0: "
                             "10%% of the set, trained on the other 90%%) (default: 1.0)")
    parser.add_argument("--data-seed", type=int, default=d.data_seed,
                        help="seed of the training subsample and validation split (default: 0)")
    parser.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size,
                        help=f"(default: {d.eval_batch_size})")
    parser.add_argument("--device", default=d.device, help="cpu, cuda, cuda:1, ... (default: cpu)")
    parser.add_argument("--remap-labels", action="store_true",
                        help="number the labels of an .npz data set 0..K-1 in increasing order when they "
                             "are not already (the mapping is recorded in results.json)")
    parser.add_argument("--label-noise", nargs="+", type=noise_rate, default=list(d.label_noise), metavar="R",
                        help="fractions of the training labels flipped, a grid axis like eps (validation "
                             "and test labels stay clean; the flips are recorded in label_noise.npz) "
                             "(default: 0)")
    parser.add_argument("--noise-kind", default=d.noise_kind, choices=NOISE_KINDS,
                        help="symmetric: a flipped label goes to any other class; asymmetric: to a "
                             "confusable class (fashion-mnist and digits) (default: symmetric)")
    parser.add_argument("--held-out-classes", nargs="+", type=int, default=list(d.held_out_classes), metavar="K",
                        help="classes left out of training (and of the validation and test metrics); the "
                             "report probes the network's features on them (default: none)")
    parser.add_argument("--train-size", type=int, default=d.train_size, metavar="N",
                        help="train on a stratified sample of N images of the training split, the "
                             "validation split unchanged (default: all)")
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="train only shard I of N of the grid's cells (1-based; see labelsmooth merge)")
    parser.add_argument("--out", default=None,
                        help="run directory (default: runs/sweep-<date>-<time>)")


# CLI option -> (model, option name)
MODEL_OPTION_FLAGS = {"mlp_widths": ("mlp", "widths"), "resnet_width": ("resnet", "width")}


def config_from_args(args: argparse.Namespace) -> SweepConfig:
    """The :class:`SweepConfig` of parsed :func:`add_sweep_arguments` flags."""
    models = args.model if isinstance(args.model, (list, tuple)) else [args.model]
    options: dict = {}
    for flag, (model, option) in MODEL_OPTION_FLAGS.items():
        if model in models:
            options.setdefault(model, {})[option] = getattr(args, flag)
    return SweepConfig(
        dataset=str(args.dataset), data_dir=args.data_dir, models=models, model_options=options,
        label_smoothing=args.label_smoothing, seeds=args.seeds, distributions=args.distribution,
        epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        momentum=args.momentum, weight_decay=args.weight_decay, train_fraction=args.train_fraction,
        data_seed=args.data_seed, eval_batch_size=args.eval_batch_size, device=args.device,
        shard=args.shard, remap_labels=args.remap_labels, label_noise=args.label_noise, noise_kind=args.noise_kind,
        held_out_classes=args.held_out_classes, train_size=args.train_size)


def noise_rate(text: str) -> float:
    """``--label-noise``: a fraction in [0, 1) (argparse names the flag in its one-line error).

    >>> noise_rate("0.2")
    0.2
    """
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction of training labels in [0, 1), got {text!r}")
    return value


def thread_count(text: str) -> int:
    """``--threads``: an integer >= 1 (argparse names the flag in its one-line error).

    >>> thread_count("2")
    2
    """
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def add_threads_argument(parser) -> None:
    """``--threads`` (shared by the commands that train)."""
    parser.add_argument("--threads", type=thread_count, default=None,
                        help="CPU threads for torch (default: torch's choice; 1 is faster on a "
                             "machine whose cores are busy with other work)")


def use_threads(args: argparse.Namespace) -> None:
    if args.threads is not None:
        torch.set_num_threads(args.threads)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_sweep_arguments(parser)
    add_threads_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    use_threads(args)
    # the default run directory is new for every command; Ctrl-C's resume line names it (labelsmooth.cli)
    args.out_given = args.out is not None
    args.out = out = Path(args.out or Path("runs") / datetime.datetime.now().strftime("sweep-%Y%m%d-%H%M%S"))
    try:
        config = config_from_args(args)
        with torchrun_process_group(config.device):
            run_sweep(config, out, progress=not args.no_progress)
            writes = Ranks.current().writes
    except (ValueError, OSError) as error:  # bad settings, DataError, RunDirectoryError, DivergenceError
        print(f"labelsmooth sweep: error: {error}", file=sys.stderr)
        return 2
    if writes:
        print(f"Results: {out / 'results.json'}\nReport: {out / 'report.html'}")
    return 0
