"""lab.shard: the ``--shard i/n`` spec and its cell selection, a partition of the grid into
balanced, ordered shares."""

from __future__ import annotations

import pytest

from labelsmooth.lab.shard import format_shard, parse_shard, select_cells


@pytest.mark.parametrize("spec, expected", [("1/1", (1, 1)), ("2/3", (2, 3)), (" 10 / 12 ", (10, 12)),
                                            ((4, 4), (4, 4)), ([1, 2], (1, 2))])
def test_parse_shard_accepts_one_based_specs(spec, expected):
    assert parse_shard(spec) == expected
    assert format_shard(spec) == f"{expected[0]}/{expected[1]}"


@pytest.mark.parametrize("spec", ["0/2", "3/2", "1/0", "-1/2", "1-2", "1/2/3", "a/b", "", "1.0/2",
                                  "1 of 2", (0, 1), (1, 2, 3), (True, 2), (1.0, 2.0), None, 1])
def test_parse_shard_refuses_anything_else_naming_the_flag(spec):
    with pytest.raises(ValueError, match=r"--shard: expected i/n with 1 <= i <= n .*got"):
        parse_shard(spec)


@pytest.mark.parametrize("total", [0, 1, 2, 5, 12, 13])
@pytest.mark.parametrize("count", [1, 2, 3, 5, 14])
def test_shards_partition_the_grid_in_order_and_balanced(total, count):
    cells = [f"cell{p}" for p in range(total)]
    shares = [select_cells(cells, (index, count)) for index in range(1, count + 1)]
    # every cell in exactly one shard
    assert sorted(c for share in shares for c in share) == sorted(cells)
    # each share keeps the grid's order
    for share in shares:
        assert share == sorted(share, key=cells.index)
    # sizes differ by at most one and sum to the grid
    sizes = [len(share) for share in shares]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == total


def test_select_cells_deals_round_robin_and_none_keeps_everything():
    cells = ["e0s0", "e1s0", "e2s0", "e0s1", "e1s1", "e2s1", "e0s2"]
    assert select_cells(cells, "1/3") == ["e0s0", "e0s1", "e0s2"]
    assert select_cells(cells, "2/3") == ["e1s0", "e1s1"]
    assert select_cells(cells, (3, 3)) == ["e2s0", "e2s1"]
    assert select_cells(cells, None) == cells
    with pytest.raises(ValueError, match="--shard"):
        select_cells(cells, "4/3")
