"""What a low-precision format would do to a recorded tensor: for each format in
`telemetry.formats`, the fraction of its finite non-zero values that the format flushes to zero,
that land in its subnormal range, and that overflow it; and the tensor's largest and smallest
non-zero magnitudes (`amax`, `amin`) and their dynamic range in bits.

A cast rounds to nearest, ties to even, so each outcome is a magnitude interval whose ends are
rounding midpoints, read from `torch.finfo`: a value at or below half the smallest subnormal
becomes 0; one below the midpoint between the largest subnormal and the smallest normal is
subnormal; one at or beyond the midpoint after the largest finite value overflows (inf for
fp16, bf16 and e5m2; e4m3fn has no inf and torch's cast saturates to ±448, which counts as
overflow). No copy is cast: one `bucketize` of the magnitudes against every format's midpoints
and one `bincount` per step's rows give every count at once, on the tensors' own device.
The counts equal those of a real cast (tests/test_formats.py).
"""

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from initlab.errors import ConfigError

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
OUTCOMES = ("zero", "subnormal", "overflow")
SUMMARY = ("amax", "amin", "range_bits")  # columns beside the per-format fractions


@dataclass(frozen=True)
class Format:
    """One format's rounding midpoints, as magnitudes."""

    name: str
    zero: float  # |x| <= zero: flushed to 0
    normal: float  # |x| >= normal: a normal number (between `zero` and here: subnormal)
    overflow: float  # |x| >= overflow (or > it, when `ties_overflow` is False): beyond the largest finite
    ties_overflow: bool  # the largest finite has an odd mantissa, so a tie rounds away from it


def spec(name: str) -> Format:
    fi = torch.finfo(DTYPES[name])
    sub = fi.tiny * fi.eps  # the smallest subnormal: eps = 2**-mantissa bits
    half_ulp_max = 2.0 ** np.floor(np.log2(fi.max)) * fi.eps / 2
    mantissa_of_max = round((fi.max / 2.0 ** np.floor(np.log2(fi.max)) - 1) / fi.eps)
    return Format(name, sub / 2, fi.tiny - sub / 2, float(fi.max + half_ulp_max), bool(mantissa_of_max % 2))


def formats_of(names: Sequence[str]) -> tuple[Format, ...]:
    """The formats asked for, checked: one line naming the accepted ones otherwise."""
    unknown = [n for n in names if n not in DTYPES]
    if unknown:
        raise ConfigError("telemetry.formats", list(names), f"expected names from {', '.join(DTYPES)}")
    return tuple(spec(n) for n in dict.fromkeys(names))


def columns(formats: Sequence[Format]) -> tuple[str, ...]:
    """The stats table's format columns, in order."""
    return (*SUMMARY, *(f"{f.name}_{o}" for f in formats for o in OUTCOMES))


@functools.cache  # the same few numbers for every tensor of a run: computed once per formats and dtype
def _bounds(formats: tuple[Format, ...], dtype: torch.dtype) -> list[float]:
    """Magnitudes b for which the count of |x| <= b is wanted, in a fixed order: 0, the largest
    finite of `dtype`, then per format its zero, last-subnormal and last-not-overflowing bounds."""
    def below(v: float) -> float:  # the largest value of `dtype` under v: |x| < v  <=>  |x| <= below(v)
        t = torch.tensor(v, dtype=dtype)
        return float(torch.nextafter(t, torch.tensor(0.0, dtype=dtype)))

    out = [0.0, float(torch.finfo(dtype).max)]
    for f in formats:
        out += [f.zero, below(f.normal), below(f.overflow) if f.ties_overflow else f.overflow]
    return out


