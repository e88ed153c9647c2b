"""`initlab.watch(model, optimizer, ...)`: per-layer telemetry of any model in any training
loop, written as a run directory that `load_run` and `initlab-report` read like a CLI run.
The CLI's own loop records through it too.

    with initlab.watch(model, opt, out="runs/x", telemetry="default", total_steps=1000) as w:
        for step, (x, y) in enumerate(loader):
            with w.step(step):           # hooks exist only on scheduled steps
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(); loss.backward(); opt.step()
            w.log(loss=loss)             # tensors are read on logged steps, not every step

The update rows come from the optimizer's own step hooks, so the loop needs no extra
calls; without an optimizer (or a step without `optimizer.step()`), weights and their
gradients are still recorded, updates are not.
"""

from __future__ import annotations

import logging
import math
import numbers
import platform
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from initlab.errors import InitlabError, Interrupted
from initlab.nn.hooks import hooked
from initlab.rundir.lock import claim_run, release
from initlab.rundir.store import LOSS_TAIL, RunStore, read_stats
from initlab.signals import signals_deferred
from initlab.speedups.collector import paused
from initlab.telemetry import Telemetry, TelemetryConfig, first_nonfinite
from initlab.telemetry.columns import Columns
from initlab.telemetry.ranks import world
from initlab.telemetry.reducers import CpuPath

log = logging.getLogger("initlab")
PENDING_METRICS = 256  # metric rows held as tensors before they are read in one transfer
FINAL_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


