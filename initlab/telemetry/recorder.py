"""The recorder: hooks on a model's leaf modules for one forward/backward, the parameters
around the optimizer's step, and the step's rows in forward order.

On a logged step, forward hooks on every tracked leaf module take the statistics of its
output (`act`) and a tensor hook those of dLoss/d output (`grad`); parameters, their
gradients and the optimizer's update are summarised around the step; each BatchNorm's
running and batch statistics are read off its buffers, and the per-sample (per-group)
mean and variance of each of initlab's Layer/Group/Instance/RMS norms are the ones the layer
computed, handed over through its `stats_sink`. Hooks exist only inside
`record()`, so unlogged steps run the bare model.

Every tensor is reduced where it is seen, by the step's reducer (CPU kernels, or queued
tensor ops: on CUDA/MPS, and on the CPU until the kernels pay for loading them, `CpuPath`):
an in-place op that follows a layer (torchvision's
`ReLU(inplace=True)`) or a `zero_grad` inside the user's step cannot change what was
recorded. The queued rows stay on the device until `collect()`: one concatenation, one
copy to the host per logged step.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Any

import numpy as np
import torch
from torch import nn

from initlab.errors import InitlabError
from initlab.nn.hooks import hooked
from initlab.nn.kinds import BATCH_NORMS, RESHAPE, is_leaf
from initlab.nn.norms import exposes_stats
from initlab.speedups import foreach
from initlab.telemetry.columns import Columns, Slot, hist_columns, stats_columns
from initlab.telemetry.formats import CpuFormats, empty_row, format_columns, format_rows, formats_of
from initlab.telemetry.hist import Binner, SampleStage
from initlab.telemetry.ranks import local, merge, sharded, world
from initlab.telemetry.reducers import (
    CpuPath,
    CpuReducer,
    DeadRegion,
    dead_region,
    param_rows,
    tensor_stats,
)
from initlab.telemetry.schedule import TelemetryConfig
from initlab.telemetry.stats import STATS

_DEFAULT_THRESHOLDS = {"tanh": 0.97, "sigmoid_low": 0.03, "sigmoid_high": 0.97}


def dead_thresholds(cfg: TelemetryConfig) -> dict[str, float]:
    """The dead/saturated thresholds of a telemetry config, over the defaults."""
    return {**_DEFAULT_THRESHOLDS, **(cfg.thresholds or {})}


def layer_name(module_name: str, call: int) -> str:
    """The `layer` of a module's call-th call in one forward: a module used twice gets `name#1`."""
    return module_name if call == 0 else f"{module_name}#{call}"


def tracked_modules(model: nn.Module, patterns: Sequence[str] = ()) -> list[tuple[str, nn.Module]]:
    """Leaf modules worth watching (Linear, Conv, BN, activations, pooling, dropout), filtered
    by `patterns`: a module is kept if its class name or dotted name matches any (fnmatch)."""
    out = []
    for name, m in model.named_modules():
        if not name or not is_leaf(m) or isinstance(m, RESHAPE):
            continue
        if patterns and not any(fnmatch(type(m).__name__, p) or fnmatch(name, p) for p in patterns):
            continue
        out.append((name, m))
    return out


