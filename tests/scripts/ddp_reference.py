"""The model and batches tests/scripts/ddp_watch.py and its single-process reference share."""

from collections.abc import Iterator

import torch
from torch import nn

STEPS, BATCH = 3, 16


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))


def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        yield torch.randn(BATCH, 8, generator=g), torch.randint(0, 4, (BATCH,), generator=g)
