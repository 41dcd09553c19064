"""One epoch of the lab's stacked cells on the CPU: against the seed-style loop, and as cells grow.

Two measurements in one run, so a shared or throttled machine slows both sides alike:

(a) ``sweep-vs-loop``: the seed protocol's epoch (Fashion-MNIST, 6,000 training images, batch 32,
    SGD lr 1e-3 momentum 0.9, then the smoothed loss, NLL, accuracy and ECE on the 6,000-image
    validation split) for seed-cnn, timed two ways and alternated ``--repeats`` times (fastest kept):

    - ``seed-loop-tensors``: the blog experiment's training loop over in-memory tensors, one model per eps
      trained one after another (``lab_seed_protocol.seed_loop``: ``nn.CrossEntropyLoss``, a
      ``DataLoader`` of batch 32, ``loss.item()`` per batch, the validation split in batches of 32);
    - ``labelsmooth-cells``: the sweep's epoch, every cell stacked in one model
      (``CellGroup.train_epoch``, then ``metrics(logits(x_holdout))`` and ``remember_best``), with
      3 cells (eps 0, 0.05, 0.1 of one seed) and 9 (three seeds, the demo's grid).

    The figure of merit is seconds per epoch per cell; ``speedup`` = the loop's over the sweep's.

(b) ``cell-scaling``: the sweep's epoch for 3, 12, 30, 60 stacked cells (eps 0 / 0.05 / 0.1 times
    1, 4, 10, 20 seeds) of seed-cnn and of mlp (widths 256, 256), against the FLOP floor: the
    FLOPs of the epoch counted analytically (:func:`epoch_flops`) over this machine's fp32 peak,
    the best of several ``--peak-size`` square ``torch.mm`` calls in the same run with the same
    threads. ``fraction`` = floor seconds / measured seconds.

(c) ``step-breakdown`` (``--breakdown``): where the 3-cell seed-cnn training step spends its time
    inside an epoch. The epoch's 187 full batches run four ways, alternated ``--repeats`` times
    (fastest kept): the whole step; without the SGD step; with the loss replaced by a fixed
    gradient; the forward pass and the loss only. Each part's time is a difference of two ways, so
    every part is timed with the caches as the rest of the step leaves them (a part timed alone
    runs up to 3x faster).

Every time is given as wall seconds and as the process's CPU seconds (``time.process_time``):
with one thread (``--threads 1``) on a shared machine the CPU seconds leave out the time spent
waiting for a core, so they stay close to a quiet core's wall time while the wall time does not;
with more threads, CPU seconds add up the threads (and their spinning).

A first, untimed epoch on 256 images warms every shape up. Set ``ONEDNN_MAX_CPU_ISA=AVX2
MKL_ENABLE_INSTRUCTIONS=AVX2`` to see how an AVX2-only CPU's vendor paths fare on an AVX-512 one
(the ``isa`` column of the printed table and the provider name record it).

    .venv/bin/python benchmarks/lab_cells.py --threads 1          # ~1.5 minutes on a quiet core
    .venv/bin/python benchmarks/lab_cells.py --cells 3 12 --repeats 1

Rows go to ``benchmarks/results/lab_cells.csv`` (see ``_record.py``; every row names the CPU);
a markdown table is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from labelsmooth.lab.cells import METRIC_NAMES, CellGroup, epoch_order, optimizer_step
from labelsmooth.lab.cells import _loss_and_grad as loss_and_grad
from labelsmooth.lab.config import SweepConfig, grid_cells
from labelsmooth.lab.data import Dataset, load_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import Recorder  # noqa: E402
from lab_seed_protocol import seed_loop  # noqa: E402

EPS = (0.0, 0.05, 0.1)
MLP_WIDTHS = (256, 256)  # the lab's default widths for mlp


def protocol_config(model: str, seeds: int, epochs: int = 1) -> SweepConfig:
    return SweepConfig(dataset="fashion-mnist", models=(model,), label_smoothing=EPS, seeds=tuple(range(seeds)),
                       epochs=epochs, batch_size=32, optimizer="sgd", lr=1e-3, momentum=0.9,
                       train_fraction=0.1)


def sweep_epoch_seconds(config: SweepConfig, dataset: Dataset, epochs: int) -> tuple[float, float]:
    """(wall, CPU) seconds of one sweep epoch of ``config``'s cells (the best of ``epochs``), after a warm-up."""
    cells = sorted(grid_cells(config), key=lambda c: config.seeds.index(c.seed))
    group = CellGroup.create(config, cells, dataset, torch.device("cpu"))
    small = dataclasses.replace(dataset, x_train=dataset.x_train[:256], y_train=dataset.y_train[:256])
    best = (math.inf, math.inf)
    for epoch in range(epochs + 1):
        data = small if epoch == 0 else dataset
        start, cpu_start = time.perf_counter(), time.process_time()
        group.train_epoch(config, data)
        val = group.metrics(group.logits(data.x_holdout, config.eval_batch_size), data.y_holdout)
        group.remember_best(val[:, METRIC_NAMES.index("nll")])
        if epoch:
            best = min(best, (time.perf_counter() - start, time.process_time() - cpu_start))
    return best