def versions() -> dict[str, str]:
    import initlab

    return {"initlab": initlab.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


class Watch:
    """The recorder of one run: telemetry on scheduled steps, metric rows, the run's files.

    `out=None` keeps everything in memory (`collected`, `metrics`): what the probe uses.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                 out: str | Path | None = None, telemetry: Any = "default", total_steps: int | None = None,
                 plots: bool = True, meta: Mapping[str, Any] | None = None, queued: bool = False,
                 cpu_path: CpuPath | None = None, config: Any = None, tags: Any = None) -> None:
        if any(p.is_meta for p in model.parameters()):
            raise InitlabError("the model's parameters are on the meta device (shapes, no values): materialise it "
                               "first, e.g. model.to_empty(device='cpu') and then initialise it")
        if out is not None and Path(out).exists() and not Path(out).is_dir():
            raise InitlabError(f"out={str(out)!r} is a file, not a directory: give a directory for the run")
        if out is not None and (rank := world()) is not None and rank[0] != 0:
            out, plots = None, False  # DDP: every rank records and merges; rank 0 alone writes the run
        self.model, self.optimizer = model, optimizer
        self.cfg = TelemetryConfig.of(telemetry)
        self.schedule = self.cfg.schedule(total_steps)
        self.total_steps = total_steps
        # the CPU's reducer: tensor ops, then the kernels if the logged steps ahead pay for loading them
        path = cpu_path or CpuPath(self.schedule.count())
        self.telemetry = Telemetry(model, self.cfg, queued=queued, path=path) if self.cfg.enabled else None
        self.out = Path(out) if out is not None else None
        self.plots = plots
        self.meta = dict(meta) if meta is not None else self._default_meta(config, tags)
        self.store: RunStore | None = None
        self._lock: Path | None = None
        if self.out is not None:
            self._lock = claim_run(self.out)  # a run owns its directory: never two runs' files in one
            self.store = RunStore(self.out, self.meta, flush_every=self.cfg.flush_every,
                                  flush_seconds=self.cfg.flush_seconds)
        self.collected: list[tuple[Columns, Columns | None]] = []  # out=None: every logged step's columns
        self.metrics: list[dict[str, Any]] = []  # out=None: every metrics row
        self.status = "running"
        self.error: str | None = None
        self.diverged: dict[str, Any] | None = None
        self.steps_done = 0
        self.logged_steps = 0
        self.rows_logged = 0  # metrics rows handed to the store (or kept), whole steps only
        self.last_row: dict[str, Any] = {}
        self._tail: deque[float] = deque(maxlen=LOSS_TAIL)
        self._pending_stats: tuple[Columns, Columns | None] | None = None
        self._pending_rows: list[dict[str, Any]] = []  # metric rows whose tensors are unread
        self._step: int | None = None
        self._logging = False
        self._stepped = False
        self._t_step = 0.0
        self._step_time = math.nan
        self._finishing = False  # finish() began (the block's exit must not run it again)
        self._finished = False  # summary.json is written
        self._skipped = False  # the optimizer skipped this step (a loss scaler found inf/NaN gradients)
        self._kinds: dict[str, str] = {}  # each w.log key: "number" or "text", fixed at its first value

    def _default_meta(self, config: Any = None, tags: Any = None) -> dict[str, Any]:
        """What a watch() run records of itself: the model's class and parameter count, the
        optimizer's class and hyperparameters, the telemetry, and the caller's own `config`
        (a dict or an OmegaConf config, e.g. their Hydra config) and `tags`."""
        own: dict[str, Any] = {}
        if config is not None:
            try:
                from omegaconf import OmegaConf

                own = OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else dict(config)
            except ImportError:
                own = dict(config)
        model = {"name": type(self.model).__name__, "params": sum(p.numel() for p in self.model.parameters())}
        optim = None
        if self.optimizer is not None:
            group = self.optimizer.param_groups[0]
            optim = {"name": type(self.optimizer).__name__, "param_groups": len(self.optimizer.param_groups),
                     **{k: _plain(v) for k, v in group.items() if k != "params"}}
        merged: dict[str, Any] = {"model": model, "optim": optim}
        for key, value in own.items():  # the caller's keys; their model/optim dicts extend what is measured
            merged[key] = {**merged[key], **value} if isinstance(merged.get(key), dict) and isinstance(value, dict) \
                else value
        merged.update(telemetry=self.cfg.as_dict(), source="watch", **({"tags": list(tags)} if tags else {}))
        return {"config": merged,
                "versions": versions(), "hist": self.cfg.hist.as_dict() if self.cfg.hist else None}

    # -- one step ----------------------------------------------------------------------
    @property
    def current_step(self) -> int | None:
        """The step of the last `step()` block."""
        return self._step

    def logs(self, step: int) -> bool:
        """Whether `step` is on the schedule."""
        return self.telemetry is not None and self.schedule(step)

    @contextmanager
    def step(self, step: int, force: bool = False) -> Iterator[bool]:
        """Around one optimizer step (forward, backward, optimizer.step()). On scheduled
        steps (or with `force`) hooks record it; yields whether it does."""
        self._open("w.step()")
        self._flush_pending_stats()
        if self.store is not None and self.store.due(len(self._pending_rows)):
            self.flush()  # unlogged steps too: a SIGKILL loses at most `flush_seconds` of rows
        self._step = step
        self._skipped = False
        logging_ = self.telemetry is not None and (force or self.schedule(step))
        self._logging, self._stepped = logging_, False
        opt = self.optimizer if logging_ and self.cfg.params else None
        self._t_step = time.perf_counter()
        try:
            with hooked([opt.register_step_pre_hook(self._pre_step),
                         opt.register_step_post_hook(self._post_step)] if opt is not None else []):
                if logging_:
                    with self.telemetry.record():
                        yield True
                else:
                    yield False
        except BaseException:
            if logging_:
                self.telemetry.discard()
            raise
        finally:
            self._step_time = time.perf_counter() - self._t_step
            self._logging = False
        if logging_:
            if not self._stepped:  # no optimizer step inside: weights and their gradients only
                self.telemetry.before_step()
                self.telemetry.after_step(False)
            collected = self.telemetry.collect(step)
            if collected is not None:
                self._pending_stats = collected
                self._check_nonfinite(step, collected[0])
        self.steps_done = max(self.steps_done, step + 1)

    def step_skipped(self) -> None:
        """Inside `step()`: the optimizer skipped this step because a loss scaler (GradScaler)
        found inf or NaN gradients. Those gradients are the scaler's business, not a divergence;
        the weights did not move."""
        self._skipped = True

    def _pre_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._logging and not self._stepped:
            self.telemetry.before_step()

    def _post_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._logging and not self._stepped:
            self.telemetry.after_step(True)
            self._stepped = True

    def _check_nonfinite(self, step: int, cols: Columns) -> None:
        """A non-finite statistic of any kind is a result: the run is `diverged` from here.
        Where: the first non-finite activation in forward order, else the gradient where the
        backward pass first went non-finite (the one nearest the output), else the first weight,
        weight gradient or update that did."""
        if self.diverged is not None:
            return
        order = ((("act",), False), (("grad",), True), (("weight", "weight_grad", "update"), False))
        if self._skipped:  # a loss scaler's overflow: only activations and weights can diverge
            order = ((("act",), False), (("weight",), False))
        for kinds, last in order:
            where = first_nonfinite(cols, kinds, last=last)
            if where is not None:
                kind = next(k for k in kinds if first_nonfinite(cols, (k,), last=last) == where)
                self.diverged = {"step": step, "loss": None, "layer": where[0], "layer_idx": where[1], "kind": kind}
                return

    # -- metrics -------------------------------------------------------------------------
    def log(self, step: int | None = None, **metrics: Any) -> None:
        """One metrics row for `step` (default: the last `step()`): numbers or 0-d tensors.
        Tensors are read in one transfer on logged steps (and every PENDING_METRICS rows),
        so an unlogged step costs the loop no device sync."""
        self._open("w.log()")
        step = self._step if step is None else step
        if step is None:
            raise InitlabError("w.log() needs a step: call it after `with w.step(step):` or pass step=")
        row: dict[str, Any] = {"step": int(step)}
        for k, v in metrics.items():  # checked here, so one odd value never costs the rows buffered
            row[k] = self._value(k, v)
        if "lr" not in row and self.optimizer is not None:
            row["lr"] = self.optimizer.param_groups[0]["lr"]
        if "step_time" not in row:
            row["step_time"] = self._step_time
        self._pending_rows.append(row)
        if self._pending_stats is not None or len(self._pending_rows) >= PENDING_METRICS:
            self._read_pending()

    def _value(self, key: str, v: Any) -> Any:
        """A metric as stored: a real number becomes a float (an int beyond int64, a bool, a numpy
        scalar alike), so a column keeps one type through the run; a string stays a string. A
        key keeps the kind of value it started with."""
        if v is None:
            return None  # missing at this step
        if hasattr(v, "item") and not isinstance(v, torch.Tensor) and getattr(v, "size", 1) == 1:
            v = v.item()  # a numpy scalar
        if isinstance(v, torch.Tensor):
            if v.numel() != 1 or v.is_complex():
                raise InitlabError(f"w.log({key}=...) takes real numbers or one-element real tensors, not a "
                                   f"{'complex tensor' if v.is_complex() else f'tensor of shape {list(v.shape)}'}")
            value: Any = v.detach()
        elif isinstance(v, str):
            value = v
        elif isinstance(v, numbers.Real):
            value = float(v)  # 10**30 and True alike: one float column
        else:
            raise InitlabError(f"w.log({key}=...) takes real numbers, one-element tensors or strings, "
                               f"not {type(v).__name__} {v!r:.40}")
        kind = "text" if isinstance(value, str) else "number"
        if self._kinds.setdefault(key, kind) != kind:
            raise InitlabError(f"w.log({key}=...) was logged as a {self._kinds[key]} before; a metric keeps one kind "
                               "(log the other under another name)")
        return value

    def _open(self, what: str) -> None:
        if self._finished:
            raise InitlabError(f"{what} after the run finished: its directory is closed (start a new watch)")

    def _read_pending(self) -> None:
        """Turn the pending rows' tensors into numbers (one stack per device), then write them
        and the step's statistics together, so a flush covers whole steps."""
        rows, self._pending_rows = self._pending_rows, []
        tensors = [(r, k, v) for r in rows for k, v in r.items() if isinstance(v, torch.Tensor)]
        by_device: dict[torch.device, list[tuple[dict, str, torch.Tensor]]] = {}
        for item in tensors:
            by_device.setdefault(item[2].device, []).append(item)
        for items in by_device.values():
            values = torch.stack([v.reshape(()).double() for _, _, v in items]).tolist()
            for (r, k, _), value in zip(items, values):
                r[k] = value
        with signals_deferred():  # a step's records are written whole, or not at all
            for r in rows:
                self._note_loss(r)
                self._add_metrics(r)
            self._flush_pending_stats()
            if self.store is not None:
                self.store.tick()

    def _note_loss(self, row: dict[str, Any]) -> None:
        loss = row.get("loss")
        if isinstance(loss, float) and not math.isfinite(loss) and (self.diverged is None or
                                                                     self.diverged.get("loss") is None):
            prev = self.diverged
            self.diverged = {"step": row["step"], "loss": loss,
                             "layer": prev["layer"] if prev else None,
                             "layer_idx": prev["layer_idx"] if prev else None,
                             "kind": prev.get("kind") if prev else None}
            if prev is not None and prev["step"] < row["step"]:
                self.diverged["nonfinite_step"] = prev["step"]

    def _add_metrics(self, row: dict[str, Any]) -> None:
        self.last_row = row
        if isinstance(row.get("loss"), (int, float)):
            self._tail.append(float(row["loss"]))
        self.rows_logged += 1
        if self.store is not None:
            self.store.add_metrics(row)
        else:
            self.metrics.append(row)

    def _flush_pending_stats(self) -> None:
        collected, self._pending_stats = self._pending_stats, None
        if collected is None:
            return
        self.logged_steps += 1
        if self.store is not None:
            self.store.add_stats(collected)
        else:
            self.collected.append(collected)

    def flush(self) -> None:
        """Everything recorded so far to disk (metrics tensors read first)."""
        if self._finished:
            raise InitlabError("w.flush() after the run finished: everything was written then")
        if self._pending_rows:
            self._read_pending()
        with signals_deferred():
            self._flush_pending_stats()
            if self.store is not None:
                self.store.flush()

    # -- the end ---------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """What the run says of itself: status, steps, final metrics, divergence, telemetry."""
        status = self.status
        if status in ("running", "ok") and self.diverged is not None:
            status = "diverged"
        final = {k: self.last_row.get(k) for k in FINAL_KEYS if k in self.last_row}
        if self._tail:
            final.update(loss_avg=math.fsum(self._tail) / len(self._tail), loss_avg_steps=len(self._tail))
        out: dict[str, Any] = {"status": "ok" if status == "running" else status, "steps_done": self.steps_done,
                               "final": final, "diverged": self.diverged,
                               "telemetry": {"logged_steps": self.logged_steps, "preset": self.cfg.name}}
        if self.store is not None:
            out["telemetry"].update(parts=self.store.parts, max_buffered_steps=self.store.max_buffered,
                                    flush_every=self.store.flush_every)
        if self.error:
            out["error"] = self.error
        out["versions"] = versions()
        return out

    def finish(self, extra: Mapping[str, Any] | None = None, diagnose_cfg: Mapping[str, float] | None = None,
               plots: bool | None = None) -> dict[str, Any]:
        """Flush, then write summary.json (with flags) and the plots; returns the summary."""
        if self._finished:
            raise InitlabError("this watch has already finished")
        self._finishing = True
        self.flush()
        summary = {**self.summary(), **(extra or {})}
        if self.out is None:
            self._finished = True
            return summary
        from initlab.diagnose import diagnose  # pandas: only once the run is over

        stats = read_stats(self.out)
        summary["flags"] = diagnose(stats, summary, diagnose_cfg)
        self.store.write_summary(summary)
        self._finished = True
        self.release()
        if self.plots if plots is None else plots:
            self.draw()
        return summary

    @property
    def finished(self) -> bool:
        """summary.json is written (by finish)."""
        return self._finished

    def release(self) -> None:
        """Give the run directory's lock back (the summary is written, or the run failed)."""
        release(self._lock)
        self._lock = None

    def draw(self) -> None:
        """The run's figures; a plotting failure is logged, never raised (the data is safe)."""
        try:
            with paused():  # matplotlib's import and the figures (see initlab/speedups/collector.py)
                from initlab.report.build import report_run

                report_run(self.out)
        except Exception as exc:
            log.error("plots   failed (%s); rebuild later with `initlab-report %s`", exc, self.out)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        if self._finishing:
            return
        if exc_type is not None:
            if issubclass(exc_type, (KeyboardInterrupt, Interrupted)):
                self.status = "interrupted"
            else:
                self.status = "failed"
                self.error = f"{exc_type.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        elif self.status == "running":
            self.status = "ok"
        try:
            self.finish()
        except Exception as write_exc:  # never hide the loop's own exception
            if exc_type is None:
                raise
            log.error("watch   could not finish the run's files: %s", write_exc)
        finally:
            self.release()


def _plain(v: Any) -> Any:
    """An optimizer hyperparameter as JSON takes it (betas are tuples, lr may be a tensor)."""
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, tuple):
        return list(v)
    return v if isinstance(v, (int, float, str, bool, type(None), list, dict)) else str(v)


def watch(model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, out: str | Path | None = None,
          telemetry: Any = "default", total_steps: int | None = None, plots: bool = True,
          queued: bool = False, config: Any = None, tags: Any = None) -> Watch:
    """Record per-layer statistics of `model` in your own loop; see the module docstring.

    `telemetry`: a preset name (`default`, `full`, `off`), a dict of conf/telemetry's keys,
    or a `TelemetryConfig`. `total_steps` places the schedule's log-spaced points and its
    last step. `out=None` keeps everything in memory (`w.collected`, `w.metrics`). `config`
    (a dict or an OmegaConf config) and `tags` are recorded with the run, beside the model's
    parameter count and the optimizer's class and hyperparameters. With `plots=True` the run's
    figures are drawn when the block ends.
    """
    return Watch(model, optimizer, out=out, telemetry=telemetry, total_steps=total_steps, plots=plots,
                 queued=queued, config=config, tags=tags)


__all__ = ["Watch", "versions", "watch"]
