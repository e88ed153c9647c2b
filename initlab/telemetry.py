"""Per-layer statistics of a training step, with one device->host transfer per logged step.

On a logged step, forward hooks on every tracked leaf module take the statistics of its
output (`act`) and a tensor hook those of dLoss/d output (`grad`); parameters, their
gradients and the optimizer's update are summarised around the step; each BatchNorm's
running and batch statistics are read off its buffers. Hooks exist only inside
`record()`, so unlogged steps run the bare model. `collect()` returns the step's rows as
columns.

Where the work happens depends on what is cheap on the device:
- CPU: each tensor is reduced in its hook, while still in cache, by single-pass numba
  kernels (initlab.kernels: min, max, sums, zero and dead counts in one read; the
  histogram sample binned through a lookup table on the float bits), its row read back as
  host numbers: reading a scalar costs no sync there, and keeping every gradient alive
  until the end of the step would make backward allocate afresh. Rows the kernels cannot
  serve exactly (non-finite values) take the tensor-op path below.
- CUDA/MPS (and the CPU where numba is missing): every statistic is a queued tensor op (no
  per-layer sync); tensors are grouped by shape and reduced together in `collect()`, then
  one concatenation and one copy to the host. `Telemetry(..., queued=True)` forces this
  path on the CPU, for tests. MPS has no float64: its tensors go to the CPU path.
Both paths give the same rows and histogram counts (tested).
"""

import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Any

import numpy as np
import torch
from torch import nn

try:
    from initlab import kernels
except ImportError:  # numba has no wheel for this platform yet: the CPU takes the tensor-op path
    kernels = None

# Per-row statistics, in the order of the tensor returned by tensor_stats().
STATS = ("mean", "std", "min", "max", "zero_frac", "dead_frac", "dead_units", "nonfinite", "numel")
KINDS = ("act", "grad", "weight", "weight_grad", "update",
         "bn_running_mean", "bn_running_var", "bn_batch_mean", "bn_batch_var")
PARAM_KINDS = ("weight", "weight_grad", "update")
_KINDS = np.array(KINDS, dtype=object)
_KIND_CODE = {k: i for i, k in enumerate(KINDS)}
_SKIP = (nn.Flatten, nn.Unflatten, nn.Identity)
RELU_FAMILY = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
               nn.SiLU, nn.Mish, nn.Softplus)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
NAN = float("nan")
_NO_RANGE = (NAN,) * 5  # min, max, zero_frac, dead_frac, dead_units: not recorded for parameter kinds


@dataclass(frozen=True)
class HistSpec:
    """Fixed symmetric log-spaced bins, identical for every step, layer, run and device.

    Layout, in value order (2K+5 bins): overflow below -max_abs (-inf included), K negative
    log bins, negative underflow (-min_abs, 0), exactly zero, positive underflow (0, min_abs),
    K positive log bins, overflow from max_abs (inf included). NaNs are not binned (they are
    counted in `nonfinite`). A strided sample of at most `sample` elements per tensor is binned.
    """

    min_abs: float = 1e-6
    max_abs: float = 1e6
    bins_per_decade: int = 4
    sample: int = 4096

    @property
    def k(self) -> int:
        return round(math.log10(self.max_abs / self.min_abs) * self.bins_per_decade)

    @property
    def n_bins(self) -> int:
        return 2 * self.k + 5

    def edges(self) -> np.ndarray:
        return np.logspace(math.log10(self.min_abs), math.log10(self.max_abs), self.k + 1)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) of every bin in the layout, for the long-format table."""
        e = self.edges()
        lo = np.concatenate([[-np.inf], -e[::-1][:-1], [-e[0], 0.0, 0.0], e[:-1], [e[-1]]])
        hi = np.concatenate([[-e[-1]], -e[::-1][1:], [0.0, 0.0, e[0]], e[1:], [np.inf]])
        return lo, hi

    def as_dict(self) -> dict[str, Any]:
        return {"min_abs": self.min_abs, "max_abs": self.max_abs,
                "bins_per_decade": self.bins_per_decade, "sample": self.sample, "n_bins": self.n_bins}


def hist_codes(samples: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Signed bin code of each value, the definition of the layout: 0 for zero, +-1 underflow,
    +-(2..k+1) the log bins, +-(k+2) overflow (inf included), NaN stays NaN (histc ignores it)."""
    b = torch.bucketize(samples.abs(), edges, right=True)  # 0 under, 1..k inside, k+1 over
    code = torch.sign(samples) * (b + 1)
    return code.masked_fill_(torch.isnan(samples), NAN)  # torch.sign(nan) is 0, not nan


