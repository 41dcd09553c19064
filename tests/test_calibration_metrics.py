"""Calibration metrics against torchmetrics, scikit-learn and float64 references written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.metrics import log_loss
from torchmetrics.functional.classification import multiclass_calibration_error

from labelsmooth.calibration import bootstrap as bootstrap_module
from labelsmooth.calibration.bootstrap import SUMMARY_METRICS, bootstrap_ci, calibration_summary
from labelsmooth.calibration.metrics import (
    bin_statistics,
    brier_score,
    classwise_calibration_error,
    confidence_gap,
    debiased_l2_calibration_error,
    expected_calibration_error,
    negative_log_likelihood,
)
from labelsmooth.calibration.streaming import CalibrationError


def random_predictions(n: int, k: int, seed: int, scale: float = 3.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, k, generator=g, dtype=torch.float64) * scale).to(dtype)
    target = torch.randint(k, (n,), generator=g)
    return logits, target


# Float64 references, one explicit loop per definition ------------------------------------------


def reference_bins(values: np.ndarray, n_bins: int, binning: str) -> np.ndarray:
    """Bin index of each value: (lo, hi] bins; 0 joins the first bin."""
    if binning == "width":
        uppers = [b / n_bins for b in range(1, n_bins + 1)]
    else:  # equal mass: upper edge = largest value of each equal-count chunk of the sorted values
        chunks = np.array_split(np.sort(values), n_bins)
        uppers, last = [], -np.inf
        for chunk in chunks:
            last = chunk[-1] if len(chunk) else last
            uppers.append(last)
        uppers[-1] = max(uppers[-1], 1.0)
    return np.array([next(b for b, hi in enumerate(uppers) if v <= hi) for v in values])


def reference_error(conf: np.ndarray, outcome: np.ndarray, n_bins: int, binning: str, norm: str) -> float:
    index = reference_bins(conf, n_bins, binning)
    gaps, weights = [], []
    for b in range(n_bins):
        members = index == b
        if members.any():
            gaps.append(abs(outcome[members].mean() - conf[members].mean()))
            weights.append(members.mean())
    gaps, weights = np.array(gaps), np.array(weights)
    return {"l1": float((weights * gaps).sum()), "l2": float(np.sqrt((weights * gaps**2).sum())),
            "max": float(gaps.max())}[norm]


def reference_debiased(conf: np.ndarray, correct: np.ndarray, n_bins: int, binning: str) -> float:
    index = reference_bins(conf, n_bins, binning)
    total = 0.0
    for b in range(n_bins):
        members = index == b
        n_b = members.sum()
        if n_b >= 2:
            acc = correct[members].mean()
            total += n_b / len(conf) * ((acc - conf[members].mean()) ** 2 - acc * (1 - acc) / (n_b - 1))
    return math.sqrt(max(total, 0.0))


def top_label_np(probs: torch.Tensor, target: torch.Tensor):
    p = probs.double().numpy()
    return p.max(1), (p.argmax(1) == target.numpy()).astype(float)


# Parity --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
@pytest.mark.parametrize("n_bins,n,k,seed", [(15, 2000, 10, 0), (10, 500, 3, 1), (1, 300, 5, 2),
                                             (40, 3000, 100, 3)])
def test_ece_matches_torchmetrics(norm, n_bins, n, k, seed):
    logits, target = random_predictions(n, k, seed)
    probs = logits.softmax(1)
    expected = multiclass_calibration_error(probs, target, k, n_bins=n_bins, norm=norm)
    got = expected_calibration_error(probs, target, n_bins, norm=norm)
    assert got.item() == pytest.approx(expected.item(), abs=2e-6)
    from_logits = expected_calibration_error(logits, target, n_bins, norm=norm, from_logits=True)
    assert from_logits.item() == pytest.approx(expected.item(), abs=2e-6)


@pytest.mark.parametrize("binning", ["width", "mass"])
@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_ece_matches_float64_reference(binning, norm):
    logits, target = random_predictions(700, 6, seed=4, dtype=torch.float64)
    probs = logits.softmax(1)
    conf, correct = top_label_np(probs, target)
    expected = reference_error(conf, correct, 12, binning, norm)
    assert expected_calibration_error(probs, target, 12, binning=binning, norm=norm).item() == \
        pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("binning", ["width", "mass"])
@pytest.mark.parametrize("norm", ["l1", "max"])
def test_classwise_matches_float64_reference(binning, norm):
    logits, target = random_predictions(400, 4, seed=5, dtype=torch.float64)
    probs = logits.softmax(1)
    p, y = probs.numpy(), target.numpy()
    expected = np.mean([reference_error(p[:, c], (y == c).astype(float), 8, binning, norm) for c in range(4)])
    assert classwise_calibration_error(probs, target, 8, binning=binning, norm=norm).item() == \
        pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("binning,n_bins", [("mass", 15), ("width", 10), ("mass", 3)])
def test_debiased_matches_float64_reference(binning, n_bins):
    logits, target = random_predictions(900, 5, seed=6, scale=1.5, dtype=torch.float64)
    probs = logits.softmax(1)
    conf, correct = top_label_np(probs, target)
    expected = reference_debiased(conf, correct, n_bins, binning)
    assert expected > 0  # the test data must exercise the unclipped branch
    assert debiased_l2_calibration_error(probs, target, n_bins, binning=binning).item() == \
        pytest.approx(expected, abs=1e-12)


def test_debiased_is_below_plug_in_l2():
    probs, target = random_predictions(600, 4, seed=7)
    probs = probs.softmax(1)
    plug_in = expected_calibration_error(probs, target, 15, binning="mass", norm="l2")
    assert debiased_l2_calibration_error(probs, target, 15) < plug_in


def test_brier_and_nll_match_independent_formulas():
    logits, target = random_predictions(300, 7, seed=8, dtype=torch.float64)
    probs = logits.softmax(1)
    onehot = np.eye(7)[target.numpy()]
    expected_brier = ((probs.numpy() - onehot) ** 2).sum(1).mean()
    assert brier_score(probs, target).item() == pytest.approx(expected_brier, abs=1e-12)
    assert brier_score(logits, target, from_logits=True).item() == pytest.approx(expected_brier, abs=1e-12)
    expected_nll = log_loss(target.numpy(), probs.numpy(), labels=list(range(7)))
    assert negative_log_likelihood(probs, target).item() == pytest.approx(expected_nll, rel=1e-10)
    assert negative_log_likelihood(logits, target, from_logits=True).item() == \
        pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-12)


def test_confidence_gap_keeps_the_sign():
    logits, target = random_predictions(500, 4, seed=15, dtype=torch.float64)
    conf, correct = top_label_np(logits.softmax(1), target)
    expected = conf.mean() - correct.mean()
    assert confidence_gap(logits, target, from_logits=True).item() == pytest.approx(expected, abs=1e-12)
    # Labels drawn from softmax(z): a model with logits z / 4 is under-confident on them.
    g = torch.Generator().manual_seed(16)
    drawn = torch.multinomial(logits.softmax(1), 1, generator=g).squeeze(1)
    assert confidence_gap(logits / 4, drawn, from_logits=True) < -0.05
    assert confidence_gap(logits * 4, drawn, from_logits=True) > 0.05


def test_nll_from_logits_is_exact_where_probabilities_underflow():
    logits = torch.tensor([[0.0, 200.0]])
    assert negative_log_likelihood(logits, torch.tensor([0]), from_logits=True).item() == pytest.approx(200.0)
    clipped = negative_log_likelihood(logits.softmax(1), torch.tensor([0])).item()
    assert clipped == pytest.approx(-math.log(1e-12))


def test_numpy_inputs_are_accepted():
    logits, target = random_predictions(200, 3, seed=9)
    probs = logits.softmax(1)
    assert expected_calibration_error(probs.numpy(), target.numpy()).item() == \
        expected_calibration_error(probs, target).item()


# Edges, ties, degenerate inputs ---------------------------------------------------------------------


def test_confidence_one_lands_in_the_top_bin_and_zero_in_the_first():
    conf = torch.tensor([[0.0, 1.0, 0.2, 0.4]], dtype=torch.float64)
    stats = bin_statistics(conf, torch.ones_like(conf), n_bins=5)
    assert stats.count.tolist() == [[2.0, 1.0, 0.0, 0.0, 1.0]]  # 0.2 and 0.4 close (lo, hi]
    # A wrong prediction at confidence 1.0 is a gap of 1 in the top bin.
    probs = torch.tensor([[1.0, 0.0]])
    assert expected_calibration_error(probs, torch.tensor([1]), 15).item() == 1.0
    assert expected_calibration_error(probs, torch.tensor([0]), 15).item() == 0.0
    # Class-wise: the zero probability of class 1 is scored in the first bin, outcome 0: no gap.
    assert classwise_calibration_error(probs, torch.tensor([0]), 15).item() == 0.0


def test_float32_edges_match_decimal_literals():
    # 0.2, 0.4, 0.6, 0.8 as float32 literals sit exactly on the edges k/15 * 3; each closes its bin.
    conf = torch.tensor([[0.2, 0.4, 0.6, 0.8]])
    index_of = bin_statistics(conf, torch.ones_like(conf), 15).count[0].nonzero().flatten().tolist()
    assert index_of == [2, 5, 8, 11]


def test_single_sample_and_empty_bins():
    probs = torch.tensor([[0.3, 0.7]])
    assert expected_calibration_error(probs, torch.tensor([1]), 15).item() == pytest.approx(0.3)
    assert expected_calibration_error(probs, torch.tensor([1]), 15, binning="mass").item() == pytest.approx(0.3)
    assert expected_calibration_error(probs, torch.tensor([1]), 15, norm="max").item() == pytest.approx(0.3)
    assert debiased_l2_calibration_error(probs, torch.tensor([1])).item() == 0.0


def test_mass_bins_keep_ties_together_and_ignore_order():
    conf = torch.tensor([0.5, 0.5, 0.5, 0.9, 0.6, 0.7], dtype=torch.float64)
    correct = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    stats = bin_statistics(conf[None], correct[None], 2, "mass")
    assert stats.count.tolist() == [[3.0, 3.0]]
    # Sorted: 0.5 0.5 | 0.5 0.6 | 0.7 | 0.9; edges 0.5, 0.6, 0.7: the third 0.5 joins the first bin.
    stats = bin_statistics(conf[None], correct[None], 4, "mass")
    assert stats.count.tolist() == [[3.0, 1.0, 1.0, 1.0]]
    assert stats.outcome.tolist() == [[2.0, 0.0, 1.0, 1.0]]
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    permuted = bin_statistics(conf[perm][None], correct[perm][None], 4, "mass")
    assert all(torch.equal(a, b) for a, b in zip(stats, permuted))


def test_mass_bins_left_empty_by_ties():
    conf = torch.tensor([[0.5, 0.5, 0.5, 0.5, 0.6, 0.7]])  # chunks 0.5 0.5 | 0.5 0.5 | 0.6 0.7
    assert bin_statistics(conf, torch.ones_like(conf), 3, "mass").count.tolist() == [[4.0, 0.0, 2.0]]


def test_more_bins_than_samples():
    logits, target = random_predictions(5, 3, seed=10, dtype=torch.float64)
    probs = logits.softmax(1)
    conf, correct = top_label_np(probs, target)
    for binning in ("width", "mass"):
        assert expected_calibration_error(probs, target, 50, binning=binning).item() == \
            pytest.approx(reference_error(conf, correct, 50, binning, "l1"), abs=1e-12)


# Validation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("probs,target,kwargs,match", [
    (torch.full((3, 2), 0.5), torch.zeros(4, dtype=torch.long), {}, "target must have shape"),
    (torch.full((3,), 0.5), torch.zeros(3, dtype=torch.long), {}, "shape \\(N, K\\)"),
    (torch.tensor([[1.5, -0.5]]), torch.tensor([0]), {}, "in \\[0, 1\\].*from_logits"),
    (torch.tensor([[0.5, 0.6]]), torch.tensor([0]), {}, "sum to 1"),
    (torch.tensor([[float("nan"), 1.0]]), torch.tensor([0]), {}, "NaN"),
    (torch.tensor([[float("nan"), 1.0]]), torch.tensor([0]), {"from_logits": True}, "finite logits"),
    (torch.tensor([[0.5, 0.5]]), torch.tensor([2]), {}, "class indices in \\[0, 2\\), got 2"),
    (torch.tensor([[0.5, 0.5]]), torch.tensor([0.0]), {}, "integer tensor"),
    (torch.tensor([[1, 0]]), torch.tensor([0]), {}, "floating"),
    (torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), {}, "at least one sample"),
    (torch.tensor([[0.5, 0.5]]), torch.tensor([0]), {"n_bins": 0}, "n_bins must be a positive int, got 0"),
    (torch.tensor([[0.5, 0.5]]), torch.tensor([0]), {"norm": "l3"}, "norm must be one of"),
    (torch.tensor([[0.5, 0.5]]), torch.tensor([0]), {"binning": "quantile"}, "binning must be one of"),
])
def test_bad_inputs_raise_clear_errors(probs, target, kwargs, match):
    with pytest.raises(ValueError, match=match):
        expected_calibration_error(probs, target, **kwargs)


def test_every_metric_validates():
    bad = torch.tensor([[0.5, 0.6]])
    for metric in (classwise_calibration_error, debiased_l2_calibration_error, brier_score,
                   negative_log_likelihood):
        with pytest.raises(ValueError, match="sum to 1"):
            metric(bad, torch.tensor([0]))


# Bootstrap -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bootstrap_matches_normal_approximation_for_a_mean():
    """For a mean (Brier), the percentile interval approaches mean +- 1.96 sd / sqrt(n)."""
    logits, target = random_predictions(2000, 4, seed=11, scale=1.0, dtype=torch.float64)
    probs = logits.softmax(1)
    per_row = ((probs - F.one_hot(target, 4)) ** 2).sum(1).numpy()
    half_width = 1.959964 * per_row.std(ddof=1) / math.sqrt(len(per_row))
    ci = calibration_summary(probs, target, n_resamples=2000, seed=3)["brier"]
    assert ci.estimate == pytest.approx(per_row.mean(), abs=1e-12)
    assert ci.high - ci.low == pytest.approx(2 * half_width, rel=0.1)
    assert ci.low < ci.estimate < ci.high
    few = bootstrap_ci(brier_score, probs, target, n_resamples=40, seed=3)
    assert bootstrap_ci(brier_score, probs, target, n_resamples=40, seed=3) == few  # reproducible
    assert bootstrap_ci(brier_score, probs, target, n_resamples=40, seed=4) != few


def test_bootstrap_ci_forwards_keywords_and_checks_arguments():
    logits, target = random_predictions(300, 3, seed=12)
    ci = bootstrap_ci(expected_calibration_error, logits, target, n_resamples=30, from_logits=True, n_bins=10)
    assert ci.estimate == pytest.approx(expected_calibration_error(logits, target, 10, from_logits=True).item())
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci(brier_score, logits.softmax(1), target, n_resamples=0)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(brier_score, logits.softmax(1), target, confidence=1.5)


@pytest.mark.slow
@pytest.mark.parametrize("from_logits", [False, True])
def test_summary_equals_one_bootstrap_per_metric(monkeypatch, from_logits):
    """The counts-matrix bootstrap draws the same rows as bootstrap_ci and gets the same values."""
    monkeypatch.setattr(bootstrap_module, "_COUNTS_PER_CHUNK", 900)  # 3 resamples per chunk
    logits, target = random_predictions(300, 4, seed=17, dtype=torch.float64)
    values = logits if from_logits else logits.softmax(1)
    summary = calibration_summary(values, target, n_bins=10, n_resamples=25, seed=5, from_logits=from_logits)
    assert list(summary) == list(SUMMARY_METRICS)
    for name, metric in SUMMARY_METRICS.items():
        binned = {"n_bins": 10} if name in ("ece", "mce", "classwise_ece") else {}
        expected = bootstrap_ci(metric.fn, values, target, 25, 0.95, 5, from_logits=from_logits, **binned)
        assert summary[name] == pytest.approx(expected, abs=1e-12), name


def test_summary_rejects_bad_arguments():
    probs = torch.tensor([[0.5, 0.5]])
    with pytest.raises(ValueError, match="n_resamples"):
        calibration_summary(probs, torch.tensor([0]), n_resamples=0)
    with pytest.raises(ValueError, match="n_bins"):
        calibration_summary(probs, torch.tensor([0]), n_bins=0)
    with pytest.raises(ValueError, match="sum to 1"):
        calibration_summary(torch.tensor([[0.5, 0.6]]), torch.tensor([0]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_probabilities_are_checked_at_their_own_tolerance(dtype):
    """Softmax outputs rounded to fp16 / bf16 are valid probabilities, although their rows sum to 1
    only within the dtype's precision (beyond fp32's tolerance, into which they are cast)."""
    logits, target = random_predictions(2000, 10, seed=21)
    probs = logits.softmax(1).to(dtype)
    assert (probs.float().sum(1) - 1).abs().max() > 1e-4
    expected = multiclass_calibration_error(probs.float(), target, 10, n_bins=15)
    assert expected_calibration_error(probs, target).item() == pytest.approx(expected.item(), abs=2e-6)
    for metric in (brier_score, negative_log_likelihood, confidence_gap):
        metric(probs, target)  # accepted
    with pytest.raises(ValueError, match="sum to 1 .*off by 0.0[56]"):
        expected_calibration_error((probs.float() * 1.05).clamp(max=1).to(dtype), target)


# Streaming module ----------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_module_equals_functional_over_batches(norm):
    logits, target = random_predictions(1000, 10, seed=13)
    metric = CalibrationError(n_bins=15, norm=norm, from_logits=True)
    for chunk_logits, chunk_target in zip(logits.split(128), target.split(128)):
        metric.update(chunk_logits, chunk_target)
    expected = expected_calibration_error(logits, target, 15, norm=norm, from_logits=True)
    assert metric.compute().item() == pytest.approx(expected.item(), abs=1e-12)
    assert metric.count.shape == (15,)
    metric.reset()
    with pytest.raises(ValueError, match="at least one update"):
        metric.compute()


def test_module_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_bins"):
        CalibrationError(n_bins=-1)
    with pytest.raises(ValueError, match="norm"):
        CalibrationError(norm="L1")


def test_module_all_reduces_across_processes(monkeypatch, tmp_path):
    """A real one-process gloo group, whose all_reduce is wrapped to add a second rank's sums."""
    logits, target = random_predictions(600, 5, seed=14)
    this_rank = CalibrationError(n_bins=10, from_logits=True)
    other_rank = CalibrationError(n_bins=10, from_logits=True)
    this_rank.update(logits[::2], target[::2])
    other_rank.update(logits[1::2], target[1::2])
    local = this_rank.compute().item()
    real_all_reduce = dist.all_reduce

    def all_reduce_with_other_rank(tensor, op=dist.ReduceOp.SUM, group=None):
        work = real_all_reduce(tensor, op=op, group=group)
        tensor += torch.stack([other_rank.count, other_rank.confidence_sum, other_rank.accuracy_sum])
        return work

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        monkeypatch.setattr(dist, "all_reduce", all_reduce_with_other_rank)
        expected = expected_calibration_error(logits, target, 10, from_logits=True).item()
        assert expected != pytest.approx(local, abs=1e-6)
        assert this_rank.compute().item() == pytest.approx(expected, abs=1e-12)
        assert this_rank.compute().item() == pytest.approx(expected, abs=1e-12)  # no double count
        assert this_rank.count.sum().item() == 300  # local buffers untouched
    finally:
        dist.destroy_process_group()


def test_module_state_stays_out_of_checkpoints():
    """Non-persistent buffers, as torchmetrics' states: a checkpoint of a model saved without the
    metric loads strictly into one that holds it, and back; .to() still moves the state."""
    plain = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with_metric = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with_metric.add_module("ece", CalibrationError(n_bins=5))
    with_metric.ece.update(torch.tensor([[0.9, 0.1]]), torch.tensor([0]))
    assert set(with_metric.state_dict()) == set(plain.state_dict()) == {"0.weight", "0.bias"}
    with_metric.load_state_dict(plain.state_dict(), strict=True)
    plain.load_state_dict(with_metric.state_dict(), strict=True)
    assert with_metric.ece.count.sum().item() == 1  # loading a checkpoint leaves the state alone
    moved = with_metric.ece.to(torch.float64)
    assert {name for name, _ in moved.named_buffers()} == {"count", "confidence_sum", "accuracy_sum"}
