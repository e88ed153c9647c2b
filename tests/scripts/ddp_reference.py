"""The model, batches and watched loop that tests/scripts/ddp_watch.py, fsdp_watch.py and their
single-process references share."""

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

import initlab

STEPS, BATCH = 3, 16


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))


def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        yield torch.randn(BATCH, 8, generator=g), torch.randint(0, 4, (BATCH,), generator=g)


def train_watched(model: nn.Module, opt: torch.optim.Optimizer, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                  out: Path | str, rank: int = 0, world: int = 1, after_step: Callable[[int], None] | None = None,
                  **watch: Any) -> None:
    """The recorded loop: each rank trains on its contiguous slice of every global batch (one
    process: the whole batch), SGD steps, the loss logged."""
    with initlab.watch(model, opt, out=out, plots=False, **watch) as w:
        for step, (x, y) in enumerate(batches):
            shard = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
            with w.step(step):
                loss = torch.nn.functional.cross_entropy(model(x[shard]), y[shard])
                opt.zero_grad()
                loss.backward()
                opt.step()
            w.log(loss=loss)
            if after_step is not None:
                after_step(step)
