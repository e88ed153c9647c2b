"""The CLI's training loop: step-0 statistics before any update, divergence as a result.

Telemetry and the run's files go through `initlab.watch` (the public recorder), so the CLI
is one more user of it. The loop fires a few named events (Lightning's names) on a list of
callbacks; the progress bar is one of them. A non-finite loss raises `Diverged`, caught
here once.
"""

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import nn

from initlab.data.base import DeviceDataset
from initlab.devices import synchronize
from initlab.errors import Diverged, Interrupted
from initlab.precision import Precision
from initlab.record.watcher import Watch
from initlab.registry import Registry
from initlab.signals import Watchdog
from initlab.speedups.eager_optim import eager

OPTIMIZERS: Registry[Callable[[Any, Mapping[str, Any]], torch.optim.Optimizer]] = Registry("optim.name")
# eager(...): torch's own optimizers without their 3 s torch._dynamo import (initlab/speedups/eager_optim.py)
OPTIMIZERS.register("sgd")(lambda p, c: eager(torch.optim.SGD)(
    p, lr=c["lr"], momentum=c["momentum"], weight_decay=c["weight_decay"]))
OPTIMIZERS.register("adam")(lambda p, c: eager(torch.optim.Adam)(
    p, lr=c["lr"], betas=tuple(c["betas"]), weight_decay=c["weight_decay"]))
OPTIMIZERS.register("adamw")(lambda p, c: eager(torch.optim.AdamW)(
    p, lr=c["lr"], betas=tuple(c["betas"]), weight_decay=c["weight_decay"]))


def build_optimizer(model: nn.Module, cfg: Mapping[str, Any], groups: list[dict[str, Any]] | None = None
                    ) -> torch.optim.Optimizer:
    """`optim.name` from the registry, with conf/optim/NAME.yaml's keys; `groups`: parameter
    groups (a width parametrisation's) in place of the model's parameters."""
    return OPTIMIZERS.get(cfg["name"])(groups if groups is not None else model.parameters(), cfg)


SCHEDULES = ("constant", "cosine")


def lr_factor(step: int, warmup: int, schedule: str, total: int) -> float:
    """The multiplier of optim.lr at `step` (0-based) of `total`: a linear warm-up
    (step + 1) / warmup over the first `warmup` steps, then 1 (constant) or a half cosine
    from 1 at the warm-up's end towards 0 at `total` (cosine)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any], total: int
                    ) -> torch.optim.lr_scheduler.LambdaLR | None:
    """optim.warmup_steps and optim.schedule as torch's LambdaLR; None when the lr stays put."""
    warmup, schedule = int(cfg.get("warmup_steps", 0)), str(cfg.get("schedule", "constant"))
    if warmup == 0 and schedule == "constant":
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, schedule, total))


class Callback:
    """No-op events; override what you need."""

    def on_fit_start(self, total: int) -> None: ...
    def on_step_end(self, step: int, row: dict[str, Any]) -> None: ...
    def on_eval_start(self, step: int) -> None: ...
    def on_fit_end(self, result: "FitResult") -> None: ...


