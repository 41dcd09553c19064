"""Label noise for the lab's training labels: an exact, seeded fraction flipped, symmetric or asymmetric.

Lukasik et al. (2020) find that label smoothing mitigates label noise much as loss correction
does; Wei et al. (2022) that *negative* smoothing does better when the noise rate is high. To test
both, the lab trains on labels of which a known fraction ``r`` was flipped (the validation and test
labels stay clean) and records which ones:

- *symmetric* noise: ``round(r * n)`` labels, chosen uniformly, each moved to a uniformly chosen
  *other* class;
- *asymmetric* noise (Patrini et al. 2017): in every source class ``k`` of a mapping,
  ``round(r * n_k)`` of its labels are moved to the confusable class ``mapping[k]``, the exact form
  of Patrini et al.'s "each label of class k flipped with probability r". The mappings here:
  :data:`DIGITS_CONFUSABLE`, Patrini et al.'s own for MNIST (2 -> 7, 3 -> 8, 5 <-> 6, 7 -> 1), and
  :data:`FASHION_MNIST_CONFUSABLE`, built the same way from visually close classes: the three
  disjoint pairs a classifier confuses most (a two-layer MLP trained on Fashion-MNIST, 87% test
  accuracy, errors either way on the test set: T-shirt/top <-> Shirt 237, Pullover <-> Coat 205,
  Sneaker <-> Ankle boot 72, ahead of Sandal <-> Sneaker 63). Swaps keep every class's share of the
  labels, so only the pairing is corrupted, as with Patrini et al.'s CIFAR-10 cat <-> dog.

The draw depends on the seed alone, never on the rate: with one seed, the labels flipped at a
lower rate are among those flipped at a higher one, with the same new classes, so a curve over
noise rates compares nested corruptions rather than independent ones.

In a sweep (:func:`sweep_draws`) every (noise rate, seed) cell gets the draw of its seed (mixed
with the data seed by :func:`noise_seed`): the cells of one seed, whatever their eps, train on the
same labels (the sweep's paired design), and each seed is a new draw of the noise. The run
directory records every draw (:func:`draw_arrays`, ``label_noise.npz``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from .._checks import ContentChecks, check_class_indices

__all__ = ["DIGITS_CONFUSABLE", "FASHION_MNIST_CONFUSABLE", "NOISE_KINDS", "NoisyLabels", "draw_arrays",
           "flip_labels", "noise_seed", "sweep_draws"]

NOISE_KINDS = ("symmetric", "asymmetric")
# Patrini et al. (2017), MNIST: 2 -> 7, 3 -> 8, 5 <-> 6, 7 -> 1 (the digits of scikit-learn's set too).
DIGITS_CONFUSABLE = {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}
# Fashion-MNIST: 0 T-shirt/top <-> 6 Shirt, 2 Pullover <-> 4 Coat, 7 Sneaker <-> 9 Ankle boot.
FASHION_MNIST_CONFUSABLE = {0: 6, 6: 0, 2: 4, 4: 2, 7: 9, 9: 7}


@dataclass(frozen=True)
class NoisyLabels:
    """Training labels after flipping, and which were flipped.

    ``labels`` (n,) int64 on the input's device; ``flipped`` (m,) sorted int64 indices of the labels
    that changed (every flip changes its label); ``rate`` is ``m / n``.
    """

    labels: Tensor
    flipped: Tensor

    @property
    def rate(self) -> float:
        return self.flipped.numel() / max(self.labels.numel(), 1)


def _nearest_count(rate: float, n: int) -> int:
    """``round(rate * n)`` with halves rounded up (Python's round would round them to even)."""
    return int(math.floor(rate * n + 0.5))


def _check_rate(label_noise: float, kind: str, num_classes: int) -> None:
    if kind not in NOISE_KINDS:
        raise ValueError(f"kind must be one of {NOISE_KINDS}, got {kind!r}")
    if isinstance(label_noise, bool) or not isinstance(label_noise, (int, float)) or not 0 <= label_noise < 1:
        raise ValueError(f"label_noise must be a fraction of training labels in [0, 1), got {label_noise!r}")
    # Beyond these rates the true class is no longer the most frequent label of its examples.
    limit, why = ((0.5, "at 0.5 or more most labels of a source class name its partner")
                  if kind == "asymmetric" else
                  ((num_classes - 1) / num_classes, f"at {num_classes - 1}/{num_classes} or more the labels "
                                                    f"say nothing about the class"))
    if label_noise >= limit:
        raise ValueError(f"label_noise must be below {limit:g} for {kind} noise over {num_classes} classes "
                         f"({why}), got {label_noise!r}")


def _check_mapping(mapping: Mapping[int, int] | None, num_classes: int) -> dict[int, int]:
    if not mapping:
        raise ValueError("mapping must give asymmetric noise its confusable classes {source: target}, e.g. "
                         "FASHION_MNIST_CONFUSABLE; got none")
    pairs = {int(k): int(v) for k, v in mapping.items()}
    bad = [(k, v) for k, v in pairs.items() if not (0 <= k < num_classes and 0 <= v < num_classes) or k == v]
    if bad:
        raise ValueError(f"mapping must send classes in [0, {num_classes}) to other classes in that range, "
                         f"got {bad}")
    return pairs


def flip_labels(labels: Tensor, label_noise: float, *, num_classes: int, kind: str = "symmetric",
                mapping: Mapping[int, int] | None = None, seed: int = 0) -> NoisyLabels:
    r"""Flip a seeded fraction ``label_noise`` of ``labels``, symmetric or asymmetric (see the module).

    Symmetric: ``m = round(r n)`` indices drawn uniformly without replacement; each label ``y``
    becomes ``(y + u) mod K`` with ``u`` uniform on ``{1, ..., K - 1}``, i.e. a uniformly chosen other
    class. Asymmetric: in each source class ``k`` of ``mapping``, ``round(r n_k)`` of its labels,
    drawn uniformly, become ``mapping[k]``. Halves round up. ``label_noise`` must lie in ``[0, 1)``,
    and below ``(K - 1) / K`` (symmetric) or ``1/2`` (asymmetric), where the true class stops being
    its examples' most frequent label.

    Args:
        labels: (n,) class indices in ``[0, num_classes)`` (the training labels only).
        seed: the only source of randomness (a private generator; the global RNG is untouched).

    >>> noisy = flip_labels(torch.arange(10), 0.3, num_classes=10, seed=0)
    >>> len(noisy.flipped), bool((noisy.labels[noisy.flipped] != torch.arange(10)[noisy.flipped]).all())
    (3, True)
    >>> flip_labels(torch.tensor([0, 0, 6, 6, 1]), 0.49, num_classes=10, kind="asymmetric",
    ...             mapping=FASHION_MNIST_CONFUSABLE).flipped.numel()  # round(0.98) in classes 0 and 6
    2
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.is_floating_point() \
            or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be a 1-D integer tensor of class indices, got "
                         f"{labels.dtype if isinstance(labels, Tensor) else type(labels).__name__}"
                         f"{'' if not isinstance(labels, Tensor) else f' of shape {tuple(labels.shape)}'}")
    checks = ContentChecks()
    check_class_indices(labels, num_classes, None, checks, name="labels")
    checks.raise_if_failed()
    _check_rate(label_noise, kind, num_classes)
    y = labels.detach().cpu().long()
    generator = torch.Generator().manual_seed(seed)
    noisy = y.clone()
    if kind == "symmetric":
        order = torch.randperm(len(y), generator=generator)
        offsets = torch.randint(1, num_classes, (len(y),), generator=generator)
        flipped = order[:_nearest_count(label_noise, len(y))]
        noisy[flipped] = (y[flipped] + offsets[flipped]) % num_classes
    else:
        pairs = _check_mapping(mapping, num_classes)
        chosen = []
        for source in sorted(pairs):  # one permutation per class, whatever the rate: nested draws
            members = torch.nonzero(y == source).flatten()
            members = members[torch.randperm(len(members), generator=generator)]
            chosen.append(members[:_nearest_count(label_noise, len(members))])
            noisy[chosen[-1]] = pairs[source]
        flipped = torch.cat(chosen)
    return NoisyLabels(labels=noisy.to(labels.device), flipped=flipped.sort().values.to(labels.device))


# the stream of seeds label noise draws from, apart from the weights' and the batch order's
NOISE_STREAM = 0x6E6F697365


def noise_seed(data_seed: int, seed: int) -> int:
    """The seed of :func:`flip_labels` for a sweep's ``seed`` on the training split of ``data_seed``.

    >>> noise_seed(0, 1) == noise_seed(0, 1) != noise_seed(1, 1)
    True
    """
    state = np.random.SeedSequence([NOISE_STREAM, data_seed, seed]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def sweep_draws(labels: Tensor, rates: Sequence[float], seeds: Sequence[int], *, num_classes: int, kind: str,
                mapping: Mapping[int, int] | None, data_seed: int) -> dict[tuple[float, int], NoisyLabels]:
    """(rate, seed) -> the training labels of that sweep cell, for every rate > 0 and seed.

    >>> draws = sweep_draws(torch.arange(10) % 5, (0.0, 0.2, 0.4), (0, 1), num_classes=5, kind="symmetric",
    ...                     mapping=None, data_seed=0)
    >>> sorted(draws), set(draws[0.2, 0].flipped.tolist()) <= set(draws[0.4, 0].flipped.tolist())
    ([(0.2, 0), (0.2, 1), (0.4, 0), (0.4, 1)], True)
    """
    return {(float(rate), seed): flip_labels(labels, rate, num_classes=num_classes, kind=kind, mapping=mapping,
                                             seed=noise_seed(data_seed, seed))
            for rate in rates if rate > 0 for seed in seeds}


def draw_arrays(labels: Tensor, draws: Mapping[tuple[float, int], NoisyLabels]) -> dict[str, np.ndarray]:
    """The arrays that record ``draws`` of the training ``labels`` (``label_noise.npz``).

    ``train_labels``: the clean training labels (n,); per draw, ``flipped_noise<r>_seed<s>``: the
    indices into the training split of the flipped labels, sorted, and ``labels_noise<r>_seed<s>``:
    the labels they were given instead.

    >>> draws = sweep_draws(torch.arange(4), (0.5,), (0,), num_classes=4, kind="symmetric", mapping=None,
    ...                     data_seed=0)
    >>> sorted(draw_arrays(torch.arange(4), draws))
    ['flipped_noise0.5_seed0', 'labels_noise0.5_seed0', 'train_labels']
    """
    arrays = {"train_labels": labels.cpu().numpy().astype(np.int64)}
    for (rate, seed), noisy in sorted(draws.items()):
        arrays[f"flipped_noise{rate:g}_seed{seed}"] = noisy.flipped.cpu().numpy().astype(np.int64)
        arrays[f"labels_noise{rate:g}_seed{seed}"] = noisy.labels[noisy.flipped].cpu().numpy().astype(np.int64)
    return arrays
