"""Run by tests/test_distributed.py: `python -m tests.scripts.lightning_ddp OUT DEVICES`. A Lightning
Trainer with InitlabCallback, on `DEVICES` CPU processes (strategy="ddp", which starts the others
by running this module again) or one; the global batch is 16 either way, each rank a contiguous
slice of it."""

import os
import sys

import lightning.pytorch as pl
import torch
from torch import nn

from initlab.record.lightning import InitlabCallback
from tests.scripts.ddp_reference import BATCH, make_model


class Lit(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = make_model()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


if __name__ == "__main__":
    out, devices = sys.argv[1], int(sys.argv[2])
    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(3 * BATCH, 8, generator=g), torch.randint(0, 4, (3 * BATCH,), generator=g))
    # each rank a contiguous slice of every global batch, as the reference's one device sees it
    rank, local = int(os.environ.get("LOCAL_RANK", "0")), BATCH // devices
    mine = [b * BATCH + rank * local + i for b in range(3) for i in range(local)]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, mine), batch_size=local, shuffle=False)
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                         use_distributed_sampler=False,
                         callbacks=[InitlabCallback(out=out, telemetry={"name": "full", "first": 0, "every": 1},
                                                    plots=False)],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Lit(), loader)
