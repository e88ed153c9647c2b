"""Reducers: a tensor -> its row of statistics (STATS), by one of two paths.

- CPU: numba kernels (`kernels`) that read each tensor while it is in cache, read back as host numbers at once.
- queued: every statistic a tensor op that stays on the device (CUDA/MPS, a short CPU run
  before the kernels pay for loading them (`CpuPath`), or the CPU where numba is missing);
  no sync until the step's one transfer.
Both give the same rows and histogram counts (tested).
"""

import importlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from initlab.nn import acts
from initlab.speedups import foreach
from initlab.speedups.collector import paused
from initlab.telemetry.hist import HistSpec, hist_lut, sample_stride
from initlab.telemetry.stats import NOT_FOR_PARAMS

_kernels: Any = None  # initlab.telemetry.kernels once loaded; False where numba cannot be imported


def load_kernels() -> Any:
    """The numba kernels module, imported at its first use (numba and the cached kernels, with
    their first calls, take about 0.5 s on a 2-core AMD EPYC); None where numba is missing (no
    wheel for this platform yet: the CPU takes the tensor-op path)."""
    global _kernels
    if _kernels is None:
        try:
            with paused():  # numba's import: no collection walks the whole heap meanwhile
                _kernels = importlib.import_module("initlab.telemetry.kernels")
        except ImportError:
            _kernels = False
    return _kernels or None

NAN = float("nan")
_NO_RANGE = (NAN,) * len(NOT_FOR_PARAMS)  # min, max, zero_frac, dead_frac, dead_units: not recorded for parameter kinds


@dataclass(frozen=True)
class DeadRegion:
    """Where an activation is dead or saturated, as |x - center| > half_width, or x <= 0."""

    relu: bool
    center: float = 0.0
    half_width: float = 0.0
    nonneg: bool = False  # outputs are never negative (plain ReLU): cheaper counts


def dead_region(module: nn.Module | None, thresholds: Mapping[str, float]) -> DeadRegion | None:
    """The dead/saturated region of an activation module, from the activation table."""
    act = acts.lookup(module) if module is not None else None
    if act is None or act.region is None:
        return None
    if act.region == "relu":
        return DeadRegion(relu=True, nonneg=act.nonneg)
    if act.region == "tanh":
        return DeadRegion(False, 0.0, thresholds["tanh"])
    lo, hi = thresholds["sigmoid_low"], thresholds["sigmoid_high"]
    return DeadRegion(False, (lo + hi) / 2, (hi - lo) / 2)


def group_stats(xs: Sequence[torch.Tensor], deads: Sequence[DeadRegion | None]) -> torch.Tensor:
    """Statistics of same-shaped tensors, reduced together as queued tensor ops (no sync):
    float64[len(xs), len(STATS)].

    Columns: mean, std, min, max, zero_frac, dead_frac, dead_units, nonfinite, numel.
    Every statistic uses every element. Rows are scaled by 1/max|x| and centred, so the
    100-layer N(0,1) net's 1e37 activations get a finite std instead of an overflowed
    square; every branch is an always-on tensor op. The CPU's exact path for the rows its
    kernels cannot serve (non-finite values).
    """
    rows = [x.detach().reshape(-1) for x in xs]
    return _rows_stats(rows[0][None] if len(rows) == 1 else torch.stack(rows), xs[0].shape, deads)


def stacked_stats(X: torch.Tensor, dead: DeadRegion | None = None) -> torch.Tensor:
    """group_stats of the tensors X[0], X[1], ... stacked along dim 0 (one per weight draw of
    a stacked probe), without copying them apart: float64[len(X), len(STATS)]."""
    X = X.detach()
    return _rows_stats(X.reshape(len(X), -1), X.shape[1:], [dead] * len(X))


