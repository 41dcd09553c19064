"""Data sets for the lab, held whole in memory as tensors: Fashion-MNIST, digits, a user's .npz.

Three sources, one registry (:data:`SOURCES`):

- ``"fashion-mnist"``: the four original IDX files (gzip or raw) from Debian's
  ``dataset-fashion-mnist`` package at ``/usr/share/datasets/fashion-mnist/`` (override with
  ``data_dir`` or the ``LABELSMOOTH_DATA`` environment variable). Magic numbers, dimensions,
  payload sizes, label range and image/label counts are checked; a missing or corrupt file
  raises :class:`DataError` saying what is wrong and how to install the data.
- ``"digits"``: scikit-learn's bundled 8x8 digits (1,797 images), split once into a fixed,
  stratified official-style test set (20%, ``random_state=0``) whatever the run's seed.
- ``path/to/file.npz``: arrays ``x`` (N, ...) and ``y`` (N,) int, optional ``x_test``/``y_test``
  (otherwise a fixed stratified 20% test split is taken from ``x``), optional ``x_val``/``y_val``
  (the validation split; otherwise one is taken from the training images, below) and optional
  ``class_names``; (N, H, W) images get a channel axis. Loaded with ``allow_pickle=False``.
  Images must be finite numbers.

Labels: the labels found (over every split) must be exactly 0..K-1, K the number of classes (one
per class name when an .npz gives ``class_names``): a class that never occurs would still take
its share of the smoothing mass. ``remap_labels=True`` instead numbers the distinct labels found
0..K-1 in increasing order; ``Dataset.original_labels[k]`` is then the file's label of class
``k`` (and ``class_names``, when given, are indexed by the file's labels).

Splits, disjoint: ``x_train`` is a stratified, seeded sample of ``train_fraction`` of the
training pool; ``x_holdout`` is the *validation* split, a seeded stratified sample of training
images not used for training (when ``train_fraction < 1``: taken from the images left out, at
most 10% of the pool; otherwise 10% of the pool, so training uses the other 90%; an .npz's
``x_val`` when it has one). Everything a run chooses (per-epoch metrics, the best epoch, a
temperature) uses it; ``x_test`` (the official test split) gives the final numbers only.
``train_size`` keeps a stratified, seeded sample of that many training images (the validation and
test splits unchanged: distillation's students learn from a subset of their teachers' images).
``held_out_classes`` leaves those classes out of every split, the others renumbered ``0..m-1`` in
increasing order (``Dataset.classes`` holds each one's index in the full data set): a network
trained so never sees them, and a probe of its features can be fitted on them (the same splits of
the full data set hold their images). Images are float32, standardised by the training pool's mean
and standard deviation (one scalar each, kept as ``Dataset.mean`` / ``Dataset.std``), with a
channel axis: (N, C, H, W) for images, (N, D) for flat features. ``Dataset.pixel_max`` is the
stored value of a white pixel (255 for Fashion-MNIST's bytes, 16 for digits; None for an .npz,
whose scale is unknown): attacks and shifts, defined on pixels in ``[0, 1]``, need it.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..analysis.pixels import Standardize

__all__ = [
    "DEFAULT_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "DataError",
    "Dataset",
    "SOURCES",
    "load_dataset",
    "load_run_dataset",
    "read_idx",
    "training_subset",
]

DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
INSTALL_HINT = ("Install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or "
                "point --data-dir / LABELSMOOTH_DATA at a folder holding the four original files "
                "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                "t10k-labels-idx1-ubyte (each optionally .gz), or use --dataset digits (bundled "
                "with scikit-learn).")
# data set name -> the stored value of a white pixel (attacks and shifts work on pixels in [0, 1])
PIXEL_MAX = {"fashion-mnist": 255.0, "digits": 16.0}
HOLDOUT_FRACTION = 0.1  # of the training pool
TEST_FRACTION = 0.2     # of a source without an official test split
SPLIT_SEED = 0          # the fixed seed of such an official-style test split


class DataError(ValueError):
    """A data set is missing, malformed, or inconsistent; the message says what and how to fix it."""


@dataclass
class Dataset:
    """One data set in memory. Targets are int64 class indices in ``[0, num_classes)``.

    ``x_holdout`` / ``y_holdout`` are the validation split (training images not trained on),
    disjoint from ``x_test``. Every ``x`` is ``(stored - mean) / std``; ``pixel_max`` is the stored
    value of a white pixel (None when unknown), so ``stored / pixel_max`` is a pixel in ``[0, 1]``.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    x_holdout: Tensor
    y_holdout: Tensor
    num_classes: int
    class_names: tuple[str, ...]
    original_labels: tuple[int, ...] | None = None  # the file's label of each class, when remapped
    classes: tuple[int, ...] | None = None  # with held-out classes: each class's index in the full data set
    mean: float = 0.0                                 # subtracted from the stored values ...
    std: float = 1.0                                  # ... which are then divided by this
    pixel_max: float | None = None

    def pixel_map(self) -> Standardize | None:
        """The map from pixels in ``[0, 1]`` to this data set's inputs (``.pixels`` goes back), or None
        when the stored value of a white pixel is unknown (an .npz)."""
        if self.pixel_max is None:
            return None
        return Standardize(self.mean / self.pixel_max, self.std / self.pixel_max)

    @property
    def in_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. (1, 28, 28)."""
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> "Dataset":
        """This data set with every tensor on ``device`` (tensors already there are not copied)."""
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                                            if isinstance(getattr(self, f.name), Tensor)})


# 1. IDX files ----------------------------------------------------------------------------------------

# IDX type code -> numpy dtype (big-endian for multi-byte types), from the format's definition.
IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzip-compressed when its bytes start with the gzip magic).

    Layout: two zero bytes, a type code, the number of dimensions d, then d big-endian uint32
    sizes, then the payload. Raises :class:`DataError` on a wrong magic, an unknown type, or a
    payload whose length does not match the sizes (a truncated file).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "labels-idx1-ubyte"
    >>> _ = p.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 0, 9]))
    >>> read_idx(p).tolist()
    [7, 0, 9]
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path} is a corrupt or truncated gzip file ({exc})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file: expected magic bytes 00 00 <type> <ndim> with "
                        f"type in {sorted(IDX_DTYPES)}, got {raw[:4].hex(' ') or 'an empty file'}")
    ndim, dtype = raw[3], IDX_DTYPES[raw[2]]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated IDX header (ndim {ndim}, {len(raw)} bytes)")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path}: header says shape {shape} ({expected} payload bytes) but the file "
                        f"holds {len(raw) - header}; the file is truncated or corrupt")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"Fashion-MNIST file {stem}[.gz] not found in {folder}. {INSTALL_HINT}")


def _read_idx_split(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images_path, labels_path = (_find_idx(folder, f"{prefix}-{kind}") for kind in
                                ("images-idx3-ubyte", "labels-idx1-ubyte"))
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{images_path}: expected uint8 images of shape (N, rows, cols), got "
                        f"{images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(f"{labels_path}: expected uint8 labels of shape (N,), got {labels.dtype} "
                        f"{labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{images_path.name} holds {len(images)} images but {labels_path.name} holds "
                        f"{len(labels)} labels; the files do not belong together. {INSTALL_HINT}")
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"{labels_path}: labels must lie in [0, 10), found {int(labels.max())}")
    return images[:, None], labels


# 2. Sources: each returns (x_pool, y_pool, x_test, y_test, x_val | None, y_val | None, names) -------

RawData = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, "np.ndarray | None",
                "np.ndarray | None", "tuple[str, ...] | np.ndarray | None"]


def _fashion_mnist(data_dir: str | Path | None) -> RawData:
    folder = Path(data_dir or os.environ.get("LABELSMOOTH_DATA") or DEFAULT_FASHION_MNIST_DIR)
    if not folder.is_dir():
        raise DataError(f"Fashion-MNIST folder {folder} does not exist. {INSTALL_HINT}")
    x_pool, y_pool = _read_idx_split(folder, "train")
    x_test, y_test = _read_idx_split(folder, "t10k")
    if x_pool.shape[1:] != x_test.shape[1:]:
        raise DataError(f"Fashion-MNIST training images are {x_pool.shape[2:]} but test images are "
                        f"{x_test.shape[2:]}")
    return x_pool, y_pool, x_test, y_test, None, None, FASHION_MNIST_CLASSES


def _stratified_split(y: np.ndarray, test_size: float | int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, taken) with ``taken`` a stratified sample (sklearn), both sorted."""
    from sklearn.model_selection import train_test_split

    kept, taken = train_test_split(np.arange(len(y)), test_size=test_size, random_state=seed,
                                   stratify=y)
    return np.sort(kept), np.sort(taken)


