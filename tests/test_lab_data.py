"""lab.data: IDX reading (gz and raw, corrupt files), Fashion-MNIST layout, digits, .npz, splits.

IDX files are written here byte by byte from the format's definition (magic 00 00 08 ndim, then
big-endian sizes), independently of the reader. Images carry their own index in their pixels,
so every split can be traced back to the images written.
"""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from labelsmooth.lab.data import (
    DEFAULT_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASSES,
    DataError,
    load_dataset,
    read_idx,
)

SIDE = 6  # small images keep the files tiny; the reader does not require 28x28


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


def images_and_labels(count: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Image i holds offset + i in base 200 in its first two pixels; labels cycle through 10 classes."""
    images = np.zeros((count, SIDE, SIDE), np.uint8)
    images[:, 0, 0], images[:, 0, 1] = np.divmod(offset + np.arange(count), 200)
    images[:, 1:, :] = np.arange(count)[:, None, None] % 7 * 30
    return images, (np.arange(count) % 10).astype(np.uint8)


def image_index(x: torch.Tensor, mean: float, std: float) -> np.ndarray:
    """The index written into standardised images x (N, 1, SIDE, SIDE) by images_and_labels."""
    pixels = np.rint(x[:, 0, 0, :2].double().numpy() * std + mean).astype(int)
    return pixels[:, 0] * 200 + pixels[:, 1]


def write_fashion_mnist(folder, *, n_train=200, n_test=50, compress=True):
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    write = gzip.compress if compress else (lambda b: b)
    arrays = {}
    for prefix, count, offset in (("train", n_train, 0), ("t10k", n_test, 100)):
        images, labels = images_and_labels(count, offset)
        (folder / f"{prefix}-images-idx3-ubyte{suffix}").write_bytes(write(idx_bytes(images)))
        (folder / f"{prefix}-labels-idx1-ubyte{suffix}").write_bytes(write(idx_bytes(labels)))
        arrays[prefix] = (images, labels)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_gz_and_raw(tmp_path, compress):
    images, labels = images_and_labels(13, 0)
    for name, array in (("i", images), ("l", labels)):
        data = idx_bytes(array)
        path = tmp_path / name
        path.write_bytes(gzip.compress(data) if compress else data)
        np.testing.assert_array_equal(read_idx(path), array)


@pytest.mark.parametrize("corrupt, message", [
    (lambda b: b[:-5], "truncated or corrupt"),
    (lambda b: b + b"\x00", "truncated or corrupt"),
    (lambda b: b"\x00\x01" + b[2:], "not an IDX file"),
    (lambda b: b[:2] + b"\x42" + b[3:], "not an IDX file"),
    (lambda b: b[:6], "truncated IDX header"),
    (lambda b: b"", "not an IDX file"),
    (lambda b: gzip.compress(b)[:-12], "corrupt or truncated gzip"),
])
def test_read_idx_rejects_corrupt_files(tmp_path, corrupt, message):
    path = tmp_path / "images"
    path.write_bytes(corrupt(idx_bytes(images_and_labels(4, 0)[0])))
    with pytest.raises(DataError, match=message):
        read_idx(path)


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_layout_and_standardisation(tmp_path, compress):
    arrays = write_fashion_mnist(tmp_path, compress=compress)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path)
    train_images, train_labels = arrays["train"]
    pool = train_images.astype(np.float64)
    mean, std = pool.mean(), pool.std()
    # test split = the whole official test set, in order
    test_images, test_labels = arrays["t10k"]
    np.testing.assert_allclose(ds.x_test.numpy()[:, 0], (test_images - mean) / std, rtol=1e-5, atol=1e-5)
    assert torch.equal(ds.y_test, torch.from_numpy(test_labels.astype(np.int64)))
    assert ds.x_test.dtype == torch.float32
    assert ds.in_shape == (1, SIDE, SIDE) and ds.num_classes == 10
    assert ds.class_names == FASHION_MNIST_CLASSES
    # train + validation (hold-out) partition the training pool: 90% / 10%; the test images
    # (indices 100 + i) are in neither
    train, holdout = image_index(ds.x_train, mean, std), image_index(ds.x_holdout, mean, std)
    assert sorted(np.concatenate([train, holdout]).tolist()) == list(range(200))
    assert len(holdout) == 20
    test = image_index(ds.x_test, mean, std)
    assert test.tolist() == list(range(100, 150))
    np.testing.assert_array_equal(ds.y_train.numpy(), train_labels[train])
    # the standardisation it used is recorded, and a stored byte / 255 is a pixel in [0, 1]
    assert (ds.mean, ds.std, ds.pixel_max) == (pytest.approx(mean, rel=1e-6), pytest.approx(std, rel=1e-6), 255.0)
    np.testing.assert_allclose(ds.x_test.double().numpy()[:, 0] * ds.std + ds.mean, test_images, atol=1e-3)


def test_fashion_mnist_train_fraction_holdout_from_unused_images(tmp_path):
    pool = write_fashion_mnist(tmp_path, n_train=400)["train"][0].astype(np.float64)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path, train_fraction=0.25, seed=3)
    train, holdout = (set(image_index(x, pool.mean(), pool.std())) for x in (ds.x_train, ds.x_holdout))
    assert len(train) == 100 and len(holdout) == 40 and not train & holdout
    assert ds.y_train.bincount(minlength=10).tolist() == [10] * 10  # stratified
    assert ds.y_holdout.bincount(minlength=10).tolist() == [4] * 10
    again = load_dataset("fashion-mnist", data_dir=tmp_path, train_fraction=0.25, seed=3)
    other = load_dataset("fashion-mnist", data_dir=tmp_path, train_fraction=0.25, seed=4)
    assert torch.equal(again.x_train, ds.x_train) and not torch.equal(other.x_train, ds.x_train)
    assert torch.equal(other.x_test, ds.x_test)


@pytest.mark.parametrize("train_fraction", [1.0, 0.5, 0.25])
def test_validation_and_test_images_are_disjoint(tmp_path, train_fraction):
    """The training pool's images are 0..399 and the test set's 1000..1049 (written into their
    pixels): the validation split holds only pool images that are not trained on."""
    write_fashion_mnist(tmp_path, n_train=400)
    pool = images_and_labels(400, 0)[0].astype(np.float64)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images_and_labels(50, 1000)[0])))
    ds = load_dataset("fashion-mnist", data_dir=tmp_path, train_fraction=train_fraction, seed=1)
    train, validation, test = (set(image_index(x, pool.mean(), pool.std()).tolist())
                               for x in (ds.x_train, ds.x_holdout, ds.x_test))
    assert test == set(range(1000, 1050))
    assert validation and validation <= set(range(400)) and not validation & train and not validation & test
    assert len(validation) == 40 and len(train) == round(train_fraction * 400) - (40 if train_fraction == 1 else 0)


def test_fashion_mnist_from_environment_variable(tmp_path, monkeypatch):
    write_fashion_mnist(tmp_path)
    monkeypatch.setenv("LABELSMOOTH_DATA", str(tmp_path))
    assert len(load_dataset("fashion-mnist").x_test) == 50


def test_fashion_mnist_mismatched_counts(tmp_path):
    write_fashion_mnist(tmp_path)
    labels = images_and_labels(199, 0)[1]
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    with pytest.raises(DataError, match="200 images but train-labels-idx1-ubyte.gz holds 199 labels"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_fashion_mnist_label_out_of_range(tmp_path):
    write_fashion_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.full(50, 10))))
    with pytest.raises(DataError, match=r"labels must lie in \[0, 10\), found 10"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_fashion_mnist_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "absent")
    write_fashion_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.*not found.*apt-get install"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_digits_fixed_test_split_and_all_images():
    digits = load_digits()
    # the documented official-style split: stratified 20%, random_state=0, whatever the run's seed
    pool, test = train_test_split(np.arange(1797), test_size=0.2, random_state=0, stratify=digits.target)
    images = digits.images.astype(np.float64)
    mean, std = images[pool].mean(), images[pool].std()
    a = load_dataset("digits", seed=0)
    b = load_dataset("digits", seed=5, train_fraction=0.5)
    assert a.in_shape == (1, 8, 8) and a.num_classes == 10
    assert torch.equal(a.x_test, b.x_test) and len(a.x_test) == 360
    np.testing.assert_allclose(a.x_test[:, 0].numpy(), (images[np.sort(test)] - mean) / std, atol=1e-5)
    assert (a.mean, a.std, a.pixel_max) == (pytest.approx(mean, rel=1e-6), pytest.approx(std, rel=1e-6), 16.0)
    # train + hold-out are the pool, each image once (compared as sorted rows)
    got = torch.cat([a.x_train, a.x_holdout]).double().flatten(1).numpy() * std + mean
    want = images[pool].reshape(len(pool), -1)
    np.testing.assert_allclose(got[np.lexsort(got.T)], want[np.lexsort(want.T)], atol=1e-4)


def test_npz_with_and_without_splits(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(100, 5, 5)).astype(np.float32), np.arange(100) % 4
    np.savez(tmp_path / "plain.npz", x=x, y=y)
    ds = load_dataset(tmp_path / "plain.npz")
    assert ds.in_shape == (1, 5, 5) and ds.num_classes == 4 and len(ds.x_test) == 20
    assert ds.class_names == ("0", "1", "2", "3")
    np.savez(tmp_path / "split.npz", x=x[:, :, 0], y=y, x_test=x[:10, :, 0], y_test=y[:10],
             x_val=x[10:30, :, 0], y_val=y[10:30], class_names=np.array(["a", "b", "c", "d"]))
    ds = load_dataset(str(tmp_path / "split.npz"))
    assert ds.in_shape == (5,) and len(ds.x_test) == 10 and len(ds.x_holdout) == 20
    assert ds.class_names == ("a", "b", "c", "d")
    mean, std = x[:, :, 0].astype(np.float64).mean(), x[:, :, 0].astype(np.float64).std()
    np.testing.assert_allclose(ds.x_test.numpy(), (x[:10, :, 0] - mean) / std, rtol=1e-5, atol=1e-5)
    assert (ds.mean, ds.std, ds.pixel_max) == (pytest.approx(mean, rel=1e-6), pytest.approx(std, rel=1e-6), None)
    # the .npz's own validation split is the validation split; training uses all of x
    np.testing.assert_allclose(ds.x_holdout.numpy(), (x[10:30, :, 0] - mean) / std, rtol=1e-5, atol=1e-5)
    assert len(ds.x_train) == 100
    assert len(load_dataset(str(tmp_path / "split.npz"), train_fraction=0.5).x_train) == 50


@pytest.mark.parametrize("arrays, message", [
    (dict(x=np.zeros((4, 3))), r"needs arrays 'x' and 'y'; missing \['y'\]"),
    (dict(x=np.zeros((4, 3)), y=np.zeros(4)), "'y' must be a 1-D integer array"),
    (dict(x=np.zeros((4, 3)), y=np.zeros(5, int)), "'x' has 4 samples but 'y' has 5"),
    (dict(x=np.zeros(4), y=np.zeros(4, int)), r"'x' must be a numeric array \(N, ...\)"),
    (dict(x=np.zeros((20, 3)), y=np.arange(20) % 2, x_test=np.zeros((2, 4)), y_test=np.zeros(2, int)),
     r"'x_test' samples have shape \(4,\)"),
    (dict(x=np.zeros((20, 3)), y=np.arange(20) % 2, x_val=np.zeros((2, 3))), "given together"),
    (dict(x=np.zeros((20, 3)), y=np.arange(20) % 2, class_names=np.array(["a"])), "'class_names' must be"),
    (dict(x=np.zeros((20, 3)), y=np.arange(20) % 2 - 1), "non-negative"),
    (dict(x=np.full((20, 3), np.nan), y=np.arange(20) % 2), r"'x' must hold finite numbers, got nan at index \(0, 0\)"),
    (dict(x=np.zeros((20, 3)), y=np.arange(20) % 2, x_test=np.array([[0, np.inf, 0]]), y_test=np.array([1])),
     "'x_test' must hold finite numbers, got inf"),
])
def test_npz_errors(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_dataset(tmp_path / "bad.npz")


def test_npz_labels_must_be_every_class_or_remapped(tmp_path):
    """Labels {0, 2, 5} would make a 6-class model whose classes 1, 3, 4 never occur."""
    rng = np.random.default_rng(0)
    y = np.array([0, 2, 5] * 20)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    x[:, 0] = y  # each image carries its label
    np.savez(tmp_path / "gaps.npz", x=x, y=y)
    with pytest.raises(DataError, match=r"gaps.npz: expected labels 0..K-1 \(K = 6: the largest label \+ 1\) to "
                                        r"occur, got labels \[0, 2, 5\] \(3 distinct\).*--remap-labels"):
        load_dataset(tmp_path / "gaps.npz")
    ds = load_dataset(tmp_path / "gaps.npz", remap_labels=True)
    assert (ds.num_classes, ds.original_labels, ds.class_names) == (3, (0, 2, 5), ("0", "2", "5"))
    for split in ("train", "test", "holdout"):  # class k holds exactly the images of the k-th smallest label
        images, labels = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        carried = images[:, 0]  # the file's label, standardised (an increasing map)
        assert [labels[carried == v].unique().tolist() for v in carried.unique()] == [[0], [1], [2]]
    # names are indexed by the file's labels, remapped or not
    np.savez(tmp_path / "named.npz", x=x, y=y, class_names=np.array(list("abcdef")))
    assert load_dataset(tmp_path / "named.npz", remap_labels=True).class_names == ("a", "c", "f")
    with pytest.raises(DataError, match=r"expected every class 0..5 of its 6 'class_names' to occur"):
        load_dataset(tmp_path / "named.npz")
    np.savez(tmp_path / "ordinary.npz", x=x, y=y // 2)  # labels 0, 1, 2: remapping changes nothing
    plain, remapped = (load_dataset(tmp_path / "ordinary.npz", remap_labels=r) for r in (False, True))
    assert plain.original_labels is None and remapped.original_labels == (0, 1, 2)
    assert torch.equal(plain.y_train, remapped.y_train)


def test_npz_validation_split_labels_are_checked_and_remapped_with_the_others(tmp_path):
    """An .npz's own x_val/y_val is the validation split: its labels count in the 0..K-1 check
    and are renumbered by the same mapping as the training and test labels."""
    rng = np.random.default_rng(0)
    y, y_val = np.array([0, 2] * 30), np.array([0, 2, 7] * 5)
    x, x_val = rng.normal(size=(60, 4)).astype(np.float32), rng.normal(size=(15, 4)).astype(np.float32)
    x[:, 0], x_val[:, 0] = y, y_val  # each image carries its label
    np.savez(tmp_path / "val.npz", x=x, y=y, x_val=x_val, y_val=y_val)
    with pytest.raises(DataError, match=r"got labels \[0, 2, 7\] \(3 distinct\)"):
        load_dataset(tmp_path / "val.npz")
    ds = load_dataset(tmp_path / "val.npz", remap_labels=True)
    assert (ds.num_classes, ds.original_labels) == (3, (0, 2, 7))
    assert len(ds.x_holdout) == len(x_val) and ds.y_holdout.tolist() == [0, 1, 2] * 5
    carried = ds.x_holdout[:, 0]  # the file's label, standardised (an increasing map)
    assert [ds.y_holdout[carried == v].unique().tolist() for v in carried.unique()] == [[0], [1], [2]]
    assert set(ds.y_train.tolist()) == {0, 1} and set(ds.y_test.tolist()) == {0, 1}


def test_npz_refuses_pickled_objects(tmp_path):
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}] * 4, dtype=object), y=np.zeros(4, int))
    with pytest.raises(DataError, match="allow_pickle=False"):
        load_dataset(tmp_path / "obj.npz")


@pytest.mark.parametrize("kwargs, message", [
    (dict(name_or_path="mnist"), "dataset must be one of"),
    (dict(name_or_path="digits", train_fraction=0.0), "train_fraction must be in"),
    (dict(name_or_path="digits", train_fraction=0.001), "at least one image per class"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_dataset(**kwargs)


@pytest.mark.slow
@pytest.mark.fashion_mnist
def test_real_fashion_mnist_files():
    if not (DEFAULT_FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not installed at {DEFAULT_FASHION_MNIST_DIR} "
                    "(apt-get install dataset-fashion-mnist)")
    ds = load_dataset("fashion-mnist", train_fraction=0.1)
    assert len(ds.x_train) == 6000 and len(ds.x_test) == 10000 and ds.in_shape == (1, 28, 28)
    assert len(ds.x_holdout) == 6000 and ds.y_test.bincount().tolist() == [1000] * 10