def _rows_stats(X: torch.Tensor, shape: torch.Size, deads: Sequence[DeadRegion | None]) -> torch.Tensor:
    """group_stats of the rows of X (L, n), each row a tensor of `shape` flattened."""
    if not X.is_floating_point() or X.dtype in (torch.float16, torch.bfloat16):
        X = X.float()
    L, n = X.shape
    f64 = torch.float64
    if n == 0:  # nothing to summarise: NaN statistics, no non-finite values, numel 0
        return torch.tensor([[NAN] * 7 + [0.0, 0.0]] * L, dtype=f64, device=X.device)
    hi, lo = X.amax(dim=1), X.amin(dim=1)
    count_dtype = f64 if n >= 2**24 else None  # counts (sums of 0/1) are exact in float32 below 2**24
    absmax = torch.maximum(-lo, hi)
    scale = torch.where(torch.isfinite(absmax) & (absmax > 0), absmax, torch.ones_like(absmax))
    Y = X / scale[:, None]
    mean_y = Y.sum(dim=1) / n
    var_y = torch.linalg.vector_norm(Y - mean_y[:, None], dim=1).square() / max(n - 1, 1)
    mean, var = mean_y.to(f64) * scale.to(f64), var_y.to(f64) * scale.to(f64).square()
    # Counts as float sums of 0/1 elements (ceil of a value clamped to [0, 1] is 1 exactly where
    # it is above 0): an element-wise pass and a vectorised sum, where a comparison's bool sum is
    # 3-7x slower on the CPU; NaN is counted as a comparison counts it (x != 0 is true, x > 0 not)
    nonzero = _count(X.abs().clamp_(max=1).ceil_(), 1.0, count_dtype)
    nonfinite = _count(X * 0, 1.0, count_dtype)  # inf*0, nan*0 are NaN; 0 else
    dead_frac = torch.full((L,), NAN, dtype=f64, device=X.device)
    dead_units = dead_frac.clone()
    units = (shape[0], shape[1], -1) if len(shape) > 1 else (1, shape[0], 1)
    for region in {d for d in deads if d is not None}:
        sel = [i for i, d in enumerate(deads) if d == region]
        idx = torch.tensor(sel, device=X.device)
        U = (X if len(sel) == L else X.index_select(0, idx)).view(len(sel), *units)  # (rows, batch, units, rest)
        rows = U.reshape(len(sel), -1)
        if region.relu:  # x <= 0 is dead; a unit is dead when its max over the batch is
            live = _count(rows.clamp(0, 1).ceil_(), 1.0, count_dtype)  # x > 0, or NaN: not x <= 0
            dead_frac[idx] = (n - live) / n
            dead_units[idx] = (U.amax(dim=(1, 3)) <= 0).to(f64).mean(dim=1)
        else:  # |x - center| > half_width is saturated
            dist = (U - region.center).abs_() if region.center else U.abs()
            above = _count((dist.reshape(len(sel), -1) - region.half_width).clamp_(0, 1).ceil_(), 0.0, count_dtype)
            dead_frac[idx] = above / n
            dead_units[idx] = (dist.amin(dim=(1, 3)) > region.half_width).to(f64).mean(dim=1)
    return torch.stack([
        mean, var.clamp_min(0).sqrt(), lo.to(f64), hi.to(f64), (n - nonzero) / n, dead_frac,
        dead_units, nonfinite, torch.full((L,), float(n), dtype=f64, device=X.device),
    ], dim=1)


def _count(ones: torch.Tensor, nan_as: float, dtype: torch.dtype | None) -> torch.Tensor:
    """Row sums of a tensor of 0, 1 and -1 elements (`ones`, modified), NaN counted as
    `nan_as`, as float64; exact (float32 sums of integers below 2**24, else `dtype`)."""
    return torch.nan_to_num_(ones, nan=nan_as).sum(dim=1, dtype=dtype).to(torch.float64)


def tensor_stats(x: torch.Tensor, dead: DeadRegion | None = None) -> torch.Tensor:
    """group_stats of a single tensor: float64[len(STATS)]."""
    return group_stats([x], [dead])[0]


CANCEL = 1e-4  # var below CANCEL * mean^2: the uncentred float64 sums may have lost digits; centre


