"""A Lightning classifier on scikit-learn's digits logging the smoothed loss, the unsmoothed NLL and the ECE.

    python examples/lightning_classifier.py        (CPU, seconds; needs lightning and scikit-learn)

Two pieces of labelsmooth in a LightningModule:

- ``labelsmooth.cross_entropy(..., label_smoothing=0.1, return_parts=True)`` returns the loss that
  is trained and, from the same pass, its unsmoothed part (the NLL), the number to compare across
  smoothing levels;
- ``labelsmooth.integrations.torchmetrics.CalibrationError`` is a ``torchmetrics.Metric``: the
  module updates it with each validation batch and logs the metric object itself, so Lightning
  computes the expected calibration error over the whole validation set at the epoch's end (summing
  the per-bin counts over the processes when training on several devices) and resets it.
"""

from __future__ import annotations

import lightning as L
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import labelsmooth
from labelsmooth.integrations.torchmetrics import CalibrationError

EPOCHS, BATCH_SIZE, TRAIN_SIZE = 6, 64, 1400


class DigitsClassifier(L.LightningModule):
    def __init__(self, label_smoothing: float = 0.1) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        self.val_ece = CalibrationError(n_bins=15, from_logits=True)

    def step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self.net(x)
        parts = labelsmooth.cross_entropy(logits, y, label_smoothing=self.label_smoothing, return_parts=True)
        self.log(f"{stage}/loss", parts.loss, on_epoch=True, on_step=False)
        self.log(f"{stage}/nll", parts.nll, on_epoch=True, on_step=False)
        if stage == "val":
            self.val_ece.update(logits, y)
            self.log("val/ece", self.val_ece)
        return parts.loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self.step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self.step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=3e-3)


class PrintEpoch(L.Callback):
    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        m = {name: float(value) for name, value in trainer.callback_metrics.items()}
        print(f"epoch {trainer.current_epoch + 1}: train loss {m['train/loss']:.3f}, "
              f"val loss {m['val/loss']:.3f}, val NLL {m['val/nll']:.3f}, val ECE {m['val/ece']:.3f}")


def digits_loaders() -> tuple[DataLoader, DataLoader]:
    digits = load_digits()  # 1797 8x8 images, ships with scikit-learn
    x, y = torch.tensor(digits.data, dtype=torch.float32) / 16, torch.tensor(digits.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, val = order[:TRAIN_SIZE], order[TRAIN_SIZE:]
    return (DataLoader(TensorDataset(x[train], y[train]), batch_size=BATCH_SIZE, shuffle=True),
            DataLoader(TensorDataset(x[val], y[val]), batch_size=256))


def main() -> None:
    L.seed_everything(0, verbose=False)
    train, val = digits_loaders()
    trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[PrintEpoch()])
    trainer.fit(DigitsClassifier(label_smoothing=0.1), train, val)


if __name__ == "__main__":
    main()
