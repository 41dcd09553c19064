"""Vocab-parallel cross-entropy against single-process ``labelsmooth.cross_entropy``, on gloo worlds.

Four forked processes join one gloo world, then run every case in four sub-worlds of 1, 2, 3 and
4 ranks with uneven vocabulary slices (the 2-rank world is global ranks [1, 3], so group ranks
differ from global ones; the 4-rank world uses the default group). Each rank compares its loss
and its slice of the gradient, in float64, with the single-process loss on the whole logits, and
writes what it found to a JSON file that the tests below read.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import labelsmooth
from labelsmooth.distributed import vocab_parallel_cross_entropy

NUM_CLASSES = 11
# world size -> (global ranks of its group, None for the default group; vocabulary slice sizes)
WORLDS = {1: ([0], [11]), 2: ([1, 3], [4, 7]), 3: ([0, 1, 2], [5, 1, 5]), 4: (None, [2, 4, 1, 4])}
TOLERANCE = 1e-10
TIMEOUT_S = 240


@dataclass(frozen=True)
class Case:
    name: str
    seed: int
    target_shape: tuple
    distribution: str = "uniform"  # uniform | non_target | prior | conditional
    weighted: bool = False
    eps: str = "positive"  # zero | positive | negative | per_sample
    reduction: str = "mean"
    ignore: str = "none"  # none | some | in_vocab | all
    z_loss: float = 0.0
    return_parts: bool = False
    dtype: torch.dtype = torch.float64
    tie: bool = False  # the first sample's logits all equal (its arg-max is class 0), its target 0


def _cases() -> list[Case]:
    shapes = [(6,), (3, 4), (2, 3, 2)]  # target shapes: (N,), (N, d1), (N, d1, d2)
    ignores = ["none", "some", "in_vocab"]
    grid = itertools.product(["uniform", "non_target", "prior", "conditional"], [False, True],
                             ["zero", "positive", "negative", "per_sample"], ["none", "mean", "sum"])
    cases = [Case(f"grid-{i}", i, shapes[i % 3], d, w, e, r, ignores[(i // 3) % 3])
             for i, (d, w, e, r) in enumerate(grid)]
    cases += [Case(f"all-ignored-{r}-{w}", 100 + i, (5,), "prior", w, reduction=r, ignore="all")
              for i, (r, w) in enumerate(itertools.product(["none", "mean", "sum"], [False, True]))]
    cases += [Case("z-loss", 200, (3, 4), "non_target", True, z_loss=1e-2),
              Case("parts-mean", 201, (6,), "conditional", True, "per_sample", return_parts=True),
              Case("parts-none", 202, (2, 3, 2), "uniform", False, "zero", "none", "some", return_parts=True),
              Case("parts-tie", 204, (6,), "prior", True, z_loss=1e-2, return_parts=True, tie=True),
              Case("float32", 203, (3, 4), "prior", True, "per_sample", "mean", "some", dtype=torch.float32)]
    return cases


def _inputs(case: Case) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Full (N, K, d1, ...) logits, target and the keyword arguments both losses take."""
    g = torch.Generator().manual_seed(case.seed)
    logits_shape = case.target_shape[:1] + (NUM_CLASSES,) + case.target_shape[1:]
    logits = (3 * torch.randn(logits_shape, generator=g, dtype=torch.float64)).to(case.dtype)
    target = torch.randint(NUM_CLASSES, case.target_shape, generator=g)
    ignore_index = 3 if case.ignore == "in_vocab" else -100
    if case.ignore == "some":
        target[torch.rand(case.target_shape, generator=g) < 0.35] = ignore_index
    elif case.ignore == "in_vocab":
        target.reshape(-1)[::3] = 3
    elif case.ignore == "all":
        target.fill_(ignore_index)
    if case.tie:
        logits[0], target[0] = 0.5, 0
    eps = {"zero": 0.0, "positive": 0.2, "negative": -0.1,
           "per_sample": torch.rand(case.target_shape, generator=g, dtype=torch.float64) - 0.1}[case.eps]
    prior = torch.rand(NUM_CLASSES, generator=g, dtype=torch.float64) + 0.1
    distribution = {"uniform": "uniform", "non_target": "non_target", "prior": prior / prior.sum(),
                    "conditional": torch.randn(NUM_CLASSES, NUM_CLASSES, generator=g).softmax(1)}
    weight = torch.rand(NUM_CLASSES, generator=g, dtype=torch.float64) + 0.5 if case.weighted else None
    return logits, target, dict(label_smoothing=eps, weight=weight, ignore_index=ignore_index,
                                reduction=case.reduction, distribution=distribution[case.distribution],
                                z_loss=case.z_loss, return_parts=case.return_parts)


def _tolerance(case: Case) -> float:
    return TOLERANCE if case.dtype == torch.float64 else 1e-5  # float32 sums in another order