class CpuReducer:
    """Rows of CPU tensors from the numba kernels, read straight back as host numbers.

    The variance comes from float64 sums of the float32 values and their (exact) squares;
    where the mean dwarfs the spread (var < CANCEL * mean^2, e.g. BatchNorm weights near 1)
    a second, centred pass gives it exactly. Non-finite values make the sums non-finite:
    those rows (and empty tensors) take the exact tensor-op path, which counts them.
    """

    def __init__(self, hist: HistSpec | None) -> None:
        self.k = load_kernels()
        if self.k is None:
            raise RuntimeError("the CPU kernels need numba, which cannot be imported here")
        self.spec = hist
        self._positions = np.empty(1 << 16, dtype=np.int32)  # kernel scratch, grown as needed
        if hist is not None:  # the layout's numbers, once: HistSpec computes them on each read
            self._lut, self._edges = hist_lut(hist), hist.edges().astype(np.float32)
            self._center, self._cells, self._sample = hist.k + 2, hist.n_bins + 1, hist.sample
        self._regions = {None: (self.k.NO_REGION, 0.0, 0.0)}  # DeadRegion -> the kernel's arguments

    @staticmethod
    def host(x: torch.Tensor) -> np.ndarray:
        """x as a flat C-contiguous float32 numpy array (a view where it already is one)."""
        x = x.detach()
        if x.dtype != torch.float32 or not x.is_contiguous():
            x = x.float().contiguous()
        return x.numpy().reshape(-1)

    def act_row(self, x: torch.Tensor, dead: DeadRegion | None, hist: bool = False
                ) -> tuple[list[float], np.ndarray | None]:
        """An activation or gradient: mean, std, min, max, zero and dead fractions, dead
        units; and with `hist`, its histogram counts (see `hist`), from one host view."""
        a = self.host(x)
        counts = self.hist(a) if hist else None
        n = a.size
        if n == 0:
            return tensor_stats(x, dead).tolist(), counts
        shape = x.shape
        units = shape[1] if len(shape) > 1 else n
        rest = n // (shape[0] * units) if len(shape) > 1 else 1
        args = self._regions.get(dead)
        if args is None:
            args = self._regions[dead] = (self.k.RELU_REGION, 0.0, 0.0) if dead.relu else \
                (self.k.BAND_REGION, dead.center, dead.half_width)
        region, center, half_width = args
        if region != self.k.NO_REGION and units * rest > self._positions.size:
            self._positions = np.empty(units * rest, dtype=np.int32)
        lo, hi, s, sq, nz, n_dead, dead_units = self.k.act_moments(
            a, units, rest, region, center, half_width, self._positions)
        mean_std = self._mean_std(a, s, sq)
        if mean_std is None:  # non-finite values: the exact path counts them
            return tensor_stats(x, dead).tolist(), counts
        dead_frac, dead_units = (n_dead / n, dead_units / units) if dead is not None else (NAN, NAN)
        return [*mean_std, float(lo), float(hi), (n - nz) / n, dead_frac, dead_units, 0.0, float(n)], counts

    def param_row(self, x: torch.Tensor) -> list[float]:
        """A parameter or its gradient: mean, std, non-finite count (min, max, zeros: NaN)."""
        return self._param_row(self.host(x))

    def update_rows(self, after: torch.Tensor, before: torch.Tensor) -> tuple[list[float], list[float]]:
        """Rows of the weights after the step and of before - after (collect() flips the
        mean to the update's sign), in one pass over both."""
        a, b = self.host(after), self.host(before)
        s, sq, ds, dsq = self.k.update_sums(a, b)
        n = a.size
        if n and math.isfinite(ds) and math.isfinite(dsq):
            mean, var = ds / n, (dsq - ds * ds / n) / max(n - 1, 1)
            if var >= CANCEL * mean * mean:
                return self._param_row(a, s, sq), [mean, math.sqrt(max(var, 0.0)), *_NO_RANGE, 0.0, float(n)]
        with np.errstate(all="ignore"):  # rare: centre, or count non-finite values
            return self._param_row(a, s, sq), self._param_row(b - a)

    def _param_row(self, a: np.ndarray, s: float | None = None, sq: float | None = None) -> list[float]:
        if s is None:
            s, sq = self.k.sums(a)
        n = a.size
        mean_std = self._mean_std(a, s, sq) if n else (NAN, NAN)
        if mean_std is not None:
            return [*mean_std, *_NO_RANGE, 0.0, float(n)]
        mean = s / n
        var = (sq - s * mean) / max(n - 1, 1)
        return [mean, math.sqrt(var) if var >= 0 else NAN, *_NO_RANGE, float(np.count_nonzero(~np.isfinite(a))),
                float(n)]

    def _mean_std(self, a: np.ndarray, s: float, sq: float) -> tuple[float, float] | None:
        """(mean, std) from the sums, centred where they cancel; None where they are not finite."""
        if not (math.isfinite(s) and math.isfinite(sq)):
            return None
        n = a.size
        mean = s / n
        var = (sq - s * mean) / max(n - 1, 1)
        if var < CANCEL * mean * mean:
            var = self.k.centred_sq(a, mean) / max(n - 1, 1)
        return mean, math.sqrt(max(var, 0.0))

    def hist(self, a: np.ndarray) -> np.ndarray:
        """int64 counts of the histogram sample of `a` (flat float32) over the layout bins,
        then a NaN column."""
        counts = np.zeros(self._cells, dtype=np.int64)
        self.k.hist_sample(a, sample_stride(a.size, self._sample), self._lut, self._edges, self._center, counts)
        return counts


def warm_kernels() -> bool:
    """Compile (or load from numba's on-disk cache) every CPU kernel, through the calls a run
    makes, so that the first run long enough to take them does not pay the compile after a
    fresh install (`make warm`). False where numba is missing."""
    if load_kernels() is None:
        return False
    cpu = CpuReducer(HistSpec())
    x = torch.randn(4, 3, 5)
    for dead in (None, DeadRegion(relu=True), DeadRegion(False, 0.0, 0.97)):
        cpu.act_row(x, dead, hist=True)
    cpu.update_rows(x, x + 1e-3)
    cpu.param_row(torch.full((64,), 1e5) + torch.randn(64))  # the mean dwarfs the spread: centred
    return True