def first_tensor(out: object) -> torch.Tensor | None:
    """A module's output tensor: the tensor itself, or the first of a tuple/list (e.g.
    nn.MultiheadAttention's (output, weights), an LSTM's (output, state)); else None."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


@dataclass(slots=True)
class _Row:
    """One row of the step: its identity, and its statistics (host numbers on the CPU path,
    a device tensor on the queued path)."""

    slot: Slot
    kind: str
    param: str
    stats: Any  # list[float] | torch.Tensor
    hist: bool = False
    fmt: torch.Tensor | None = None  # telemetry.formats' counts (telemetry/formats.py), on the tensor's device
    index: int = -1  # parameter kinds: position in Telemetry.params (pairs grad/update with weight)


class Telemetry:
    """Records per-layer statistics on logged steps; `collect()` returns them as columns.

    Call order on a logged step: `record()` around forward and backward, `before_step()`
    after backward, `after_step(stepped)` after the optimizer's step (or in its place),
    then `collect(step)`. Only the first forward pass inside `record()` is recorded: later
    passes (gradient-accumulation micro-batches) run unobserved, so a step has one row set.
    """

    def __init__(self, model: nn.Module, config: TelemetryConfig | None = None, queued: bool = False,
                 path: CpuPath | None = None) -> None:
        self.cfg = config or TelemetryConfig()
        # CPU tensors: tensor ops, then the kernels once `path` says they pay (it may be shared by
        # several recorders, e.g. a probe's draws); `queued` forces the tensor ops on the CPU (tests)
        self._path = CpuPath(start="tensor") if queued else path or CpuPath()
        self._cpu = CpuReducer(self.cfg.hist) if self._path.kernels else None
        self._cpu_work = [0, 0]  # this step's CPU tensors reduced as tensor ops: rows, elements
        self.thresholds = dead_thresholds(self.cfg)
        self.formats = formats_of(self.cfg.formats)
        self._cpu_formats: CpuFormats | None = None  # the kernel's reader, made when first needed
        self.model = model
        self.modules = tracked_modules(model, self.cfg.modules)
        if self.cfg.modules and not self.modules:  # recording nothing would read as "all is well"
            types = sorted({type(m).__name__ for _, m in tracked_modules(model)})
            raise InitlabError(f"telemetry.modules={list(self.cfg.modules)} matches no module of this model; "
                               f"its leaf module types: {', '.join(types)}")
        self.params = [(mod_name, type(m).__name__, pname, p) for mod_name, m in model.named_modules()
                       for pname, p in m.named_parameters(recurse=False) if p.requires_grad]
        self._sharded = np.array([sharded(p) for *_, p in self.params], dtype=bool)  # FSDP2: this rank's piece
        self._order: dict[tuple[str, int], int] = {}  # (name, call #) -> layer_idx
        self._slots: dict[tuple[str, int], Slot] = {}
        self._calls: dict[str, int] = {}
        self._passes = 0  # forward passes of the root module inside record()
        self._depth = 0  # calls of the root open right now (a pass is the outermost)
        self._rows: list[_Row] = []
        self._bn_prev: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._norm_stats: dict[str, tuple[torch.Tensor | None, torch.Tensor]] = {}  # this call's, until its hook
        self._snapshot: list[torch.Tensor] | None = None  # the weights before the step
        self._snapped = False
        self._binner = Binner(self.cfg.hist) if self.cfg.hist else None
        self._samples = SampleStage(self.cfg.hist.sample if self.cfg.hist else 0)
        self._counts: list[np.ndarray] = []  # the CPU's histogram counts, one per histogram row

    # -- activations and gradients -------------------------------------------------
    def _slot(self, name: str, module: nn.Module) -> Slot:
        call = self._calls.get(name, 0)
        self._calls[name] = call + 1
        key = (name, call)
        slot = self._slots.get(key)
        if slot is None:  # forward order, fixed at first sight
            self._order[key] = len(self._order)
            slot = self._slots[key] = Slot(layer_name(name, call), type(module).__name__, self._order[key])
        return slot

    def _add(self, slot: Slot, kind: str, t: torch.Tensor, dead: DeadRegion | None = None,
             hist: bool = False) -> None:
        """Reduce an activation, gradient or BN vector now, while it is what it is."""
        if t.device.type == "mps":  # MPS has no float64: take these statistics on the CPU
            t = t.cpu()
        if self._cpu is not None and t.device.type == "cpu":
            row, counts = self._cpu.act_row(t, dead, hist)
            if counts is not None:
                self._counts.append(counts)
        else:
            self._count_cpu_work(t)
            row = tensor_stats(t, dead)  # queued ops, no sync
            if hist:
                self._samples.add(t)
        fmt = self._fmt_rows([t])[0] if self.formats and kind in ("act", "grad") else None
        self._rows.append(_Row(slot, kind, "", row, hist, fmt=fmt))

    def _fmt_rows(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """telemetry.formats' counts of `tensors`: the kernel's one pass on the CPU once the
        kernels are loaded, the tensor ops otherwise (the same numbers, tests/test_formats.py)."""
        if self._cpu is not None and tensors[0].device.type == "cpu":
            if self._cpu_formats is None:
                self._cpu_formats = CpuFormats(self._cpu.k, self.formats)
            return self._cpu_formats.rows(tensors)
        return format_rows(tensors, self.formats)

    def _count_cpu_work(self, *ts: torch.Tensor) -> None:
        """What the kernels would have taken, for `CpuPath`."""
        for t in ts:
            if t.device.type == "cpu":
                self._cpu_work[0] += 1
                self._cpu_work[1] += t.numel()

    def _forward_hook(self, name: str, module: nn.Module):
        want_hist = self.cfg.hist is not None
        dead = dead_region(module, self.thresholds)
        bn = self.cfg.bn and isinstance(module, BATCH_NORMS)

        def hook(module: nn.Module, args: tuple, out: object) -> None:
            t = first_tensor(out)
            if t is None or self._passes > 1:
                return
            slot = self._slot(name, module)
            self._add(slot, "act", t.detach(), dead, want_hist)
            if bn and name in self._bn_prev:
                self._bn_rows(slot, module, *self._bn_prev.pop(name))
            if name in self._norm_stats:
                mean, var = self._norm_stats.pop(name)
                if mean is not None:
                    self._add(slot, "norm_mean", mean)
                self._add(slot, "norm_var", var)
            if t.requires_grad:
                t.register_hook(lambda g: self._add(slot, "grad", g.detach(), None, want_hist))

        return hook

    def _root_pre_hook(self, module: nn.Module, args: tuple) -> None:
        # A pass begins where no call of the root is open: a call inside one (Lightning under DDP
        # calls the module once to redirect to training_step, which calls it again) is the same pass
        self._depth += 1
        if self._depth == 1:
            self._passes += 1

    def _root_post_hook(self, module: nn.Module, args: tuple, out: object) -> None:
        self._depth = max(self._depth - 1, 0)

    def _bn_pre_hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            if module.training and module.running_mean is not None and self._passes <= 1:
                self._bn_prev[name] = (module.running_mean.clone(), module.running_var.clone())

        return hook

    def _bn_rows(self, slot: Slot, bn: nn.Module, prev_mean: torch.Tensor, prev_var: torch.Tensor) -> None:
        """Running buffers, and the batch statistics recovered from how they moved:
        new = (1 - m) * old + m * batch  =>  batch = (new - (1 - m) * old) / m."""
        rm, rv = bn.running_mean.detach(), bn.running_var.detach()
        self._add(slot, "bn_running_mean", rm)
        self._add(slot, "bn_running_var", rv)
        m = bn.momentum
        if m:  # momentum=None (cumulative average) has no fixed inverse
            self._add(slot, "bn_batch_mean", (rm - (1 - m) * prev_mean) / m)
            self._add(slot, "bn_batch_var", (rv - (1 - m) * prev_var) / m)

    def _norm_sink(self, name: str):
        def sink(mean: torch.Tensor | None, var: torch.Tensor) -> None:
            if self._passes <= 1:
                self._norm_stats[name] = (mean, var)

        return sink

    @contextmanager
    def record(self) -> Iterator[None]:
        """Attach the hooks (and the norms' sinks) for one forward/backward; always removed on exit."""
        self._calls.clear()
        self._passes = self._depth = 0
        def handles() -> Iterator[Any]:
            yield self.model.register_forward_pre_hook(self._root_pre_hook)
            yield self.model.register_forward_hook(self._root_post_hook, always_call=True)
            yield from (m.register_forward_hook(self._forward_hook(name, m)) for name, m in self.modules)
            if self.cfg.bn:
                yield from (m.register_forward_pre_hook(self._bn_pre_hook(name))
                            for name, m in self.modules if isinstance(m, BATCH_NORMS))

        sinks = [(name, m) for name, m in self.modules if self.cfg.norm and exposes_stats(m)]
        for name, m in sinks:
            m.stats_sink = self._norm_sink(name)
        try:
            with hooked(handles()):
                yield
        finally:
            for _, m in sinks:
                m.stats_sink = None
            self._bn_prev.clear()
            self._norm_stats.clear()

    # -- parameters, their gradients and the optimizer's update ---------------------
    def _param_slot(self, i: int) -> Slot:
        mod, mtype, _, _ = self.params[i]
        return Slot(mod, mtype, self._order.get((mod, 0), -1))

    def _param_block(self, kind: str, tensors: list[torch.Tensor | None]) -> None:
        """Rows of many parameter tensors: on the CPU one kernel pass each, read back now;
        queued, one multi-tensor reduction for all of them, left on the device."""
        present = [(i, t.detach()) for i, t in enumerate(tensors) if t is not None]
        if not present:
            return
        if self._cpu is not None and present[0][1].device.type in ("cpu", "mps"):
            rows = [self._cpu.param_row(t.cpu()) for _, t in present]
        else:
            self._count_cpu_work(*(t for _, t in present))
            block = param_rows([t for _, t in present])
            rows = list(block.unbind(0))
        fmts = list(self._fmt_rows([t for _, t in present]).unbind(0)) if self.formats else [None] * len(rows)
        for (i, _), row, fmt in zip(present, rows, fmts):
            self._rows.append(_Row(self._param_slot(i), kind, self.params[i][2], row, index=i, fmt=fmt))

    def before_step(self) -> None:
        """After backward, before optimizer.step(): gradients, and a snapshot for the update
        (into buffers kept across steps: fresh multi-MB copies cost page faults)."""
        if not self.cfg.params:
            return
        weights = [local(p.detach()) for *_, p in self.params]
        self._param_block("weight_grad", [local(p.grad) if p.grad is not None else None for *_, p in self.params])
        if self._snapshot is None or any(a.shape != w.shape or a.device != w.device
                                         for a, w in zip(self._snapshot, weights)):
            self._snapshot = [torch.empty_like(w) for w in weights]
        foreach.copy_(self._snapshot, weights)
        self._snapped = True

    def after_step(self, stepped: bool) -> None:
        """After optimizer.step() (or in its place on a probe): the weights, and the update
        each parameter received when there was a step (before - after; the columns flip the
        sign of its mean). On the CPU both rows come from one pass over weight and snapshot."""
        if not self.cfg.params:
            return
        weights = [local(p.detach()) for *_, p in self.params]
        update = stepped and self._snapped
        if self._cpu is not None and weights and weights[0].device.type == "cpu":
            updates = []
            w_fmt = self._fmt_rows(weights) if self.formats else None
            u_fmt = self._fmt_rows([s - w for s, w in zip(self._snapshot, weights)]) \
                if self.formats and update else None
            for i, w in enumerate(weights):
                if update:
                    w_row, u_row = self._cpu.update_rows(w, self._snapshot[i])
                    updates.append(_Row(self._param_slot(i), "update", self.params[i][2], u_row, index=i,
                                        fmt=u_fmt[i] if u_fmt is not None else None))
                else:
                    w_row = self._cpu.param_row(w)
                self._rows.append(_Row(self._param_slot(i), "weight", self.params[i][2], w_row, index=i,
                                       fmt=w_fmt[i] if w_fmt is not None else None))
            self._rows += updates
        else:
            self._param_block("weight", weights)
            if update:
                foreach.sub_(self._snapshot, weights)  # in place: before - after = -update
                self._param_block("update", self._snapshot)
        self._snapped = False

    # -- the one transfer ------------------------------------------------------------
    def _compute(self, rows: list[_Row]) -> tuple[np.ndarray, list[int], np.ndarray | None]:
        """(float64 stats in row order, rows with histograms, their counts) on the host."""
        n = len(rows)
        hist_rows = [i for i, r in enumerate(rows) if r.hist]
        on_device = [isinstance(r.stats, torch.Tensor) for r in rows]
        if not any(on_device):
            counts, self._counts = self._counts, []
            assert len(counts) == len(hist_rows), "histogram counts out of step with their rows"
            stats = np.array([r.stats for r in rows], dtype=np.float64).reshape(n, len(STATS))
            return stats, hist_rows, np.stack(counts)[:, :-1].reshape(-1) if counts else None
        assert all(on_device), "CPU rows and queued rows in one step"
        stats = torch.stack([r.stats for r in rows])
        samples, lengths = self._samples.take() if hist_rows else (None, [])
        assert len(lengths) == len(hist_rows), "histogram samples out of step with their rows"
        counts = self._binner(samples, lengths) if hist_rows else None
        values = torch.cat([stats.reshape(-1)] + ([counts] if counts is not None else [])).cpu().numpy()
        return values[: stats.numel()].reshape(n, -1), hist_rows, values[stats.numel():] if hist_rows else None

    def collect(self, step: int) -> tuple[Columns, Columns | None] | None:
        """(stats columns, histogram columns) of the step: one concatenation, one copy."""
        if not self._rows:
            return None
        rows, self._rows = self._rows, []
        self._snapped = False
        stats, hist_rows, counts = self._compute(rows)
        (cpu_rows, cpu_elements), self._cpu_work = self._cpu_work, [0, 0]
        if self._cpu is None and cpu_rows and self._path.step_done(cpu_rows, cpu_elements):
            self._cpu = CpuReducer(self.cfg.hist)  # from the next logged step on
        index = np.fromiter((r.index for r in rows), np.int64, len(rows))
        fmt = self._format_values(rows) if self.formats else None
        merged = None
        if world() is not None:  # DDP: the ranks' rows merged into the global batch's, one collective
            shards = np.array([r.index >= 0 and self._sharded[r.index] for r in rows], dtype=bool)
            merged = merge([r.kind for r in rows], stats, counts, fmt, shards)
            stats, counts, fmt = merged.stats, merged.counts, merged.fmt
        cols = self._columns(step, rows, index, stats, fmt)
        if merged is not None:
            cols["ranks"] = merged.ranks
            if self.cfg.ranks == "each":  # every rank's own rows too, beside the merged ones
                cols = self._with_each_rank(step, rows, index, cols, merged)
        hist = hist_columns(cols, hist_rows, counts, self.cfg.hist, self._binner.bounds) \
            if counts is not None else None
        return cols, hist

    def _columns(self, step: int, rows: list[_Row], index: np.ndarray, stats: np.ndarray,
                 fmt: np.ndarray | None) -> Columns:
        cols = stats_columns(step, [r.slot for r in rows], [r.kind for r in rows], [r.param for r in rows],
                             index, stats, len(self.params))
        if fmt is not None:
            cols.update(format_columns(fmt, self.formats))
        return cols

    def _with_each_rank(self, step: int, rows: list[_Row], index: np.ndarray, cols: Columns, merged: Any) -> Columns:
        """telemetry.ranks=each: the merged table (`rank` -1 where merged, 0 where rank 0's), then each
        rank's own rows of the merged kinds (`rank` r, `ranks` 1), to see imbalance between ranks."""
        cols["rank"] = np.where(merged.merged, -1, 0).astype(np.int64)
        keep = np.flatnonzero(merged.merged)
        mine = [rows[i] for i in keep]
        parts = [cols]
        for r in range(len(merged.each_stats)):
            fmt = merged.each_fmt[r][keep] if merged.each_fmt is not None else None
            part = self._columns(step, mine, index[keep], merged.each_stats[r][keep], fmt)
            part["ranks"] = np.ones(len(keep), dtype=np.int64)
            part["rank"] = np.full(len(keep), r, dtype=np.int64)
            parts.append(part)
        return {k: np.concatenate([p[k] for p in parts]) for k in cols}

    def _format_values(self, rows: list[_Row]) -> np.ndarray:
        """The rows' format counts on the host (one copy per device; NaN for rows without)."""
        out = np.tile(empty_row(self.formats), (len(rows), 1))
        by_device: dict[torch.device, list[int]] = {}
        for i, r in enumerate(rows):
            if r.fmt is not None:
                by_device.setdefault(r.fmt.device, []).append(i)
        for idx in by_device.values():
            out[idx] = torch.stack([rows[i].fmt for i in idx]).cpu().numpy()
        return out

    def discard(self) -> None:
        """Drop what a step recorded without collecting it (a failed step)."""
        self._rows, self._counts, self._cpu_work = [], [], [0, 0]
        if self._samples.buf is not None:
            self._samples.take()
        self._snapped = False

