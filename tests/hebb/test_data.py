"""Offline loaders: IDX reader round trip, CIFAR pickles, digits, clear errors for missing data."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest

from jaxsel.hebb import data


def write_idx(path, arr: np.ndarray, gz: bool = True) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def make_idx_dir(tmp_path, gz=True):
    rng = np.random.default_rng(0)
    xtr = rng.integers(0, 256, (5, 28, 28))
    ytr = rng.integers(0, 10, (5,))
    xte = rng.integers(0, 256, (3, 28, 28))
    yte = rng.integers(0, 10, (3,))
    for stem, arr in zip(
        (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ),
        (xtr, ytr, xte, yte),
    ):
        write_idx(tmp_path / stem, arr, gz)
    return xtr, ytr, xte, yte


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    xtr, ytr, xte, yte = make_idx_dir(tmp_path, gz)
    s = data.load_fashion_mnist(tmp_path)
    assert s.x_train.shape == (5, 28, 28, 1) and s.x_train.dtype == np.float32
    np.testing.assert_allclose(s.x_train[..., 0], xtr / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(s.y_train, ytr)
    np.testing.assert_array_equal(s.y_test, yte)
    np.testing.assert_allclose(data.load_mnist(tmp_path).x_test[..., 0], xte / 255.0, rtol=1e-6)


def test_read_idx_rejects_garbage(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX"):
        data.read_idx(p)


def test_missing_data_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"install_fashion_mnist\.sh"):
        data.load_fashion_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar-10-python"):
        data.load_cifar10(tmp_path)
    with pytest.raises(ValueError, match="unknown data set"):
        data.load("imagenet")


def test_cifar_pickles(tmp_path):
    rng = np.random.default_rng(1)
    raw = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), b"labels": [1, 7]}
        raw[name] = d
        with open(tmp_path / name, "wb") as f:
            pickle.dump(d, f)
    s = data.load_cifar10(tmp_path)
    assert s.x_train.shape == (10, 32, 32, 3) and s.x_test.shape == (2, 32, 32, 3)
    # channel-first rows of 1024 red, then green, then blue values
    first = raw["data_batch_1"][b"data"][0]
    np.testing.assert_allclose(s.x_train[0, 0, 0], first[[0, 1024, 2048]] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(s.y_test, [1, 7])


def test_digits_split():
    s = data.load_digits()
    assert s.x_train.shape[1:] == (8, 8, 1)
    assert s.x_train.shape[0] + s.x_test.shape[0] == 1797
    assert 0.0 <= s.x_train.min() and s.x_train.max() <= 1.0
    again = data.load_digits()
    np.testing.assert_array_equal(s.y_test, again.y_test)


def test_debian_fashion_mnist_if_installed():
    if not (data.FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").exists():
        pytest.skip("dataset-fashion-mnist not installed (scripts/install_fashion_mnist.sh)")
    s = data.load_fashion_mnist()
    assert s.x_train.shape == (60000, 28, 28, 1) and s.x_test.shape == (10000, 28, 28, 1)
    assert sorted(np.unique(s.y_test)) == list(range(10))
