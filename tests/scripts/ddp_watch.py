"""Run by tests/test_distributed.py under `torchrun --standalone --nproc_per_node=N`: an MLP under
DDP (gloo, CPU), each rank a distinct slice of one global batch, recorded by initlab.watch into
OUT (rank 0 writes it). The same model and batches run in one process in the test itself."""

import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import initlab
from tests.scripts.ddp_reference import STEPS, batches, make_model

out = sys.argv[1]
ranks = sys.argv[2] if len(sys.argv) > 2 else "merged"  # telemetry.ranks
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
model = DDP(make_model())
opt = torch.optim.SGD(model.parameters(), lr=0.1)
with initlab.watch(model, opt, out=out, telemetry={"name": "full", "first": 0, "every": 1, "formats": ["fp16"], "ranks": ranks},
                   plots=False) as w:
    for step, (x, y) in enumerate(batches()):
        shard = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
        with w.step(step):
            loss = torch.nn.functional.cross_entropy(model(x[shard]), y[shard])
            opt.zero_grad()
            loss.backward()
            opt.step()
        w.log(loss=loss)
        assert step < STEPS
dist.barrier()  # every rank done with its collectives before any tears the group down
dist.destroy_process_group()
