"""Run by tests/test_distributed.py under `torchrun --standalone --nproc_per_node=2`: the MLP of
ddp_reference.py with every Linear and the root sharded by FSDP2's `fully_shard` on a CPU mesh
(gloo), each rank a distinct slice of one global batch, recorded by initlab.watch into OUT."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from tests.scripts.ddp_reference import batches, make_model, train_watched

out, shard_norm = sys.argv[1], Path(sys.argv[2])  # rank 0's own piece of layer 0's weight after step 0 goes there
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
mesh = init_device_mesh("cpu", (world,))
model = make_model()
for layer in model:
    if isinstance(layer, nn.Linear):
        fully_shard(layer, mesh=mesh)
fully_shard(model, mesh=mesh)
opt = torch.optim.SGD(model.parameters(), lr=0.1)


def note_shard(step: int) -> None:
    if step == 0 and rank == 0:
        shard_norm.write_text(str(float(model[0].weight.to_local().norm())))


train_watched(model, opt, batches(), out, rank, world, after_step=note_shard,
              telemetry={"name": "full", "first": 0, "every": 1})
dist.barrier()
dist.destroy_process_group()