class ProgressBar(Callback):
    """rich progress: step, loss, samples/s (smoothed: the first steps' warm-up does not swing
    it), time left, and what runs when it is not a training step (the held-out evaluation)."""

    SMOOTHING = 0.1  # weight of the newest step in the moving average of step times

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.step_time: float | None = None
        self.progress = Progress(
            TextColumn("[bold]{task.fields[phase]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} samples/s"),
            TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), transient=False,
        )

    def on_fit_start(self, total: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task("train", total=total, loss="-", rate="-", phase="train")

    def on_eval_start(self, step: int) -> None:
        self.progress.update(self.task, phase="held-out eval")

    def on_step_end(self, step: int, row: dict[str, Any]) -> None:
        t = row["step_time"]
        if step > 0 and t > 0:  # step 0 pays the warm-up (allocations, kernels): not a rate
            self.step_time = t if self.step_time is None else (1 - self.SMOOTHING) * self.step_time + self.SMOOTHING * t
        rate = f"{self.batch_size / self.step_time:,.0f}" if self.step_time else "-"
        self.progress.update(self.task, advance=1, loss=f"{row['loss']:.4g}", rate=rate, phase="train")

    def on_fit_end(self, result: "FitResult") -> None:
        self.progress.stop()


@dataclass
class FitResult:
    status: str = "ok"  # ok | diverged | interrupted
    steps_done: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    diverged: dict[str, Any] | None = None
    train_s: float = 0.0


@torch.no_grad()
def evaluate(model: nn.Module, data: DeviceDataset, batch_size: int, precision: Precision | None = None
             ) -> tuple[float, float]:
    """Held-out loss and accuracy (eval mode, restored after), in the run's precision."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, device=data.device, dtype=torch.float64)
    for x, y in data.val_batches(batch_size):
        with precision.autocast() if precision is not None else nullcontext():
            logits = model(x)
        total[0] += F.cross_entropy(logits.float(), y, reduction="sum")
        total[1] += (logits.argmax(1) == y).sum()
    model.train(was_training)
    loss_sum, correct = total.tolist()
    n = data.n_val
    if not math.isfinite(loss_sum):  # no accuracy from non-finite logits
        return math.nan, math.nan
    return loss_sum / n, correct / n


def forward_backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: Precision | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    with precision.autocast() if precision is not None else nullcontext():
        logits = model(x)  # (B, classes)
        loss = F.cross_entropy(logits, y)  # autocast computes it in float32
    if precision is not None:
        precision.backward(loss)  # scaled by the loss scale, if any
    else:
        loss.backward()
    acc = (logits.argmax(1) == y).float().mean()
    acc = torch.where(torch.isfinite(logits).all(), acc, torch.nan)  # no accuracy from non-finite logits
    return loss.detach(), acc


def _across_ranks(values: torch.Tensor) -> torch.Tensor:
    """Under DDP, the ranks' mean of a step's (loss, accuracy): one small all-reduce. A non-finite
    value on any rank makes it non-finite on all, so every rank stops at the same step."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    values = values.double()
    dist.all_reduce(values)
    return values / dist.get_world_size()


def fit(
    model: nn.Module,
    data: DeviceDataset,
    optimizer: torch.optim.Optimizer,
    train_cfg: Mapping[str, Any],
    watch: Watch,
    seed: int,
    callbacks: Sequence[Callback] = (),
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    precision: Precision | None = None,
) -> FitResult:
    """Train for `train_cfg['steps']` updates; steps=0 is the probe (one forward+backward).
    `watch` records the scheduled steps and every metrics row (`lr`: the step's own);
    `scheduler` steps after each update; `precision`: autocast and loss scaling (the rows then
    carry `loss_scale` and `skipped`, a step the scaler skipped for inf/NaN gradients)."""
    steps, bs = int(train_cfg["steps"]), int(train_cfg["batch_size"])
    eval_every, stop_on_nonfinite = int(train_cfg["eval_every"]), bool(train_cfg["stop_on_nonfinite"])
    n_iter = max(steps, 1)
    last = n_iter - 1
    device = data.device
    batches: Iterator = data.train_batches(bs, seed)
    result = FitResult()
    model.train()
    for cb in callbacks:
        cb.on_fit_start(n_iter)
    t_start = time.perf_counter()
    dropped = Watchdog()
    try:
        for step in range(n_iter):
            x, y = next(batches)
            synchronize(device)
            t0 = time.perf_counter()
            skipped, scale = False, precision.scale if precision is not None else None  # the scale this step uses
            with watch.step(step):
                optimizer.zero_grad(set_to_none=True)
                loss, acc = forward_backward(model, x, y, precision)
                loss_v, acc_v = _across_ranks(torch.stack([loss, acc])).tolist()  # the step's one sync for metrics
                finite = math.isfinite(loss_v)
                if steps > 0 and (finite or not stop_on_nonfinite):
                    if precision is not None:
                        skipped = precision.step(optimizer)
                    else:
                        optimizer.step()
                    if skipped:
                        watch.step_skipped()  # its inf/NaN gradients are the scaler's business, not a divergence
            synchronize(device)
            row = {"step": step, "loss": loss_v, "accuracy": acc_v,
                   "lr": optimizer.param_groups[0]["lr"], "step_time": time.perf_counter() - t0,
                   "val_loss": math.nan, "val_accuracy": math.nan}  # fixed columns: parts share a schema
            if precision is not None and precision.scaler is not None:
                row.update(loss_scale=scale, skipped=float(skipped))
            if scheduler is not None and steps > 0:
                scheduler.step()  # the next step's lr; this row keeps the one this step used
            if not finite and stop_on_nonfinite:
                if not watch.logs(step) and watch.telemetry is not None:
                    # The step was not scheduled: look again (weights unchanged) to find the layer.
                    with watch.step(step, force=True):
                        optimizer.zero_grad(set_to_none=True)
                        forward_backward(model, x, y, precision)
                result.rows.append(row)
                watch.log(**row)
                raise Diverged(step, loss_v) from None
            if data.n_val and ((eval_every and (step + 1) % eval_every == 0) or step == last):
                for cb in callbacks:
                    cb.on_eval_start(step)
                row["val_loss"], row["val_accuracy"] = evaluate(model, data, bs, precision)
            result.rows.append(row)
            watch.log(**row)
            for cb in callbacks:
                cb.on_step_end(step, row)
            dropped.check()  # a Ctrl-C whose exception Python dropped (see signals.py)
    except Diverged:
        result.status = "diverged"
    except (KeyboardInterrupt, Interrupted):
        result.status = "interrupted"
    finally:
        watch.flush()  # pending metric rows read and written: steps_done counts what is on disk
        # a diverging step's row is written, but the step did not complete
        done = watch.rows_logged - (1 if result.status == "diverged" else 0)
        result.steps_done = max(done, 0) if steps > 0 else 0
        result.train_s = time.perf_counter() - t_start
        for cb in callbacks:
            cb.on_fit_end(result)
    if result.status == "ok" and watch.diverged is not None:
        result.status = "diverged"  # non-finite values, training went on (stop_on_nonfinite=false)
    result.diverged = watch.diverged
    return result