def _digits(data_dir: str | Path | None) -> RawData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x, y = bunch.images[:, None].astype(np.float32), bunch.target.astype(np.int64)
    pool, test = _stratified_split(y, TEST_FRACTION, SPLIT_SEED)
    return x[pool], y[pool], x[test], y[test], None, None, tuple(str(n) for n in bunch.target_names)


def _npz_array(arrays, key: str, path: Path) -> np.ndarray:
    value = arrays[key]
    if key.startswith("y") and (value.ndim != 1 or not np.issubdtype(value.dtype, np.integer)):
        raise DataError(f"{path}: '{key}' must be a 1-D integer array of class indices, got "
                        f"{value.dtype} {value.shape}")
    if key.startswith("x") and not (np.issubdtype(value.dtype, np.number) and value.ndim >= 2):
        raise DataError(f"{path}: '{key}' must be a numeric array (N, ...) with N samples, got "
                        f"{value.dtype} {value.shape}")
    if key.startswith("x") and not np.isfinite(value).all():
        bad = np.argwhere(~np.isfinite(value))[0]
        raise DataError(f"{path}: '{key}' must hold finite numbers, got {value[tuple(bad)]} at index "
                        f"{tuple(int(i) for i in bad)} ({int((~np.isfinite(value)).sum())} non-finite values)")
    return value