# What the tensor-op path costs over the kernels, in its own rows (2-core AMD EPYC, measured):
# about 0.22 ms a tensor plus 5 ns an element, so 45,000 elements cost about one row more;
# loading numba and the cached kernels, with their first calls (about 0.5 s, once per process),
# is 2,500 such rows.
ROW_ELEMENTS = 45_000
KERNEL_LOAD_ROWS = 2_500


def tensor_path_cost(rows: int, elements: int) -> float:
    """What reducing `rows` tensors of `elements` elements in all costs on the tensor-op path
    over the kernels, in rows."""
    return rows + elements / ROW_ELEMENTS


START = "auto"  # how a CpuPath starts unless told; tests set "kernels" or "tensor" to take one path
_process_spent = 0.0  # rows this process's runs have reduced as tensor ops, over the kernels' cost


class CpuPath:
    """Which path the CPU reduces on, decided between logged steps.

    The kernels are 15-50x faster a tensor than the tensor ops, but loading them costs more
    than a short run's whole telemetry (the smoke run's 160 rows take 0.16 s as tensor ops).
    So a run starts on the tensor ops and moves to the kernels after a logged step once they
    pay: when the `steps` still ahead (the run's logged steps, when its length is known)
    would cost as much as loading them, or once what the process's runs have spent on tensor
    ops has (then it pays at most twice what knowing would: many short runs in one notebook or
    sweep). Loaded, they are a sunk cost: every later run of the process takes them from its
    first step. Both paths give the same rows to float32 rounding (tested). `start`: "auto",
    "kernels" (from the first step) or "tensor" (never: what CUDA/MPS tensors always take)."""

    def __init__(self, steps: int | None = None, start: str | None = None) -> None:
        start = start or START
        if start not in ("auto", "kernels", "tensor"):
            raise ValueError(f"CpuPath start={start!r}: auto, kernels or tensor")
        self.steps_left = steps
        self.fixed = start != "auto"
        self.kernels = (start == "kernels" or (start == "auto" and bool(_kernels))) and load_kernels() is not None

    def step_done(self, rows: int, elements: int) -> bool:
        """After a logged step that reduced `rows` CPU tensors of `elements` in all as tensor
        ops: whether the kernels take the steps after it."""
        global _process_spent
        if self.kernels or self.fixed:
            return self.kernels
        cost = tensor_path_cost(rows, elements)
        _process_spent += cost
        ahead = 0.0
        if self.steps_left is not None:
            self.steps_left = max(self.steps_left - 1, 0)
            ahead = cost * self.steps_left
        if max(ahead, _process_spent) >= KERNEL_LOAD_ROWS:
            self.kernels = load_kernels() is not None
            self.fixed = not self.kernels
        return self.kernels

    def for_work(self, rows: int, elements: int) -> bool:
        """For work known up front (a stacked probe's tensors): whether the kernels take it."""
        if not self.fixed and tensor_path_cost(rows, elements) >= KERNEL_LOAD_ROWS:
            self.kernels = load_kernels() is not None
        return self.kernels


def param_rows(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """mean, std and non-finite flag of many parameter tensors as queued ops, accumulated in
    float64: the sums, then one multi-tensor norm (speedups.foreach) about each tensor's
    mean, so a constant tensor (a fresh BatchNorm's weight) has std 0 exactly and a mean that
    dwarfs the spread loses no digits; min, max and zero counts are not recorded (NaN). The
    nonfinite column is -1 where a value is non-finite (present, not counted: counting needs
    a sync)."""
    ts = [t.detach() for t in tensors]
    f64 = torch.float64
    sums = torch.stack([t.sum(dtype=f64) for t in ts])
    numel = torch.tensor([t.numel() for t in ts], dtype=f64, device=sums.device)
    shift = (sums / numel.clamp_min(1)).unbind()
    centred = [t - m.to(t.dtype) for t, m in zip(ts, shift)]  # about the mean as t's dtype holds it
    norms = foreach.norms(centred, f64)
    rest = torch.stack([c.sum(dtype=f64) for c in centred])  # what the rounded mean left over
    mean = sums / numel
    var = (norms.square() - rest.square() / numel) / (numel - 1).clamp_min(1)
    nan = torch.full_like(mean, NAN)
    nonfinite = torch.where(torch.isfinite(norms) & torch.isfinite(sums), 0.0, -1.0).to(f64)
    return torch.stack([mean, var.clamp_min(0).sqrt(), nan, nan, nan, nan, nan, nonfinite, numel], dim=1)
