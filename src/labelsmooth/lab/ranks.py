"""The processes that train a sweep together: this process alone, or the ranks of a
``torch.distributed`` group (``torchrun``), data parallel.

Each global batch is the single-process one; rank ``r`` takes its contiguous share of it (sizes
differ by at most one) and computes the gradient of ``sum of its rows' losses / batch size``; one
SUM all-reduce of the flattened gradients per step makes it exactly the gradient of the batch mean
on every rank, before every rank takes the same optimizer step. Evaluation splits are shared out
the same way and the logits gathered, so every metric covers every image. Rank 0 alone reads and
writes the run directory and broadcasts its decisions (:meth:`Ranks.first`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from .config import SweepConfig
from .data import Dataset

__all__ = ["Ranks", "torchrun_process_group"]


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
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device: expected a device this machine has, got {name!r}, but this torch "
                             f"build finds no CUDA GPU (torch {torch.__version__}); use --device cpu")
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise ValueError(f"device: expected cuda or cuda:0 to cuda:{torch.cuda.device_count() - 1} "
                             f"(the GPUs torch sees), got {name!r}")
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device: expected cpu or cuda[:N], got {name!r}")
        if self.size > 1 and device.type == "cuda" and device.index is None:
            return torch.device("cuda", torch.cuda.current_device())
        return device

    def check_splits(self, config: SweepConfig, dataset: Dataset) -> None:
        """ValueError unless every batch and evaluation split has at least one row per rank."""
        last_batch = len(dataset.x_train) % config.batch_size or config.batch_size
        if last_batch < self.size:
            raise ValueError(f"batch_size must leave every batch at least one image per process "
                             f"({self.size} processes), got {config.batch_size}: the last batch of "
                             f"{len(dataset.x_train)} training images has {last_batch}")
        for split in ("test", "holdout"):
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
