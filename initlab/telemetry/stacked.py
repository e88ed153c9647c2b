"""Step 0 of many weight draws in one pass: the rows `Telemetry` records for one draw, for
every draw at once.

The draws' parameters and buffers are stacked (`torch.func.stack_module_state`); one
`vmap(functional_call)` runs the forward for all of them and one autograd pass the backward; every tracked
module's output comes back stacked, and so does dLoss/d output (the gradient of a zero
tensor added to the output, which is exactly that); each layer is then reduced over the
stack in one call (`stacked_stats`: one row per draw). Which modules, their names, forward
order, dead regions, BatchNorm rows and parameter rows are the recorder's own rules, read
off one ordinary forward/backward of the first draw.

Models it cannot take raise `NotStackable` (the caller falls back to one draw at a time):
dropout or any other random op in the forward pass (vmap cannot reproduce each draw's
mask), models whose draws differ in their parameters' names or shapes, and forwards that
vmap cannot trace (data-dependent Python control flow, unsupported ops).
"""

import copy
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from initlab.nn.hooks import hooked
from initlab.nn.kinds import BATCH_NORMS, DROPOUTS
from initlab.nn.norms import exposes_stats
from initlab.signals import Watchdog
from initlab.telemetry.columns import Columns, Slot, stats_columns
from initlab.telemetry.formats import Format, empty_row, format_columns, format_rows, formats_of
from initlab.telemetry.recorder import dead_thresholds, first_tensor, layer_name, tracked_modules
from initlab.telemetry.reducers import (
    CpuPath,
    CpuReducer,
    DeadRegion,
    dead_region,
    stacked_stats,
)
from initlab.telemetry.schedule import TelemetryConfig
from initlab.telemetry.stats import STATS

NAN = float("nan")
# bytes of stacked outputs, gradients and autograd state per chunk of draws. Smaller chunks
# reuse the memory freed by the one before instead of faulting in fresh pages: 100 draws of
# the MLP 10x256 take 1.7 s as the process's first probe at 256 MB, 2.1-2.5 s at 512 MB
# (later probes 1.1-1.2 s either way; 2-core CPU)
MEMORY_BUDGET = 1 << 28


class NotStackable(Exception):
    """This model's draws cannot be evaluated as one stack; says why."""


@dataclass(frozen=True)
class _Call:
    """One call of a tracked module in the first draw's forward pass."""

    name: str
    slot: Slot
    dead: DeadRegion | None
    shape: torch.Size
    grad: bool  # its output required grad: the recorder takes a `grad` row
    bn: bool  # a BatchNorm's first call in training mode: running and batch statistics rows
    norm: bool  # one of initlab's norms (telemetry.norm): the statistics it normalised with


@dataclass(frozen=True)
class _Layout:
    calls: list[_Call]
    params: list[tuple[str, str, str, str]]  # (module, module type, parameter, full name)
    with_grad: set[str]  # full names of the parameters that received a gradient
    bytes_per_draw: int
    elements_per_draw: int  # of the tensors reduced: outputs and their gradients, parameters and theirs


def _layout(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TelemetryConfig) -> _Layout:
    """One ordinary forward/backward of `model` (a draw, about to be stacked) with hooks that
    note what the recorder would record, in its order."""
    thresholds = dead_thresholds(cfg)
    calls: list[_Call] = []
    order: dict[tuple[str, int], int] = {}
    count: dict[str, int] = {}
    hooks: list[tuple[nn.Module, Any]] = []
    for name, module in tracked_modules(model, cfg.modules):
        if isinstance(module, DROPOUTS) and module.p > 0:
            raise NotStackable(f"{name} ({type(module).__name__}) draws a random mask per draw")

        def hook(m: nn.Module, args: tuple, out: object, name: str = name) -> None:
            t = first_tensor(out)
            if t is None:
                return
            call = count.get(name, 0)
            count[name] = call + 1
            order.setdefault((name, call), len(order))
            bn = (cfg.bn and call == 0 and isinstance(m, BATCH_NORMS) and m.training
                  and m.running_mean is not None)
            calls.append(_Call(name, Slot(layer_name(name, call), type(m).__name__, order[(name, call)]),
                               dead_region(m, thresholds), t.shape, t.requires_grad, bn,
                               cfg.norm and exposes_stats(m)))

        hooks.append((module, hook))
    with hooked(module.register_forward_hook(hook) for module, hook in hooks):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
    params = [(mod, type(m).__name__, pname, f"{mod}.{pname}" if mod else pname)
              for mod, m in model.named_modules() for pname, p in m.named_parameters(recurse=False)
              if p.requires_grad]
    with_grad = {full for mod, _, pname, full in params if model.get_submodule(mod).get_parameter(pname).grad
                 is not None}
    size = x.element_size()
    out_elements = sum(math.prod(c.shape) for c in calls)
    param_elements = sum(p.numel() for p in model.parameters())
    return _Layout(calls, params, with_grad, (4 * out_elements + 3 * param_elements) * size,
                   2 * out_elements + 2 * param_elements)


