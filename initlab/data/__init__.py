"""Datasets -> batches on the run's device, by name (`data.name`).

- `base`: DeviceDataset (resident tensors, one index per batch), Normalizer, permutations
- `synthetic`: the offline default
- `digits`: real 8x8 digits from scikit-learn's wheel, no download
- `vision`: torchvision's MNIST, Fashion-MNIST, CIFAR-10/100 (imported only when used:
  torchvision costs a third of start-up)
"""

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch

from initlab.data.base import Batch, DeviceDataset, MissingData, Normalizer, epoch_permutations
from initlab.data.digits import digits
from initlab.data.synthetic import synthetic
from initlab.defaults import preset
from initlab.registry import Registry

log = logging.getLogger("initlab")


class Dataset(Protocol):
    """What the loop needs of a dataset (DeviceDataset, vision.LoaderDataset)."""

    name: str
    num_classes: int

    @property
    def n_train(self) -> int: ...
    @property
    def n_val(self) -> int: ...
    @property
    def in_shape(self) -> tuple[int, ...]: ...
    @property
    def device(self) -> torch.device: ...


Loader = Callable[[Mapping[str, Any], torch.device, int], Any]
DATASETS: Registry[Loader] = Registry("data")
DATASETS.register("synthetic")(synthetic)
DATASETS.register("digits")(digits)

# torchvision datasets: (shape of one image, classes) known without importing torchvision
VISION_SHAPES: dict[str, tuple[tuple[int, int, int], int]] = {
    "mnist": ((1, 28, 28), 10), "fashion_mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100),
}


def _vision_loader(name: str) -> Loader:
    def load(cfg: Mapping[str, Any], device: torch.device, seed: int) -> Any:
        from initlab.data.vision import load_vision

        return load_vision(name, cfg, device, seed)

    return load


for _name in VISION_SHAPES:
    DATASETS.register(_name)(_vision_loader(_name))


def load_dataset(cfg: Mapping[str, Any], device: torch.device, seed: int) -> Any:
    """Load the dataset named by `cfg['name']` for `device`. With `fallback: synthetic`, a
    torchvision dataset whose files are missing becomes synthetic data of its shape and
    class count (said in the log and in the dataset's name), so a study runs anywhere."""
    name = cfg["name"]
    loader = DATASETS.get(name)
    try:
        return loader(cfg, device, seed)
    except MissingData as exc:
        if cfg.get("fallback") != "synthetic":
            raise
        shape, classes = VISION_SHAPES[name]
        log.warning("data    %s; data.fallback=synthetic: using synthetic data of shape %s instead",
                    exc, list(shape))
        # conf/data/synthetic.yaml's sizes, unless the run chose its own
        defaults = preset("data", "synthetic")
        sizes = {k: cfg[k] if cfg.get(k) is not None else defaults[k] for k in ("train_size", "val_size")}
        data = synthetic({"shape": list(shape), "num_classes": classes, **sizes}, device, seed)
        data.name = f"synthetic (fallback for {name})"
        return data


__all__ = ["DATASETS", "Batch", "DeviceDataset", "MissingData", "Normalizer", "epoch_permutations",
           "load_dataset"]
