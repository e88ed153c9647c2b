"""The `initlab` command under torchrun: one run, several processes.

`torchrun --nproc_per_node=N -m initlab ...` starts N copies of the command; each finds RANK and
WORLD_SIZE in its environment. They join one process group (gloo on the CPU, NCCL on CUDA, each
rank on its LOCAL_RANK's card), every rank trains the model wrapped in DistributedDataParallel on
its own slice of each global batch (`train.batch_size` is the global batch), the telemetry merges
the ranks' rows at each logged step (telemetry/ranks.py), and rank 0 alone prints and writes the
run directory: the other ranks run into a private temporary directory that is removed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from initlab.errors import ConfigError

if TYPE_CHECKING:  # torch: only for a run (the command's --help and --cfg never load it)
    import torch


def launched() -> tuple[int, int] | None:
    """(rank, world size) when torchrun started this process as one of several, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")), world) if world > 1 else None


def check(cfg: Any, world: int, device: torch.device) -> None:
    """What a run under torchrun cannot do, as one line before any work."""
    if OmegaConf.select(cfg, "norm.sync", default=False) and device.type == "cpu":
        raise ConfigError("norm.sync", True, "torch's SyncBatchNorm runs on GPUs only: give device=cuda, or "
                          "norm.sync=false (each rank normalises its own shard of the batch)")
    if cfg.train.batch_size % world:
        raise ConfigError("train.batch_size", cfg.train.batch_size,
                          f"expected a multiple of the {world} processes under torchrun (it is the global batch)")
    if cfg.probe.seeds > 1 or cfg.probe.inits or cfg.coord.run:
        raise ConfigError("probe" if not cfg.coord.run else "coord.run", "set",
                          "the probe and the coordinate check run in one process: run them without torchrun")


def start(device: torch.device) -> torch.device:
    """Join the process group (once) and return this rank's device."""
    import torch
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def sync_batch_norm(model: torch.nn.Module) -> torch.nn.Module:
    """norm.sync=true: every BatchNorm a SyncBatchNorm, before anything holds the modules."""
    import torch

    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


# what a collective says when a peer is gone (gloo: its socket reset or closed; NCCL: the
# communicator aborted or timed out); matched on the text, as torch raises a plain RuntimeError
_PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "NCCL communicator", "Timed out")


def peer_lost(exc: BaseException) -> str | None:
    """The verdict's line when a collective failed because another rank died, else None."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, RuntimeError) and any(s in text for s in _PEER_GONE):
        return f"another rank of this torchrun job died or stopped (a collective failed: {text[:200]})"
    return None


def stop() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()  # every rank done with its collectives before any tears the group down
        dist.destroy_process_group()


class Shard:
    """This rank's contiguous slice of every global training batch; all else is the dataset's."""

    def __init__(self, data: Any, rank: int, world: int) -> None:
        self.data, self.rank, self.world = data, rank, world

    def train_batches(self, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.data.train_batches(batch_size, seed):  # the same global batches on every rank
            n = len(y) // self.world
            yield x[self.rank * n:(self.rank + 1) * n], y[self.rank * n:(self.rank + 1) * n]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.data, name)