def loop_epoch_seconds(config: SweepConfig, epochs: int) -> tuple[float, float]:
    """(wall, CPU) seconds of one epoch of one eps in the seed-style loop over in-memory tensors.

    ``seed_loop`` loads the data set first; the CPU seconds of one more load, timed just before,
    are taken off.
    """
    cpu_start = time.process_time()
    load_dataset(config.dataset, train_fraction=config.train_fraction, seed=config.data_seed)
    load_cpu = time.process_time() - cpu_start
    cpu_start = time.process_time()
    _, train_s, _ = seed_loop(dataclasses.replace(config, epochs=epochs), torch.device("cpu"), images=False)
    runs = epochs * len(config.label_smoothing) * len(config.seeds)
    return train_s / runs, (time.process_time() - cpu_start - load_cpu) / runs


def step_breakdown(dataset: Dataset, repeats: int) -> dict[str, float]:
    """Milliseconds per training step of 3 seed-cnn cells (one seed), by part: see (c) above."""
    config = protocol_config("seed-cnn", 1)
    group = CellGroup.create(config, grid_cells(config), dataset, torch.device("cpu"))
    params = group.stacked.parameters_by_name()
    batches = len(dataset.x_train) // config.batch_size
    order = epoch_order(len(dataset.x_train), 0, 0)[:batches * config.batch_size].view(batches, -1)
    images, targets = dataset.x_train[order], dataset.y_train[order]
    fixed_grad = torch.full((3, config.batch_size, dataset.num_classes), 1e-3)

    def epoch(loss: bool, backward: bool, step: bool) -> float:
        start = time.perf_counter()
        for x, y in zip(images, targets):
            logits, vjp = group.stacked.template.stacked_vjp(params, x.unsqueeze(0), [3])
            grad = group._by_distribution(logits, y.expand(3, -1), loss_and_grad)[1] if loss else fixed_grad.clone()
            if backward:
                grads = vjp(grad.div_(config.batch_size))
                for name, p in params.items():
                    p.grad = grads[name]
            if step:
                optimizer_step(group.optimizer)
        return (time.perf_counter() - start) / batches * 1e3

    ways = {"whole": (True, True, True), "no-sgd": (True, True, False), "fixed-gradient": (False, True, True),
            "forward-and-loss": (True, False, False)}
    epoch(*ways["whole"])  # warm-up
    best = {name: min(epoch(*way) for _ in range(repeats)) for name, way in ways.items()}
    return {"step": best["whole"], "forward": best["forward-and-loss"] - (best["whole"] - best["fixed-gradient"]),
            "loss": best["whole"] - best["fixed-gradient"], "backward": best["no-sgd"] - best["forward-and-loss"],
            "sgd": best["whole"] - best["no-sgd"]}