def _npz(path: str | Path) -> RawData:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            present = set(arrays.files)
            missing = {"x", "y"} - present
            if missing:
                raise DataError(f"{path}: an .npz data set needs arrays 'x' and 'y'; missing "
                                f"{sorted(missing)} (found {sorted(present)})")
            loaded = {k: _npz_array(arrays, k, path) for k in present
                      if k in ("x", "y", "x_test", "y_test", "x_val", "y_val")}
            names = arrays["class_names"] if "class_names" in present else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"cannot read {path} as an .npz of plain arrays (allow_pickle=False): "
                        f"{exc or type(exc).__name__}") from None
    for split in ("", "_test", "_val"):
        xs, ys = loaded.get("x" + split), loaded.get("y" + split)
        if (xs is None) != (ys is None):
            raise DataError(f"{path}: 'x{split}' and 'y{split}' must be given together")
        if xs is not None and len(xs) != len(ys):
            raise DataError(f"{path}: 'x{split}' has {len(xs)} samples but 'y{split}' has {len(ys)}")
        if xs is not None and xs.shape[1:] != loaded["x"].shape[1:]:
            raise DataError(f"{path}: 'x{split}' samples have shape {xs.shape[1:]}, 'x' samples "
                            f"have {loaded['x'].shape[1:]}")
    if loaded["x"].ndim == 3:  # (N, H, W) images get a channel axis
        loaded.update({k: v[:, None] for k, v in loaded.items() if k.startswith("x")})
    x, y = loaded["x"].astype(np.float32), loaded["y"].astype(np.int64)
    if "x_test" in loaded:
        x_test, y_test = loaded["x_test"].astype(np.float32), loaded["y_test"].astype(np.int64)
    else:
        pool, test = _stratified_split(y, TEST_FRACTION, SPLIT_SEED)
        x, y, x_test, y_test = x[pool], y[pool], x[test], y[test]
    x_val = loaded["x_val"].astype(np.float32) if "x_val" in loaded else None
    y_val = loaded["y_val"].astype(np.int64) if "y_val" in loaded else None
    return x, y, x_test, y_test, x_val, y_val, names


# data set name -> reader(data_dir); anything ending in .npz is read by _npz.
SOURCES: dict[str, Callable[[str | Path | None], RawData]] = {
    "fashion-mnist": _fashion_mnist,
    "digits": _digits,
}


