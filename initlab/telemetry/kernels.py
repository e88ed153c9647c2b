"""CPU statistics kernels (numba), for telemetry on the CPU.

In eager PyTorch every statistic of a tensor is its own pass and dispatch (min, max, sum,
sum of squares, zero count, per-unit dead count, histogram): on a 2-core CPU those passes
cost more than the layer's forward and backward. These kernels read each element once or
twice (while it is still in cache):

- min and max are tracked on an order-preserving integer key of the float32 bits (integer
  min/max reductions vectorise; float ones do not without assuming away NaN), kept int32 so
  that AVX2 takes 8 to a register (it has no int64 min/max: the kernel took 2.3x as long so);
- sums and sums of squares accumulate in float64 in SIMD lanes (`reassoc`): a float32
  square is exact in float64, so the variance from them cannot overflow for finite
  float32 values (the 100-layer net's 1e37 activations included); where the mean dwarfs
  the spread the caller takes a second, centred pass (`centred_sq`);
- NaN and infinities are never assumed away (no `nnan`/`ninf`): they make the sums
  non-finite, which tells the caller to take the exact path.

Compiled on first use and cached on disk (`cache=True`), so only a fresh install pays the
compile (a few seconds).
"""

import numba
import numpy as np

_FASTMATH = {"reassoc", "nsz", "contract"}  # reorder sums into SIMD lanes; NaN/inf kept
_jit = numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)

_MAG = np.int32(0x7FFFFFFF)  # the magnitude bits
NO_REGION, RELU_REGION, BAND_REGION = 0, 1, 2  # dead: none; x <= 0; |x - center| > half_width
_I32 = np.int32
_ROW = 4096  # without a region, x is taken in rows of this many elements (their counts fit int32)


@_jit
def _from_key(k):
    """The float32 whose order key is k (the key map is its own inverse)."""
    b = np.empty(1, dtype=np.int32)
    b[0] = k ^ ((k >> 31) & _MAG)
    return b.view(np.float32)[0]


@_jit
def act_moments(x, units, rest, region, center, half_width, position_dead):
    """Two passes over float32 `x` laid out as (rows, units, rest), each of which vectorises.

    Returns (min, max, sum, sum of squares, non-zeros, dead elements, dead units). With a
    `region` (RELU_REGION or BAND_REGION) an element is dead when x <= 0 or when
    |x - center| > half_width, and a unit when all its elements over the batch and spatial
    positions are; they are counted per position of a row first (into the scratch
    `position_dead`, int32[units * rest]) so that the inner loop runs along a contiguous
    row (it vectorises over row slices, not over offsets into `x`). The first pass keeps
    every value 32-bit (order keys, per-row counts) in 8 lanes; the float64 sums take the
    second.
    """
    bits = x.view(np.int32)
    lo, hi = _I32(0x7FFFFFFF), _I32(-0x80000000)
    nz = 0
    c, hw = np.float32(center), np.float32(half_width)
    positions = units * rest if region != NO_REGION else min(x.size, _ROW)
    rows = x.size // max(positions, 1)
    if region != NO_REGION:
        for j in range(positions):
            position_dead[j] = 0
    for r in range(-(-x.size // max(positions, 1))):  # NO_REGION: the last row may be shorter
        xr, br = x[r * positions:(r + 1) * positions], bits[r * positions:(r + 1) * positions]
        row_nz = _I32(0)  # every 32-bit result cast back: numba widens int32 arithmetic to int64
        for j in range(xr.size):
            b = br[j]
            k = _I32(b ^ ((b >> 31) & _MAG))
            lo, hi = _I32(min(lo, k)), _I32(max(hi, k))
            row_nz = _I32(row_nz + _I32((b & _MAG) != 0))
            if region == RELU_REGION:
                position_dead[j] = _I32(position_dead[j] + _I32(k <= 0))
            elif region == BAND_REGION:
                position_dead[j] = _I32(position_dead[j] + _I32(abs(xr[j] - c) > hw))
        nz += row_nz
    s, sq = 0.0, 0.0
    for i in range(x.size):
        f = np.float64(x[i])
        s += f
        sq += f * f
    dead, dead_units = 0, 0
    if region != NO_REGION:
        for u in range(units):
            d = 0
            for j in range(u * rest, (u + 1) * rest):
                d += position_dead[j]
            dead += d
            dead_units += d == rows * rest
    return _from_key(lo), _from_key(hi), s, sq, nz, dead, dead_units


@_jit
def sums(x):
    """(sum, sum of squares) of float32 `x`, accumulated in float64."""
    s, sq = 0.0, 0.0
    for i in range(x.size):
        f = np.float64(x[i])
        s += f
        sq += f * f
    return s, sq


@_jit
def update_sums(after, before):
    """Sums and sums of squares of `after` and of before - after (the update negated, in
    float32 as the optimizer's arithmetic), in one pass over both."""
    s, sq, ds, dsq = 0.0, 0.0, 0.0, 0.0
    for i in range(after.size):
        a = after[i]
        f, d = np.float64(a), np.float64(before[i] - a)
        s += f
        sq += f * f
        ds += d
        dsq += d * d
    return s, sq, ds, dsq


@_jit
def centred_sq(x, mean):
    """sum((x - mean)^2) in float64: the exact path where the mean swamps the spread."""
    sq = 0.0
    for i in range(x.size):
        d = np.float64(x[i]) - mean
        sq += d * d
    return sq


@numba.njit(cache=True, nogil=True)
def hist_sample(x, stride, lut, edges, center, counts):
    """Adds every `stride`-th value of `x` to `counts` (the layout bins, then NaN).

    The bin comes from `lut` on the top 16 bits of the magnitude and the sign (see
    telemetry.hist_lut); a cell that an edge cuts (-1) is placed by binary search on the
    float32 `edges`, as bucketize(right=True) does."""
    bits = x.view(np.int32)
    for i in range(0, x.size, stride):
        b = bits[i]
        m = min(b & 0x7FFFFFFF, 0x7F800001)  # every NaN to one cell
        j = lut[(((m - 1) >> 16) + 1) | ((b >> 16) & 0x8000)]
        if j < 0:
            code = np.searchsorted(edges, abs(x[i]), side="right") + 1
            j = center - code if x[i] < 0 else center + code
        counts[j] += 1


@numba.njit(cache=True, nogil=True)
def format_counts(x, binade, edges, counts):
    """telemetry.formats in one pass over float32 `x`: adds to `counts` each magnitude's bucket
    (i: edges[i-1] < |x| <= edges[i], as torch.bucketize; NaN and inf past the last), and returns
    the order bits of the largest and the smallest non-zero finite magnitude (-1 where none).

    `edges` are the magnitudes' float32 bits, sorted (monotonic in the magnitude); `binade[e]`
    is the bucket of every magnitude whose exponent byte is e, or -1 where an edge cuts that
    binade: only those elements take the binary search."""
    bits = x.view(np.int32)
    hi, lo = -1, 0x7F800000
    for i in range(x.size):
        m = bits[i] & 0x7FFFFFFF
        j = binade[m >> 23]
        if j < 0:
            j = np.searchsorted(edges, m, side="left")  # edges < m: the bucket
        counts[j] += 1
        if m < 0x7F800000:  # finite
            hi = max(hi, m)
            if m > 0:
                lo = min(lo, m)
    return hi, (lo if lo < 0x7F800000 else -1)