class CpuFormats:
    """format_rows' numbers for CPU tensors through the numba kernel (`kernels.format_counts`): one
    pass, no copies; float64 tensors take format_rows (the kernel reads float32)."""

    def __init__(self, kernels: Any, formats: Sequence[Format]) -> None:
        self.k, self.formats = kernels, tuple(formats)
        bounds = _bounds(tuple(self.formats), torch.float32)
        self.order = sorted(range(len(bounds)), key=lambda i: bounds[i])
        self.rank = {i: r for r, i in enumerate(self.order)}
        edges = np.array([bounds[i] for i in self.order], dtype=np.float32)
        self.edges = edges.view(np.int32)
        lo = (np.arange(256, dtype=np.int64) << 23)
        hi = lo + (1 << 23) - 1
        first, last = np.searchsorted(self.edges, lo), np.searchsorted(self.edges, np.minimum(hi, 2**31 - 1))
        self.binade = np.where(first == last, first, -1).astype(np.int64)
        self.counts = np.zeros(len(edges) + 1, dtype=np.int64)

    def rows(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        if any(t.dtype == torch.float64 for t in tensors):
            return format_rows(tensors, self.formats)
        return torch.tensor(np.stack([self._row(t) for t in tensors]), dtype=torch.float64)

    def _row(self, t: torch.Tensor) -> np.ndarray:
        x = t.detach()
        if x.dtype != torch.float32 or not x.is_contiguous():
            x = x.float().contiguous()
        self.counts[:] = 0
        hi, lo = self.k.format_counts(x.numpy().reshape(-1), self.binade, self.edges, self.counts)
        at_most = np.cumsum(self.counts).astype(np.float64)

        def le(i: int) -> float:
            return at_most[self.rank[i]]

        def magnitude(b: int) -> float:
            return float(np.array([b], dtype=np.int32).view(np.float32)[0]) if b >= 0 else 0.0

        zeros, finite = le(0), le(1)
        out = [finite - zeros, magnitude(hi), magnitude(lo) if lo >= 0 else np.inf]
        for j in range(len(self.formats)):
            z, s, o = 2 + 3 * j, 3 + 3 * j, 4 + 3 * j
            out += [le(z) - zeros, le(s) - le(z), finite - le(o)]
        return np.array(out)


def format_rows(tensors: Sequence[torch.Tensor], formats: Sequence[Format]) -> torch.Tensor:
    """(rows, 3 + 3 * formats) float64 on the tensors' device: per tensor the count of finite
    non-zero values, amax and amin, then per format the zero, subnormal and overflow counts."""
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    if len(tensors) == 1 and tensors[0].numel():  # an activation or gradient: no segments to scatter over
        return _one_row(tensors[0].detach().reshape(-1).to(dtype).abs(), formats)
    flat = torch.cat([t.detach().reshape(-1).to(dtype) for t in tensors]).abs()
    device, n_rows = flat.device, len(tensors)
    sizes = torch.tensor([t.numel() for t in tensors], device=device)
    seg = torch.repeat_interleave(torch.arange(n_rows, device=device), sizes, output_size=flat.numel())
    bounds = _bounds(tuple(formats), dtype)
    order = sorted(range(len(bounds)), key=lambda i: bounds[i])
    rank = {i: r for r, i in enumerate(order)}
    edges = torch.tensor([bounds[i] for i in order], dtype=dtype, device=device)
    bucket = torch.bucketize(flat, edges)  # i: edges[i-1] < |x| <= edges[i]; NaN past the last
    width = len(edges) + 1
    counts = torch.bincount(seg * width + bucket, minlength=n_rows * width).reshape(n_rows, width)
    at_most = counts.cumsum(1).to(torch.float64)  # at_most[:, rank[i]]: count of |x| <= bounds[i]

    def le(i: int) -> torch.Tensor:
        return at_most[:, rank[i]]

    zeros, finite = le(0), le(1)
    finite_mag = torch.where(flat <= bounds[1], flat, torch.zeros((), dtype=dtype, device=device))
    amax = torch.zeros(n_rows, dtype=dtype, device=device).scatter_reduce(0, seg, finite_mag, "amax")
    nonzero = torch.where((flat > 0) & (flat <= bounds[1]), flat, torch.full((), torch.inf, dtype=dtype, device=device))
    amin = torch.full((n_rows,), torch.inf, dtype=dtype, device=device).scatter_reduce(0, seg, nonzero, "amin")
    out = [finite - zeros, amax.double(), amin.double()]
    for j in range(len(formats)):
        z, s, o = 2 + 3 * j, 3 + 3 * j, 4 + 3 * j
        out += [le(z) - zeros, le(s) - le(z), finite - le(o)]
    return torch.stack(out, dim=1)


def _one_row(flat: torch.Tensor, formats: Sequence[Format]) -> torch.Tensor:
    """format_rows of one non-empty tensor's magnitudes (`flat`, a copy this may change)."""
    dtype, device = flat.dtype, flat.device
    bounds = _bounds(tuple(formats), dtype)
    order = sorted(range(len(bounds)), key=lambda i: bounds[i])
    rank = {i: r for r, i in enumerate(order)}
    edges = torch.tensor([bounds[i] for i in order], dtype=dtype, device=device)
    at_most = torch.bincount(torch.bucketize(flat, edges), minlength=len(edges) + 1).cumsum(0).to(torch.float64)

    def le(i: int) -> torch.Tensor:
        return at_most[rank[i]]

    zeros, finite = le(0), le(1)
    big = torch.tensor(bounds[1], dtype=dtype, device=device)
    amax = torch.where(flat <= big, flat, 0).max()
    amin = flat.masked_fill_((flat == 0) | ~(flat <= big), torch.inf).min()  # NaN and inf out, in place
    out = [finite - zeros, amax.double(), amin.double()]
    for j in range(len(formats)):
        z, s, o = 2 + 3 * j, 3 + 3 * j, 4 + 3 * j
        out += [le(z) - zeros, le(s) - le(z), finite - le(o)]
    return torch.stack(out)[None]


def empty_row(formats: Sequence[Format]) -> np.ndarray:
    """A row for a tensor the formats are not taken of (BatchNorm buffers, norms' statistics)."""
    return np.full(3 + 3 * len(formats), np.nan)


def format_columns(values: np.ndarray, formats: Sequence[Format]) -> dict[str, np.ndarray]:
    """The columns of `format_rows`' values: fractions of the finite non-zero values (NaN where
    there are none), amax and amin (NaN for none), the range in bits."""
    n = values[:, 0]
    with np.errstate(all="ignore"):
        some = n > 0
        amax = np.where(some, values[:, 1], np.nan)
        amin = np.where(some, values[:, 2], np.nan)
        cols = {"amax": amax, "amin": amin, "range_bits": np.log2(amax / amin)}
        for j, f in enumerate(formats):
            for k, outcome in enumerate(OUTCOMES):
                cols[f"{f.name}_{outcome}"] = np.where(some, values[:, 3 + 3 * j + k] / n, np.nan)
    return cols
