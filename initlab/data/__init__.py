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
from initlab.errors import InitlabError
from initlab.registry import Registry

log = logging.getLogger("initlab")


class Dataset(Protocol):
    """What the loop needs of a dataset (DeviceDataset, vision.LoaderDataset)."""

    name: str
    num_classes: int

    @property
    def n_train(self) -> int | None: ...  # None: an endless stream
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


FALLBACKS = ("synthetic", "digits")


def _stand_in(kind: str, name: str, cfg: Mapping[str, Any], device: torch.device, seed: int) -> DeviceDataset:
    """What `data.fallback` puts in place of a missing torchvision dataset, at its shape."""
    shape, classes = VISION_SHAPES[name]
    defaults = preset("data", kind)
    if kind == "digits":  # all 1797 images in their own fixed split: the run's sizes were meant for `name`
        if classes != 10:
            raise InitlabError(f"data.fallback=digits cannot stand in for {name}: it has {classes} classes, "
                               "the digits 10 (use data.fallback=synthetic)")
        data = digits({**defaults, "resize": shape[1]}, device, seed)
        data.x_train, data.x_val = (x.expand(-1, shape[0], -1, -1).contiguous() for x in (data.x_train, data.x_val))
    else:  # the stand-in's own config file's sizes, unless the run chose its own
        sizes = {k: cfg[k] if cfg.get(k) is not None else defaults[k] for k in ("train_size", "val_size")}
        data = synthetic({"shape": list(shape), "num_classes": classes, **sizes}, device, seed)
    data.name = f"{kind} (fallback for {name})"
    return data


def load_dataset(cfg: Mapping[str, Any], device: torch.device, seed: int) -> Any:
    """Load the dataset named by `cfg['name']` for `device`. With `fallback: synthetic` (or
    `digits`), a torchvision dataset whose files are missing becomes synthetic data (or the
    real 8x8 digits, upsampled, grey in every channel) of its shape and class count, said in
    the log and in the dataset's name, so a study runs anywhere."""
    name = cfg["name"]
    loader = DATASETS.get(name)
    try:
        return loader(cfg, device, seed)
    except MissingData as exc:
        kind = cfg.get("fallback")
        if kind not in FALLBACKS:
            raise
        log.warning("data    %s; data.fallback=%s: using %s of shape %s instead", exc, kind,
                    "synthetic data" if kind == "synthetic" else "the real digits", list(VISION_SHAPES[name][0]))
        return _stand_in(kind, name, cfg, device, seed)


__all__ = ["DATASETS", "Batch", "DeviceDataset", "MissingData", "Normalizer", "epoch_permutations",
           "load_dataset"]
