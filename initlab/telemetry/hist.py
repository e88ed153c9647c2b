"""Histogram bins: one fixed, symmetric, log-spaced layout for every step, layer, run and
device; the lookup table the CPU kernels bin through, the queued binner, and the staging
buffer for histogram samples."""

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from initlab.defaults import preset

NAN = float("nan")
_SHIPPED = preset("telemetry", "default")["hist"]  # conf/telemetry/default.yaml holds the defaults


@dataclass(frozen=True)
class HistSpec:
    """Fixed symmetric log-spaced bins, identical for every step, layer, run and device.

    Layout, in value order (2K+5 bins): overflow below -max_abs (-inf included), K negative
    log bins, negative underflow (-min_abs, 0), exactly zero, positive underflow (0, min_abs),
    K positive log bins, overflow from max_abs (inf included). NaNs are not binned (they are
    counted in `nonfinite`). A strided sample of at most `sample` elements per tensor is binned.
    """

    min_abs: float = float(_SHIPPED["min_abs"])
    max_abs: float = float(_SHIPPED["max_abs"])
    bins_per_decade: int = int(_SHIPPED["bins_per_decade"])
    sample: int = int(_SHIPPED["sample"])

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
