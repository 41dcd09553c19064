"""Sharded sweeps: which grid cells one of ``n`` independent jobs trains (``--shard i/n``).

A shard spec is ``"i/n"`` with **1-based** ``i`` (``1 <= i <= n``), the convention of SLURM
arrays started with ``--array=1-n`` and of ``split -n``: ``1/2`` and ``2/2`` are the two halves.
Cells are dealt round-robin over the grid's order: shard ``i`` of ``n`` takes the cells at
positions ``i - 1, i - 1 + n, i - 1 + 2n, ...``, so

- every cell lands in exactly one shard, whatever ``n`` (even ``n`` larger than the grid: the
  extra shards are empty);
- shard sizes differ by at most one cell (``ceil((N - i + 1) / n)`` cells for a grid of ``N``);
- consecutive cells (typically the eps values of one seed, or one model's cells) are spread over
  the shards, so a grid whose models differ in cost still gives shards of similar run time;
- each shard keeps the grid's order (``labelsmooth merge`` restores the full order from the
  grid itself).

>>> select_cells(["a", "b", "c", "d", "e"], parse_shard("2/2"))
['b', 'd']
"""

from __future__ import annotations

import re
from typing import Sequence, TypeVar

__all__ = ["format_shard", "parse_shard", "select_cells"]

Cell = TypeVar("Cell")

_SHARD_PATTERN = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


def parse_shard(spec: str | Sequence[int]) -> tuple[int, int]:
    """``"i/n"`` (or an ``(i, n)`` pair) -> ``(i, n)``, checked: integers with ``1 <= i <= n``.

    >>> parse_shard("3/4")
    (3, 4)
    >>> parse_shard("0/4")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: --shard: expected i/n with 1 <= i <= n (1-based: 1/2 and 2/2 are the two ...
    """
    if isinstance(spec, str):
        found = _SHARD_PATTERN.fullmatch(spec)
        index, count = (int(found.group(1)), int(found.group(2))) if found else (None, None)
    elif (isinstance(spec, Sequence) and len(spec) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in spec)):
        index, count = spec
    else:
        index = count = None
    if index is None or not 1 <= index <= count:
        raise ValueError(f"--shard: expected i/n with 1 <= i <= n (1-based: 1/2 and 2/2 are the "
                         f"two halves), got {spec!r}")
    return index, count


def format_shard(shard: tuple[int, int]) -> str:
    """``(i, n)`` -> ``"i/n"``, the form stored in a run's config.

    >>> format_shard((1, 3))
    '1/3'
    """
    index, count = parse_shard(shard)
    return f"{index}/{count}"


def select_cells(cells: Sequence[Cell], shard: str | tuple[int, int] | None) -> list[Cell]:
    """Shard ``i/n``'s share of ``cells`` (in the grid's order): ``cells[i - 1 :: n]``.

    ``shard=None`` means no sharding: every cell.

    >>> select_cells(list(range(7)), (1, 3)), select_cells(list(range(7)), "3/3")
    ([0, 3, 6], [2, 5])
    """
    if shard is None:
        return list(cells)
    index, count = parse_shard(shard)
    return list(cells[index - 1::count])
