"""``labelsmooth sweep``: train every cell of a label-smoothing grid at once, resumably.

A *cell* is one (model, distribution, eps, seed). All cells of one model train together in one
process: their parameters are stacked along a leading cell axis and the model's
``stacked_forward`` runs them at once (grouped convolutions, batched matmuls; see
:mod:`labelsmooth.lab.models`), so one step of the optimizer is one step of every cell. The loss
is :func:`labelsmooth.cross_entropy` on the (cells x batch) rows with a per-row eps (in training
``cross_entropy_with_grad``, which also gives its gradient), summed over cells: cell ``c``'s
parameters only reach its own rows, so the gradient of the sum with respect to them is exactly
that cell's own gradient. The optimizer is
``torch.optim.SGD`` / ``Adam`` applied to the stacked tensors: both are elementwise (momentum,
weight decay, moments), so each slice receives torch's own update for that cell.

Paired design: every cell of one seed starts from the same initial weights (``build_model``
under ``torch.manual_seed(seed)``) and sees the same order of batches (a permutation drawn from
a generator seeded by (seed, epoch)), so eps and distribution are the only differences.

Per epoch and cell: ``train_loss`` (the smoothed objective per image, averaged over the epoch
as it was trained), and on the evaluation split ``val_loss`` (the smoothed objective),
``val_nll`` (unsmoothed), ``val_accuracy``, ``val_ece`` (15 equal-width bins). At the end the
same four on the test split, and each cell's ``final.npz`` and ``model.pt`` (see the lab
contract). A checkpoint (weights, optimizer state, histories) is written atomically after every
epoch; an interrupted sweep resumes from it and ends with the same numbers, bit for bit on the
CPU, as one that was not interrupted. Training draws from no global RNG (initial weights come
from a forked RNG seeded by the seed, batch orders from a generator seeded by (seed, epoch)),
so there is no RNG state to carry across an interruption.

Data parallel: under ``torchrun --nproc-per-node N -m labelsmooth sweep ...`` (or after any
``torch.distributed.init_process_group``) the processes train every cell together, data
parallel. Each global batch is the single-process one; rank ``r`` takes its contiguous share of
it (sizes differ by at most one) and computes the gradient of ``sum of its rows' losses / batch
size``; one SUM all-reduce of the flattened gradients per step makes it exactly the gradient of
the batch mean on every rank, before every rank takes the same optimizer step. Evaluation
splits are shared out the same way and the logits gathered, so every metric and ``final.npz``
covers every image; the epoch's training loss is a SUM all-reduce. Rank 0 alone reads and writes the run directory and broadcasts its decisions
(resume, complete, refuse) and the checkpoint, so every rank ends with the same outcome.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import datetime
import io
import itertools
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..losses import cross_entropy, cross_entropy_with_grad
from .data import Dataset, load_dataset
from .models import MODELS, build_model

__all__ = [
    "DISTRIBUTIONS",
    "OPTIMIZERS",
    "Cell",
    "Ranks",
    "RunDirectoryError",
    "StackedCells",
    "SweepConfig",
    "add_arguments",
    "add_sweep_arguments",
    "config_from_args",
    "epoch_order",
    "grid_cells",
    "run",
    "run_sweep",
]

DISTRIBUTIONS = ("uniform", "non_target")
ECE_BINS = 15
CHECKPOINT_FORMAT = 1
# Config keys that may differ when a run directory is resumed: where the data lives, not what it is.
RESUME_IGNORES = frozenset({"data_dir"})


# 1. The configuration --------------------------------------------------------------------------------

# name -> constructor(params, config); both are elementwise, so stacking cells changes nothing.
OPTIMIZERS: dict[str, Callable[[list[Tensor], "SweepConfig"], torch.optim.Optimizer]] = {
    "sgd": lambda params, c: torch.optim.SGD(params, lr=c.lr, momentum=c.momentum,
                                             weight_decay=c.weight_decay),
    "adam": lambda params, c: torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay),
}


@dataclass
class SweepConfig:
    """Everything that determines a sweep's numbers (stored as the run's ``config.json``).

    >>> config = SweepConfig(label_smoothing=(0.0, 0.1), epochs=2)
    >>> SweepConfig.from_dict(config.to_dict()) == config
    True
    """

    dataset: str = "digits"
    data_dir: str | None = None
    models: tuple[str, ...] = ("seed-cnn",)
    model_options: dict = field(default_factory=dict)  # model name -> keyword options
    label_smoothing: tuple[float, ...] = (0.0, 0.05, 0.1)
    seeds: tuple[int, ...] = (0,)
    distributions: tuple[str, ...] = ("uniform",)
    epochs: int = 20
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    train_fraction: float = 1.0
    data_seed: int = 0
    eval_batch_size: int = 500
    device: str = "cpu"
    shard: str | None = None

    def __post_init__(self) -> None:
        for name in ("models", "label_smoothing", "seeds", "distributions"):
            value = getattr(self, name)
            setattr(self, name, tuple(value) if isinstance(value, (list, tuple)) else (value,))
        self.validate()

    def validate(self) -> None:
        """ValueError naming the first bad setting, what was expected and what came."""
        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}")

        def distinct(values: tuple) -> bool:
            return len(set(values)) == len(values) and len(values) > 0

        need(distinct(self.models) and all(m in MODELS for m in self.models), "models",
             f"distinct names from {sorted(MODELS)}")
        need(isinstance(self.model_options, dict) and set(self.model_options) <= set(self.models)
             and all(isinstance(v, dict) for v in self.model_options.values()), "model_options",
             "a dict from a model name of the sweep to a dict of its options")
        need(distinct(self.label_smoothing) and all(
            isinstance(e, (int, float)) and math.isfinite(e) and e <= 1 for e in self.label_smoothing),
            "label_smoothing", "distinct finite numbers at most 1")
        need(distinct(self.seeds) and all(isinstance(s, int) and s >= 0 for s in self.seeds), "seeds",
             "distinct non-negative integers")
        need(distinct(self.distributions) and set(self.distributions) <= set(DISTRIBUTIONS),
             "distributions", f"distinct names from {list(DISTRIBUTIONS)}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name, "an integer >= 1")
        need(self.optimizer in OPTIMIZERS, "optimizer", f"one of {sorted(OPTIMIZERS)}")
        need(self.lr > 0, "lr", "positive")
        need(0 <= self.momentum < 1, "momentum", "in [0, 1)")
        need(self.weight_decay >= 0, "weight_decay", "non-negative")
        need(0 < self.train_fraction <= 1, "train_fraction", "in (0, 1]")
        need(isinstance(self.data_seed, int) and self.data_seed >= 0, "data_seed", "a non-negative integer")
        if self.shard is not None:
            from .shard import format_shard

            self.shard = format_shard(self.shard)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, values: dict) -> "SweepConfig":
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"config has unknown keys {sorted(unknown)}; expected keys of "
                             f"{sorted(f.name for f in fields(cls))}")
        return cls(**values)


def config_differences(stored: dict, config: SweepConfig) -> list[str]:
    """Keys (not in RESUME_IGNORES) whose values differ, as ``key: stored -> new`` lines."""
    new = config.to_dict()
    return [f"{key}: {json.dumps(stored.get(key))} -> {json.dumps(new.get(key))}"
            for key in sorted((set(stored) | set(new)) - RESUME_IGNORES)
            if stored.get(key) != new.get(key)]


# 2. The grid ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One cell of the grid; ``key`` names its folder under ``cells/``."""

    model: str
    distribution: str
    label_smoothing: float
    seed: int

    @property
    def key(self) -> str:
        return f"{self.model}-{self.distribution}-eps{self.label_smoothing:g}-seed{self.seed}"

    def describe(self) -> dict:
        return {"label_smoothing": self.label_smoothing, "seed": self.seed,
                "distribution": self.distribution, "model": self.model, "cell": self.key}