@functools.lru_cache(maxsize=4)
def hist_lut(spec: HistSpec) -> np.ndarray:
    """int32[65536]: the layout bin of every (sign, magnitude cell) key of a float32; -1 where
    an edge cuts the cell; n_bins (a column dropped later) for NaN. The key is the top 16
    bits of the magnitude (a float's bits order like its value) and the sign: cell 0 is
    exactly zero, cell c >= 1 holds the magnitudes whose bits are in ((c - 1) * 2**16,
    c * 2**16]. The CPU bins through it (kernels.hist_sample), values in cut cells by the
    edges themselves: a few integer ops a value instead of a binary search."""
    edges = spec.edges().astype(np.float32)
    c = np.arange(1, 0x8000, dtype=np.int64)
    lo = (((c - 1) << 16) + 1).astype(np.uint32).view(np.float32)
    hi = np.minimum(c << 16, 0x7F800001).astype(np.uint32).view(np.float32)
    b_lo, b_hi = np.searchsorted(edges, lo, side="right"), np.searchsorted(edges, hi, side="right")
    v = np.concatenate([[0], np.where(b_lo == b_hi, b_lo + 1, -1)])  # signed code magnitude
    nan = np.concatenate([[False], np.isnan(lo) | np.isnan(hi)])
    center = spec.k + 2
    pos = np.where(nan, spec.n_bins, np.where(v < 0, -1, center + v))
    neg = np.where(nan, spec.n_bins, np.where(v < 0, -1, center - v))
    return np.concatenate([pos, neg]).astype(np.int32)


