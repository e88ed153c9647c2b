"""Offline embedded data: Gaussian inputs, labels from a fixed random teacher."""

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from initlab.data.base import DeviceDataset


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


@torch.no_grad()
def _labels(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    logits = teacher_logits(teacher, x)
    # Standardise each class's score so the argmax is roughly balanced across classes.
    logits = (logits - logits.mean(0)) / logits.std(0).clamp_min(1e-12)
    return logits.argmax(1)


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
