"""A small convolutional network on scikit-learn's digits, trained timm-style: Mixup / CutMix with labelsmooth's losses.

    python examples/timm_mixup.py          (CPU, a few seconds; needs timm and scikit-learn)

The training loop is the shape of timm's ``train.py``; the one line that changes is the import of
the losses (timm's ``Mixup`` stays):

    # from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from labelsmooth.integrations.timm import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

Mixup mixes pairs of images (or pastes a box of one into the other) and returns soft targets, the
mixed one-hots smoothed by ``label_smoothing``; SoftTargetCrossEntropy scores the logits against
them. The test split is scored with the plain cross-entropy, accuracy and the expected calibration
error (15 equal-width bins).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from timm.data import Mixup
from torch import nn

from labelsmooth.calibration import expected_calibration_error
from labelsmooth.integrations.timm import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

EPOCHS, BATCH_SIZE, LABEL_SMOOTHING, TRAIN_SIZE = 6, 64, 0.1, 1400


def small_convnet(num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(16 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, num_classes))


def main() -> None:
    torch.manual_seed(0)
    np.random.seed(0)  # Mixup draws its lambdas and boxes from NumPy
    digits = load_digits()  # 1797 8x8 images, ships with scikit-learn
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    labels = torch.tensor(digits.target)
    order = torch.randperm(len(labels))
    train, test = order[:TRAIN_SIZE], order[TRAIN_SIZE:]
    num_classes = 10

    model = small_convnet(num_classes)
    mixup_fn = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=LABEL_SMOOTHING, num_classes=num_classes)
    train_loss_fn = SoftTargetCrossEntropy() if mixup_fn else LabelSmoothingCrossEntropy(smoothing=LABEL_SMOOTHING)
    validate_loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    print(f"digits: {len(train)} training and {len(test)} test images; Mixup/CutMix with label smoothing "
          f"{LABEL_SMOOTHING}, loss {type(train_loss_fn).__name__} from labelsmooth")

    for epoch in range(1, EPOCHS + 1):
        model.train()
        losses = []
        for batch in train[torch.randperm(len(train))].split(BATCH_SIZE):
            batch = batch[: len(batch) // 2 * 2]  # Mixup pairs the batch with its reverse: even sizes
            x, soft_target = mixup_fn(images[batch], labels[batch])
            loss = train_loss_fn(model(x), soft_target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        model.eval()
        with torch.no_grad():
            logits = model(images[test])
        accuracy = (logits.argmax(1) == labels[test]).float().mean().item()
        ece = expected_calibration_error(logits, labels[test], from_logits=True).item()
        print(f"epoch {epoch:2d}: train loss {np.mean(losses):.3f}, test loss "
              f"{validate_loss_fn(logits, labels[test]).item():.3f}, accuracy {accuracy:.3f}, ECE {ece:.3f}")
    print(f"test accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
