"""Run by tests/test_distributed.py under `torchrun --standalone --nproc_per_node=N`: an MLP under
DDP (gloo, CPU), each rank a distinct slice of one global batch, recorded by initlab.watch into
OUT (rank 0 writes it). The same model and batches run in one process in the test itself."""

import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from tests.scripts.ddp_reference import batches, make_model, train_watched

out = sys.argv[1]
ranks = sys.argv[2] if len(sys.argv) > 2 else "merged"  # telemetry.ranks
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
model = DDP(make_model())
opt = torch.optim.SGD(model.parameters(), lr=0.1)
train_watched(model, opt, batches(), out, rank, world,
              telemetry={"name": "full", "first": 0, "every": 1, "formats": ["fp16"], "ranks": ranks})
dist.barrier()  # every rank done with its collectives before any tears the group down
dist.destroy_process_group()