def grid_cells(config: SweepConfig, *, sharded: bool = True) -> list[Cell]:
    """Every cell in grid order (model, distribution, eps, seed), or this shard's share of them.

    >>> [c.key for c in grid_cells(SweepConfig(label_smoothing=(0, 0.1), seeds=(0, 1)))][:2]
    ['seed-cnn-uniform-eps0-seed0', 'seed-cnn-uniform-eps0-seed1']
    """
    cells = [Cell(m, d, float(e), s) for m in config.models for d in config.distributions
             for e in config.label_smoothing for s in config.seeds]
    if not sharded or config.shard is None:
        return cells
    from .shard import select_cells

    return select_cells(cells, config.shard)


def epoch_order(num_samples: int, seed: int, epoch: int) -> Tensor:
    """The order in which ``seed``'s cells see the training images in ``epoch`` (0-based).

    Drawn from a generator seeded by ``(seed, epoch)`` alone, so it needs no saved RNG state and
    is the same for every cell of the seed.

    >>> bool((epoch_order(5, 0, 1) == epoch_order(5, 0, 1)).all()), sorted(epoch_order(5, 0, 1).tolist())
    (True, [0, 1, 2, 3, 4])
    """
    state = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32)
    generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    return torch.randperm(num_samples, generator=generator)


