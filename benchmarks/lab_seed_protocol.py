"""The Fashion-MNIST blog experiment's protocol timed end to end three ways in one run, and the protocol's floor here.

The protocol: Fashion-MNIST, 6,000 training images (``train_fraction=0.1``), the blog's
CNN with a 10-class head, eps in {0, 0.05, 0.1}, 200 epochs, batch 32, SGD lr 1e-3 momentum
0.9, and after every epoch an evaluation (the blog evaluated the test set; the lab evaluates its
validation split, 6,000 training images not trained on, and the test set only at the end: both
providers here evaluate the validation split every epoch).

Providers:

- ``seed-loop``: the blog post's training loop re-implemented faithfully, with its known
  defects fixed: for each eps in turn a fresh model (the blog's ``Mnist_CNN``: three stride-2
  convolutions and ``avg_pool2d(4)``, its last convolution with 10 channels, not 32, and no ReLU
  on the logits, as the lab's seed-cnn), ``nn.CrossEntropyLoss(label_smoothing=eps)``, SGD, a
  ``DataLoader`` of batch 32 over the training images, ``loss.item()`` after every batch (the
  blog's ``loss_batch``), then the smoothed loss over a ``DataLoader`` of the validation split
  (batch 32, as the blog's ``valid_dl``). The data path is the blog's: its
  ``datasets.FashionMNIST(transform=ToTensor())`` turns each stored uint8 image into a PIL
  image and then a float tensor whenever it is read (``SeedImages`` does the same with PIL,
  without torchvision, and standardises as the lab does, so both providers see the same
  inputs), with ``num_workers=0``: the blog's 8 workers with ``prefetch_factor=32`` are a known
  defect, and only add processes on 2 cores.
- ``seed-loop-tensors``: the same loop over in-memory tensors (a ``TensorDataset``): more
  favourable to the seed than its own code, shown so the data path's share is visible.

  Both loops start every model from the sweep's initial weights for the seed and read the
  sweep's batch order (``cells.initial_model``, whose head is the blog's last convolution's
  kernel, and ``cells.epoch_order``), so the training statistics can be compared.
- ``labelsmooth-sweep``: ``labelsmooth.lab.sweep.run_sweep`` end to end into a temporary run
  directory (data loading, training all cells at once, per-epoch evaluation of loss, NLL,
  accuracy and ECE, atomic checkpoints, results.json, the cells' final logits, the report).
- ``floor``: the protocol's floating-point operations over this machine's fp32 matmul rate.
  FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on the blog's network (the
  issue's definition: about 3.6 TFLOP of training and 2.0 of evaluation), per image of a full
  batch: one training step (forward + backward of the loss, about 3x a forward) per training
  image and epoch, one forward per test image and epoch, times the cells. The lab's seed-cnn
  computes conv3 + pooling as one exact linear map, which needs fewer; its count is recorded
  too (``lab_*_tflop``). The rate is the best of several 2048 x 2048 ``torch.mm`` calls.
  ``fraction`` = floor seconds / measured seconds.

``--epochs N`` (N >= 2) times the first N epochs of both providers and extrapolates to the
protocol's 200 epochs. The seed loop: data loading plus 200/N times its training and evaluation.
The sweep (whose once-per-run costs, data loading, final files and the report, are seconds): a
1-epoch sweep is timed too (the faster of two, the first paying the process's imports), and the
protocol is ``T_N + (200 - N) (T_N - T_1) / (N - 1)``. Rows
name such figures ``*_extrapolated``; only ``--epochs 200`` measures the whole protocol. The machine is shared:
the 1-minute load average is recorded with each provider, and ``--repeats`` alternates the two
providers several times and keeps each one's fastest run.

    .venv/bin/python benchmarks/lab_seed_protocol.py --epochs 5          # ~1-2 minutes
    .venv/bin/python benchmarks/lab_seed_protocol.py                     # the whole protocol

Rows go to ``benchmarks/results/lab_seed_protocol.csv`` (see ``_record.py``); a markdown table is
printed.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from labelsmooth.lab.cells import epoch_order, initial_model
from labelsmooth.lab.config import SweepConfig
from labelsmooth.lab.data import load_dataset
from labelsmooth.lab.sweep import run_sweep

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import Recorder  # noqa: E402

PROTOCOL_EPOCHS = 200
# The two providers compute the same functions in different fp32 summation orders (grouped vs
# plain convolutions, labelsmooth's vs torch's loss), so their per-epoch statistics agree to
# rounding at first and drift apart as training amplifies it: measured here, at most 1e-7
# (relative) after 1 epoch, 1e-5 after 10, 1.3e-3 after 200. The effects the lab measures are far
# larger (val_loss differs by more than 10% between eps=0 and 0.05), so the statistics count as the
# same below 1%; the drift per epoch is printed so a real difference (a jump, not a slow drift)
# shows.
SAME_STATISTICS_RTOL = 1e-2
DRIFT_EPOCHS = (1, 10, 50, 100, 200)


def protocol_config(epochs: int, seeds: list[int], device: str) -> SweepConfig:
    return SweepConfig(dataset="fashion-mnist", models=("seed-cnn",), label_smoothing=(0.0, 0.05, 0.1),
                       seeds=tuple(seeds), epochs=epochs, batch_size=32, optimizer="sgd", lr=1e-3,
                       momentum=0.9, train_fraction=0.1, device=device)


# 1. The blog post's loop -----------------------------------------------------------------------


class SeedNetwork(nn.Module):
    """The blog post's ``Mnist_CNN`` with its defect fixed: conv3 has K channels, and no ReLU on the logits.

    ``from_lab_model`` copies a lab seed-cnn's weights: its head is conv3's kernel, flattened, so
    both compute the same function (the lab's as a linear map, this one as the seed does).
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(16, 16, kernel_size=3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(16, num_classes, kernel_size=3, stride=2, padding=1)

    @classmethod
    def from_lab_model(cls, model: nn.Module) -> "SeedNetwork":
        network = cls(model.classifier.out_features)
        with torch.no_grad():
            for name in ("conv1", "conv2"):
                getattr(network, name).load_state_dict(getattr(model, name).state_dict())
            network.conv3.weight.copy_(model.classifier.weight.view_as(network.conv3.weight))
            network.conv3.bias.copy_(model.classifier.bias)
        return network

    def forward(self, xb: torch.Tensor) -> torch.Tensor:
        xb = xb.view(-1, 1, 28, 28)
        xb = nn.functional.relu(self.conv1(xb))
        xb = nn.functional.relu(self.conv2(xb))
        xb = self.conv3(xb)
        xb = nn.functional.avg_pool2d(xb, 4)
        return xb.view(-1, xb.size(1))



class SeedImages(Dataset):
    """The blog's data path for images already in memory: per read, uint8 pixels -> PIL image ->
    ``ToTensor`` (float in [0, 1], (1, H, W)) -> ``Normalize`` with the lab's scalar mean and std.

    ``x`` is a lab split, standardised as ``(raw - mean) / std`` from uint8 ``raw``; both 0 and
    255 occur in Fashion-MNIST's training images, so its minimum and maximum give the raw pixels
    back exactly (checked).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, low: float, high: float) -> None:
        per_level = (high - low) / 255  # standardised units per grey level = 1 / std
        raw = torch.round((x - low) / per_level)
        if not (torch.equal(raw, raw.clamp(0, 255)) and torch.allclose(low + raw * per_level, x, atol=1e-4)):
            raise ValueError("x is not a standardisation of 8-bit images with levels 0 and 255")
        self.data = raw.to(torch.uint8).squeeze(1)  # (N, H, W), as torchvision's FashionMNIST.data
        self.targets = y
        # Normalize's mean and std for ToTensor's [0, 1] scale: raw level 0 -> low, 255 -> high
        self.mean, self.std = -low / per_level / 255, 1 / per_level / 255

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.data[index].numpy())  # torchvision: Image.fromarray(img.numpy(), mode="L")
        pixels = torch.from_numpy(np.array(image, np.uint8, copy=True))  # ToTensor: bytes ...
        tensor = pixels.view(image.size[1], image.size[0], 1).permute(2, 0, 1).contiguous().float().div(255)
        return tensor.sub_(self.mean).div_(self.std), int(self.targets[index])  # ... then Normalize


class SweepOrder(Sampler):
    """Yields the sweep's batch order of ``seed`` for each successive epoch (``epoch_order``)."""

    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples, self.seed, self.epoch = num_samples, seed, 0

    def __iter__(self):
        order = epoch_order(self.num_samples, self.seed, self.epoch)
        self.epoch += 1
        return iter(order.tolist())

    def __len__(self) -> int:
        return self.num_samples


def seed_loop(config: SweepConfig, device: torch.device, images: bool) -> tuple[float, float, dict]:
    """(data-loading seconds, training+evaluation seconds, {(eps, seed): [(train_loss, val_loss)]});
    the blog's data path with ``images``, in-memory tensors without."""
    start = time.perf_counter()
    dataset = load_dataset(config.dataset, train_fraction=config.train_fraction, seed=config.data_seed)
    if images:
        low, high = dataset.x_train.min().item(), dataset.x_train.max().item()
        train_set = SeedImages(dataset.x_train, dataset.y_train, low, high)
        test_set = SeedImages(dataset.x_holdout, dataset.y_holdout, low, high)
    else:
        train_set = TensorDataset(dataset.x_train, dataset.y_train)
        test_set = TensorDataset(dataset.x_holdout, dataset.y_holdout)
    loaded = time.perf_counter()
    valid_dl = DataLoader(test_set, batch_size=config.batch_size, shuffle=False)
    histories = {}
    for seed in config.seeds:
        initial = SeedNetwork.from_lab_model(initial_model(config, "seed-cnn", seed, dataset))
        for eps in config.label_smoothing:
            model = copy.deepcopy(initial).to(device)
            loss_func = nn.CrossEntropyLoss(label_smoothing=eps)
            optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
            train_dl = DataLoader(train_set, batch_size=config.batch_size,
                                  sampler=SweepOrder(len(train_set), seed))
            history = []
            for _ in range(config.epochs):
                model.train()
                train_total = 0.0
                for xb, yb in train_dl:
                    loss = loss_func(model(xb.to(device)), yb.to(device))
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad()
                    train_total += loss.item() * len(xb)
                model.eval()
                with torch.no_grad():
                    losses, nums = zip(*[(loss_func(model(xb.to(device)), yb.to(device)).item(), len(xb))
                                         for xb, yb in valid_dl])
                val_loss = sum(loss * n for loss, n in zip(losses, nums)) / sum(nums)
                history.append((train_total / len(train_set), val_loss))
            histories[(eps, seed)] = history
    return loaded - start, time.perf_counter() - loaded, histories


# 2. labelsmooth's sweep --------------------------------------------------------------------------


def sweep(config: SweepConfig) -> tuple[float, dict]:
    """(whole-run seconds, {(eps, seed): [(train_loss, val_loss)]})."""
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        results = run_sweep(config, Path(folder) / "run", progress=False)
        total = time.perf_counter() - start
    histories = {(run["label_smoothing"], run["seed"]): [(row["train_loss"], row["val_loss"])
                                                         for row in run["history"]]
                 for run in results["runs"]}
    return total, histories


# 3. The floor ----------------------------------------------------------------------------------


def matmul_flops_per_second(device: torch.device, size: int = 2048, repeats: int = 7) -> float:
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


@dataclass
class ProtocolFlops:
    forward_per_image: float
    train_step_per_image: float
    train_total: float
    eval_total: float


def count_flops(config: SweepConfig, epochs: int, seed_network: bool) -> ProtocolFlops:
    """FLOPs of the protocol for ``config``'s cells over ``epochs``, counted on the ops of the
    blog's network (``seed_network``) or of the lab's seed-cnn.

    Counted per image on a batch of the protocol's size (training) and of the evaluation's, so
    work done once per batch (the seed-cnn's head map) is shared as it is in the runs.
    """
    dataset = load_dataset(config.dataset, train_fraction=config.train_fraction, seed=config.data_seed)
    model = initial_model(config, "seed-cnn", 0, dataset)
    if seed_network:
        model = SeedNetwork.from_lab_model(model)
    train_x, train_y = dataset.x_train[:config.batch_size], dataset.y_train[:config.batch_size]
    eval_x = dataset.x_holdout[:config.eval_batch_size]
    with FlopCounterMode(display=False) as forward:
        with torch.no_grad():
            model(eval_x)
    with FlopCounterMode(display=False) as step:
        nn.functional.cross_entropy(model(train_x), train_y, label_smoothing=0.1).backward()
    forward_per_image = forward.get_total_flops() / len(eval_x)
    step_per_image = step.get_total_flops() / len(train_x)
    cells = len(config.label_smoothing) * len(config.seeds)
    return ProtocolFlops(forward_per_image, step_per_image,
                         step_per_image * len(dataset.x_train) * epochs * cells,
                         forward_per_image * len(dataset.x_holdout) * epochs * cells)


# 4. The run ------------------------------------------------------------------------------------


def relative_drift(a: dict, b: dict, column: int) -> list[float]:
    """Per epoch, the largest |a - b| / |b| over cells of one history column."""
    return [max(abs(a[key][epoch][column] - b[key][epoch][column]) / abs(b[key][epoch][column])
                for key in b) for epoch in range(len(next(iter(b.values()))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=PROTOCOL_EPOCHS,
                        help="epochs to time; fewer than 200 are extrapolated to 200 (default 200)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default: 0)")
    parser.add_argument("--repeats", type=int, default=1, help="alternate runs of each provider; fastest kept")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = protocol_config(args.epochs, args.seeds, args.device)
    cells = len(config.label_smoothing) * len(config.seeds)

    if not 2 <= args.epochs <= PROTOCOL_EPOCHS:
        parser.error(f"--epochs must be between 2 and {PROTOCOL_EPOCHS}, got {args.epochs}")
    loops = {"seed-loop": True, "seed-loop-tensors": False}  # provider -> the blog's image data path
    loop_runs, sweep_runs = {name: [] for name in loops}, []
    for _ in range(args.repeats):
        for name, images in loops.items():
            loop_runs[name].append((*seed_loop(config, device, images), os.getloadavg()[0]))
        one_epoch = 0.0
        if args.epochs < PROTOCOL_EPOCHS:  # a first, discarded run pays the process's imports
            one_epoch = min(sweep(protocol_config(1, args.seeds, args.device))[0] for _ in range(2))
        measured = sweep(config)
        sweep_runs.append((*measured, one_epoch, os.getloadavg()[0]))
    sweep_s, sweep_histories, one_epoch_s, sweep_load = min(sweep_runs, key=lambda r: r[0])

    seconds, loop_histories = {}, {}
    for name, runs in loop_runs.items():
        load_s, train_s, loop_histories[name], load = min(runs, key=lambda r: r[0] + r[1])
        seconds[name] = (load_s + train_s, load_s + train_s * PROTOCOL_EPOCHS / args.epochs, load)
    remaining = PROTOCOL_EPOCHS - args.epochs
    seconds["labelsmooth-sweep"] = (sweep_s, sweep_s + remaining * (sweep_s - one_epoch_s) / (args.epochs - 1),
                                    sweep_load)
    seed_histories = loop_histories["seed-loop"]
    flops = count_flops(config, PROTOCOL_EPOCHS, seed_network=True)
    lab_flops = count_flops(config, PROTOCOL_EPOCHS, seed_network=False)
    rate = matmul_flops_per_second(device)
    floor_s = (flops.train_total + flops.eval_total) / rate
    drifts = {name: relative_drift(sweep_histories, seed_histories, column)
              for column, name in enumerate(("train_loss", "val_loss"))}
    differences = {name: max(drift) for name, drift in drifts.items()}

    recorder = Recorder("lab_seed_protocol")
    size = f"{cells} cells x {PROTOCOL_EPOCHS} epochs, 6000 train, 6000 validation per epoch"
    suffix = "" if args.epochs == PROTOCOL_EPOCHS else "_extrapolated"
    for provider, (measured, protocol, load) in seconds.items():
        recorder.add("seed-protocol", provider, size, "fp32", f"seconds_measured_{args.epochs}_epochs",
                     measured)
        recorder.add("seed-protocol", provider, size, "fp32", f"seconds_protocol{suffix}", protocol)
        recorder.add("seed-protocol", provider, size, "fp32", f"floor_fraction{suffix}", floor_s / protocol)
        recorder.add("seed-protocol", provider, size, "fp32", "load_average_1min", load)
    speedups = {name: seconds[name][1] / seconds["labelsmooth-sweep"][1] for name in loops}
    for name, speedup in speedups.items():
        recorder.add("seed-protocol", "labelsmooth-sweep", size, "fp32",
                     f"speedup_vs_{name.replace('-', '_')}{suffix}", speedup)
    for name, difference in differences.items():
        recorder.add("seed-protocol", "labelsmooth-sweep", size, "fp32",
                     f"{name}_max_rel_diff_{args.epochs}_epochs", difference)
    for metric, value in (("train_tflop", flops.train_total / 1e12), ("eval_tflop", flops.eval_total / 1e12),
                          ("lab_train_tflop", lab_flops.train_total / 1e12),
                          ("lab_eval_tflop", lab_flops.eval_total / 1e12),
                          ("matmul_gflops", rate / 1e9), ("seconds_floor", floor_s)):
        recorder.add("seed-protocol", "floor", size, "fp32", metric, value)
    path = recorder.save()

    kind = "measured" if not suffix else f"extrapolated from {args.epochs} epochs"
    print(f"Seed protocol, {size}; threads {torch.get_num_threads()}, {recorder.hardware}\n")
    print(f"| provider | measured ({args.epochs} epochs) | protocol, {kind} | fraction of floor | load avg |")
    print("|---|---|---|---|---|")
    for provider, (measured, protocol, load) in seconds.items():
        print(f"| {provider} | {measured:.1f} s | {protocol:.0f} s | {floor_s / protocol:.1%} | {load:.1f} |")
    print(f"| floor | | {floor_s:.0f} s | 100% | |\n")
    for name, speedup in speedups.items():
        print(f"Speed-up of the sweep over {name} ({kind}): {speedup:.2f}x")
    print(f"FLOPs per image (seed network): forward {flops.forward_per_image:,.0f}, training step "
          f"{flops.train_step_per_image:,.0f} ({flops.train_step_per_image / flops.forward_per_image:.2f}x "
          f"forward); protocol: {flops.train_total / 1e12:.2f} TFLOP training + "
          f"{flops.eval_total / 1e12:.2f} TFLOP evaluation (the lab's seed-cnn: "
          f"{lab_flops.train_total / 1e12:.2f} + {lab_flops.eval_total / 1e12:.2f}); fp32 matmul "
          f"{rate / 1e9:.0f} GFLOP/s")
    for name, difference in differences.items():
        same = "same" if difference < SAME_STATISTICS_RTOL else "DIFFERENT"
        drift = ", ".join(f"epoch {e}: {drifts[name][e - 1]:.1e}" for e in DRIFT_EPOCHS if e <= args.epochs)
        print(f"Per-epoch {name} of every cell: at most {difference:.2e} apart (relative) between the "
              f"two: {same} (tolerance {SAME_STATISTICS_RTOL:g}; drift {drift})")
    print(json.dumps({"rows": len(recorder.rows), "csv": str(path)}))


if __name__ == "__main__":
    main()
