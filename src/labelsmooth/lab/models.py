"""The lab's models, by name: ``seed-cnn``, ``mlp`` and ``resnet`` (registry :data:`MODELS`).

Every model splits into ``penultimate(x) -> (N, D)`` features and a linear ``classifier``
(an ``nn.Linear`` with weight (K, D)) so that ``model(x) == model.classifier(model.penultimate(x))``;
the analysis of penultimate-layer clusters (Müller et al. 2019) reads both. Models hold no
buffers and no randomness in ``forward`` (GroupNorm rather than BatchNorm, no dropout), so the
sweep can stack many copies' parameters and train them at once with ``torch.func``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MODELS", "MLP", "ResNet", "SeedCNN", "build_model"]


class SeedCNN(nn.Module):
    """Seed 000's CNN with a K-class head: three 3x3 stride-2 convolutions (16, 16, K channels).

    The seed ends in ``relu(conv3(h)) -> avg_pool2d(4)`` with 32 channels for 10 classes. Here
    ``conv3`` has K output channels and no ReLU (a logit must be able to go negative), and the
    pooling is the global mean (on 28x28 inputs conv3's map is 4x4, where ``avg_pool2d(4)`` *is*
    the global mean; the global mean also works on 8x8 digits). The last stage is written as
    ``classifier(penultimate)``, exactly the same function: with ``P_p`` the 3x3 patch of ``h``
    (16 channels, zero padded) under output position ``p`` of L positions,

        mean_p (W * P_p + b) = W * (mean_p P_p) + b,

    so ``penultimate(x) = mean_p P_p`` (the patches of conv3's input averaged over positions,
    D = 16 * 9 = 144) and ``classifier`` is a Linear whose weight is conv3's kernel flattened.
    ``forward`` evaluates the left side (a convolution, faster), so the two agree up to float
    rounding.
    Its default initialisation matches the seed's conv3 too (both draw from fan_in = 144).

    >>> import torch
    >>> model = SeedCNN(10, (1, 28, 28))
    >>> x = torch.randn(2, 1, 28, 28)
    >>> torch.allclose(model(x), model.classifier(model.penultimate(x)), atol=1e-5)
    True
    """

    def __init__(self, num_classes: int, in_shape: Sequence[int], channels: int = 16) -> None:
        super().__init__()
        if len(in_shape) != 3:
            raise ValueError(f"in_shape must be (channels, height, width) for seed-cnn, got {tuple(in_shape)}")
        self.conv1 = nn.Conv2d(in_shape[0], channels, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.classifier = nn.Linear(channels * 9, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """The input of the seed's third convolution, (N, channels, H/4, W/4)."""
        return F.relu(self.conv2(F.relu(self.conv1(x))))

    def penultimate(self, x: Tensor) -> Tensor:
        return F.unfold(self.features(x), 3, padding=1, stride=2).mean(2)

    def forward(self, x: Tensor) -> Tensor:
        # The same function as classifier(penultimate(x)), computed as the seed's conv3 + pooling:
        # a convolution is faster than unfold, above all under torch.func.vmap.
        kernel = self.classifier.weight.view(-1, self.conv2.out_channels, 3, 3)
        return F.conv2d(self.features(x), kernel, self.classifier.bias, stride=2, padding=1).mean((2, 3))


class MLP(nn.Module):
    """Fully connected: flatten, then ``Linear -> ReLU`` for each width, then the classifier.

    >>> import torch
    >>> MLP(3, (1, 8, 8), widths=(32, 16))(torch.randn(5, 1, 8, 8)).shape
    torch.Size([5, 3])
    """

    def __init__(self, num_classes: int, in_shape: Sequence[int], widths: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        if not widths or any(not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"widths must be a non-empty list of positive ints, got {widths!r}")
        sizes = [math.prod(in_shape), *widths]
        self.hidden = nn.Sequential(nn.Flatten(), *[
            layer for a, b in zip(sizes, sizes[1:]) for layer in (nn.Linear(a, b), nn.ReLU())])
        self.classifier = nn.Linear(sizes[-1], num_classes)

    def penultimate(self, x: Tensor) -> Tensor:
        return self.hidden(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.penultimate(x))


class BasicBlock(nn.Module):
    """``relu(x' + conv(relu(norm(conv(x)))))``-style residual block with GroupNorm."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout else
                         nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                       nn.GroupNorm(groups, cout)))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """A small ResNet for 28x28 (or 8x8) images: a 3x3 stem, three stages of ``blocks`` basic
    blocks with widths (w, 2w, 4w) and strides (1, 2, 2), GroupNorm, global average pooling.

    >>> import torch
    >>> ResNet(10, (1, 8, 8), width=8)(torch.randn(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """

    def __init__(self, num_classes: int, in_shape: Sequence[int], width: int = 16, blocks: int = 1,
                 groups: int = 4) -> None:
        super().__init__()
        if len(in_shape) != 3:
            raise ValueError(f"in_shape must be (channels, height, width) for resnet, got {tuple(in_shape)}")
        if width % groups:
            raise ValueError(f"width must be a multiple of groups={groups}, got {width}")
        self.stem = nn.Sequential(nn.Conv2d(in_shape[0], width, 3, padding=1, bias=False),
                                  nn.GroupNorm(groups, width), nn.ReLU())
        layers, cin = [], width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for b in range(blocks):
                layers.append(BasicBlock(cin, cout, 2 if stage and b == 0 else 1, groups))
                cin = cout
        self.stages = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)

    def penultimate(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x)).mean((2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.penultimate(x))


# name -> constructor(num_classes, in_shape, **options)
MODELS: dict[str, Callable[..., nn.Module]] = {
    "seed-cnn": SeedCNN,
    "mlp": MLP,
    "resnet": ResNet,
}


def build_model(name: str, num_classes: int, in_shape: Sequence[int], **options) -> nn.Module:
    """A fresh model from the registry, initialised from torch's global RNG.

    >>> build_model("seed-cnn", 10, (1, 28, 28)).classifier
    Linear(in_features=144, out_features=10, bias=True)
    """
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    if not (isinstance(num_classes, int) and num_classes >= 2):
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    return MODELS[name](num_classes, tuple(in_shape), **options)