class Binner:
    """Histograms of many samples at once, as queued tensor ops: every value's code from
    bucketize, one histc over all of them, no sync (the CUDA/MPS path)."""

    def __init__(self, spec: HistSpec) -> None:
        self.spec = spec
        self._edges: dict[torch.device, torch.Tensor] = {}
        self.bounds = spec.bounds()

    def edges(self, device: torch.device) -> torch.Tensor:
        if device not in self._edges:
            self._edges[device] = torch.tensor(self.spec.edges(), dtype=torch.float32, device=device)
        return self._edges[device]

    def __call__(self, x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """float64 counts per (sample, bin) of the samples laid side by side in `x`."""
        spec = self.spec
        codes = hist_codes(x, self.edges(x.device))
        offsets = torch.arange(len(lengths), device=x.device, dtype=torch.float32) * spec.n_bins + spec.k + 2
        codes += torch.repeat_interleave(offsets, torch.tensor(lengths, device=x.device))
        total = len(lengths) * spec.n_bins
        return torch.histc(codes, bins=total, min=-0.5, max=total - 0.5).to(torch.float64)


def sample_stride(numel: int, size: int) -> int:
    """Every stride-th element makes a tensor's histogram sample of at most `size`."""
    return max(1, -(-numel // size))


class SampleStage:
    """The step's histogram samples (queued path), side by side in one buffer kept across
    steps, copied in when the tensor is seen so that the tensor itself need not be kept."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.buf: torch.Tensor | None = None
        self.used = 0
        self.lengths: list[int] = []

    def add(self, t: torch.Tensor) -> None:
        flat = t.detach().reshape(-1)
        stride = sample_stride(flat.numel(), self.size)
        n = -(-flat.numel() // stride)
        if self.buf is None or self.used + n > self.buf.numel():
            grown = torch.empty(max(2 * self.used + n, 1 << 16), dtype=torch.float32, device=t.device)
            if self.used:
                grown[: self.used].copy_(self.buf[: self.used])
            self.buf = grown
        self.buf[self.used: self.used + n].copy_(flat[::stride])
        self.used += n
        self.lengths.append(n)

    def take(self) -> tuple[torch.Tensor, list[int]]:
        """(the samples, their lengths), and the stage starts over; valid until the next add."""
        x, lengths = self.buf[: self.used], self.lengths
        self.used, self.lengths = 0, []
        return x, lengths


@dataclass(frozen=True)
class DeadRegion:
    """Where an activation is dead or saturated, as |x - center| > half_width, or x <= 0."""

    relu: bool
    center: float = 0.0
    half_width: float = 0.0
    nonneg: bool = False  # outputs are never negative (plain ReLU): cheaper counts


def dead_region(module: nn.Module | None, thresholds: Mapping[str, float]) -> DeadRegion | None:
    if isinstance(module, RELU_FAMILY):
        return DeadRegion(relu=True, nonneg=isinstance(module, (nn.ReLU, nn.ReLU6)))
    if isinstance(module, nn.Tanh):
        return DeadRegion(False, 0.0, thresholds["tanh"])
    if isinstance(module, nn.Sigmoid):
        lo, hi = thresholds["sigmoid_low"], thresholds["sigmoid_high"]
        return DeadRegion(False, (lo + hi) / 2, (hi - lo) / 2)
    return None


def group_stats(xs: Sequence[torch.Tensor], deads: Sequence[DeadRegion | None]) -> torch.Tensor:
    """Statistics of same-shaped tensors, reduced together as queued tensor ops (no sync):
    float64[len(xs), len(STATS)].

    Columns: mean, std, min, max, zero_frac, dead_frac, dead_units, nonfinite, numel.
    Every statistic uses every element. Rows are scaled by 1/max|x| and centred, so the
    100-layer N(0,1) net's 1e37 activations get a finite std instead of an overflowed
    square; every branch is an always-on tensor op. The CPU's exact path for the rows its
    kernels cannot serve (non-finite values).
    """
    x0 = xs[0]
    shape = x0.shape
    rows = [x.detach().reshape(-1) for x in xs]
    X = rows[0][None] if len(rows) == 1 else torch.stack(rows)
    if not X.is_floating_point() or X.dtype in (torch.float16, torch.bfloat16):
        X = X.float()
    L, n = X.shape
    f64 = torch.float64
    if n == 0:  # nothing to summarise: NaN statistics, no non-finite values, numel 0
        return torch.tensor([[NAN] * 7 + [0.0, 0.0]] * L, dtype=f64, device=X.device)
    hi, lo = X.amax(dim=1), X.amin(dim=1)
    count_dtype = f64 if n >= 2**24 else None  # sums of +-1 are exact in float32 below 2**24
    absmax = torch.maximum(-lo, hi)
    scale = torch.where(torch.isfinite(absmax) & (absmax > 0), absmax, torch.ones_like(absmax))
    Y = X / scale[:, None]
    mean_y = Y.sum(dim=1) / n
    var_y = torch.linalg.vector_norm(Y - mean_y[:, None], dim=1).square() / max(n - 1, 1)
    mean, var = mean_y.to(f64) * scale.to(f64), var_y.to(f64) * scale.to(f64).square()
    nonzero = (X != 0).sum(dim=1).to(f64)
    pos_minus_neg = ((X > 0).sum(dim=1) - (X < 0).sum(dim=1)).to(f64)
    nonfinite = torch.count_nonzero(X * 0, dim=1).to(f64)  # inf*0, nan*0 are NaN; 0 else
    dead_frac = torch.full((L,), NAN, dtype=f64, device=X.device)
    dead_units = dead_frac.clone()
    units = (shape[0], shape[1], -1) if len(shape) > 1 else (1, shape[0], 1)
    for region in {d for d in deads if d is not None}:
        sel = [i for i, d in enumerate(deads) if d == region]
        idx = torch.tensor(sel, device=X.device)
        U = (X if len(sel) == L else X.index_select(0, idx)).view(len(sel), *units)  # (rows, batch, units, rest)
        if region.relu:  # x <= 0 is dead; a unit is dead when its max over the batch is
            positive = (nonzero[idx] + pos_minus_neg[idx]) / 2
            dead_frac[idx] = (n - positive) / n
            dead_units[idx] = (U.amax(dim=(1, 3)) <= 0).to(f64).mean(dim=1)
        else:  # |x - center| > half_width is saturated
            dist = (U - region.center).abs_() if region.center else U.abs()
            above = torch.sign(dist - region.half_width).sum(dim=(1, 2, 3), dtype=count_dtype).to(f64)
            dead_frac[idx] = (above + n) / (2 * n)
            dead_units[idx] = (dist.amin(dim=(1, 3)) > region.half_width).to(f64).mean(dim=1)
    return torch.stack([
        mean, var.clamp_min(0).sqrt(), lo.to(f64), hi.to(f64), (n - nonzero) / n, dead_frac,
        dead_units, nonfinite, torch.full((L,), float(n), dtype=f64, device=X.device),
    ], dim=1)


def tensor_stats(x: torch.Tensor, dead: DeadRegion | None = None) -> torch.Tensor:
    """group_stats of a single tensor: float64[len(STATS)]."""
    return group_stats([x], [dead])[0]


CANCEL = 1e-4  # var below CANCEL * mean^2: the uncentred float64 sums may have lost digits; centre


class CpuReducer:
    """Rows of CPU tensors from the single-pass kernels, read straight back as host numbers.

    The variance comes from float64 sums of the float32 values and their (exact) squares;
    where the mean dwarfs the spread (var < CANCEL * mean^2, e.g. BatchNorm weights near 1)
    a second, centred pass gives it exactly. Non-finite values make the sums non-finite:
    those rows (and empty tensors) take the exact tensor-op path, which counts them.
    """

    def __init__(self, hist: HistSpec | None) -> None:
        self.spec = hist
        self._positions = np.empty(1 << 16, dtype=np.int32)  # kernel scratch, grown as needed
        if hist is not None:
            self._lut, self._edges = hist_lut(hist), hist.edges().astype(np.float32)

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
        units = x.shape[1] if x.dim() > 1 else n
        rest = n // (x.shape[0] * units) if x.dim() > 1 else 1
        if dead is None:
            region, center, half_width = kernels.NO_REGION, 0.0, 0.0
        elif dead.relu:
            region, center, half_width = kernels.RELU_REGION, 0.0, 0.0
        else:
            region, center, half_width = kernels.BAND_REGION, dead.center, dead.half_width
        if region != kernels.NO_REGION and units * rest > self._positions.size:
            self._positions = np.empty(units * rest, dtype=np.int32)
        lo, hi, s, sq, nz, n_dead, dead_units = kernels.act_moments(
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
        s, sq, ds, dsq = kernels.update_sums(a, b)
        n = a.size
        if n and math.isfinite(ds) and math.isfinite(dsq):
            mean, var = ds / n, (dsq - ds * ds / n) / max(n - 1, 1)
            if var >= CANCEL * mean * mean:
                return self._param_row(a, s, sq), [mean, math.sqrt(max(var, 0.0)), *_NO_RANGE, 0.0, float(n)]
        with np.errstate(all="ignore"):  # rare: centre, or count non-finite values
            return self._param_row(a, s, sq), self._param_row(b - a)

    def _param_row(self, a: np.ndarray, s: float | None = None, sq: float | None = None) -> list[float]:
        if s is None:
            s, sq = kernels.sums(a)
        n = a.size
        mean_std = self._mean_std(a, s, sq) if n else (NAN, NAN)
        if mean_std is not None:
            return [*mean_std, *_NO_RANGE, 0.0, float(n)]
        mean = s / n
        var = (sq - s * mean) / max(n - 1, 1)
        return [mean, math.sqrt(var) if var >= 0 else NAN, *_NO_RANGE, float(np.count_nonzero(~np.isfinite(a))),
                float(n)]

    @staticmethod
    def _mean_std(a: np.ndarray, s: float, sq: float) -> tuple[float, float] | None:
        """(mean, std) from the sums, centred where they cancel; None where they are not finite."""
        if not (math.isfinite(s) and math.isfinite(sq)):
            return None
        n = a.size
        mean = s / n
        var = (sq - s * mean) / max(n - 1, 1)
        if var < CANCEL * mean * mean:
            var = kernels.centred_sq(a, mean) / max(n - 1, 1)
        return mean, math.sqrt(max(var, 0.0))

    def hist(self, a: np.ndarray) -> np.ndarray:
        """int64 counts of the histogram sample of `a` (flat float32) over the layout bins,
        then a NaN column."""
        spec = self.spec
        counts = np.zeros(spec.n_bins + 1, dtype=np.int64)
        kernels.hist_sample(a, sample_stride(a.size, spec.sample), self._lut, self._edges, spec.k + 2, counts)
        return counts


def param_rows(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """mean, std and non-finite flag of many parameter tensors as queued ops: one multi-tensor
    norm (torch._foreach_norm) and one sum per tensor, accumulated in float64; min, max and
    zero counts are not recorded (NaN). The nonfinite column is -1 where a value is
    non-finite (present, not counted: counting needs a sync)."""
    ts = [t.detach() for t in tensors]
    try:
        norms = torch.stack(torch._foreach_norm(ts, 2, dtype=torch.float64))
    except (TypeError, RuntimeError):  # torch releases before the dtype argument
        norms = torch.stack([torch.linalg.vector_norm(t, dtype=torch.float64) for t in ts])
    sums = torch.stack([t.sum(dtype=torch.float64) for t in ts])
    numel = torch.tensor([t.numel() for t in ts], dtype=torch.float64, device=norms.device)
    mean = sums / numel
    var = (norms.square() - sums * mean) / (numel - 1).clamp_min(1)
    nan = torch.full_like(mean, NAN)
    nonfinite = torch.where(torch.isfinite(norms) & torch.isfinite(sums), 0.0, -1.0).to(torch.float64)
    return torch.stack([mean, var.clamp_min(0).sqrt(), nan, nan, nan, nan, nan, nonfinite, numel], dim=1)


@dataclass(frozen=True)
class Slot:
    """One module call, in forward order."""

    layer: str
    module_type: str
    layer_idx: int


def tracked_modules(model: nn.Module, patterns: Sequence[str] = ()) -> list[tuple[str, nn.Module]]:
    """Leaf modules worth watching (Linear, Conv, BN, activations, pooling, dropout), filtered
    by `patterns`: a module is kept if its class name or dotted name matches any (fnmatch)."""
    out = []
    for name, m in model.named_modules():
        if not name or any(True for _ in m.children()) or isinstance(m, _SKIP):
            continue
        if patterns and not any(fnmatch(type(m).__name__, p) or fnmatch(name, p) for p in patterns):
            continue
        out.append((name, m))
    return out


@dataclass
class TelemetryConfig:
    params: bool = True
    bn: bool = True
    hist: HistSpec | None = HistSpec()
    thresholds: Mapping[str, float] | None = None
    modules: Sequence[str] = ()

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> "TelemetryConfig":
        h = cfg.get("hist", {}) or {}
        hist = HistSpec(float(h["min_abs"]), float(h["max_abs"]), int(h["bins_per_decade"]),
                        int(h["sample"])) if h.get("enabled", True) and h else None
        return cls(params=bool(cfg.get("params", True)), bn=bool(cfg.get("bn", True)), hist=hist,
                   thresholds=dict(cfg.get("dead", {}) or {}), modules=list(cfg.get("modules", []) or []))


@dataclass(slots=True)
class _Pending:
    """A tensor waiting for collect(): statistics are computed for all of them at once."""

    slot: Slot
    kind: str
    param: str
    tensor: torch.Tensor | None  # None once `row` holds its statistics
    dead: DeadRegion | None = None
    hist: bool = False
    row: list[float] | None = None  # statistics computed in the hook (CPU)
    index: int = -1  # parameter kinds: position in Telemetry.params (pairs grad/update with weight)


class Telemetry:
    """Records per-layer statistics on logged steps; `collect()` returns them as columns.

    On the CPU every row is computed in its hook; on the queued path hooks only keep
    references to the step's tensors (activations are mostly kept alive by autograd
    anyway; gradients and the update snapshot are the extra memory of a logged step) and
    collect() reduces same-shaped tensors together.
    """

    def __init__(self, model: nn.Module, config: TelemetryConfig | None = None, queued: bool = False) -> None:
        self.cfg = config or TelemetryConfig()
        # CPU tensors go through the kernels; `queued` forces the tensor-op path on the CPU (tests)
        self._cpu = CpuReducer(self.cfg.hist) if kernels is not None and not queued else None
        self.thresholds = {"tanh": 0.97, "sigmoid_low": 0.03, "sigmoid_high": 0.97, **(self.cfg.thresholds or {})}
        self.model = model
        self.modules = tracked_modules(model, self.cfg.modules)
        self.params = [(mod_name, type(m).__name__, pname, p) for mod_name, m in model.named_modules()
                       for pname, p in m.named_parameters(recurse=False) if p.requires_grad]
        self._order: dict[tuple[str, int], int] = {}  # (name, call #) -> layer_idx
        self._slots: dict[tuple[str, int], Slot] = {}
        self._calls: dict[str, int] = {}
        self._pending: list[_Pending] = []
        self._bn_prev: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
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
            layer = name if call == 0 else f"{name}#{call}"  # a module used twice in one forward
            slot = self._slots[key] = Slot(layer, type(module).__name__, self._order[key])
        return slot

    def _add(self, p: _Pending) -> None:
        """CPU tensors are reduced right away, while in cache (keeping every activation
        gradient alive until collect() would make backward allocate afresh); on the
        queued path the tensor waits for collect() and its histogram sample is staged."""
        t = p.tensor
        if t.device.type == "mps":  # MPS has no float64: take these statistics on the CPU
            t = p.tensor = t.cpu()
        if self._cpu is not None and t.device.type == "cpu":
            if p.kind in PARAM_KINDS:
                p.row = self._cpu.param_row(t)
            else:
                p.row, counts = self._cpu.act_row(t, p.dead, p.hist)
                if counts is not None:
                    self._counts.append(counts)
            p.tensor = None
        elif p.hist:
            self._samples.add(t)
        self._pending.append(p)

    def _forward_hook(self, name: str, module: nn.Module):
        want_hist = self.cfg.hist is not None
        dead = dead_region(module, self.thresholds)
        bn = self.cfg.bn and isinstance(module, _BN)
        add = self._add

        def hook(module: nn.Module, args: tuple, out: object) -> None:
            if not isinstance(out, torch.Tensor):
                return
            slot = self._slot(name, module)
            add(_Pending(slot, "act", "", out.detach(), dead, want_hist))
            if bn and name in self._bn_prev:
                self._bn_rows(slot, module, *self._bn_prev.pop(name))
            if out.requires_grad:
                out.register_hook(lambda g: add(_Pending(slot, "grad", "", g.detach(), None, want_hist)))

        return hook

    def _bn_pre_hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            if module.training and module.running_mean is not None:
                self._bn_prev[name] = (module.running_mean.clone(), module.running_var.clone())

        return hook

    def _bn_rows(self, slot: Slot, bn: nn.Module, prev_mean: torch.Tensor, prev_var: torch.Tensor) -> None:
        """Running buffers, and the batch statistics recovered from how they moved:
        new = (1 - m) * old + m * batch  =>  batch = (new - (1 - m) * old) / m."""
        rm, rv = bn.running_mean.detach().clone(), bn.running_var.detach().clone()
        vectors = {"bn_running_mean": rm, "bn_running_var": rv}
        m = bn.momentum
        if m:  # momentum=None (cumulative average) has no fixed inverse
            vectors["bn_batch_mean"] = (rm - (1 - m) * prev_mean) / m
            vectors["bn_batch_var"] = (rv - (1 - m) * prev_var) / m
        for kind, v in vectors.items():
            self._add(_Pending(slot, kind, "", v))

    @contextmanager
    def record(self) -> Iterator[None]:
        """Attach the hooks for one forward/backward; always removed on exit."""
        self._calls.clear()
        handles = [m.register_forward_hook(self._forward_hook(name, m)) for name, m in self.modules]
        if self.cfg.bn:
            handles += [m.register_forward_pre_hook(self._bn_pre_hook(name))
                        for name, m in self.modules if isinstance(m, _BN)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            self._bn_prev.clear()

    # -- parameters, their gradients and the optimizer's update ---------------------
    def _param_slot(self, i: int) -> Slot:
        mod, mtype, _, _ = self.params[i]
        return Slot(mod, mtype, self._order.get((mod, 0), -1))

    def _param_rows(self, kind: str, tensors: list[torch.Tensor | None]) -> None:
        for i, t in enumerate(tensors):
            if t is not None:
                self._add(_Pending(self._param_slot(i), kind, self.params[i][2], t.detach(), index=i))

    def before_step(self) -> None:
        """After backward, before optimizer.step(): gradients, and a snapshot for the update
        (into buffers kept across steps: fresh multi-MB copies cost page faults)."""
        if not self.cfg.params:
            return
        weights = [p.detach() for *_, p in self.params]
        self._param_rows("weight_grad", [p.grad for *_, p in self.params])
        if self._snapshot is None or any(a.shape != w.shape or a.device != w.device
                                         for a, w in zip(self._snapshot, weights)):
            self._snapshot = [torch.empty_like(w) for w in weights]
        torch._foreach_copy_(self._snapshot, weights)
        self._snapped = True

    def after_step(self, stepped: bool) -> None:
        """After optimizer.step() (or in its place on a probe): the weights, and the update
        each parameter received when there was a step (before - after; collect() flips the
        sign of its mean). On the CPU both rows come from one pass over weight and snapshot."""
        if not self.cfg.params:
            return
        weights = [p.detach() for *_, p in self.params]
        update = stepped and self._snapped
        if self._cpu is not None and weights and weights[0].device.type == "cpu":
            updates = []
            for i, w in enumerate(weights):
                if update:
                    w_row, u_row = self._cpu.update_rows(w, self._snapshot[i])
                    updates.append(_Pending(self._param_slot(i), "update", self.params[i][2], None, row=u_row, index=i))
                else:
                    w_row = self._cpu.param_row(w)
                self._pending.append(_Pending(self._param_slot(i), "weight", self.params[i][2], None, row=w_row, index=i))
            self._pending += updates
        else:
            self._param_rows("weight", weights)
            if update:
                torch._foreach_sub_(self._snapshot, weights)  # in place: before - after = -update
                self._param_rows("update", self._snapshot)
        self._snapped = False

    # -- the one transfer ------------------------------------------------------------
    def _compute(self, pending: list[_Pending]) -> tuple[np.ndarray, list[int], np.ndarray | None]:
        """(float64 stats in row order, rows with histograms, their counts) on the host.

        CPU rows were computed in their hooks. Queued rows are reduced here as tensor ops:
        groups of same-shaped tensors together, all parameters at once, every histogram
        binned at once, then one concatenation and one copy."""
        n = len(pending)
        hist_rows = [i for i, p in enumerate(pending) if p.hist]
        waiting = [i for i, p in enumerate(pending) if p.row is None]
        if not waiting:
            counts, self._counts = self._counts, []
            assert len(counts) == len(hist_rows), "histogram counts out of step with their rows"
            stats = np.array([p.row for p in pending], dtype=np.float64).reshape(n, len(STATS))
            return stats, hist_rows, np.stack(counts)[:, :-1].reshape(-1) if counts else None
        assert len(waiting) == n, "CPU rows and queued rows in one step"
        device = pending[0].tensor.device
        params = [i for i, p in enumerate(pending) if p.kind in PARAM_KINDS]
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(pending):
            if p.kind not in PARAM_KINDS:
                groups.setdefault((tuple(p.tensor.shape), p.tensor.dtype), []).append(i)
        samples, lengths = self._samples.take() if hist_rows else (None, [])
        assert len(lengths) == len(hist_rows), "histogram samples out of step with their rows"
        blocks, order = [], []
        if params:
            blocks.append(param_rows([pending[i].tensor for i in params]))
            order += params
        for rows in groups.values():
            blocks.append(group_stats([pending[i].tensor for i in rows], [pending[i].dead for i in rows]))
            order += rows
        stats = torch.cat(blocks)[torch.as_tensor(np.argsort(order), device=device)]
        counts = self._binner(samples, lengths) if hist_rows else None
        values = torch.cat([stats.reshape(-1)] + ([counts] if counts is not None else [])).cpu().numpy()
        return values[: stats.numel()].reshape(n, -1), hist_rows, values[stats.numel():] if hist_rows else None

    def collect(self, step: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None] | None:
        """(stats columns, histogram columns) of the step: one concatenation, one copy."""
        if not self._pending:
            return None
        pending, self._pending = self._pending, []
        self._snapped = False
        stats, hist_rows, counts = self._compute(pending)
        n = len(pending)
        kind = np.fromiter((_KIND_CODE[p.kind] for p in pending), dtype=np.int8, count=n)
        cols: dict[str, np.ndarray] = {
            "step": np.full(n, step, dtype=np.int64),
            "layer": np.array([p.slot.layer for p in pending], dtype=object),
            "layer_idx": np.fromiter((p.slot.layer_idx for p in pending), dtype=np.int32, count=n),
            "module_type": np.array([p.slot.module_type for p in pending], dtype=object),
            "kind": _KINDS[kind],
            "param": np.array([p.param for p in pending], dtype=object),
        }
        for i, stat in enumerate(STATS):
            cols[stat] = stats[:, i].astype(np.int64) if stat in ("nonfinite", "numel") else stats[:, i]
        cols["mean"][kind == _KIND_CODE["update"]] *= -1  # the snapshot held before - after
        with np.errstate(all="ignore"):
            cols["absmax"] = np.maximum(np.abs(cols["min"]), np.abs(cols["max"]))
            # sum of squares from mean and unbiased variance: no extra pass on the device
            numel = cols["numel"].astype(np.float64)
            cols["norm"] = np.sqrt((numel - 1) * cols["std"] ** 2 + numel * cols["mean"] ** 2)
            cols["ratio"] = self._ratios(kind, np.fromiter((p.index for p in pending), np.int64, n), cols["std"])
        hist = self._hist_columns(cols, hist_rows, counts, step) if counts is not None else None
        return cols, hist

    def _ratios(self, kind: np.ndarray, index: np.ndarray, std: np.ndarray) -> np.ndarray:
        """grad:data (weight_grad std / weight std) and update:data (update std / weight std),
        both against the weights as they are after the step."""
        weight_std = np.full(len(self.params) + 1, np.nan)  # the last entry: no weight row
        w = kind == _KIND_CODE["weight"]
        weight_std[index[w]] = std[w]
        ratio = np.full(len(kind), np.nan)
        r = (kind == _KIND_CODE["weight_grad"]) | (kind == _KIND_CODE["update"])
        denom = weight_std[index[r]]
        ratio[r] = np.where(denom > 0, std[r] / denom, np.nan)
        return ratio

    def _hist_columns(self, cols: dict[str, np.ndarray], hist_rows: list[int], counts: np.ndarray,
                      step: int) -> dict[str, np.ndarray]:
        counts = counts.reshape(len(hist_rows), self.cfg.hist.n_bins)
        lo, hi = self._binner.bounds
        r, b = np.nonzero(counts)  # long format: non-empty bins only
        rows = np.asarray(hist_rows)[r]
        return {
            "step": np.full(len(r), step, dtype=np.int64),
            "layer": cols["layer"][rows],
            "layer_idx": cols["layer_idx"][rows],
            "module_type": cols["module_type"][rows],
            "kind": cols["kind"][rows],
            "bin": b.astype(np.int16),
            "lo": lo[b],
            "hi": hi[b],
            "count": counts[r, b].astype(np.int64),
        }


def first_nonfinite(cols: dict[str, np.ndarray] | None) -> tuple[str, int] | None:
    """(layer, layer_idx) of the earliest activation holding a NaN or inf, if any."""
    if cols is None:
        return None
    mask = (cols["kind"] == "act") & (cols["nonfinite"] > 0)
    if not mask.any():
        return None
    i = np.flatnonzero(mask)[np.argmin(cols["layer_idx"][mask])]
    return str(cols["layer"][i]), int(cols["layer_idx"][i])


class Schedule:
    """Which steps are logged: every step below `first`, every `every`-th, `log_points`
    log-spaced steps over the run, and always the last."""

    def __init__(self, total: int, first: int, every: int, log_points: int = 0) -> None:
        self.total, self.first, self.every = total, first, every
        last = max(total - 1, 0)
        self.log_steps = set(np.unique(np.geomspace(1, max(last, 1), log_points).round().astype(int)).tolist()) \
            if log_points > 0 else set()
        self.last = last

    def __call__(self, step: int) -> bool:
        return step < self.first or step % self.every == 0 or step in self.log_steps or step == self.last
