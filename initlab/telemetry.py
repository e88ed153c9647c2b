"""Per-layer statistics of a training step, with one device->host transfer per logged step.

On a logged step, forward hooks on every tracked leaf module take the statistics of its
output (`act`) and a tensor hook those of dLoss/d output (`grad`); parameters, their
gradients and the optimizer's update are summarised around the step; each BatchNorm's
running and batch statistics are read off its buffers. Hooks exist only inside
`record()`, so unlogged steps run the bare model. `collect()` returns the step's rows as
columns.

Where the work happens depends on what is cheap on the device:
- CUDA/MPS: every statistic is a queued tensor op (no per-layer sync); tensors are
  grouped by shape and reduced together in `collect()`, then one concatenation and one
  copy to the host. (`Telemetry(..., queued=True)` runs this path on the CPU, for tests.)
- CPU, where reading a scalar costs no sync: tensors from EAGER elements up are reduced
  inside the hook while still in cache (keeping every gradient alive until the end of
  the step makes backward allocate afresh, which costs more than the statistics) and
  their rows finished in numpy; small ones wait, and are grouped when there are many.
Kernels are chosen for cost: few passes per tensor (numpy's min/max/dot beside torch's
sum; zeros counted as sign(x)·sign(x), boolean reductions being ~15x slower on CPU; not
at all for gradients), the variance from a sum and a dot product (torch.var_mean's
Welford pass is ~10x slower on CPU) with exact centred/scaled fall-back rows for the rare
cases (non-finite values, |x| near float32's limits, a mean that swamps the variance),
parameters from one torch._foreach_norm, histograms of every tensor binned at once from
fixed-size samples staged in one reused buffer (a lookup table on the float bits on CPU,
see Binner), and BN batch statistics from how the running buffers moved.
"""

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Any

import numpy as np
import torch
from torch import nn

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


