"""Image data sets that need no network: digits, Fashion-MNIST / MNIST (IDX), CIFAR-10 (pickles).

Every loader returns a :class:`Split` of NumPy arrays: images ``(N, H, W, C)`` float32 in [0, 1]
(the authors only divide by 255) and labels ``(N,)`` int32. Nothing is downloaded: a missing file
raises ``FileNotFoundError`` saying how to get it.
"""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path
from typing import NamedTuple

import numpy as np

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class Split(NamedTuple):
    x_train: np.ndarray  # (N, H, W, C) float32 in [0, 1]
    y_train: np.ndarray  # (N,) int32
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits(*, test_fraction: float = 0.3, seed: int = 0) -> Split:
    """scikit-learn's 8x8 digits (1797 images, ships inside the wheel), pixel values / 16."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction=}")
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as err:
        raise ImportError(
            "the digits data set needs scikit-learn: pip install 'jaxsel[data]'"
        ) from err
    d = _load()
    x = (d.images.astype(np.float32) / 16.0)[..., None]
    y = d.target.astype(np.int32)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test = round(len(y) * test_fraction)
    te, tr = perm[:n_test], perm[n_test:]
    return Split(x[tr], y[tr], x[te], y[te])


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (optionally gzipped): the array with its stored shape and dtype."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic {data[:4]!r})")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX type code {data[2]:#x}")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape=} but holds {arr.size} values")
    return arr.reshape(shape)


def _find(directory: Path, stem: str) -> Path | None:
    for name in (
        stem + ".gz",
        stem,
        stem.replace("-idx", ".idx") + ".gz",
        stem.replace("-idx", ".idx"),
    ):
        p = directory / name
        if p.exists():
            return p
    return None


def load_idx_dataset(directory: str | os.PathLike, *, name: str, hint: str) -> Split:
    """MNIST-format data (train/t10k images and labels as IDX, gzipped or not) from a folder."""
    directory = Path(directory)
    arrays = []
    for split in ("train", "test"):
        for stem in IDX_FILES[split]:
            p = _find(directory, stem)
            if p is None:
                raise FileNotFoundError(f"{name}: {stem}[.gz] not found in {directory}. {hint}")
            arrays.append(read_idx(p))
    xtr, ytr, xte, yte = arrays
    return Split(
        (xtr.astype(np.float32) / 255.0)[..., None],
        ytr.astype(np.int32),
        (xte.astype(np.float32) / 255.0)[..., None],
        yte.astype(np.int32),
    )


def load_fashion_mnist(directory: str | os.PathLike | None = None) -> Split:
    """Fashion-MNIST (60k/10k, 28x28x1) from IDX files, by default Debian's install location."""
    directory = directory or os.environ.get("JAXSEL_FASHION_MNIST", FASHION_MNIST_DIR)
    return load_idx_dataset(
        directory,
        name="Fashion-MNIST",
        hint="Install it with scripts/install_fashion_mnist.sh (Debian package "
        "dataset-fashion-mnist -> /usr/share/datasets/fashion-mnist/), or point "
        "JAXSEL_FASHION_MNIST / the directory argument at the four IDX files.",
    )


def load_mnist(directory: str | os.PathLike | None = None) -> Split:
    """MNIST from the four IDX files in ``directory`` (or ``$JAXSEL_MNIST``)."""
    directory = directory or os.environ.get("JAXSEL_MNIST")
    if directory is None:
        raise FileNotFoundError(
            "MNIST: no directory given. Put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in a folder and pass it (or "
            "set JAXSEL_MNIST); nothing is downloaded."
        )
    return load_idx_dataset(
        directory, name="MNIST", hint="Copy the four MNIST IDX files there; nothing is downloaded."
    )


def load_cifar10(directory: str | os.PathLike | None = None) -> Split:
    """CIFAR-10 from the python pickles (``data_batch_1..5``, ``test_batch``) a user supplies."""
    directory = directory or os.environ.get("JAXSEL_CIFAR10")
    hint = (
        "CIFAR-10 is not shipped by any package here: download cifar-10-python.tar.gz yourself from "
        "https://www.cs.toronto.edu/~kriz/cifar.html, extract it, and pass the "
        "cifar-10-batches-py folder (or set JAXSEL_CIFAR10)."
    )
    if directory is None:
        raise FileNotFoundError(f"CIFAR-10: no directory given. {hint}")
    directory = Path(directory)

    def load(name):
        p = directory / name
        if not p.exists():
            raise FileNotFoundError(f"CIFAR-10: {p} not found. {hint}")
        with open(p, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        x = np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return x.astype(np.float32) / 255.0, np.asarray(d[b"labels"], np.int32)

    tr = [load(f"data_batch_{i}") for i in range(1, 6)]
    xte, yte = load("test_batch")
    return Split(np.concatenate([a for a, _ in tr]), np.concatenate([b for _, b in tr]), xte, yte)


LOADERS = {
    "digits": load_digits,
    "fashion_mnist": load_fashion_mnist,
    "mnist": load_mnist,
    "cifar10": load_cifar10,
}


def load(name: str, directory: str | None = None) -> Split:
    """Loads a data set by name (``digits`` needs no directory)."""
    if name not in LOADERS:
        raise ValueError(f"unknown data set {name=!r}; choose one of {sorted(LOADERS)}")
    if name == "digits":
        return load_digits()
    return LOADERS[name](directory)