def _forward(base: nn.Module, calls: list[_Call], x: torch.Tensor, y: torch.Tensor
             ) -> Callable[..., tuple[torch.Tensor, tuple[torch.Tensor, tuple[torch.Tensor, ...], tuple]]]:
    """The function of one draw's (parameters, buffers, zeros per call) -> (loss, (loss
    detached, outputs, norm statistics)), for vmap; d loss / d zeros[i] is d loss / d output i."""
    modules = dict(base.named_modules())
    by_name: dict[str, list[int]] = {}
    for i, c in enumerate(calls):
        by_name.setdefault(c.name, []).append(i)

    norms = {c.name for c in calls if c.norm}

    def fn(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], zeros: list[torch.Tensor]):
        outputs: list[torch.Tensor] = []
        stats: list[tuple[torch.Tensor, ...]] = []  # per norm call: (mean, var) or (var,) (RMSNorm)
        seen: dict[str, int] = {}

        def sink(mean: torch.Tensor | None, var: torch.Tensor) -> None:
            stats.append((var,) if mean is None else (mean, var))

        def hook(m: nn.Module, args: tuple, out: object, name: str) -> object:
            t = first_tensor(out)
            if t is None:
                return None
            k = seen.get(name, 0)
            seen[name] = k + 1
            i = by_name[name][k]
            outputs.append(t)
            shifted = t + zeros[i]  # d loss / d zeros[i] is d loss / d output
            return shifted if isinstance(out, torch.Tensor) else type(out)((shifted, *out[1:]))

        for name in norms:
            modules[name].stats_sink = sink
        try:
            with hooked(modules[name].register_forward_hook(lambda m, a, o, name=name: hook(m, a, o, name))
                        for name in by_name):
                logits = torch.func.functional_call(base, (params, buffers), (x,))
        finally:
            for name in norms:
                modules[name].stats_sink = None
        # cross-entropy written out: under vmap F.cross_entropy takes a decomposition whose
        # shape checks import sympy (0.8 s at the first probe); the same loss to rounding
        loss = -logits.log_softmax(-1).gather(-1, y[:, None]).mean()
        return loss, (loss.detach(), tuple(outputs), tuple(stats))

    return fn


class _Reducer:
    """Rows of a stacked tensor, one per draw. On the CPU, when the probe is big enough to pay
    for loading them (`CpuPath`), the recorder's own kernels over each draw's
    view of the stack (the same numbers as one draw at a time); elsewhere one queued
    reduction over the whole stack per tensor."""

    def __init__(self, device: torch.device, layout: "_Layout", draws: int, formats: Sequence[Format] = ()) -> None:
        tensors = 2 * len(layout.calls) + 2 * len(layout.params)  # act and grad, weight and its grad
        elements = draws * layout.elements_per_draw
        wanted = device.type == "cpu" and CpuPath().for_work(tensors, elements)
        self.cpu = CpuReducer(None) if wanted else None
        self.formats = tuple(formats)

    def fmt(self, X: torch.Tensor) -> torch.Tensor | None:
        """telemetry.formats' counts of each draw's slice of a stacked tensor, (draws, K)."""
        return format_rows(list(X.detach().reshape(X.shape[0], -1).unbind(0)), self.formats) if self.formats else None

    def act(self, X: torch.Tensor, dead: DeadRegion | None = None) -> torch.Tensor:
        if self.cpu is not None:
            return torch.tensor([self.cpu.act_row(x, dead)[0] for x in X.detach()], dtype=torch.float64)
        return stacked_stats(X, dead)

    def param(self, X: torch.Tensor) -> torch.Tensor:
        """mean, std, non-finite count, numel; min, max, zero and dead fractions NaN."""
        if self.cpu is not None:
            return torch.tensor([self.cpu.param_row(x) for x in X.detach()], dtype=torch.float64)
        rows = stacked_stats(X)
        rows[:, 2:7] = NAN
        return rows


