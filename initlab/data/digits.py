"""Real images that need no download: the UCI optical-recognition digits (1797 images of 8x8,
10 classes, pixel values 0-16), read from the copy scikit-learn ships inside its wheel
(`sklearn/datasets/data/digits.csv.gz`), without importing scikit-learn.

The held-out split is fixed (a permutation drawn once with seed 0, the same for every run);
pixels are scaled to [0, 1] and, with `data.normalize`, standardised by the training split's
mean and std. `data.resize` upsamples (bilinear) for models that need more than 8x8 pixels
(LeNet needs 12x12).
"""

import gzip
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from initlab.data.base import DeviceDataset
from initlab.errors import InitlabError

SPLIT_SEED = 0  # one fixed train/held-out split for every run
N_IMAGES = 1797


def digits_file() -> Path:
    """scikit-learn's digits.csv.gz, found from its package location (no import: it is slow)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise InitlabError('data=digits reads the UCI digits scikit-learn ships: pip install "initlab[digits]" '
                           "(or scikit-learn)")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise InitlabError(f"data=digits: {path} is missing from this scikit-learn installation")
    return path


def read_digits(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 8, 8) as float32 in 0..16, labels (N,)) from the csv: 64 pixels then the label."""
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    if table.shape != (N_IMAGES, 65):
        raise InitlabError(f"data=digits: {path} is corrupt: {table.shape[0]} rows of {table.shape[1]} values "
                           f"where {N_IMAGES} rows of 65 are expected")
    return table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int64)


def digits(cfg: Mapping[str, Any], device: torch.device, seed: int) -> DeviceDataset:
    images, labels = read_digits(digits_file())
    order = torch.randperm(N_IMAGES, generator=torch.Generator().manual_seed(SPLIT_SEED))
    x = torch.from_numpy(images)[order].unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    y = torch.from_numpy(labels)[order]
    n_val = int(cfg["val_size"])
    if not 0 < n_val < N_IMAGES:
        raise InitlabError(f"data.val_size={n_val} is invalid for data=digits: expected 1 to {N_IMAGES - 1}")
    x_val, y_val, x_train, y_train = x[:n_val], y[:n_val], x[n_val:], y[n_val:]
    if cfg.get("train_size") is not None:
        x_train, y_train = x_train[: int(cfg["train_size"])], y_train[: int(cfg["train_size"])]
    if cfg.get("normalize", True):
        mean, std = x_train.mean(), x_train.std()
        x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    if cfg.get("resize"):
        size = int(cfg["resize"])
        x_train, x_val = (F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
                          for t in (x_train, x_val))
    return DeviceDataset("digits", x_train.to(device), y_train.to(device), x_val.to(device), y_val.to(device), 10)
