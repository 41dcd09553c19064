"""lab.presets: the named experiments (`labelsmooth reproduce`): the blog experiment's protocol as
its settings, command-line flags winning over a preset, tiny end-to-end runs on digits, the
refusal to overwrite another sweep."""

from __future__ import annotations

import argparse
import json

import pytest

from labelsmooth.cli import main as cli_main
from labelsmooth.lab import presets
from labelsmooth.lab.config import SweepConfig
from labelsmooth.lab.sweep import add_sweep_arguments, config_from_args

TINY = ["--dataset", "digits", "--train-fraction", "1", "--epochs", "2", "--seeds", "0", "1",
        "--no-progress", "--threads", "1"]


def sweep_dests() -> set[str]:
    parser = argparse.ArgumentParser()
    add_sweep_arguments(parser)
    return set(vars(parser.parse_args([])))


def reproduce_config(argv: list[str]) -> SweepConfig:
    parser = argparse.ArgumentParser()
    presets.add_arguments(parser)
    args = parser.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if k not in presets.REPRODUCE_ONLY_FLAGS}
    return config_from_args(presets.sweep_namespace(args.preset, args.quick, given))


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
@pytest.mark.parametrize("quick", [False, True])
def test_every_preset_names_sweep_flags_and_makes_a_valid_config(name, quick):
    settings = presets.preset_settings(name, quick=quick)
    assert set(settings) <= sweep_dests()
    config = reproduce_config([name] + (["--quick"] if quick else []))
    assert config.dataset == "fashion-mnist"
    assert config.label_smoothing[0] == 0.0 and len(config.label_smoothing) >= 3
    assert len(config.seeds) >= 2  # intervals need two seeds at least


def test_seed_preset_is_the_blog_experiments_protocol():
    # the blog experiment: 6,000 of 60,000 images, 200 epochs, SGD 1e-3 / 0.9, batch 32
    config = reproduce_config(["seed-fashion-mnist"])
    assert (config.models, config.train_fraction, config.epochs, config.batch_size) == (
        ("seed-cnn",), 0.1, 200, 32)
    assert (config.optimizer, config.lr, config.momentum, config.weight_decay) == ("sgd", 1e-3, 0.9, 0.0)
    assert config.seeds == (0, 1, 2) and config.distributions == ("uniform",)


def test_flags_given_win_over_the_preset_even_at_the_sweep_default():
    default_lr = SweepConfig().lr
    config = reproduce_config(["seed-fashion-mnist", "--quick", "--lr", str(default_lr),
                               "--dataset", "digits", "--seeds", "4"])
    assert (config.lr, config.dataset, config.seeds) == (default_lr, "digits", (4,))
    quick = presets.preset_settings("seed-fashion-mnist", quick=True)
    assert (config.epochs, config.batch_size, config.momentum) == (
        quick["epochs"], quick["batch_size"], quick["momentum"])


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="preset must be one of"):
        presets.preset_settings("imagenet")


def test_reproduce_end_to_end_on_digits(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["reproduce", "seed-fashion-mnist", "--quick", *TINY, "--out", str(out)]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "Final test metrics" in printed and "report.html" in printed
    stored = json.loads((out / "config.json").read_text())
    assert (stored["lr"], stored["batch_size"], stored["epochs"], stored["dataset"]) == (
        1e-3, 32, 2, "digits")
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] and len(results["runs"]) == 6
    assert all(len(run["history"]) == 2 for run in results["runs"])
    assert (out / "report.html").is_file() and (out / "curves_val_nll.png").is_file()

    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert cli_main(argv) == 0  # complete: nothing retrained or rewritten
    assert "already complete" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before

    assert cli_main([*argv, "--epochs", "3"]) == 2  # another sweep in the same directory
    assert "different sweep" in capsys.readouterr().err
