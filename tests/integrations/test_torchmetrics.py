"""labelsmooth.integrations.torchmetrics: the Metrics against the functional calibration errors.

One process: updated batch by batch, a Metric equals the functional metric on all the rows at once
(float64 sums in another order: rtol 1e-12). Two processes (gloo, forked): each rank updates with
its own uneven share of the rows, and every rank's ``compute()`` equals the functional metric on
all of them, while its local states stay its own.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip("torchmetrics", reason="torchmetrics is not installed (pip install -e '.[dev]')")
from labelsmooth.calibration import classwise_calibration_error, expected_calibration_error  # noqa: E402
from labelsmooth.integrations.torchmetrics import CalibrationError, ClasswiseCalibrationError  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")
TIGHT = dict(rtol=1e-12, atol=1e-15)
ROWS, CLASSES, SHARE_OF_RANK_0 = 300, 5, 170
TIMEOUT_S = 120


def predictions(seed: int = 0):
    """Logits (ROWS, CLASSES) of a fairly confident, sometimes wrong classifier, and targets."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(CLASSES, (ROWS,), generator=g)
    logits = torch.randn(ROWS, CLASSES, generator=g) + 3 * torch.nn.functional.one_hot(target, CLASSES)
    return logits, target


def metrics() -> dict:
    return {**{f"ece_{norm}": CalibrationError(n_bins=10, norm=norm, from_logits=True) for norm in ("l1", "l2", "max")},
            "classwise": ClasswiseCalibrationError(CLASSES, n_bins=10, from_logits=True)}


def functional(logits, target) -> dict:
    return {**{f"ece_{norm}": expected_calibration_error(logits, target, 10, norm=norm, from_logits=True)
               for norm in ("l1", "l2", "max")},
            "classwise": classwise_calibration_error(logits, target, 10, from_logits=True)}


def test_metric_equals_the_functional_metric():
    logits, target = predictions()
    expected = functional(logits, target)
    for name, metric in metrics().items():
        for rows in torch.arange(ROWS).split(37):
            batch_value = metric(logits[rows], target[rows])  # forward: this batch's value, and accumulate
            torch.testing.assert_close(batch_value, functional(logits[rows], target[rows])[name], **TIGHT)
        torch.testing.assert_close(metric.compute(), expected[name], **TIGHT, msg=name)
        metric.reset()
        metric.update(logits[:10], target[:10])
        torch.testing.assert_close(metric.compute(), functional(logits[:10], target[:10])[name], **TIGHT)


def test_states_sum_across_processes_and_stay_out_of_checkpoints():
    metric = CalibrationError()
    assert set(metric._reductions) == {"count", "confidence_sum", "outcome_sum"}
    assert all(metric._reductions[name].__name__ == "dim_zero_sum" for name in metric._reductions)
    holder = torch.nn.Module()
    holder.ece = metric
    assert holder.state_dict() == {}  # a checkpoint of a module that logs it loads without it


@pytest.mark.filterwarnings("ignore:The ``compute`` method:UserWarning")  # torchmetrics' own, before ours
def test_bad_arguments_are_refused_by_name():
    with pytest.raises(ValueError, match="n_bins"):
        CalibrationError(n_bins=0)
    with pytest.raises(ValueError, match="norm"):
        CalibrationError(norm="l3")
    with pytest.raises(ValueError, match="num_classes"):
        ClasswiseCalibrationError(0)
    with pytest.raises(ValueError, match="probs must"):
        CalibrationError().update(torch.tensor([[0.5, 0.7]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="num_classes"):
        ClasswiseCalibrationError(3).update(torch.tensor([[0.5, 0.5]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="at least one update"):
        CalibrationError().compute()


def _rank(rank: int, world_size: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        logits, target = predictions()
        share = slice(0, SHARE_OF_RANK_0) if rank == 0 else slice(SHARE_OF_RANK_0, ROWS)
        results = {}
        for name, metric in metrics().items():
            for rows in torch.arange(ROWS)[share].split(50):
                metric.update(logits[rows], target[rows])
            results[name] = {"value": metric.compute().item(), "local_count": metric.count.sum().item()}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def test_two_processes_over_gloo_equal_one_process(tmp_path):
    context = mp.start_processes(_rank, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=False,
                                 start_method="fork")
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.terminate()
            pytest.fail(f"the gloo world did not finish within {TIMEOUT_S} s (a collective hung)")
    expected = functional(*predictions())
    for rank, rows in ((0, SHARE_OF_RANK_0), (1, ROWS - SHARE_OF_RANK_0)):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for name, value in expected.items():
            assert result[name]["value"] == pytest.approx(value.item(), rel=1e-12), (rank, name)
            groups = CLASSES if name == "classwise" else 1
            assert result[name]["local_count"] == rows * groups  # compute() left the local sums alone


@pytest.mark.slow
def test_the_lightning_example_runs(example):
    pytest.importorskip("lightning", reason="lightning is not installed (pip install -e '.[dev]')")
    out = example("lightning_classifier.py")
    epochs = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 6
    last = dict(part.rsplit(" ", 1) for part in epochs[-1].split(": ", 1)[1].split(", "))
    assert float(last["val NLL"]) < float(last["val loss"])  # the smoothed loss is above the NLL
    assert 0 <= float(last["val ECE"]) < 0.5
