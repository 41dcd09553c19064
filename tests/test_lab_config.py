"""lab.config: every bad setting is named in its error; the grid's order, keys and shards."""

from __future__ import annotations

import pytest

from labelsmooth.lab.config import SweepConfig, grid_cells


@pytest.mark.parametrize("settings, message", [
    (dict(label_smoothing=(1.5,)), "label_smoothing must be distinct finite numbers at most 1"),
    (dict(label_smoothing=(0.1, 0.1)), "label_smoothing must be distinct"),
    (dict(seeds=(-1,)), "seeds must be distinct non-negative integers"),
    (dict(models=("vgg",)), "models must be distinct names from"),
    (dict(distributions=("prior",)), "distributions must be distinct names from"),
    (dict(optimizer="lbfgs"), "optimizer must be one of"),
    (dict(epochs=0), "epochs must be an integer >= 1"),
    (dict(momentum=1.0), r"momentum must be in \[0, 1\)"),
    (dict(model_options={"mlp": {}}), "model_options must be a dict from a model name of the sweep"),
    (dict(shard="3/2"), "--shard: expected i/n"),
])
def test_config_errors_name_the_setting(settings, message):
    with pytest.raises(ValueError, match=message):
        SweepConfig(**settings)
    with pytest.raises(ValueError, match="unknown keys"):
        SweepConfig.from_dict({"epoch": 3})


def test_grid_order_keys_and_shards():
    config = SweepConfig(models=("mlp", "seed-cnn"), label_smoothing=(0.0, 0.1), seeds=(0, 1))
    keys = [c.key for c in grid_cells(config)]
    assert keys[:3] == ["mlp-uniform-eps0-seed0", "mlp-uniform-eps0-seed1", "mlp-uniform-eps0.1-seed0"]
    assert len(set(keys)) == 8
    halves = [grid_cells(SweepConfig(**{**config.to_dict(), "shard": s})) for s in ("1/2", "2/2")]
    assert sorted(c.key for h in halves for c in h) == sorted(keys)
