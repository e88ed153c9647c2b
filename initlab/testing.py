"""Small datasets in torchvision's exact on-disk formats (IDX files, CIFAR pickles), for
tests, benchmarks and offline demos: the real torchvision classes load them unchanged."""

import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np


def _images(n: int, shape: tuple[int, ...], classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class-dependent brightness plus noise: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n).astype(np.uint8)
    base = (labels.astype(np.float64) * (200 / classes))[:, None]
    pixels = np.clip(base + rng.normal(0, 40, (n, int(np.prod(shape)))), 0, 255).astype(np.uint8)
    return pixels.reshape(n, *shape), labels


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: magic (0x08 = uint8, then the number of dims), big-endian sizes, raw bytes."""
    header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = 300, n_test: int = 100) -> Path:
    """root/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte, as torchvision reads them."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        x, y = _images(n, (28, 28), 10, seed)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", x)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)
    return raw


def write_cifar10(root: Path, n_per_batch: int = 60, n_test: int = 100) -> dict[str, str]:
    """root/cifar-10-batches-py/ pickles; returns each file's md5 for torchvision's integrity check."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    files = [(f"data_batch_{i}", n_per_batch, i) for i in range(1, 6)] + [("test_batch", n_test, 9)]
    for name, n, seed in files:
        x, y = _images(n, (3, 32, 32), 10, seed)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": x.reshape(n, -1), "labels": y.tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}