def initial_model(config: SweepConfig, model: str, seed: int, dataset: Dataset) -> nn.Module:
    """``build_model`` under ``torch.manual_seed(seed)``: the weights every cell of the seed starts from."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(model, dataset.num_classes, dataset.in_shape,
                           **config.model_options.get(model, {}))


# 3. The processes that train together -------------------------------------------------------------------


@dataclass(frozen=True)
class Ranks:
    """This process alone (the default), or rank ``rank`` of a ``torch.distributed`` group of ``size``.

    Rank ``r`` owns rows ``[r n // size, (r + 1) n // size)`` of any ``n`` rows (alone: all of them,
    so the single-process path computes exactly what it always did).

    >>> [Ranks(r, 3).rows(32) for r in range(3)]
    [slice(0, 10, None), slice(10, 21, None), slice(21, 32, None)]
    """

    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> "Ranks":
        """The default process group's ranks if one is initialized, else this process alone."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def writes(self) -> bool:
        """Whether this process reads and writes the run directory (rank 0 only)."""
        return self.rank == 0

    def rows(self, n: int, rank: int | None = None) -> slice:
        rank = self.rank if rank is None else rank
        return slice(rank * n // self.size, (rank + 1) * n // self.size)

    def device(self, name: str) -> torch.device:
        """The configured device; on CUDA with several ranks, this rank's GPU (``torch.cuda.current_device()``)."""
        device = torch.device(name)
        if self.size > 1 and device.type == "cuda" and device.index is None:
            return torch.device("cuda", torch.cuda.current_device())
        return device

    def check_splits(self, config: "SweepConfig", dataset: Dataset) -> None:
        """ValueError unless every batch and evaluation split has at least one row per rank."""
        last_batch = len(dataset.x_train) % config.batch_size or config.batch_size
        if last_batch < self.size:
            raise ValueError(f"batch_size must leave every batch at least one image per process "
                             f"({self.size} processes), got {config.batch_size}: the last batch of "
                             f"{len(dataset.x_train)} training images has {last_batch}")
        for split in ("eval", "test", "holdout"):
            if len(getattr(dataset, f"x_{split}")) < self.size:
                raise ValueError(f"dataset: the {split} split must have at least one image per process "
                                 f"({self.size}), got {len(getattr(dataset, f'x_{split}'))}")

    def first(self, decide: Callable[[], object]):
        """``decide()`` run on rank 0; its value (or the exception it raised) on every rank."""
        if self.size == 1:
            return decide()
        outcome: list = [None]
        if self.rank == 0:
            try:
                outcome[0] = (True, decide())
            except Exception as error:  # re-raised on every rank below
                outcome[0] = (False, error)
        dist.broadcast_object_list(outcome, src=0)
        succeeded, value = outcome[0]
        if not succeeded:
            raise value
        return value

    def sum(self, values: Tensor) -> Tensor:
        """``values`` summed over the ranks (in place)."""
        if self.size > 1:
            dist.all_reduce(values)
        return values

    def gather_rows(self, part: Tensor, n: int, dim: int) -> Tensor:
        """Every rank's ``part`` (its :meth:`rows` of ``n`` along ``dim``) concatenated in rank order.

        ``all_gather`` needs equal shapes, so each part is padded to ``ceil(n / size)`` rows first.
        """
        if self.size == 1:
            return part
        most = -(-n // self.size)
        padding = list(part.shape)
        padding[dim] = most - part.shape[dim]
        padded = torch.cat([part, part.new_zeros(padding)], dim)
        pieces = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(pieces, padded)
        return torch.cat([piece.narrow(dim, 0, len(range(n)[self.rows(n, r)]))
                          for r, piece in enumerate(pieces)], dim)

    def sum_gradients(self, grads: list[Tensor | None]) -> list[Tensor | None]:
        """Each gradient summed over the ranks: one SUM all-reduce of them all, flattened (alone: as is)."""
        if self.size == 1:
            return grads
        present = [g for g in grads if g is not None]
        flat = torch.cat([g.reshape(-1) for g in present])
        dist.all_reduce(flat)
        summed = iter(flat.split([g.numel() for g in present]))
        return [None if g is None else next(summed).view_as(g) for g in grads]


@contextlib.contextmanager
def torchrun_process_group(device: str):
    """Under ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK set): the default process group for the block.

    nccl on CUDA (each rank on GPU ``LOCAL_RANK``), gloo on the CPU; destroyed at the end. Does
    nothing outside torchrun or when a group is already initialized.
    """
    launched = {"RANK", "WORLD_SIZE", "LOCAL_RANK"} <= set(os.environ)
    if not launched or dist.is_initialized():
        yield
        return
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


# 4. Stacked cells: one module, C sets of weights ----------------------------------------------------------


class StackedCells(nn.Module):
    """``C`` copies of one architecture with stacked parameters; ``forward(x) -> (C, N, K)``.

    ``x`` is (N, ...) shared by every cell; or (C, N, ...), one batch per cell, with
    ``per_cell=True``; or (S, N, ...) read by ``counts[s]`` consecutive cells each. The
    computation is the model's own ``stacked_forward`` (grouped convolutions, batched matmuls).
    ``cell(i)`` returns an ordinary module holding cell ``i``'s weights (a copy).

    >>> import torch
    >>> models = [build_model("mlp", 3, (4,), widths=(5,)) for _ in range(2)]
    >>> stacked = StackedCells(models)
    >>> x = torch.randn(6, 4)
    >>> stacked(x).shape, torch.allclose(stacked(x)[1], models[1](x))
    (torch.Size([2, 6, 3]), True)
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        self.names = [name for name, _ in models[0].named_parameters()]
        if list(models[0].buffers()):
            raise ValueError("models must hold no buffers to be stacked")
        self.stacked = nn.ParameterList([
            nn.Parameter(torch.stack([dict(m.named_parameters())[name].detach() for m in models]))
            for name in self.names])
        # The architecture without weights; kept out of the module tree (no parameters of its own).
        self.__dict__["template"] = copy.deepcopy(models[0]).to("meta")

    @property
    def num_cells(self) -> int:
        return self.stacked[0].shape[0]

    def forward(self, x: Tensor, per_cell: bool = False, counts: Sequence[int] | None = None) -> Tensor:
        if counts is None:
            counts = (1,) * self.num_cells if per_cell else (self.num_cells,)
            x = x if per_cell else x.unsqueeze(0)
        return self.template.stacked_forward(self.parameters_by_name(), x, counts)

    def parameters_by_name(self) -> dict[str, nn.Parameter]:
        """The stacked parameters, (C, *shape) each, by the model's parameter names."""
        return dict(zip(self.names, self.stacked))

    def cell_parameters(self, index: int) -> dict[str, Tensor]:
        return {name: p[index] for name, p in zip(self.names, self.stacked)}

    def cell_logits(self, index: int, x: Tensor, batch_size: int) -> Tensor:
        """Cell ``index``'s logits for ``x`` (N, ...), in chunks, without autograd: (N, K)."""
        params = {name: p[index:index + 1] for name, p in zip(self.names, self.stacked)}
        with torch.inference_mode():
            return torch.cat([self.template.stacked_forward(params, x[i:i + batch_size].unsqueeze(0), (1,))[0]
                              for i in range(0, len(x), batch_size)])

    def cell(self, index: int) -> nn.Module:
        module = copy.deepcopy(self.template).to_empty(device=self.stacked[0].device)
        module.load_state_dict({k: v.detach().clone() for k, v in self.cell_parameters(index).items()})
        return module


# 5. Training and evaluation of one group (the cells of one model) -----------------------------------------


@dataclass
class CellGroup:
    """The cells of one model, trained together; ``epochs_done`` counts finished epochs.

    ``ranks`` are the processes that share every batch and evaluation split.
    """

    cells: list[Cell]
    stacked: StackedCells
    optimizer: torch.optim.Optimizer
    epochs_done: int = 0
    ranks: Ranks = field(default_factory=Ranks)
    loss_plan: list | None = field(default=None, init=False, repr=False)

    @classmethod
    def create(cls, config: SweepConfig, cells: list[Cell], dataset: Dataset,
               device: torch.device, ranks: Ranks = Ranks()) -> "CellGroup":
        initial = {s: initial_model(config, cells[0].model, s, dataset) for s in {c.seed for c in cells}}
        stacked = StackedCells([initial[c.seed] for c in cells]).to(device)
        return cls(cells, stacked, OPTIMIZERS[config.optimizer](list(stacked.parameters()), config),
                   ranks=ranks)

    def state_dict(self) -> dict:
        return {"epochs_done": self.epochs_done, "parameters": self.stacked.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.epochs_done = state["epochs_done"]
        self.stacked.load_state_dict(state["parameters"])
        self.optimizer.load_state_dict(state["optimizer"])

    def _loss_plan(self, device: torch.device) -> list[tuple[str, Tensor | None, Tensor]]:
        """Per distribution: its cells' indices (None for all) and their eps as a (cells, 1) tensor."""
        plan = []
        for distribution in dict.fromkeys(c.distribution for c in self.cells):
            index = [i for i, c in enumerate(self.cells) if c.distribution == distribution]
            eps = torch.tensor([[self.cells[i].label_smoothing] for i in index], device=device)
            cells = None if len(index) == len(self.cells) else torch.tensor(index, device=device)
            plan.append((distribution, cells, eps))
        return plan

    def _by_distribution(self, logits: Tensor, target: Tensor, compute: Callable) -> list[Tensor]:
        """``compute(logits (M, K), target (M,), eps (M,), distribution)`` -> per-row tensors (M, ...),
        called once per distribution on its cells' rows of logits (C, N, K) and targets (C, N);
        returns each output reassembled as (C, N, ...)."""
        cells, n, k = logits.shape
        if self.loss_plan is None:
            self.loss_plan = self._loss_plan(logits.device)
        outputs = None
        for distribution, index, eps in self.loss_plan:
            part_logits, part_target = (logits, target) if index is None else (logits[index], target[index])
            parts = compute(part_logits.reshape(-1, k), part_target.reshape(-1), eps.expand(-1, n).reshape(-1),
                            distribution)
            parts = [part.view(-1, n, *part.shape[1:]) for part in parts]
            if index is None:
                return parts
            if outputs is None:
                outputs = [part.new_empty(cells, *part.shape[1:]) for part in parts]
            for output, part in zip(outputs, parts):
                output[index] = part
        return outputs

    def train_epoch(self, config: SweepConfig, dataset: Dataset) -> Tensor:
        """One epoch of every cell; returns each cell's mean training loss, (C,) on the device.

        Consecutive cells of one seed read one batch (their model's first layer runs once per
        batch), so a group whose cells are sorted by seed reads one batch per seed. A step: the
        model's ``stacked_vjp`` gives the logits, the core package's ``cross_entropy_with_grad``
        the loss rows and their gradient with respect to the logits, the vjp turns that into the
        parameters' gradients, and the optimizer steps. Each rank trains on its rows of every
        batch and the ranks' gradients are summed (see the module docstring).
        """
        x, y = dataset.x_train, dataset.y_train
        runs = [(seed, len(list(cells))) for seed, cells in itertools.groupby(c.seed for c in self.cells)]
        counts = [count for _, count in runs]
        orders = torch.stack([epoch_order(len(x), seed, self.epochs_done) for seed, _ in runs]).to(x.device)
        run_of_cell = torch.tensor([r for r, count in enumerate(counts) for _ in range(count)],
                                   device=x.device)
        total = torch.zeros(len(self.cells), device=x.device)
        params = self.stacked.parameters_by_name()
        for start in range(0, len(x), config.batch_size):
            index = orders[:, start:start + config.batch_size]
            mine = index[:, self.ranks.rows(index.shape[1])]
            logits, vjp = self.stacked.template.stacked_vjp(params, x[mine], counts)
            rows, grad = self._by_distribution(logits, y[mine][run_of_cell], _loss_and_grad)
            # d(sum over cells of each cell's batch mean)/d(cell c's weights) = cell c's gradient
            grads = vjp(grad.div_(index.shape[1]))
            for p, g in zip(params.values(), self.ranks.sum_gradients([grads[name] for name in params])):
                p.grad = g
            self.optimizer.step()
            total += rows.detach().sum(1)
        self.optimizer.zero_grad(set_to_none=True)
        self.epochs_done += 1
        return self.ranks.sum(total) / len(x)

    def logits(self, x: Tensor, batch_size: int) -> Tensor:
        """Every cell's logits for ``x``: (C, N, K), without autograd; each rank computes its rows.

        On a GPU all cells at once per chunk of ``batch_size`` images (few, large kernels); on the
        CPU too for models that say so (``evaluates_cells_together``), else one cell at a time,
        whose chunks stay in the caches (the same numbers bit for bit either way).
        """
        self.stacked.eval()
        mine = x[self.ranks.rows(len(x))]
        if x.device.type == "cpu" and not self.stacked.template.evaluates_cells_together:
            logits = torch.stack([self.stacked.cell_logits(i, mine, batch_size) for i in range(len(self.cells))])
        else:
            with torch.inference_mode():
                logits = torch.cat([self.stacked(mine[i:i + batch_size])
                                    for i in range(0, len(mine), batch_size)], 1)
        return self.ranks.gather_rows(logits, len(x), 1)

    def cell_logits(self, index: int, x: Tensor, batch_size: int) -> Tensor:
        """Cell ``index``'s logits for ``x``: (N, K), without autograd; each rank computes its rows."""
        mine = self.stacked.cell_logits(index, x[self.ranks.rows(len(x))], batch_size)
        return self.ranks.gather_rows(mine, len(x), 0)

    def metrics(self, logits: Tensor, target: Tensor) -> Tensor:
        """(C, 4): smoothed loss, NLL, accuracy, ECE of each cell's (N, K) logits."""
        from ..calibration.metrics import expected_calibration_error

        loss, nll = self._by_distribution(logits, target.expand(logits.shape[:2]), _loss_and_nll)
        accuracy = (logits.argmax(2) == target).float().mean(1)
        ece = torch.stack([expected_calibration_error(cell_logits, target, n_bins=ECE_BINS,
                                                      from_logits=True, validate_args=False)
                           for cell_logits in logits]).to(loss.dtype)
        return torch.stack([loss.mean(1), nll.mean(1), accuracy, ece], 1)


def _loss_and_grad(logits: Tensor, target: Tensor, eps: Tensor, distribution: str) -> tuple[Tensor, Tensor]:
    return cross_entropy_with_grad(logits, target, reduction="none", label_smoothing=eps,
                                   distribution=distribution, validate_args=False)


def _loss_and_nll(logits: Tensor, target: Tensor, eps: Tensor, distribution: str) -> tuple[Tensor, Tensor]:
    parts = cross_entropy(logits, target, reduction="none", label_smoothing=eps, distribution=distribution,
                          return_parts=True, validate_args=False)
    return parts.loss, parts.nll


METRIC_NAMES = ("loss", "nll", "accuracy", "ece")
HISTORY_COLUMNS = ("epoch", "train_loss") + tuple(f"val_{m}" for m in METRIC_NAMES)


# 6. The run directory --------------------------------------------------------------------------------------


class RunDirectoryError(ValueError):
    """The run directory holds something else (another sweep, or files that are not a sweep)."""


def write_atomic(path: Path, write: Callable[[io.BufferedWriter], None], *, durable: bool = True) -> None:
    """Write through a temporary file in the same folder, then ``os.replace`` it into place.

    A killed process leaves the old file or the new one, never a mix. ``durable`` also flushes
    the data to disk before the rename (so a power cut cannot leave an empty file); the
    per-epoch ``results.json`` and ``metrics.csv`` skip it (~10 ms each), since the checkpoint
    rebuilds them.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_json(path: Path, value, *, durable: bool = True) -> None:
    write_atomic(path, lambda f: f.write((json.dumps(value, indent=1) + "\n").encode()), durable=durable)


def write_metrics_csv(path: Path, runs: list[dict]) -> None:
    text = io.StringIO()
    columns = ["cell", "model", "distribution", "label_smoothing", "seed", *HISTORY_COLUMNS]
    writer = csv.DictWriter(text, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for run in runs:
        for row in run["history"]:
            writer.writerow({**run, **row})
    write_atomic(path, lambda f: f.write(text.getvalue().encode()), durable=False)


@dataclass
class Progress:
    """What the run directory records: histories and test metrics by cell key."""

    histories: dict[str, list[dict]]
    tests: dict[str, dict]

    def results(self, config: SweepConfig, cells: list[Cell]) -> dict:
        runs = [{**c.describe(), "history": self.histories.get(c.key, []), "test": self.tests.get(c.key)}
                for c in cells]
        return {"config": config.to_dict(), "runs": runs,
                "complete": all(c.key in self.tests for c in cells)}


def check_run_directory(out: Path, config: SweepConfig) -> dict | None:
    """Check ``out`` against ``config`` without writing: the finished results, or None for a
    directory to create or a sweep to resume.

    Raises :class:`RunDirectoryError` for a directory holding a different sweep, or non-empty
    and holding no sweep at all.
    """
    config_path = out / "config.json"
    if config_path.is_file():
        stored = json.loads(config_path.read_text(encoding="utf-8"))
        differences = config_differences(stored, config)
        if differences:
            raise RunDirectoryError(
                f"{out} holds a different sweep; refusing to overwrite it. Differences "
                f"(stored -> requested):\n  " + "\n  ".join(differences)
                + "\nChoose another --out, or rerun with the stored settings to resume it.")
        results_path = out / "results.json"
        if results_path.is_file():
            results = json.loads(results_path.read_text(encoding="utf-8"))
            if results.get("complete"):
                return results
        return None
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunDirectoryError(f"{out} exists and is not a sweep's run directory (no config.json); "
                                f"refusing to write into it. Choose another --out.")
    return None


def open_run_directory(out: Path, config: SweepConfig) -> dict | None:
    """:func:`check_run_directory`, then create the directory and its config.json when new."""
    finished = check_run_directory(out, config)
    if finished is None and not (out / "config.json").is_file():
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", config.to_dict())
    return finished


def save_checkpoint(path: Path, config: SweepConfig, progress: Progress, group: CellGroup | None) -> None:
    state = {"format": CHECKPOINT_FORMAT, "config": config.to_dict(), "histories": progress.histories,
             "tests": progress.tests, "group": group.state_dict() if group else None,
             "group_model": group.cells[0].model if group else None}
    write_atomic(path, lambda f: torch.save(state, f))


def write_cell_files(out: Path, cell: Cell, index: int, group: CellGroup, dataset: Dataset,
                     config: SweepConfig) -> None:
    """``cells/<key>/final.npz`` (test, hold-out and training logits and targets) and ``model.pt``.

    Called on every rank (each computes its rows of the logits); rank 0 writes.
    """
    arrays = {}
    for split in ("test", "holdout", "train"):
        x, y = getattr(dataset, f"x_{split}"), getattr(dataset, f"y_{split}")
        logits = group.cell_logits(index, x, config.eval_batch_size)
        arrays[f"{split}_logits"] = logits.float().cpu().numpy()
        arrays[f"{split}_target"] = y.cpu().numpy().astype(np.int64)
    if not group.ranks.writes:
        return
    folder = out / "cells" / cell.key
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "final.npz", lambda f: np.savez(f, **arrays))
    weights = {k: v.detach().cpu().clone() for k, v in group.stacked.cell(index).state_dict().items()}
    write_atomic(folder / "model.pt", lambda f: torch.save(weights, f))


# 7. The sweep ---------------------------------------------------------------------------------------------


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="epoch", dynamic_ncols=True,
                disable=not (enabled and sys.stderr.isatty()))


def run_sweep(config: SweepConfig, out_dir: str | os.PathLike, *, progress: bool = True) -> dict:
    """Train every cell of ``config`` into ``out_dir`` (create, resume, or report complete).

    Returns the results dict (as in ``results.json``). A finished run directory with the same
    config is left untouched; one with a different config raises :class:`RunDirectoryError`.
    Ends by building the report (``labelsmooth.lab.report.build_report``). Inside an initialized
    ``torch.distributed`` group every rank calls it and trains data-parallel; rank 0 alone
    touches ``out_dir`` (see the module docstring), and every rank returns the results.
    """
    out = Path(out_dir)
    ranks = Ranks.current()
    say = print if ranks.writes else (lambda *args, **kwargs: None)
    finished = ranks.first(lambda: check_run_directory(out, config))
    if finished is not None:
        say(f"{out}: this sweep is already complete; nothing to do.")
        return finished
    device = ranks.device(config.device)
    # Data and models are checked before the run directory is made, so a bad setting leaves nothing.
    dataset = _to_device(load_dataset(config.dataset, data_dir=config.data_dir,
                                      train_fraction=config.train_fraction, seed=config.data_seed), device)
    for model in config.models:
        initial_model(config, model, 0, dataset)
    ranks.check_splits(config, dataset)
    if ranks.writes:
        open_run_directory(out, config)
    checkpoint_path = out / "checkpoint.pt"
    cells = grid_cells(config)
    # a model's cells, sorted by seed: the cells of a seed share one input batch
    groups = {m: sorted((c for c in cells if c.model == m), key=lambda c: config.seeds.index(c.seed))
              for m in config.models}
    groups = {m: g for m, g in groups.items() if g}
    progress_state, saved_group = Progress({}, {}), None
    saved = ranks.first(lambda: torch.load(checkpoint_path, weights_only=True, map_location="cpu")
                        if checkpoint_path.is_file() else None)
    if saved is not None:
        progress_state = Progress(saved["histories"], saved["tests"])
        saved_group = (saved["group_model"], saved["group"]) if saved["group"] else None
        say(f"{out}: resuming an unfinished sweep ({len(progress_state.tests)} of {len(cells)} cells "
              f"finished, {sum(len(h) for h in progress_state.histories.values())} cell-epochs recorded).")

    def record() -> dict:
        results = progress_state.results(config, cells)
        if ranks.writes:
            write_json(out / "results.json", results, durable=results["complete"])
            write_metrics_csv(out / "metrics.csv", results["runs"])
        return results

    epochs_done = sum(config.epochs if all(c.key in progress_state.tests for c in g)
                      else len(progress_state.histories.get(g[0].key, [])) for g in groups.values())
    bar = _progress_bar(len(groups) * config.epochs, epochs_done, progress and ranks.writes)
    try:
        for model, group_cells in groups.items():
            if all(c.key in progress_state.tests for c in group_cells):
                continue
            group = CellGroup.create(config, group_cells, dataset, device, ranks)
            if saved_group is not None and saved_group[0] == model:
                group.load_state_dict(saved_group[1])
            while group.epochs_done < config.epochs:
                train_loss = group.train_epoch(config, dataset)
                val = group.metrics(group.logits(dataset.x_eval, config.eval_batch_size), dataset.y_eval)
                values = torch.cat([train_loss[:, None], val], 1).tolist()
                for cell, row in zip(group_cells, values):
                    progress_state.histories.setdefault(cell.key, []).append(
                        dict(zip(HISTORY_COLUMNS, [group.epochs_done, *row])))
                if ranks.writes:
                    save_checkpoint(checkpoint_path, config, progress_state, group)
                record()
                bar.update(1)
                bar.set_postfix_str(f"{model} val_acc {np.mean([r[3] for r in values]):.3f}")
            test_logits = group.logits(dataset.x_test, config.eval_batch_size)
            test = group.metrics(test_logits, dataset.y_test).tolist()
            for index, (cell, row) in enumerate(zip(group_cells, test)):
                write_cell_files(out, cell, index, group, dataset, config)
                progress_state.tests[cell.key] = dict(zip(METRIC_NAMES, row))
            if ranks.writes:
                save_checkpoint(checkpoint_path, config, progress_state, None)
    finally:
        bar.close()
    results = record()
    if ranks.writes:
        checkpoint_path.unlink(missing_ok=True)
        from .report import build_report

        build_report(out)
    return results


def _to_device(dataset: Dataset, device: torch.device) -> Dataset:
    if device.type == "cpu":
        return dataset
    values = {f.name: getattr(dataset, f.name) for f in fields(Dataset)}
    return Dataset(**{k: v.to(device) if isinstance(v, Tensor) else v for k, v in values.items()})


# 8. Command line -------------------------------------------------------------------------------------------


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
                        help="stratified fraction of the training set to train on; the hold-out "
                             "split comes from the rest (at 1.0: 10%% of the set, trained on the "
                             "other 90%%) (default: 1.0)")
    parser.add_argument("--data-seed", type=int, default=d.data_seed,
                        help="seed of the training subsample and hold-out split (default: 0)")
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