def _class_labels(source: str, labels: tuple, names, remap: bool) -> tuple:
    """``(original_labels, class_names, labels)``: the labels of every split checked to be exactly
    0..K-1 (K: one per class name when names are given, else the largest label + 1), or with
    ``remap`` renumbered 0..K-1 in increasing order (``original_labels``: the source's label of
    each class, else None). ``labels`` may hold None for an absent split."""
    found = np.unique(np.concatenate([y for y in labels if y is not None]))
    if not found.size:
        raise DataError(f"{source}: expected labels, got none (every split is empty)")
    if names is not None and (np.ndim(names) != 1 or np.asarray(names).dtype.kind not in "US"):
        raise DataError(f"{source}: 'class_names' must be a 1-D array of strings, got "
                        f"{np.asarray(names).dtype} {np.shape(names)}")
    if found.size and found[0] < 0:
        raise DataError(f"{source}: class indices must be non-negative, got {found[found < 0].tolist()}")
    if names is not None and len(names) <= found[-1]:  # indexed by the source's labels, remapped or not
        raise DataError(f"{source}: 'class_names' must be one name per label (labels go up to {found[-1]}), "
                        f"got {len(names)} names")
    if remap:
        lookup = np.full(found[-1] + 1, -1, dtype=np.int64)
        lookup[found] = np.arange(found.size)
        return (tuple(int(k) for k in found), tuple(str(names[k] if names is not None else k) for k in found),
                tuple(None if y is None else lookup[y] for y in labels))
    classes = len(names) if names is not None else int(found[-1]) + 1
    if not np.array_equal(found, np.arange(classes)):
        expected = (f"every class 0..{classes - 1} of its {classes} 'class_names'" if names is not None
                    else f"labels 0..K-1 (K = {classes}: the largest label + 1)")
        shown = f"{found[:20].tolist()}{' ...' if found.size > 20 else ''} ({found.size} distinct)"
        raise DataError(f"{source}: expected {expected} to occur, got labels {shown}; a class that never "
                        f"occurs still takes a share of the smoothing mass. Renumber the labels 0..K-1, "
                        f"or pass --remap-labels to number the labels found 0..K-1 in increasing order")
    return None, tuple(str(n) for n in names) if names is not None else tuple(map(str, range(classes))), labels


def _train_indices(y: np.ndarray, train_fraction: float, seed: int) -> np.ndarray:
    """Stratified, seeded indices of ``train_fraction`` of the training pool (sorted)."""
    n_classes = len(np.unique(y))
    n_train = round(train_fraction * len(y))
    if n_train < n_classes or len(y) - n_train < n_classes:
        raise ValueError(f"train_fraction must leave at least one image per class ({n_classes} "
                         f"classes) on both sides of the split of {len(y)} images, got {train_fraction}")
    return _stratified_split(y, n_train, seed)[1]


