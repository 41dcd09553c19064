"""``labelsmooth sweep``: train every cell of a label-smoothing grid at once, resumably.

A *cell* is one (model, distribution, eps, seed) of the grid (:mod:`labelsmooth.lab.config`).
:func:`run_sweep` trains all cells of one model together, stacked
(:mod:`labelsmooth.lab.cells`), one model after the other, and records into the run directory
(:mod:`labelsmooth.lab.rundir`) after every epoch.

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
that was not interrupted.

Data parallel: under ``torchrun --nproc-per-node N -m labelsmooth sweep ...`` (or after any
``torch.distributed.init_process_group``) the processes train every cell together, data
parallel (:mod:`labelsmooth.lab.ranks`). Rank 0 alone reads and writes the run directory and
broadcasts its decisions (resume, complete, refuse) and the checkpoint, so every rank ends with
the same outcome.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .cells import HISTORY_COLUMNS, METRIC_NAMES, CellGroup, initial_model
from .config import DISTRIBUTIONS, OPTIMIZERS, SweepConfig, grid_cells
from .data import load_dataset
from .models import MODELS
from .provenance import provenance
from .ranks import Ranks, torchrun_process_group
from .report.builder import build_report
from .rundir import (
    Progress,
    check_run_directory,
    load_checkpoint,
    open_run_directory,
    save_checkpoint,
    write_cell_files,
    write_json,
    write_metrics_csv,
)

__all__ = ["add_arguments", "add_sweep_arguments", "config_from_args", "progress_bar", "run", "run_sweep"]


def progress_bar(total: int, enabled: bool, *, initial: int = 0, desc: str | None = None):
    """A tqdm bar counting epochs on stderr; silent unless ``enabled`` and stderr is a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="epoch", dynamic_ncols=True,
                disable=not (enabled and sys.stderr.isatty()))


