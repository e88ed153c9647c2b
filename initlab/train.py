"""The training loop: step-0 statistics before any update, divergence as a result.

The loop fires a few named events (Lightning's names) on a list of callbacks; the
progress bar is one of them. A non-finite loss raises `Diverged`, caught here once.
"""

import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from initlab.data import DeviceDataset
from initlab.devices import synchronize
from initlab.errors import Diverged, Interrupted
from initlab.store import RunStore
from initlab.telemetry import Schedule, Telemetry, first_nonfinite

OPTIMIZERS: dict[str, Callable[[Any, Mapping[str, Any]], torch.optim.Optimizer]] = {
    "sgd": lambda p, c: torch.optim.SGD(
        p, lr=c["lr"], momentum=c.get("momentum", 0.0), weight_decay=c.get("weight_decay", 0.0)
    ),
    "adam": lambda p, c: torch.optim.Adam(
        p, lr=c["lr"], betas=tuple(c.get("betas", (0.9, 0.999))), weight_decay=c.get("weight_decay", 0.0)
    ),
}


def build_optimizer(model: nn.Module, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    name = cfg["name"]
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](model.parameters(), cfg)


class Callback:
    """No-op events; override what you need."""

    def on_fit_start(self, total: int) -> None: ...
    def on_step_end(self, step: int, row: dict[str, Any]) -> None: ...
    def on_fit_end(self, result: "FitResult") -> None: ...


class ProgressBar(Callback):
    """rich progress: step, loss, samples/s."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} samples/s"),
            TimeElapsedColumn(), transient=False,
        )

    def on_fit_start(self, total: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task("train", total=total, loss="-", rate="-")

    def on_step_end(self, step: int, row: dict[str, Any]) -> None:
        rate = self.batch_size / row["step_time"] if row["step_time"] > 0 else float("inf")
        self.progress.update(self.task, advance=1, loss=f"{row['loss']:.4g}", rate=f"{rate:,.0f}")

    def on_fit_end(self, result: "FitResult") -> None:
        self.progress.stop()


@dataclass
class FitResult:
    status: str = "ok"  # ok | diverged | interrupted
    steps_done: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    diverged: dict[str, Any] | None = None
    train_s: float = 0.0


@contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT/SIGTERM arriving inside are held until the block is done, then handled as they
    would have been, so an interrupted run's summary agrees with the rows it recorded.
    (Masking the signal would not do: another thread may take it for the process.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[tuple[int, Any]] = []
    old = {s: signal.signal(s, lambda n, f: caught.append((n, f))) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if caught:
            signum, frame = caught[0]
            handler = old[signum]
            if callable(handler):
                handler(signum, frame)
            elif handler != signal.SIG_IGN:
                signal.raise_signal(signum)


@torch.no_grad()
def evaluate(model: nn.Module, data: DeviceDataset, batch_size: int) -> tuple[float, float]:
    """Held-out loss and accuracy (eval mode, restored after)."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, device=data.device, dtype=torch.float64)
    for x, y in data.val_batches(batch_size):
        logits = model(x)
        total[0] += F.cross_entropy(logits, y, reduction="sum")
        total[1] += (logits.argmax(1) == y).sum()
    model.train(was_training)
    loss_sum, correct = total.tolist()
    n = data.n_val
    return loss_sum / n, correct / n


def forward_backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(x)  # (B, classes)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    acc = (logits.argmax(1) == y).float().mean()
    return loss.detach(), acc


def fit(
    model: nn.Module,
    data: DeviceDataset,
    optimizer: torch.optim.Optimizer,
    train_cfg: Mapping[str, Any],
    telemetry: Telemetry | None,
    schedule: Schedule,
    store: RunStore,
    seed: int,
    callbacks: Sequence[Callback] = (),
) -> FitResult:
    """Train for `train_cfg['steps']` updates; steps=0 is the probe (one forward+backward)."""
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
    try:
        for step in range(n_iter):
            x, y = next(batches)
            logged = telemetry is not None and schedule(step)
            synchronize(device)
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            with telemetry.record() if logged else nullcontext():
                loss, acc = forward_backward(model, x, y)
            loss_v, acc_v = torch.stack([loss, acc]).tolist()  # the step's one sync for metrics
            finite = math.isfinite(loss_v)
            stepping = steps > 0 and (finite or not stop_on_nonfinite)
            if logged:
                telemetry.before_step()
            if stepping:
                optimizer.step()
            if logged:
                telemetry.after_step(stepping)
            collected = telemetry.collect(step) if logged else None
            synchronize(device)
            row = {"step": step, "loss": loss_v, "accuracy": acc_v,
                   "lr": optimizer.param_groups[0]["lr"], "step_time": time.perf_counter() - t0,
                   "val_loss": math.nan, "val_accuracy": math.nan}  # fixed columns: parts share a schema
            if not finite and stop_on_nonfinite:
                if collected is None and telemetry is not None:
                    # The step was not scheduled: look again (weights unchanged) to find the layer.
                    optimizer.zero_grad(set_to_none=True)
                    with telemetry.record():
                        forward_backward(model, x, y)
                    telemetry.before_step()
                    telemetry.after_step(False)
                    collected = telemetry.collect(step)
                with signals_deferred():
                    result.rows.append(row)
                    store.add_metrics(row)  # before the stats: a flush then covers the whole step
                    store.add_stats(collected)
                raise Diverged(step, loss_v) from None
            if data.n_val and ((eval_every and (step + 1) % eval_every == 0) or step == last):
                row["val_loss"], row["val_accuracy"] = evaluate(model, data, bs)
            with signals_deferred():  # a step's records are written whole, or not at all
                result.rows.append(row)
                store.add_metrics(row)  # before the stats: a flush then covers the whole step
                store.add_stats(collected)
                result.steps_done = step + 1 if steps > 0 else 0
            for cb in callbacks:
                cb.on_step_end(step, row)
    except Diverged as d:
        result.status = "diverged"
        where = first_nonfinite(collected[0] if collected else None)
        result.diverged = {"step": d.step, "loss": d.loss,
                           "layer": where[0] if where else None,
                           "layer_idx": where[1] if where else None}
    except (KeyboardInterrupt, Interrupted):
        result.status = "interrupted"
    finally:
        result.train_s = time.perf_counter() - t_start
        for cb in callbacks:
            cb.on_fit_end(result)
    return result
