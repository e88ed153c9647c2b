"""Offline embedded data: Gaussian inputs, labels from a fixed random teacher.

By default (`data.train_size: null`) the training data is an online stream: every batch is a
fresh draw, so no sample is seen twice and the training loss tracks the held-out loss (a
fixed set of a few thousand samples of a random teacher is memorised within a few epochs).
`data.train_size: N` keeps the fixed set of N samples, shuffled per epoch.
"""

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from initlab.data.base import Batch, DeviceDataset


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


CHUNK = 64  # the conv teacher's output for 64 images (6 MB) stays in cache: 0.2 s for 5120, not 1.1 s
CALIBRATION = 2048  # samples the stream's class-score standardisation is measured on


@torch.no_grad()
def teacher_logits(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The teacher's logits, chunk by chunk, its ReLU in place: the same numbers as one
    `teacher(x)` (tested), without a 100 MB intermediate."""
    layers = list(teacher) if isinstance(teacher, nn.Sequential) else [teacher]

    def forward(h: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            h = h.relu_() if isinstance(layer, nn.ReLU) else layer(h)
        return h

    return torch.cat([forward(chunk) for chunk in x.split(CHUNK)])


@dataclass(frozen=True)
class Labeller:
    """x -> the argmax of the teacher's class scores, each standardised by its mean and std
    (so the classes are roughly balanced): one fixed function for every sample of a stream."""

    teacher: nn.Module
    mean: torch.Tensor  # (classes,)
    std: torch.Tensor  # (classes,)

    @classmethod
    def calibrated(cls, teacher: nn.Module, logits: torch.Tensor) -> "Labeller":
        """Standardised by the class scores `logits` of a sample of the inputs."""
        return cls(teacher, logits.mean(0), logits.std(0).clamp_min(1e-12))

    def of_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return ((logits - self.mean) / self.std).argmax(1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.of_logits(teacher_logits(self.teacher, x))


@dataclass
class SyntheticStream(DeviceDataset):
    """Fresh samples of the teacher for every training batch: inputs drawn on the CPU from
    the run's seed (the same on every device), labelled by the teacher on the run's device
    (the same labels but at float ties); a fixed held-out set of the same distribution.
    `n_train` is None: there is no training set to count (`x_train` is empty, of the
    inputs' shape and on the run's device, which is what `in_shape` and `device` read)."""

    labeller: Labeller | None = None
    stream_seed: int = 0

    @property
    def n_train(self) -> int | None:  # type: ignore[override]
        return None

    def train_batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        assert self.labeller is not None
        g = torch.Generator().manual_seed((self.stream_seed + seed) % 2**63)
        while True:
            x = torch.randn((batch_size, *self.in_shape), generator=g).to(self.device)
            yield x, self.labeller(x)


def synthetic(cfg: Mapping[str, Any], device: torch.device, seed: int) -> DeviceDataset:
    """Gaussian inputs of `shape`, labels from a fixed random teacher, held-out split; an
    online stream of training batches unless `train_size` asks for a fixed set."""
    shape = tuple(int(s) for s in cfg["shape"])
    n_val, classes = int(cfg["val_size"]), int(cfg["num_classes"])
    data_seed = seed if cfg.get("seed") is None else int(cfg["seed"])
    g = torch.Generator().manual_seed(data_seed)
    teacher = _teacher(shape, classes, g)
    if cfg.get("train_size") is None:
        # labelled where the run computes: on the CPU 2 ms for 64 MNIST-sized images (2 cores,
        # freed memory kept: allocator.py), on a GPU next to nothing
        teacher.to(device)
        calibration = torch.randn((CALIBRATION, *shape), generator=g).to(device)  # before x_val: the
        labeller = Labeller.calibrated(teacher, teacher_logits(teacher, calibration))  # same at any val_size
        x_val = torch.randn((n_val, *shape), generator=g).to(device)
        # the stream's own generator, far from data_seed's: no stream batch replays the held-out draws
        stream_seed = int(torch.randint(2**40, 2**62, (1,), generator=g))
        empty = torch.empty((0, *shape), device=device)
        return SyntheticStream("synthetic", empty, torch.empty(0, dtype=torch.long, device=device),
                               x_val, labeller(x_val), classes,
                               labeller=labeller, stream_seed=stream_seed)
    n_train = int(cfg["train_size"])
    x = torch.randn((n_train + n_val, *shape), generator=g)
    logits = teacher_logits(teacher, x)
    y = Labeller.calibrated(teacher, logits).of_logits(logits)  # standardised over the set itself
    x, y = x.to(device), y.to(device)
    return DeviceDataset("synthetic", x[:n_train], y[:n_train], x[n_train:], y[n_train:], classes)