def _signature(model: nn.Module) -> tuple:
    return tuple((k, v.shape, v.dtype) for k, v in model.state_dict().items())


def stacked_step0(make: Callable[[Hashable], nn.Module], draws: Sequence[Hashable], x: torch.Tensor,
                  y: torch.Tensor, cfg: TelemetryConfig) -> tuple[list[Columns], np.ndarray]:
    """Step 0 (forward, backward, no update) of the model `make(draw)` builds for each draw
    (e.g. a seed; on x's device, in training mode): per draw the stats table of the rows the
    recorder takes on a forced step, and the losses. The draws are built and stacked a chunk at a
    time, as many as MEMORY_BUDGET holds."""
    first = make(draws[0])
    signature = _signature(first)
    layout = _layout(copy.deepcopy(first), x, y, cfg)  # its BatchNorm buffers move: not the draw's own
    chunk = max(1, MEMORY_BUDGET // max(layout.bytes_per_draw, 1))
    base = copy.deepcopy(first).to("meta")
    # vmap of the forward only, then one autograd pass over the sum of the draws' losses: the
    # draws share nothing, so its gradient in draw i's parameters is draw i's own. (vmap(grad())
    # gives the same numbers to rounding but imports torch._dynamo, 3 s, at its first call.)
    batched = torch.func.vmap(_forward(base, layout.calls, x, y), in_dims=(0, 0, 0), randomness="error")
    reduce = _Reducer(x.device, layout, len(draws), formats_of(cfg.formats))
    tables: list[Columns] = []
    losses: list[np.ndarray] = []
    dropped = Watchdog()  # a Ctrl-C Python dropped (e.g. inside numba's loading) still stops the draws
    for start in range(0, len(draws), chunk):
        group = []
        for i, d in enumerate(draws[start: start + chunk]):
            dropped.check()
            group.append(first if start + i == 0 else make(d))
        if any(_signature(m) != signature for m in group):
            raise NotStackable("the draws differ in their parameters' names, shapes or dtypes")
        params, buffers = torch.func.stack_module_state(group)
        n = len(group)
        del group
        before = {k: v.clone() for k, v in buffers.items() if k.endswith(("running_mean", "running_var"))}
        zeros = [torch.zeros(n, *c.shape, dtype=x.dtype, device=x.device, requires_grad=True) for c in layout.calls]
        try:
            draw_losses, (loss, outputs, norm_stats) = batched(params, buffers, zeros)
            pgrads, ograds = _gradients(draw_losses.sum(), params, zeros)
        except (RuntimeError, NotImplementedError, ValueError, TypeError) as exc:
            raise NotStackable(f"vmap cannot run this forward pass ({str(exc).splitlines()[0]})") from exc
        outputs = tuple(o.detach() for o in outputs)
        norm_stats = tuple(tuple(t.detach() for t in ts) for ts in norm_stats)
        tables += _tables(layout, base, params, pgrads, buffers, before, outputs, ograds, norm_stats, n, reduce)
        losses.append(loss.cpu().numpy())
    return tables, np.concatenate(losses)


def _gradients(total: torch.Tensor, params: dict[str, torch.Tensor], zeros: list[torch.Tensor]
               ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """d total / d each stacked parameter and zero tensor; zeros where one does not reach it
    (as torch.func.grad gives)."""
    names = [k for k, p in params.items() if p.requires_grad]
    inputs = [params[k] for k in names] + zeros
    grads = torch.autograd.grad(total, inputs, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs)]
    pgrads = {k: g for k, g in zip(names, grads)}
    pgrads.update({k: torch.zeros_like(p) for k, p in params.items() if k not in pgrads})
    return pgrads, grads[len(names):]


def _tables(layout: _Layout, base: nn.Module, params: dict[str, torch.Tensor], pgrads: dict[str, torch.Tensor],
            buffers: dict[str, torch.Tensor], before: dict[str, torch.Tensor], outputs: Sequence[torch.Tensor],
            ograds: Sequence[torch.Tensor], norm_stats: Sequence[tuple[torch.Tensor, ...]], n: int,
            reduce: "_Reducer") -> list[Columns]:
    """Per draw, the rows in the recorder's order: activations (with each BatchNorm's or
    norm's rows after its own) in forward order, gradients in backward order, then the parameters'
    gradients and the parameters."""
    slots: list[Slot] = []
    kinds: list[str] = []
    pnames: list[str] = []
    index: list[int] = []
    blocks: list[torch.Tensor] = []  # each (n, len(STATS))
    fmts: list[torch.Tensor | None] = []  # each (n, K) for act, grad and the parameter kinds

    def add(slot: Slot, kind: str, rows: torch.Tensor, param: str = "", i: int = -1,
            of: torch.Tensor | None = None) -> None:
        slots.append(slot)
        kinds.append(kind)
        pnames.append(param)
        index.append(i)
        blocks.append(rows)
        fmts.append(reduce.fmt(of) if of is not None else None)

    norm_iter = iter(norm_stats)
    for c, out in zip(layout.calls, outputs):
        add(c.slot, "act", reduce.act(out, c.dead), of=out)
        if c.norm:
            *mean, var = next(norm_iter)
            if mean:
                add(c.slot, "norm_mean", reduce.act(mean[0]))
            add(c.slot, "norm_var", reduce.act(var))
        if c.bn:
            module = base.get_submodule(c.name)
            rm, rv = buffers[f"{c.name}.running_mean"], buffers[f"{c.name}.running_var"]
            add(c.slot, "bn_running_mean", reduce.act(rm))
            add(c.slot, "bn_running_var", reduce.act(rv))
            m = module.momentum
            if m:
                pm, pv = before[f"{c.name}.running_mean"], before[f"{c.name}.running_var"]
                add(c.slot, "bn_batch_mean", reduce.act((rm - (1 - m) * pm) / m))
                add(c.slot, "bn_batch_var", reduce.act((rv - (1 - m) * pv) / m))
    for c, g in reversed(list(zip(layout.calls, ograds))):
        if c.grad:
            add(c.slot, "grad", reduce.act(g), of=g)
    order = {c.name: c.slot.layer_idx for c in layout.calls if c.slot.layer == c.name}
    param_slots = [Slot(mod, mtype, order.get(mod, -1)) for mod, mtype, _, _ in layout.params]
    for i, (_, _, pname, full) in enumerate(layout.params):
        if full in layout.with_grad:
            add(param_slots[i], "weight_grad", reduce.param(pgrads[full]), pname, i, of=pgrads[full])
    for i, (_, _, pname, full) in enumerate(layout.params):
        add(param_slots[i], "weight", reduce.param(params[full]), pname, i, of=params[full])
    stats = torch.stack(blocks, dim=1).cpu().numpy()  # (n, rows, STATS): one transfer
    assert stats.shape[2] == len(STATS)
    idx = np.asarray(index, dtype=np.int64)
    tables = [stats_columns(0, slots, kinds, pnames, idx, stats[d], len(layout.params)) for d in range(n)]
    if reduce.formats:
        blank = torch.from_numpy(np.tile(empty_row(reduce.formats), (n, 1)))
        values = torch.stack([f.cpu() if f is not None else blank for f in fmts], dim=1).numpy()  # (n, rows, K)
        for d, table in enumerate(tables):
            table.update(format_columns(values[d], reduce.formats))
    return tables