class Binner:
    """Histograms of many samples at once over one HistSpec, counts per (sample, bin).

    On CUDA/MPS every value's code comes from bucketize and one histc bins them all, with no
    sync. On CPU, where bucketize's binary search and histc cost ~10 ns a value, a lookup
    table gives the bin from the top 16 bits of each float32 (a float's bits order like its
    value), so binning is a few integer ops, one gather and one bincount; the rare values in
    a table cell that an edge cuts through are placed by bucketize. Both give the same counts.
    """

    def __init__(self, spec: HistSpec) -> None:
        self.spec = spec
        self._edges: dict[torch.device, torch.Tensor] = {}
        self._lut: torch.Tensor | None = None
        self._offsets: dict[tuple[int, ...], torch.Tensor] = {}
        self._scratch = Scratch()
        self.bounds = spec.bounds()

    def edges(self, device: torch.device) -> torch.Tensor:
        if device not in self._edges:
            self._edges[device] = torch.tensor(self.spec.edges(), dtype=torch.float32, device=device)
        return self._edges[device]

    def lut(self) -> torch.Tensor:
        """int32[65536]: layout bin of every (sign, magnitude cell) key; -1 where an edge cuts
        the cell; n_bins (a column dropped later) for NaN. Cell 0 is exactly zero; cell c >= 1
        holds the magnitudes whose bits are in ((c - 1) * 2**16, c * 2**16]."""
        if self._lut is None:
            spec, edges = self.spec, self.spec.edges().astype(np.float32)
            c = np.arange(1, 0x8000, dtype=np.int64)
            lo = (((c - 1) << 16) + 1).astype(np.uint32).view(np.float32)
            hi = np.minimum(c << 16, 0x7F800001).astype(np.uint32).view(np.float32)
            b_lo, b_hi = np.searchsorted(edges, lo, side="right"), np.searchsorted(edges, hi, side="right")
            v = np.concatenate([[0], np.where(b_lo == b_hi, b_lo + 1, -1)])  # signed code magnitude
            nan = np.concatenate([[False], np.isnan(lo) | np.isnan(hi)])
            center = spec.k + 2
            pos = np.where(nan, spec.n_bins, np.where(v < 0, -1, center + v))
            neg = np.where(nan, spec.n_bins, np.where(v < 0, -1, center - v))
            self._lut = torch.tensor(np.concatenate([pos, neg]), dtype=torch.int32)
        return self._lut

    def __call__(self, x: torch.Tensor, lengths: list[int], queued: bool = False) -> torch.Tensor | np.ndarray:
        """Counts per (sample, bin) of float32 samples laid side by side in `x` (lengths in
        order): int64 numpy on CPU, a float64 tensor on the device elsewhere (or `queued`).
        On CPU every temporary is a reused buffer: fresh megabyte-sized ones cost page faults."""
        if queued or x.device.type != "cpu":
            return self._queued(x, lengths)
        m, nb, buf = x.numel(), self.spec.n_bins + 1, self._scratch.get  # nb: + the NaN column
        bits = x.view(torch.int32)
        key = torch.bitwise_and(bits, 0x7FFFFFFF, out=buf(m, torch.int32, "key")).clamp_max_(0x7F800001)  # one NaN
        key.sub_(1).bitwise_right_shift_(16).add_(1)  # the magnitude's cell, 0 only for +-0
        key |= torch.bitwise_right_shift(bits, 16, out=buf(m, torch.int32, "sign")).bitwise_and_(0x8000)
        idx = torch.index_select(self.lut(), 0, key, out=buf(m, torch.int32, "idx"))
        cut = torch.nonzero(torch.lt(idx, 0, out=buf(m, torch.bool, "cut"))).squeeze(1)
        if cut.numel():  # an edge runs through these cells: place them by the edges themselves
            v = x[cut]
            code = (torch.bucketize(v.abs(), self.edges(x.device), right=True) + 1).int()
            idx[cut] = torch.where(v < 0, -code, code) + (self.spec.k + 2)
        idx += self.offsets(lengths, nb)
        counts = torch.bincount(idx, minlength=len(lengths) * nb).view(len(lengths), nb)
        return counts[:, :-1].reshape(-1).numpy()

    def offsets(self, lengths: list[int], stride: int) -> torch.Tensor:
        """Row r's first bin for every value; the same every step of a run, so cached."""
        key = (stride, *lengths)
        if key not in self._offsets:
            rows = torch.arange(len(lengths), dtype=torch.int32) * stride
            self._offsets = {key: torch.repeat_interleave(rows, torch.tensor(lengths))}  # keep one
        return self._offsets[key]

    def _queued(self, x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        spec = self.spec
        codes = hist_codes(x, self.edges(x.device))
        offsets = torch.arange(len(lengths), device=x.device, dtype=torch.float32) * spec.n_bins + spec.k + 2
        codes += torch.repeat_interleave(offsets, torch.tensor(lengths, device=x.device))
        total = len(lengths) * spec.n_bins
        return torch.histc(codes, bins=total, min=-0.5, max=total - 0.5).to(torch.float64)


class SampleStage:
    """The step's histogram samples, side by side in one buffer kept across steps: a strided
    sample of at most `size` elements per tensor, copied in (as float32) when the tensor is
    seen, so the tensor itself need not be kept."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.buf: torch.Tensor | None = None
        self._host: np.ndarray | None = None  # the buffer seen from numpy, on CPU
        self.used = 0
        self.lengths: list[int] = []

    def add(self, t: torch.Tensor) -> None:
        flat = t.detach().reshape(-1)
        stride = max(1, -(-flat.numel() // self.size))
        n = -(-flat.numel() // stride)
        if self.buf is None or self.used + n > self.buf.numel():
            grown = torch.empty(max(2 * self.used + n, 1 << 16), dtype=torch.float32, device=t.device)
            if self.used:
                grown[: self.used].copy_(self.buf[: self.used])
            self.buf, self._host = grown, grown.numpy() if grown.device.type == "cpu" else None
        if self._host is not None and flat.device.type == "cpu" and flat.dtype == torch.float32:
            self._host[self.used: self.used + n] = flat.numpy()[::stride]  # numpy: a third of torch's dispatch
        else:
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


def group_stats(xs: Sequence[torch.Tensor], deads: Sequence[DeadRegion | None],
                sync_free: bool | None = None, scratch: "Scratch | None" = None) -> torch.Tensor:
    """Statistics of same-shaped tensors, reduced together: float64[len(xs), len(STATS)].

    Columns: mean, std, min, max, zero_frac, dead_frac, dead_units, nonfinite, numel.
    Every statistic uses every element. The tensors are stacked into rows and reduced
    along the row with kernels that are fast on CPU (amax/amin, sums of sign(x) for the
    counts, row norms for the variance). Rows whose |x| nears float32's limits are scaled
    by 1/max|x| and centred, so the 100-layer N(0,1) net's 1e37 activations get a finite
    std instead of an overflowed square. On CPU, where reading a scalar costs no device
    sync, rare branches (non-finite values, scaling, cancellation) are decided by reading
    scalars and temporaries go to reused `scratch` buffers (fresh multi-MB allocations
    cost page faults); elsewhere (`sync_free`) every branch is an always-on tensor op.
    """
    x0 = xs[0]
    if sync_free is None:
        sync_free = x0.device.type != "cpu"
    shape = x0.shape
    rows = [x.detach().reshape(-1) for x in xs]
    if len(rows) == 1:
        X = rows[0][None]
    elif scratch is not None and not sync_free:
        X = torch.stack(rows, out=scratch.get(len(rows) * rows[0].numel(), rows[0].dtype, "stack").view(len(rows), -1))
    else:
        X = torch.stack(rows)
    if not X.is_floating_point() or X.dtype in (torch.float16, torch.bfloat16):
        X = X.float()
    L, n = X.shape
    f64 = torch.float64
    hi, lo = X.amax(dim=1), X.amin(dim=1)
    count_dtype = f64 if n >= 2**24 else None  # sums of +-1 are exact in float32 below 2**24
    if sync_free:  # scale by 1/max|x| and centre: exact for any magnitude, no branch
        absmax = torch.maximum(-lo, hi)
        scale = torch.where(torch.isfinite(absmax) & (absmax > 0), absmax, torch.ones_like(absmax))
        Y = X / scale[:, None]
        mean_y = Y.sum(dim=1) / n
        var_y = torch.linalg.vector_norm(Y - mean_y[:, None], dim=1).square() / max(n - 1, 1)
        mean, var = mean_y.to(f64) * scale.to(f64), var_y.to(f64) * scale.to(f64).square()
        nonzero = (X != 0).sum(dim=1).to(f64)
        pos_minus_neg = ((X > 0).sum(dim=1) - (X < 0).sum(dim=1)).to(f64)
        nonfinite = torch.count_nonzero(X * 0, dim=1).to(f64)  # inf*0, nan*0 are NaN; 0 else
    else:  # uncentred sums and sign counts, no temporaries; rare rows redone exactly below
        s = X.sum(dim=1).to(f64)
        mean = s / n
        var = (torch.linalg.vector_norm(X, dim=1).to(f64).square() - s * mean) / max(n - 1, 1)
        nonfinite = torch.zeros(L, dtype=f64, device=X.device)
        S = torch.sign(X, out=scratch.get(X.numel(), X.dtype, "sign").view_as(X)) if scratch else torch.sign(X)
        pos_minus_neg = S.sum(dim=1, dtype=count_dtype).to(f64)
        nonzero = S.abs_().sum(dim=1, dtype=count_dtype).to(f64)
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
    out = torch.stack([
        mean, var.clamp_min(0).sqrt(), lo.to(f64), hi.to(f64), (n - nonzero) / n, dead_frac,
        dead_units, nonfinite, torch.full((L,), float(n), dtype=f64, device=X.device),
    ], dim=1)
    if not sync_free:
        # Redo exactly the rows the fast path cannot serve: non-finite values (sign(nan) is 0),
        # magnitudes whose squares leave float32's range, and means that swamp the variance.
        absmax = torch.maximum(-lo, hi).to(f64)
        bad = ~(torch.isfinite(absmax) & (absmax < 1e18) & (absmax > 1e-18)) | (var <= 1e-2 * mean.square())
        for i in torch.nonzero(bad).flatten().tolist():
            out[i] = group_stats([xs[i]], [deads[i]], sync_free=True)[0]
    return out


def tensor_stats(x: torch.Tensor, dead: DeadRegion | None = None, sync_free: bool | None = None) -> torch.Tensor:
    """group_stats of a single tensor: float64[len(STATS)]."""
    return group_stats([x], [dead], sync_free)[0]


EAGER = 4096  # CPU act/grad tensors from this size are reduced in the hook, while cache-hot
GROUP_MIN = 16  # CPU groups of same-shaped small tensors below this size are reduced row by row


class Scratch:
    """Reusable CPU buffers, one per (dtype, role), grown as needed: a fresh multi-MB
    temporary per tensor costs page faults."""

    def __init__(self) -> None:
        self._bufs: dict[tuple[torch.dtype, str], torch.Tensor] = {}

    def get(self, n: int, dtype: torch.dtype, role: str = "") -> torch.Tensor:
        buf = self._bufs.get((dtype, role))
        if buf is None or buf.numel() < n:
            buf = self._bufs[(dtype, role)] = torch.empty(n, dtype=dtype)
        return buf[:n]


def eager_cpu_row(x: torch.Tensor, dead: DeadRegion | None, scratch: "Scratch", zeros: bool = True) -> list[float]:
    """The statistics of one CPU tensor while it is still in cache, in as few passes as the
    kind allows, each read straight back as a host number.

    min, max and the sum of squares come from numpy (its SIMD min/max and BLAS dot cost
    half of torch's dispatch on tensors this size), the sum from torch (cascade summation).
    Zeros are counted as sign(x)·sign(x) (`zeros=False` skips them: gradients). ReLU
    outputs take their sum per unit: with no negatives, a unit is dead exactly when its
    sum is zero. Rare cases (non-finite values, magnitudes whose squares leave float32, a
    mean that swamps the variance) take the exact path.
    """
    flat = x.detach().reshape(-1)
    if flat.dtype != torch.float32:
        flat = flat.float()
    a = flat.numpy()
    n = a.size
    units = x.shape[1] if x.dim() > 1 else n
    per_unit = (x.shape[0], units, -1) if x.dim() > 1 else (1, n, 1)
    big = n >= 2**24  # float32 sums of +-1 are exact below 2**24; above, count exactly
    lo, hi, sq = float(a.min()), float(a.max()), float(np.dot(a, a))
    relu = dead is not None and dead.relu
    if relu and dead.nonneg:
        unit_sums = flat.view(per_unit).sum(dim=(0, 2)).numpy()
        s, dead_count = float(unit_sums.sum(dtype=np.float64)), np.count_nonzero(unit_sums == 0)
    else:
        s = flat.sum().item()
    absmax = max(-lo, hi)
    mean = s / n
    var = (sq - s * mean) / max(n - 1, 1)
    if not (math.isfinite(absmax) and 1e-18 < absmax < 1e18 and math.isfinite(var) and var > 1e-2 * mean * mean):
        return group_stats([x], [dead], sync_free=True).tolist()[0]
    nz = dead_frac = dead_units = NAN
    if zeros or relu:
        sign = torch.sign(flat, out=scratch.get(n, torch.float32, "sign")).numpy()
        nz = float(np.count_nonzero(a) if big else np.dot(sign, sign))
    if relu and dead.nonneg:  # the non-zeros are the positives
        dead_frac, dead_units = (n - nz) / n, dead_count / units
    elif relu:
        pm = float(np.count_nonzero(a > 0) - np.count_nonzero(a < 0) if big else np.add.reduce(sign))
        unit_max = flat.view(per_unit).amax(dim=(0, 2)).numpy()
        dead_frac, dead_units = (n - (nz + pm) / 2) / n, np.count_nonzero(unit_max <= 0) / units
    elif dead is not None:  # tanh/sigmoid: |x - center| > half_width
        dist = torch.sub(flat, dead.center, out=scratch.get(n, torch.float32, "dist")).abs_()
        unit_min = dist.view(per_unit).amin(dim=(0, 2)).numpy()
        above = np.count_nonzero(dist.numpy() > dead.half_width)
        dead_frac, dead_units = above / n, np.count_nonzero(unit_min > dead.half_width) / units
    return [mean, math.sqrt(max(var, 0.0)), lo, hi, (n - nz) / n, dead_frac, dead_units, 0.0, float(n)]


def param_rows(tensors: Sequence[torch.Tensor], queued: bool = False) -> torch.Tensor | np.ndarray:
    """mean, std and non-finite count of many parameter tensors from one multi-tensor norm
    (torch._foreach_norm) and one sum per tensor. Rows are exact (centred) where the
    uncentred formula would cancel; min, max and zero counts are not recorded (NaN). On CPU
    the rows are finished in numpy (float64[len, len(STATS)]); off the CPU (or `queued`)
    as tensor ops, with no sync."""
    ts = [t.detach() for t in tensors]
    if queued or ts[0].device.type != "cpu":  # float64 accumulation: no exact fall-back without a sync
        try:
            norms = torch.stack(torch._foreach_norm(ts, 2, dtype=torch.float64))
        except (TypeError, RuntimeError):  # torch releases before the dtype argument
            norms = torch.stack([torch.linalg.vector_norm(t, dtype=torch.float64) for t in ts])
        sums = torch.stack([t.sum(dtype=torch.float64) for t in ts])
        return _queued_param_rows(norms, sums, [t.numel() for t in ts])
    norms = torch.stack(torch._foreach_norm(ts))
    sums = torch.stack([t.sum() for t in ts])
    norms, sums = norms.numpy().astype(np.float64), sums.numpy().astype(np.float64)
    numel = np.array([t.numel() for t in ts], dtype=np.float64)
    mean = sums / numel
    with np.errstate(all="ignore"):
        var = (norms * norms - sums * mean) / np.maximum(numel - 1, 1)
    out = np.full((len(ts), len(STATS)), NAN)
    out[:, 0], out[:, 1], out[:, 7], out[:, 8] = mean, np.sqrt(np.maximum(var, 0)), 0, numel
    bad = ~(np.isfinite(norms) & np.isfinite(sums))
    for i in np.flatnonzero(bad):  # reading scalars is free here: count them
        out[i, 7] = int((~torch.isfinite(ts[i])).sum())
    for i in np.flatnonzero(~bad & ~(var > 1e-2 * mean * mean) & (mean != 0)):
        t = ts[i].reshape(-1).double()  # a large mean swamps the variance (BN weights): centre
        out[i, 1] = float((t - t.mean()).norm()) / max(t.numel() - 1, 1) ** 0.5
    return out


def _queued_param_rows(norms: torch.Tensor, sums: torch.Tensor, numels: list[int]) -> torch.Tensor:
    numel = torch.tensor(numels, dtype=torch.float64, device=norms.device)
    mean = sums / numel
    var = (norms.square() - sums * mean) / (numel - 1).clamp_min(1)
    nan = torch.full_like(mean, NAN)
    # non-finite values make the norm or sum non-finite: -1 flags "present, not counted"
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
    row: list[float] | None = None  # statistics computed eagerly (large CPU tensors)
    index: int = -1  # parameter kinds: position in Telemetry.params (pairs grad/update with weight)


class Telemetry:
    """Records per-layer statistics on logged steps; `collect()` returns them as columns.

    Hooks only keep references to the step's tensors (activations are mostly kept alive
    by autograd anyway; gradients and the update snapshot are the extra memory of a
    logged step). collect() groups same-shaped tensors and reduces each group at once.
    """

    def __init__(self, model: nn.Module, config: TelemetryConfig | None = None, queued: bool = False) -> None:
        self.cfg = config or TelemetryConfig()
        self.queued = queued  # queued tensor ops run off the CPU anyway; True forces them on the CPU (tests)
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
        self._scratch = Scratch()

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
        """Large CPU tensors are reduced right away: keeping every activation gradient
        alive until collect() makes backward allocate afresh (page faults), which costs
        more than the statistics. Small ones wait, to be reduced in groups."""
        t = p.tensor
        device = t.device.type
        if device == "mps":  # MPS has no float64: take these statistics on the CPU
            t, device = t.cpu(), "cpu"
            p.tensor = t
        if device == "cpu" and not self.queued and t.numel() >= EAGER and p.kind not in PARAM_KINDS:
            p.row = eager_cpu_row(t, p.dead, self._scratch, zeros=p.kind != "grad")
            p.tensor = None
        if p.hist:
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
        self._pending += [_Pending(slot, kind, "", v) for kind, v in vectors.items()]

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
    def _param_rows(self, kind: str, tensors: list[torch.Tensor | None]) -> None:
        for i, ((mod, mtype, pname, _), t) in enumerate(zip(self.params, tensors)):
            if t is not None:
                slot = Slot(mod, mtype, self._order.get((mod, 0), -1))
                self._add(_Pending(slot, kind, pname, t.detach(), index=i))

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
        each parameter received when there was a step."""
        if not self.cfg.params:
            return
        weights = [p.detach() for *_, p in self.params]
        self._param_rows("weight", weights)
        if stepped and self._snapped:
            torch._foreach_sub_(self._snapshot, weights)  # in place: before - after = -update
            self._param_rows("update", self._snapshot)  # collect() flips the sign of the mean
        self._snapped = False

    # -- the one transfer ------------------------------------------------------------
    def _compute(self, pending: list[_Pending]) -> tuple[np.ndarray, list[int], np.ndarray | None]:
        """(float64 stats in row order, rows with histograms, their counts) on the host.

        On CUDA/MPS every block is a queued tensor op: groups of same-shaped tensors reduced
        together, all parameters at once, every histogram binned at once, then one
        concatenation and one copy. On CPU the blocks are written into a numpy array as
        they come (small groups row by row: a group's fixed cost exceeds a few rows')."""
        n = len(pending)
        eager = [i for i, p in enumerate(pending) if p.row is not None]
        params = [i for i, p in enumerate(pending) if p.row is None and p.kind in PARAM_KINDS]
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(pending):
            if p.row is None and p.kind not in PARAM_KINDS:
                groups.setdefault((tuple(p.tensor.shape), p.tensor.dtype, p.tensor.device), []).append(i)
        kept = next((p.tensor for p in pending if p.tensor is not None), None)
        hist_rows = [i for i, p in enumerate(pending) if p.hist]
        samples, lengths = self._samples.take() if hist_rows else (None, [])
        assert len(lengths) == len(hist_rows), "histogram samples out of step with their rows"
        if kept is not None and (self.queued or kept.device.type != "cpu"):
            blocks, order = [], []
            if params:
                blocks.append(param_rows([pending[i].tensor for i in params], queued=True))
                order += params
            for rows in groups.values():
                blocks.append(group_stats([pending[i].tensor for i in rows], [pending[i].dead for i in rows],
                                          sync_free=True))
                order += rows
            stats = torch.cat(blocks)[torch.as_tensor(np.argsort(order), device=kept.device)]
            counts = self._binner(samples, lengths, queued=True) if hist_rows else None
            values = torch.cat([stats.reshape(-1)] + ([counts] if counts is not None else [])).cpu().numpy()
            return values[: stats.numel()].reshape(n, -1), hist_rows, values[stats.numel():] if hist_rows else None
        stats = np.empty((n, len(STATS)))
        if eager:
            stats[eager] = [pending[i].row for i in eager]
        if params:
            stats[params] = param_rows([pending[i].tensor for i in params])
        for rows in groups.values():
            if len(rows) >= GROUP_MIN:
                stats[rows] = group_stats([pending[i].tensor for i in rows], [pending[i].dead for i in rows],
                                          scratch=self._scratch).numpy()
            else:
                for i in rows:
                    p = pending[i]
                    stats[i] = eager_cpu_row(p.tensor, p.dead, self._scratch, zeros=p.kind != "grad")
        return stats, hist_rows, self._binner(samples, lengths) if hist_rows else None

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
        cols["zero_frac"][kind == _KIND_CODE["grad"]] = NAN  # not counted for gradients (see eager_cpu_row)
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