def epoch_flops(model: str, dataset: Dataset, cells: int) -> float:
    """FLOPs (multiply and add counted apart) of one epoch of ``cells`` cells, as the lab computes it.

    A forward F is the sum of its layers' 2 * inputs * outputs products; a training step costs
    3F - (first layer's input-gradient product, which nobody needs); the evaluation is one forward
    per validation image. seed-cnn: conv1 and conv2 (3x3, stride 2, 16 channels) and the head's
    linear map of conv2's output (L2 positions x 16 channels -> K); mlp: its Linear layers.
    """
    k, (cin, height, width) = dataset.num_classes, dataset.in_shape
    if model == "seed-cnn":
        rows1, cols1 = (height - 1) // 2 + 1, (width - 1) // 2 + 1
        rows2, cols2 = (rows1 - 1) // 2 + 1, (cols1 - 1) // 2 + 1
        layers = [2 * rows1 * cols1 * 16 * cin * 9, 2 * rows2 * cols2 * 16 * 16 * 9, 2 * rows2 * cols2 * 16 * k]
    else:
        sizes = [cin * height * width, *MLP_WIDTHS, k]
        layers = [2 * a * b for a, b in zip(sizes, sizes[1:])]
    forward = sum(layers)
    step = 3 * forward - layers[0]
    return cells * (step * len(dataset.x_train) + forward * len(dataset.x_holdout))


