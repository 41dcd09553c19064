"""Stacked cells: every cell of one model trained together in one module, C sets of weights.

A *cell* is one (model, distribution, eps, seed). All cells of one model train together: their
parameters are stacked along a leading cell axis (:class:`StackedCells`) and the model's
``stacked_forward`` runs them at once (grouped convolutions, batched matmuls; see
:mod:`labelsmooth.lab.models`), so one step of the optimizer is one step of every cell. The loss
is :func:`labelsmooth.cross_entropy` on the (cells x batch) rows with a per-row eps (in training
``cross_entropy_with_grad``, which also gives its gradient), summed over cells: cell ``c``'s
parameters only reach its own rows, so the gradient of the sum with respect to them is exactly
that cell's own gradient. The optimizer is ``torch.optim.SGD`` / ``Adam`` applied to the stacked
tensors: both are elementwise (momentum, weight decay, moments), so each slice receives torch's
own update for that cell.

Paired design: every cell of one seed starts from the same initial weights
(:func:`initial_model`) and sees the same order of batches (:func:`epoch_order`), so eps and
distribution are the only differences. Each cell has its own training labels
(``CellGroup.train_targets``: with label noise, its noise rate's flipped labels; see
:mod:`labelsmooth.lab.noise`), so cells of different noise rates train together too. Neither
draws from a global RNG, so there is no RNG state to carry across an interrupted run.

Per epoch and cell :class:`CellGroup` gives the training loss (the smoothed objective per image,
averaged over the epoch as it was trained) and, on any split, the smoothed loss, the unsmoothed
NLL, accuracy and ECE (:data:`METRIC_NAMES`). It also keeps each cell's weights of the epoch with
the lowest validation NLL (:meth:`CellGroup.remember_best`): early stopping chosen on the
validation split, evaluated on the test split only once training has ended
(:meth:`CellGroup.best_weights`).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..calibration.metrics import expected_calibration_error
from ..losses import cross_entropy, cross_entropy_with_grad
from .config import OPTIMIZERS, Cell, SweepConfig
from .data import Dataset
from .models import build_model
from .ranks import Ranks

__all__ = ["ECE_BINS", "HISTORY_COLUMNS", "METRIC_NAMES", "CellGroup", "StackedCells", "epoch_order",
           "initial_model", "optimizer_step"]

ECE_BINS = 15
METRIC_NAMES = ("loss", "nll", "accuracy", "ece")
HISTORY_COLUMNS = ("epoch", "train_loss") + tuple(f"val_{m}" for m in METRIC_NAMES)


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


@dataclass
class CellGroup:
    """The cells of one model, trained together; ``epochs_done`` counts finished epochs.

    ``ranks`` are the processes that share every batch and evaluation split. ``train_targets``
    (C, N_train) holds each cell's training labels when they differ from the data set's (label
    noise), else None.
    """

    cells: list[Cell]
    stacked: StackedCells
    optimizer: torch.optim.Optimizer
    epochs_done: int = 0
    ranks: Ranks = field(default_factory=Ranks)
    train_targets: Tensor | None = field(default=None, repr=False)
    loss_plan: list | None = field(default=None, init=False, repr=False)
    # the weights of each cell's epoch of lowest validation NLL so far (see remember_best)
    best: dict | None = field(default=None, init=False, repr=False)

    @classmethod
    def create(cls, config: SweepConfig, cells: list[Cell], dataset: Dataset,
               device: torch.device, ranks: Ranks | None = None,
               train_targets: Tensor | None = None) -> "CellGroup":
        initial = {s: initial_model(config, cells[0].model, s, dataset) for s in {c.seed for c in cells}}
        stacked = StackedCells([initial[c.seed] for c in cells]).to(device)
        return cls(cells, stacked, OPTIMIZERS[config.optimizer](list(stacked.parameters()), config),
                   ranks=ranks or Ranks(), train_targets=None if train_targets is None else train_targets.to(device))

    def state_dict(self) -> dict:
        return {"epochs_done": self.epochs_done, "parameters": self.stacked.state_dict(),
                "optimizer": self.optimizer.state_dict(), "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.epochs_done = state["epochs_done"]
        self.stacked.load_state_dict(state["parameters"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.best = state.get("best")

    def remember_best(self, validation_nll: Tensor) -> None:
        """After an epoch: keep the weights of every cell whose validation NLL (C,) is its lowest yet.

        Ties keep the earlier epoch. ``best["epoch"]`` (C,) is the chosen epoch (1-based) of each cell.
        """
        current = [p.detach() for p in self.stacked.stacked]
        nll = validation_nll.detach().to(current[0].device, torch.float64)
        if self.best is None:
            self.best = {"nll": nll.clone(), "epoch": torch.full_like(nll, self.epochs_done, dtype=torch.long),
                         "parameters": [p.clone() for p in current]}
            return
        improved = nll < self.best["nll"]
        self.best["nll"] = torch.where(improved, nll, self.best["nll"])
        self.best["epoch"][improved] = self.epochs_done
        for kept, now in zip(self.best["parameters"], current):
            kept[improved] = now[improved]

    @contextlib.contextmanager
    def best_weights(self):
        """Within the block, every cell holds its weights of the epoch chosen by :meth:`remember_best`."""
        if self.best is None:
            raise ValueError("best_weights: no epoch has been evaluated on the validation split yet")
        parameters = list(self.stacked.stacked)
        trained = [p.data for p in parameters]
        try:
            for p, kept in zip(parameters, self.best["parameters"]):
                p.data = kept
            yield self
        finally:
            for p, weights in zip(parameters, trained):
                p.data = weights

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
        batch and the ranks' gradients are summed (see :mod:`labelsmooth.lab.ranks`). Each cell's
        targets are its own ``train_targets`` row when there are any.
        """
        x, y = dataset.x_train, dataset.y_train
        runs = [(seed, len(list(cells))) for seed, cells in itertools.groupby(c.seed for c in self.cells)]
        counts = [count for _, count in runs]
        orders = torch.stack([epoch_order(len(x), seed, self.epochs_done) for seed, _ in runs]).to(x.device)
        run_of_cell = torch.tensor([r for r, count in enumerate(counts) for _ in range(count)],
                                   device=x.device)
        total = torch.zeros(len(self.cells), device=x.device)
        params = self.stacked.parameters_by_name()
        names, parameters = list(params), list(params.values())
        vjp_of = self.stacked.template.stacked_vjp
        for block in self._epoch_blocks(orders, config.batch_size):
            # this rank's images of the block's batches, gathered once: (S, M, ...) and (C, M)
            x_block = x[block.index]
            target_block = (y[block.index][run_of_cell] if self.train_targets is None
                            else self.train_targets.gather(1, block.index[run_of_cell]))
            for rows, batch_size in block.steps:
                logits, vjp = vjp_of(params, x_block[:, rows], counts)
                losses, grad = self._by_distribution(logits, target_block[:, rows], _loss_and_grad)
                # d(sum over cells of each cell's batch mean)/d(cell c's weights) = cell c's gradient
                grads = vjp(grad.div_(batch_size))
                for p, g in zip(parameters, self.ranks.sum_gradients([grads[name] for name in names])):
                    p.grad = g
                optimizer_step(self.optimizer)
                total += losses.sum(1)
        self.optimizer.zero_grad(set_to_none=True)
        self.epochs_done += 1
        return self.ranks.sum(total) / len(x)

    def _epoch_blocks(self, orders: Tensor, batch_size: int, steps_per_block: int = 32):
        """The epoch's batches (columns of ``orders`` (S, N), ``batch_size`` at a time) in blocks of
        ``steps_per_block``: per block, the ``index`` (S, M) of this rank's rows of its batches, one
        after another, and ``steps``: each batch's slice of those M columns and its global size.
        Gathering a block's images at once costs one indexing per block instead of three per step."""
        n = orders.shape[1]
        starts = range(0, n, batch_size)
        for first in range(0, len(starts), steps_per_block):
            pieces, steps, offset = [], [], 0
            for start in starts[first:first + steps_per_block]:
                size = min(batch_size, n - start)
                mine = self.ranks.rows(size)
                pieces.append(orders[:, start + mine.start:start + mine.stop])
                steps.append((slice(offset, offset + mine.stop - mine.start), size))
                offset += mine.stop - mine.start
            yield _Block(torch.cat(pieces, 1), steps)

    def logits(self, x: Tensor, batch_size: int) -> Tensor:
        """Every cell's logits for ``x``: (C, N, K), without autograd; each rank computes its rows.

        On a GPU all cells at once per chunk of ``batch_size`` images (few, large kernels); on the
        CPU too for models that say so (``evaluates_cells_together``), in chunks of at most the
        model's ``cpu_evaluation_rows`` (image, cell) pairs (at least 32 images), else one cell at
        a time; either way the chunks stay in the caches (the same numbers bit for bit).
        """
        self.stacked.eval()
        mine = x[self.ranks.rows(len(x))]
        template = self.stacked.template
        if x.device.type == "cpu" and not template.evaluates_cells_together:
            logits = torch.stack([self.stacked.cell_logits(i, mine, batch_size) for i in range(len(self.cells))])
        else:
            if x.device.type == "cpu" and template.cpu_evaluation_rows is not None:
                batch_size = min(batch_size, max(32, template.cpu_evaluation_rows // len(self.cells)))
            with torch.inference_mode():
                logits = torch.cat([self.stacked(mine[i:i + batch_size])
                                    for i in range(0, len(mine), batch_size)], 1)
        return self.ranks.gather_rows(logits, len(x), 1)

    def cell_logits(self, index: int, x: Tensor, batch_size: int) -> Tensor:
        """Cell ``index``'s logits for ``x``: (N, K), without autograd; each rank computes its rows."""
        mine = self.stacked.cell_logits(index, x[self.ranks.rows(len(x))], batch_size)
        return self.ranks.gather_rows(mine, len(x), 0)

    def divergence(self, values: Tensor) -> list[str | None]:
        """Per cell, why it diverged (the first of ``values`` that is not finite, or its weights), or
        None when it did not. ``values`` (C, M): each cell's numbers of the epoch, named by
        :data:`HISTORY_COLUMNS` after ``epoch``."""
        finite_weights = torch.stack([p.detach().isfinite().flatten(1).all(1) for p in self.stacked.stacked]).all(0)
        reasons = []
        for row, weights_ok in zip(values.tolist(), finite_weights.tolist()):
            bad = [f"{name} {value}" for name, value in zip(HISTORY_COLUMNS[1:], row) if not np.isfinite(value)]
            reasons.append(bad[0] if bad else None if weights_ok else "non-finite weights")
        return reasons

    def metrics(self, logits: Tensor, target: Tensor) -> Tensor:
        """(C, 4): smoothed loss, NLL, accuracy, ECE of each cell's (N, K) logits."""
        loss, nll = self._by_distribution(logits, target.expand(logits.shape[:2]), _loss_and_nll)
        accuracy = (logits.argmax(2) == target).float().mean(1)
        ece = torch.stack([expected_calibration_error(cell_logits, target, n_bins=ECE_BINS,
                                                      from_logits=True, validate_args=False)
                           for cell_logits in logits]).to(loss.dtype)
        return torch.stack([loss.mean(1), nll.mean(1), accuracy, ece], 1)


class _Block(NamedTuple):
    index: Tensor                           # (S, M): the training images of the block's batches
    steps: list[tuple[slice, int]]          # per batch: its columns of index, its global size


def optimizer_step(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.step()``; for torch's SGD the same update in three foreach operations per group.

    SGD's step is elementwise: the momentum buffer ``b = momentum b + (1 - dampening) (g + wd p)``
    (a copy of ``g + wd p`` at the first step) and ``p -= lr b``, so torch's foreach operations
    give it bit for bit, without the per-call Python of ``Optimizer.step`` (a tenth of a training
    step of three seed-cnn cells on 32 images). Nesterov, maximize, differentiable or tensor
    learning rates, and every other optimizer, take ``optimizer.step()``.
    """
    if type(optimizer) is not torch.optim.SGD or any(
            group["nesterov"] or group["maximize"] or group["differentiable"] or isinstance(group["lr"], Tensor)
            for group in optimizer.param_groups):
        optimizer.step()
        return
    with torch.no_grad():
        for group in optimizer.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            if group["momentum"]:
                states = [optimizer.state[p] for p in params]
                started = [i for i, state in enumerate(states) if state.get("momentum_buffer") is not None]
                if started:
                    buffers = [states[i]["momentum_buffer"] for i in started]
                    torch._foreach_mul_(buffers, group["momentum"])
                    torch._foreach_add_(buffers, [grads[i] for i in started], alpha=1 - group["dampening"])
                for state, grad in zip(states, grads):  # a parameter's first step: its buffer is its gradient
                    if state.get("momentum_buffer") is None:
                        state["momentum_buffer"] = torch.clone(grad).detach()
                grads = [state["momentum_buffer"] for state in states]
            torch._foreach_add_(params, grads, alpha=-group["lr"])


def _loss_and_grad(logits: Tensor, target: Tensor, eps: Tensor, distribution: str) -> tuple[Tensor, Tensor]:
    return cross_entropy_with_grad(logits, target, reduction="none", label_smoothing=eps,
                                   distribution=distribution, validate_args=False)


def _loss_and_nll(logits: Tensor, target: Tensor, eps: Tensor, distribution: str) -> tuple[Tensor, Tensor]:
    parts = cross_entropy(logits, target, reduction="none", label_smoothing=eps, distribution=distribution,
                          return_parts=True, validate_args=False)
    return parts.loss, parts.nll