def _train_holdout_indices(y: np.ndarray, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded (train, holdout) indices into the training pool, disjoint."""
    n_holdout = max(1, round(HOLDOUT_FRACTION * len(y)))
    if train_fraction >= 1:
        return _stratified_split(y, n_holdout, seed)
    train = _train_indices(y, train_fraction, seed)
    rest = np.setdiff1d(np.arange(len(y)), train)
    if len(rest) <= n_holdout:
        return train, rest
    _, holdout = _stratified_split(y[rest], n_holdout, seed)
    return train, rest[holdout]


def _mean_std(x: np.ndarray, rows: int = 4096) -> tuple[float, float]:
    """Scalar mean and standard deviation (1 when 0) in float64, a block of rows at a time."""
    total = square = 0.0
    for start in range(0, len(x), rows):
        block = x[start:start + rows].astype(np.float64)
        total, square = total + block.sum(), square + np.square(block).sum()
    mean = total / x.size
    return mean, float(np.sqrt(max(square / x.size - mean * mean, 0.0))) or 1.0


def training_subset(y: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a stratified, seeded sample of ``size`` of the labels ``y`` (every class kept).

    >>> training_subset(np.array([0, 0, 0, 1, 1, 1]), 4, 0).tolist()
    [0, 1, 3, 4]
    """
    classes = len(np.unique(y))
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not classes <= size <= len(y):
        raise ValueError(f"train_size must be an integer from {classes} (one image per class) to {len(y)} (the "
                         f"training split's size), got {size!r}")
    return np.arange(len(y)) if size == len(y) else _stratified_split(y, int(size), seed)[1]


def _without_classes(labels: tuple[np.ndarray, ...], held_out, num_classes: int, source: str):
    """(kept classes, per split the indices of rows in kept classes, their labels renumbered 0..m-1)."""
    held = [int(k) for k in held_out]
    if not all(0 <= k < num_classes for k in held) or len(set(held)) != len(held) \
            or not 2 <= num_classes - len(held):
        raise DataError(f"{source}: held_out_classes must be distinct classes in [0, {num_classes}) leaving at "
                        f"least 2 to train on, got {held}")
    kept = tuple(k for k in range(num_classes) if k not in held)
    lookup = np.full(num_classes, -1, dtype=np.int64)
    lookup[list(kept)] = np.arange(len(kept))
    rows = [np.flatnonzero(lookup[y] >= 0) for y in labels]
    return kept, rows, [lookup[y[r]] for y, r in zip(labels, rows)]


def load_dataset(name_or_path: str | Path, *, data_dir: str | Path | None = None,
                 train_fraction: float = 1.0, seed: int = 0, remap_labels: bool = False,
                 train_size: int | None = None, held_out_classes=()) -> Dataset:
    """Load a data set by name (:data:`SOURCES`) or ``.npz`` path, split and standardise it.

    ``seed`` fixes the training subsample, the validation (hold-out) split and the ``train_size``
    sample (the official test split never depends on it). ``x`` is standardised as
    ``(x - mean) / std`` with the scalar mean and std of the whole training pool.
    ``held_out_classes`` are left out of every split (see the module docstring).

    >>> ds = load_dataset("digits", train_fraction=0.5)
    >>> ds.in_shape, ds.num_classes, len(ds.x_train), len(ds.x_holdout), len(ds.x_test)
    ((1, 8, 8), 10, 718, 144, 360)
    >>> part = load_dataset("digits", train_fraction=0.5, held_out_classes=(5, 6, 7, 8, 9), train_size=100)
    >>> part.num_classes, part.classes, len(part.x_train), int(part.y_test.max())
    (5, (0, 1, 2, 3, 4), 100, 4)
    """
    name = str(name_or_path)
    if not (isinstance(train_fraction, (int, float)) and 0 < train_fraction <= 1):
        raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction!r}")
    if name.endswith(".npz"):
        raw = _npz(name)
    elif name in SOURCES:
        raw = SOURCES[name](data_dir)
    else:
        raise ValueError(f"dataset must be one of {sorted(SOURCES)} or a path ending in .npz, got {name!r}")
    x_pool, y_pool, x_test, y_test, x_val, y_val, class_names = raw
    original_labels, class_names, (y_pool, y_test, y_val) = _class_labels(
        name, (y_pool, y_test, y_val), class_names, remap_labels)
    if x_val is None:
        train, holdout = _train_holdout_indices(y_pool, train_fraction, seed)
        x_val, y_val = x_pool[holdout], y_pool[holdout]
    else:
        train = np.arange(len(y_pool)) if train_fraction >= 1 else _train_indices(y_pool, train_fraction, seed)
    mean, std = _mean_std(x_pool)
    x_train, y_train, classes = x_pool[train], y_pool[train], None
    if len(held_out_classes):
        classes, rows, (y_train, y_test, y_val) = _without_classes((y_train, y_test, y_val), held_out_classes,
                                                                   len(class_names), name)
        x_train, x_test, x_val = x_train[rows[0]], x_test[rows[1]], x_val[rows[2]]
        class_names = tuple(class_names[k] for k in classes)
    if train_size is not None:
        subset = training_subset(y_train, train_size, seed)
        x_train, y_train = x_train[subset], y_train[subset]

    def tensors(x: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor]:
        x = (x.astype(np.float32) - np.float32(mean)) / np.float32(std)
        return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))

    return Dataset(name, *tensors(x_train, y_train), *tensors(x_test, y_test),
                   *tensors(x_val, y_val), len(class_names), class_names, original_labels, classes,
                   float(np.float32(mean)), float(np.float32(std)), PIXEL_MAX.get(name))


def load_run_dataset(config: dict, *, full: bool = False) -> Dataset:
    """The data set a sweep trained on, from its stored config (``config.json``'s keys; a key an
    older run lacks takes the default). ``full``: the same splits with every class and the whole
    training split (no ``held_out_classes``, no ``train_size``): where probes find the held-out
    classes' images."""
    return load_dataset(config.get("dataset", "digits"), data_dir=config.get("data_dir"),
                        train_fraction=config.get("train_fraction", 1.0), seed=config.get("data_seed", 0),
                        remap_labels=config.get("remap_labels", False),
                        train_size=None if full else config.get("train_size"),
                        held_out_classes=() if full else tuple(config.get("held_out_classes") or ()))
