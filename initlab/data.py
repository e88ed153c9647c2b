"""Datasets -> batches on the run's device.

The resident path keeps a whole dataset on the device (the synthetic set is a few MB,
MNIST 47 MB as uint8) and gathers each batch with one index: no workers, no host copies.
torchvision datasets and the classic DataLoader path live in `initlab.vision`.
"""

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from initlab.errors import InitlabError

log = logging.getLogger("initlab")

Batch = tuple[torch.Tensor, torch.Tensor]


def epoch_permutations(n: int, seed: int) -> Iterator[torch.Tensor]:
    """One permutation per epoch from a CPU generator: the same seed gives the same batches
    on every device and in every loader mode."""
    g = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randperm(n, generator=g)


@dataclass
class Normalizer:
    """uint8 pixels -> (x / 255 - mean) / std per channel, in torchvision's order of
    operations (ToTensor then Normalize), so both loader modes give identical floats."""

    mean: torch.Tensor  # (C,)
    std: torch.Tensor  # (C,)
    normalize: bool = True

    def __call__(self, u8: torch.Tensor) -> torch.Tensor:
        x = u8.float().div_(255)  # (B, C, H, W)
        if self.normalize:
            shape = (1, -1, 1, 1)
            x.sub_(self.mean.to(x.device).view(shape)).div_(self.std.to(x.device).view(shape))
        return x


@dataclass
class DeviceDataset:
    """Train and held-out tensors resident on the run's device.

    Image datasets stay uint8 (a quarter of the memory) and are normalised as each batch
    is gathered; the synthetic set is already float.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    transform: Normalizer | None = None

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    @property
    def n_val(self) -> int:
        return len(self.y_val)

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(x) if self.transform is not None else x

    def train_batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        """Endless shuffled batches, a fresh permutation per epoch, last partial batch dropped."""
        n = len(self.y_train)
        for perm in epoch_permutations(n, seed):
            perm = perm.to(self.x_train.device)
            for i in range(0, n - batch_size + 1, batch_size):
                idx = perm[i : i + batch_size]
                yield self._prep(self.x_train[idx]), self.y_train[idx]

    def val_batches(self, batch_size: int) -> Iterator[Batch]:
        for i in range(0, len(self.y_val), batch_size):
            yield self._prep(self.x_val[i : i + batch_size]), self.y_val[i : i + batch_size]


Loader = Callable[[Mapping[str, Any], torch.device, int], "DeviceDataset | LoaderDataset"]
DATASETS: dict[str, Loader] = {}


def register(name: str) -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        DATASETS[name] = fn
        return fn

    return deco


def _teacher(shape: tuple[int, ...], num_classes: int, g: torch.Generator) -> nn.Module:
    """A fixed random network whose argmax is the label: learnable by the student families.

    Images get a conv feature + global pooling (what conv nets can represent); flat
    inputs get a linear map (what an MLP can represent).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        if len(shape) == 3:
            return nn.Sequential(
                nn.Conv2d(shape[0], 32, 5, padding=2), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
            )
        return nn.Linear(shape[0], num_classes)


@torch.no_grad()
def _labels(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    logits = torch.cat([teacher(chunk) for chunk in x.split(1024)])
    # Standardise each class's score so the argmax is roughly balanced across classes.
    logits = (logits - logits.mean(0)) / logits.std(0).clamp_min(1e-12)
    return logits.argmax(1)


@register("synthetic")
def synthetic(cfg: Mapping[str, Any], device: torch.device, seed: int) -> DeviceDataset:
    """Gaussian inputs of `shape`, labels from a fixed random teacher, held-out split."""
    shape = tuple(int(s) for s in cfg["shape"])
    n_train, n_val, classes = int(cfg["train_size"]), int(cfg["val_size"]), int(cfg["num_classes"])
    data_seed = seed if cfg.get("seed") is None else int(cfg["seed"])
    g = torch.Generator().manual_seed(data_seed)
    teacher = _teacher(shape, classes, g)
    x = torch.randn((n_train + n_val, *shape), generator=g)
    y = _labels(teacher, x)
    x, y = x.to(device), y.to(device)
    return DeviceDataset("synthetic", x[:n_train], y[:n_train], x[n_train:], y[n_train:], classes)


def load_dataset(cfg: Mapping[str, Any], device: torch.device, seed: int) -> "DeviceDataset | LoaderDataset":
    """Load the dataset named by `cfg['name']` for `device`. With `fallback: synthetic`, a
    torchvision dataset whose files are missing becomes synthetic data of its shape and
    class count (said in the log and in the dataset's name), so a study runs anywhere."""
    name = cfg["name"]
    if name not in DATASETS:
        raise InitlabError(f"data={name!r} is invalid: choose from {', '.join(sorted(DATASETS))}")
    try:
        return DATASETS[name](cfg, device, seed)
    except MissingData as exc:
        if cfg.get("fallback") != "synthetic":
            raise
        spec = SPECS[name]
        log.warning("data    %s; data.fallback=synthetic: using synthetic data of shape %s instead",
                    exc, list(spec.shape))
        # conf/data/synthetic.yaml's sizes, unless the run chose its own
        defaults = OmegaConf.load(files("initlab.conf") / "data" / "synthetic.yaml")
        sizes = {k: cfg[k] if cfg.get(k) is not None else defaults[k] for k in ("train_size", "val_size")}
        data = synthetic({"shape": list(spec.shape), "num_classes": spec.num_classes, **sizes}, device, seed)
        data.name = f"synthetic (fallback for {name})"
        return data


# Importing the torchvision family fills the registry with mnist, fashion_mnist, cifar10, cifar100.
from initlab import vision  # noqa: E402,F401
from initlab.vision import SPECS, LoaderDataset, MissingData  # noqa: E402