def _backward(result, upstream_seed: int) -> list[torch.Tensor]:
    """Backpropagate a random combination of the outputs; return the reduced values (and the
    parts' z-loss and accuracy)."""
    parts = list(result) if isinstance(result, labelsmooth.LossParts) else [result]
    g = torch.Generator().manual_seed(upstream_seed)
    total = sum((part.double() * torch.rand(part.shape, generator=g, dtype=torch.float64)).sum()
                for part in parts)
    total.backward()
    extras = [result.z_loss, result.accuracy] if isinstance(result, labelsmooth.LossParts) else []
    return [part.detach().double() for part in parts + extras]


def _compare_case(case: Case, group, offset: int, size: int) -> tuple[list[str], float]:
    logits, target, kwargs = _inputs(case)
    local = logits[:, offset:offset + size].clone().requires_grad_()
    full = logits.clone().requires_grad_()
    got = _backward(vocab_parallel_cross_entropy(local, target, group=group, **kwargs), case.seed)
    want = _backward(labelsmooth.cross_entropy(full, target, **kwargs), case.seed)
    tolerance = _tolerance(case)
    mismatches = [f"{case.name}: output {i} differs by {(a - b).abs().max().item():.3g}"
                  for i, (a, b) in enumerate(zip(got, want)) if not torch.allclose(a, b, rtol=0, atol=tolerance)]
    grad_error = (local.grad - full.grad[:, offset:offset + size]).abs().max().item()
    if not grad_error <= tolerance:  # also catches NaN
        mismatches.append(f"{case.name}: gradient differs by {grad_error:.3g}")
    return mismatches, got[0].sum().item()