def run_sweep(config: SweepConfig, out_dir: str | os.PathLike, *, progress: bool = True) -> dict:
    """Train every cell of ``config`` into ``out_dir`` (create, resume, or report complete).

    Returns the results dict (as in ``results.json``). A finished run directory with the same
    config is left untouched; one with a different config raises
    :class:`~labelsmooth.lab.rundir.RunDirectoryError`. Ends by building the report
    (:func:`~labelsmooth.lab.report.builder.build_report`). Inside an initialized
    ``torch.distributed`` group every rank calls it and trains data-parallel; rank 0 alone
    touches ``out_dir`` (see the module docstring), and every rank returns the results.
    """
    out = Path(out_dir)
    ranks = Ranks.current()
    say = print if ranks.writes else (lambda *args, **kwargs: None)
    finished = ranks.first(lambda: check_run_directory(out, config.to_dict()))
    if finished is not None:
        say(f"{out}: this sweep is already complete; nothing to do.")
        return finished
    started = time.perf_counter()
    device = ranks.device(config.device)
    # Data and models are checked before the run directory is made, so a bad setting leaves nothing.
    dataset = load_dataset(config.dataset, data_dir=config.data_dir, train_fraction=config.train_fraction,
                           seed=config.data_seed).to(device)
    for model in config.models:
        initial_model(config, model, 0, dataset)
    ranks.check_splits(config, dataset)
    recorded = {**config.to_dict(), "split_sizes": {"train": len(dataset.x_train), "validation": len(dataset.x_holdout),
                                                    "test": len(dataset.x_test)}}
    if ranks.writes:
        open_run_directory(out, recorded)
    checkpoint_path = out / "checkpoint.pt"
    cells = grid_cells(config)
    # a model's cells, sorted by seed: the cells of a seed share one input batch
    groups = {m: sorted((c for c in cells if c.model == m), key=lambda c: config.seeds.index(c.seed))
              for m in config.models}
    groups = {m: g for m, g in groups.items() if g}
    progress_state, saved_group = Progress(), None
    saved = ranks.first(lambda: load_checkpoint(checkpoint_path))
    if saved is not None:
        progress_state = Progress(saved["histories"], saved["tests"], saved["early_stopped"], saved["wall_seconds"])
        saved_group = (saved["group_model"], saved["group"]) if saved["group"] else None
        say(f"{out}: resuming an unfinished sweep ({len(progress_state.tests)} of {len(cells)} cells "
            f"finished, {sum(len(h) for h in progress_state.histories.values())} cell-epochs recorded).")
    made = provenance(config.device)
    spent_before = progress_state.wall_seconds

    def record() -> dict:
        progress_state.wall_seconds = spent_before + time.perf_counter() - started
        results = progress_state.results(recorded, cells)
        results["provenance"] = {**made, "wall_seconds": round(progress_state.wall_seconds, 1)}
        if ranks.writes:
            write_json(out / "results.json", results, durable=results["complete"])
            write_metrics_csv(out / "metrics.csv", results["runs"])
        return results

    epochs_done = sum(config.epochs if all(c.key in progress_state.tests for c in g)
                      else len(progress_state.histories.get(g[0].key, [])) for g in groups.values())
    bar = progress_bar(len(groups) * config.epochs, progress and ranks.writes, initial=epochs_done)
    try:
        for model, group_cells in groups.items():
            if all(c.key in progress_state.tests for c in group_cells):
                continue
            group = CellGroup.create(config, group_cells, dataset, device, ranks)
            if saved_group is not None and saved_group[0] == model:
                group.load_state_dict(saved_group[1])
            while group.epochs_done < config.epochs:
                train_loss = group.train_epoch(config, dataset)
                val = group.metrics(group.logits(dataset.x_holdout, config.eval_batch_size), dataset.y_holdout)
                group.remember_best(val[:, METRIC_NAMES.index("nll")])
                values = torch.cat([train_loss[:, None], val], 1).tolist()
                for cell, row in zip(group_cells, values):
                    progress_state.histories.setdefault(cell.key, []).append(
                        dict(zip(HISTORY_COLUMNS, [group.epochs_done, *row])))
                record()
                if ranks.writes:
                    save_checkpoint(checkpoint_path, config, progress_state, group)
                bar.update(1)
                bar.set_postfix_str(f"{model} val_acc {np.mean([r[3] for r in values]):.3f}")
            finish_group(out, group, dataset, config, progress_state)
            record()
            if ranks.writes:
                save_checkpoint(checkpoint_path, config, progress_state, None)
    finally:
        bar.close()
    results = record()
    if ranks.writes:
        checkpoint_path.unlink(missing_ok=True)
        build_report(out)
    return results



def finish_group(out: Path, group: CellGroup, dataset, config: SweepConfig, progress_state: Progress) -> None:
    """After a model's last epoch: the test split, read now and only now (the final weights, then the
    weights of each cell's epoch of lowest validation NLL), the cells' files and test records."""
    def logits(x: torch.Tensor) -> torch.Tensor:
        return group.logits(x, config.eval_batch_size)

    final = {"test": logits(dataset.x_test), "holdout": logits(dataset.x_holdout), "train": logits(dataset.x_train)}
    with group.best_weights():
        early = {"test": logits(dataset.x_test), "holdout": logits(dataset.x_holdout)}
    test = group.metrics(final["test"], dataset.y_test).tolist()
    early_test = group.metrics(early["test"], dataset.y_test).tolist()
    best_epochs, best_nll = group.best["epoch"].tolist(), group.best["nll"].tolist()
    targets = {split: getattr(dataset, f"y_{split}").cpu().numpy().astype(np.int64) for split in final}
    for index, cell in enumerate(group.cells):
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
        shard=args.shard)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_sweep_arguments(parser)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice; 1 is faster on a "
                             "machine whose cores are busy with other work)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = Path(args.out or Path("runs") / datetime.datetime.now().strftime("sweep-%Y%m%d-%H%M%S"))
    try:
        config = config_from_args(args)
        with torchrun_process_group(config.device):
            run_sweep(config, out, progress=not args.no_progress)
            writes = Ranks.current().writes
    except ValueError as error:  # bad settings, DataError, RunDirectoryError
        print(f"labelsmooth sweep: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nInterrupted; the last finished epoch is saved. Run the same command to resume "
              f"{out}.", file=sys.stderr)
        return 130
    if writes:
        print(f"Results: {out / 'results.json'}\nReport: {out / 'report.html'}")
    return 0