def peak_flops_per_second(size: int, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def isa() -> str:
    limits = [f"{name}={os.environ[name]}" for name in ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
              if name in os.environ]
    return ", ".join(limits) or "native"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[3, 12, 30, 60],
                        help="stacked cells for the scaling table, multiples of 3 (default: 3 12 30 60)")
    parser.add_argument("--models", nargs="+", default=["seed-cnn", "mlp"], choices=["seed-cnn", "mlp"])
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per measurement, best kept (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="alternations of loop and sweep (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--peak-size", type=int, default=2048, help="side of the peak-rate matmul (default 2048)")
    parser.add_argument("--skip-loop", action="store_true", help="only the cell-scaling table")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the parts of the 3-cell seed-cnn training step inside an epoch")
    args = parser.parse_args()
    if any(c < 3 or c % 3 for c in args.cells):
        parser.error(f"--cells must be multiples of 3, got {args.cells}")
    if args.epochs < 1 or args.repeats < 1:
        parser.error("--epochs and --repeats must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    recorder = Recorder("lab_cells")
    suffix = "" if isa() == "native" else " (" + isa() + ")"
    datasets = {}

    def dataset_for(config: SweepConfig) -> Dataset:
        if config.train_fraction not in datasets:
            datasets[config.train_fraction] = load_dataset(config.dataset, train_fraction=config.train_fraction,
                                                          seed=config.data_seed)
        return datasets[config.train_fraction]

    lines = [f"Threads {torch.get_num_threads()}, {recorder.hardware}, ISA {isa()}, "
             f"load average {os.getloadavg()[0]:.1f} at the start\n"]
    if not args.skip_loop:
        loop_runs, sweep_runs = [], {3: [], 9: []}
        for _ in range(args.repeats):
            loop_runs.append(loop_epoch_seconds(protocol_config("seed-cnn", 1), args.epochs))
            for cells in sweep_runs:
                config = protocol_config("seed-cnn", cells // 3)
                sweep_runs[cells].append(sweep_epoch_seconds(config, dataset_for(config), args.epochs))
        loop_wall, loop_cpu = (min(run[i] for run in loop_runs) for i in (0, 1))
        size = "seed-cnn, 6000 train + 6000 validation images, batch 32"
        for metric, value in (("seconds_per_epoch_per_cell", loop_wall), ("cpu_seconds_per_epoch_per_cell", loop_cpu)):
            recorder.add("sweep-vs-loop", "seed-loop-tensors" + suffix, size, "fp32", metric, value)
        lines += ["| provider | cells | s / epoch / cell (wall) | speed-up (wall) | CPU s / epoch / cell | "
                  "speed-up (CPU) |", "|---|---|---|---|---|---|",
                  f"| seed-loop-tensors | 1 at a time | {loop_wall:.3f} | 1x | {loop_cpu:.3f} | 1x |"]
        for cells, runs in sweep_runs.items():
            wall, cpu = (min(run[i] for run in runs) / cells for i in (0, 1))
            provider = f"labelsmooth-cells-{cells}" + suffix
            for metric, value in (("seconds_per_epoch_per_cell", wall), ("cpu_seconds_per_epoch_per_cell", cpu),
                                  ("speedup_vs_seed_loop_tensors", loop_wall / wall),
                                  ("cpu_speedup_vs_seed_loop_tensors", loop_cpu / cpu)):
                recorder.add("sweep-vs-loop", provider, size, "fp32", metric, value)
            lines.append(f"| labelsmooth sweep | {cells} | {wall:.3f} | {loop_wall / wall:.1f}x | {cpu:.3f} | "
                         f"{loop_cpu / cpu:.1f}x |")
        lines.append("")

    if args.breakdown:
        config = protocol_config("seed-cnn", 1)
        parts = step_breakdown(dataset_for(config), args.repeats)
        size = "seed-cnn, 3 cells, 187 batches of 32"
        for part, ms in parts.items():
            recorder.add("step-breakdown", "labelsmooth-cells-3" + suffix, size, "fp32", f"ms_per_step_{part}", ms)
        lines += ["| part of a 3-cell training step | ms per step |", "|---|---|",
                  *(f"| {part} | {ms:.3f} |" for part, ms in parts.items()), ""]

    peak = peak_flops_per_second(args.peak_size)  # measured again at the end; the higher is kept
    recorder.add("cell-scaling", "peak" + suffix, f"{args.peak_size}^2 mm", "fp32", "gflops", peak / 1e9)
    lines += [f"fp32 peak (best {args.peak_size}^2 mm): {peak / 1e9:.0f} GFLOP/s\n",
              "| model | cells | s / epoch (wall) | CPU s / epoch | CPU s / epoch / cell | GFLOP / epoch | "
              "fraction of floor (wall) | (CPU) |", "|---|---|---|---|---|---|---|---|"]
    for model in args.models:
        for cells in args.cells:
            config = protocol_config(model, cells // 3)
            dataset = dataset_for(config)
            wall, cpu = sweep_epoch_seconds(config, dataset, args.epochs)
            flops = epoch_flops(model, dataset, cells)
            size = f"{model}, {cells} cells, 6000 train + 6000 validation images, batch 32"
            for metric, value in (("seconds_per_epoch", wall), ("cpu_seconds_per_epoch", cpu),
                                  ("gflop_per_epoch", flops / 1e9), ("floor_fraction", flops / peak / wall),
                                  ("cpu_floor_fraction", flops / peak / cpu),
                                  ("load_average_1min", os.getloadavg()[0])):
                recorder.add("cell-scaling", "labelsmooth-cells" + suffix, size, "fp32", metric, value)
            lines.append(f"| {model} | {cells} | {wall:.2f} | {cpu:.2f} | {cpu / cells:.3f} | {flops / 1e9:.1f} | "
                         f"{flops / peak / wall:.1%} | {flops / peak / cpu:.1%} |")
    peak_end = peak_flops_per_second(args.peak_size)
    if peak_end > peak:
        lines.append(f"(the fractions above use the peak at the start; at the end it was {peak_end / 1e9:.0f} "
                     "GFLOP/s)")
    recorder.add("cell-scaling", "peak" + suffix, f"{args.peak_size}^2 mm, at the end", "fp32", "gflops",
                 peak_end / 1e9)
    path = recorder.save()
    print("\n".join(lines))
    print(json.dumps({"rows": len(recorder.rows), "csv": str(path)}))


if __name__ == "__main__":
    main()