def _collective_log(group, offset: int, size: int) -> dict:
    """Count the all-reduces of one forward and of its backward (the loss uses only all_reduce)."""
    calls = []
    original = dist.all_reduce

    def logged(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
        calls.append([str(op).split(".")[-1], list(tensor.shape)])
        return original(tensor, op=op, group=group, async_op=async_op)

    logits, target, kwargs = _inputs(Case("collectives", 300, (3, 4), "prior", True))
    local = logits[:, offset:offset + size].clone().requires_grad_()
    dist.all_reduce = logged
    try:
        loss = vocab_parallel_cross_entropy(local, target, group=group, **kwargs)
        forward = list(calls)
        loss.backward()
    finally:
        dist.all_reduce = original
    return {"forward": forward, "backward": calls[len(forward):]}


def _error_message(call) -> str | None:
    try:
        call()
    except ValueError as error:
        return str(error)
    return None


def _bad_inputs(group, rank: int, sizes: list[int]) -> dict[str, str | None]:
    """ValueError message (or None) of each bad call; each raises on every rank, before any loss collective."""
    offset, size = sum(sizes[:rank]), sizes[rank]
    logits, target, _ = _inputs(Case("bad", 400, (6,), eps="zero"))
    local = logits[:, offset:offset + size]

    def call(local_logits=local, target=target, **kwargs):
        return lambda: vocab_parallel_cross_entropy(local_logits, target, group=group, **kwargs)

    local_prior = torch.full((size,), 1.0 / size, dtype=torch.float64)
    rank_target = target.clone()
    rank_target[0] = rank
    bad = {
        "target_out_of_range": call(target=torch.full_like(target, NUM_CLASSES)),
        "local_weight": call(weight=torch.ones(size, dtype=torch.float64)),
        "local_prior": call(distribution=local_prior),
        "prior_sum": call(distribution=torch.full((NUM_CLASSES,), 0.2, dtype=torch.float64)),
        "eps_above_one": call(label_smoothing=1.5),
        "integer_logits": call(local_logits=local.long()),
        "probability_target": call(target=torch.rand(6, size, dtype=torch.float64)),
        "target_shape": call(target=target[:4]),
        "one_dim_logits": call(local_logits=local[0], target=target[0]),
        "different_targets": call(target=rank_target),
        "different_rows": call(local_logits=local[: 6 - rank], target=target[: 6 - rank]),
        "empty_slice": call(local_logits=local[:, : size if rank else 0]),
    }
    return {name: _error_message(bad_call) for name, bad_call in bad.items()}


def _run_world(group, rank: int, sizes: list[int]) -> dict:
    offset, size = sum(sizes[:rank]), sizes[rank]
    mismatches, losses = [], {}
    for case in _cases():
        case_mismatches, losses[case.name] = _compare_case(case, group, offset, size)
        mismatches += case_mismatches
    errors = _bad_inputs(group, rank, sizes)
    # every rank raised before the loss's collectives, so the group still works
    mismatches += _compare_case(Case("after-errors", 500, (6,)), group, offset, size)[0]
    return {"mismatches": mismatches, "losses": losses, "errors": errors,
            "collectives": _collective_log(group, offset, size)}


def _worker(rank: int, world_size: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        results = {}
        for n, (ranks, sizes) in WORLDS.items():
            group = dist.new_group(ranks) if ranks is not None else None  # every rank creates every group
            if ranks is None or rank in ranks:
                results[n] = _run_world(group, dist.get_rank(group), sizes)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def worlds(tmp_path_factory) -> dict[int, list[dict]]:
    """world size -> one result dict per rank of that world, in group-rank order."""
    tmp = tmp_path_factory.mktemp("vocab_parallel")
    context = mp.start_processes(_worker, args=(4, str(tmp / "store"), str(tmp)), nprocs=4,
                                 join=False, start_method="fork")
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.terminate()
            pytest.fail(f"the gloo worlds did not finish within {TIMEOUT_S} s (a collective hung)")
    by_rank = [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(4)]
    return {n: [by_rank[r][str(n)] for r in (ranks or range(4))] for n, (ranks, _) in WORLDS.items()}


@pytest.mark.slow
@pytest.mark.parametrize("world_size", sorted(WORLDS))
def test_loss_and_gradients_equal_single_process(worlds, world_size):
    for rank, result in enumerate(worlds[world_size]):
        assert result["mismatches"] == [], f"rank {rank}"
        assert len(result["losses"]) == len(_cases())


def test_loss_is_the_same_for_every_world_size_and_rank(worlds):
    reference = worlds[1][0]["losses"]
    tolerances = {case.name: _tolerance(case) for case in _cases()}
    for world_size, ranks in worlds.items():
        for rank, result in enumerate(ranks):
            for name, value in result["losses"].items():
                assert value == pytest.approx(reference[name], abs=tolerances[name]), (world_size, rank, name)


def megatron_rank_loss(logits, target, eps, sizes, rank):
    """Megatron-LM's vocab-parallel loss with label smoothing, as rank ``rank`` computes it.

    Transcribed from megatron/core/tensor_parallel/cross_entropy.py: the NLL uses the global
    softmax, but the smoothing term uses the local vocabulary size K_r and the mean of the local
    log-probabilities: ``(1 - s) nll - s mean_{c in slice r} log p_c`` with ``s = eps K_r / (K_r - 1)``.
    """
    log_p = logits.log_softmax(1)
    nll = -log_p.gather(1, target[:, None]).squeeze(1)
    offset, size = sum(sizes[:rank]), sizes[rank]
    smoothing = eps * size / (size - 1)
    return ((1 - smoothing) * nll - smoothing * log_p[:, offset:offset + size].mean(1)).mean()


def test_megatron_local_smoothing_changes_with_the_split():
    logits, target, _ = _inputs(Case("megatron", 600, (6,)))
    ours = labelsmooth.cross_entropy(logits, target, label_smoothing=0.2, distribution="non_target")
    # With one rank, Megatron's formula is non-target smoothing: the transcription is right ...
    assert megatron_rank_loss(logits, target, 0.2, [NUM_CLASSES], 0).item() == pytest.approx(ours.item(), abs=1e-12)
    # ... and with the 2-rank split the ranks disagree with it and with each other.
    split = WORLDS[2][1]
    per_rank = [megatron_rank_loss(logits, target, 0.2, split, r).item() for r in range(2)]
    assert min(abs(value - ours.item()) for value in per_rank) > 1e-3
    assert abs(per_rank[0] - per_rank[1]) > 1e-3


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_communication_is_three_all_reduces_in_forward_and_none_in_backward(worlds, world_size):
    rows = 12
    for result in worlds[world_size]:
        assert result["collectives"]["forward"] == [["SUM", [world_size, 3]], ["MAX", [rows]],
                                                    ["SUM", [3, rows]]]
        assert result["collectives"]["backward"] == []


EXPECTED_ERRORS = {
    "target_out_of_range": "target must hold class indices in [0, 11)",
    "local_weight": "weight must have shape (11,)",
    "local_prior": "distribution as a tensor must have shape (11,)",
    "prior_sum": "distribution must sum to 1",
    "eps_above_one": "label_smoothing must be finite and at most 1",
    "integer_logits": "local_logits must be a floating-point tensor",
    "probability_target": "target must hold integer class indices",
    "target_shape": "target must have shape (6,)",
    "one_dim_logits": "local_logits must have shape (N, K_local)",
    "different_targets": "target must be the same on every rank",
    "different_rows": "local_logits must have the same rows",
    "empty_slice": "at least one class on every rank",
}


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_bad_input_raises_value_error_on_every_rank(worlds, world_size):
    for rank, result in enumerate(worlds[world_size]):
        for name, expected in EXPECTED_ERRORS.items():
            message = result["errors"][name]
            assert message is not None and expected in message, (rank, name, message)


def test_needs_an_initialized_process_group():
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="initialized process group"):
        vocab_parallel_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1]))
