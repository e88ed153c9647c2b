"""`InitlabCallback`: initlab's telemetry inside a Lightning `Trainer`, a thin adapter over
`initlab.watch` (optional extra: `pip install "initlab[lightning]"`).

    from initlab.record.lightning import InitlabCallback
    trainer = Trainer(callbacks=[InitlabCallback(out="runs/x", telemetry="default")])

Statistics are taken on training steps only, one row set per optimizer step (with
`accumulate_grad_batches=k`, of the first of its k micro-batches; the weight gradient and
the update are the accumulated ones); `step` is the trainer's `global_step`. Validation
loss and accuracy logged as `val_loss` / `val_acc(uracy)` land in the metrics rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    import lightning.pytorch as pl
except ImportError:  # the standalone package
    try:
        import pytorch_lightning as pl
    except ImportError as exc:
        raise ImportError('initlab.record.lightning needs Lightning: pip install "initlab[lightning]"') from exc

from initlab.record.watcher import Watch

_VAL_KEYS = {"val_loss": "val_loss", "val_acc": "val_accuracy", "val_accuracy": "val_accuracy"}


class InitlabCallback(pl.Callback):
    """Records the LightningModule with `initlab.watch` into `out`."""

    def __init__(self, out: str | Path, telemetry: Any = "default", plots: bool = True) -> None:
        super().__init__()
        self.out, self.telemetry, self.plots = Path(out), telemetry, plots
        self.watch: Watch | None = None
        self._block: Any = None  # the open `watch.step(...)` context
        self._val: dict[str, float] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        total = trainer.estimated_stepping_batches
        total = int(total) if total is not None and total != float("inf") else None
        self.watch = Watch(pl_module, optimizer, out=self.out, telemetry=self.telemetry, total_steps=total,
                           plots=self.plots)

    def _accumulate(self, trainer: pl.Trainer) -> int:
        return max(1, int(trainer.accumulate_grad_batches))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.watch is not None and self._block is None and batch_idx % self._accumulate(trainer) == 0:
            self._block = self.watch.step(trainer.global_step)
            self._block.__enter__()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        acc = self._accumulate(trainer)
        last = trainer.num_training_batches != float("inf") and batch_idx + 1 == trainer.num_training_batches
        if self._block is None or not ((batch_idx + 1) % acc == 0 or last):
            return
        step = self.watch.current_step
        self._close(None)
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        row: dict[str, Any] = {"loss": loss} if loss is not None else {}
        row.update(self._val)
        self._val = {}
        self.watch.log(step=step, **row)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        for key, name in _VAL_KEYS.items():
            if key in trainer.callback_metrics:
                self._val[name] = trainer.callback_metrics[key]

    def _close(self, exc: BaseException | None) -> None:
        block, self._block = self._block, None
        if block is not None:
            block.__exit__(type(exc) if exc else None, exc, None)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._close(exception)
        if self.watch is not None:
            self.watch.__exit__(type(exception), exception, None)
            self.watch = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close(None)
        if self.watch is not None:
            if self._val:  # validation after the last training step
                self.watch.log(step=max(self.watch.steps_done - 1, 0), **self._val)
            self.watch.__exit__(None, None, None)
            self.watch = None
