"""What every figure shares: a fixed layout, plain tick labels, the axes initlab draws on
(steps, log values, histogram bins), and one way of writing a figure to disk.

Speed comes from what is not done: no pyplot (no figure manager), no tight_layout (it draws
every figure a second time to measure it; margins here are fixed in inches), no mathtext
tick labels (parsing '$10^{-2}$' costs more than drawing the line), one legend position
chosen rather than searched for, at most 5 ticks on a linear axis (the default figures
took 14% less time than with matplotlib's ~9), none built outside the view (`InView`),
many lines of a panel as one collection (`curves`), no full cycle collection while drawing
(`drawing`), and each PNG encoded behind the drawing of the next (initlab/report/plots/encoder.py).
matplotlib itself is used as it ships: public API only."""

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import (
    FixedLocator,
    FuncFormatter,
    Locator,
    LogLocator,
    MaxNLocator,
    NullLocator,
)

from initlab.report.plots.encoder import attach, writing
from initlab.rundir.safe import fresh_target
from initlab.speedups.collector import paused

FORMATS = ("png", "svg", "pdf")
MAX_LINES = 10  # layers drawn as separate lines in one panel; more become unreadable
DPI = 100
NICE_STEPS = [1, 2, 2.5, 5, 10]  # matplotlib's AutoLocator's
GRID_ALPHA = 0.3
# matplotlib < 3.11's add_collection sets the data limits only, not the view
COLLECTIONS_SCALE = tuple(int(p) for p in mpl.__version__.split(".")[:2]) >= (3, 11)


P = ParamSpec("P")
R = TypeVar("R")


def drawing(fn: Callable[P, R]) -> Callable[P, R]:
    """For the functions that draw a set of figures (plot_run, plot_sweep): no full collection
    while they draw (their allocations set off a full collection walking everything the
    process holds: 0.2 s of the default study's ~1 s of figures, initlab/speedups/collector.py),
    each PNG encoded behind the drawing of the next (initlab/report/plots/encoder.py `writing`),
    and every string drawn literally: a `$` in a layer name or a swept value is a dollar sign,
    not mathtext (an unbalanced one would fail the figure)."""
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with paused(), writing(), mpl.rc_context({"text.parse_math": False}):
            return fn(*args, **kwargs)
    return wrapper


def plain(value: float, _pos: Any = None) -> str:
    """'0.01', '1', '100', '1e+06': a number, not mathtext."""
    return f"{value:g}"


PLAIN = FuncFormatter(plain)


def figure(rows: int, cols: int, panel: tuple[float, float] = (4.6, 3.3), *, sharex: bool = False,
           sharey: bool = False, left: float = 0.8, right: float = 0.25, bottom: float = 0.6, top: float = 0.55,
           wspace: float = 1.0, hspace: float = 0.6, panels: int | None = None, grid: str | None = "both"
           ) -> tuple[Figure, np.ndarray]:
    """A rows x cols grid of panels of `panel` inches, margins in inches: the layout is known
    before anything is drawn, so the figure is drawn once. `panels`: only the first that
    many, row by row (a 1-d array then, not shared), rather than hidden axes built for nothing.
    `grid`: the axes with grid lines at the major ticks ("both", "x", "y"), or None."""
    width = left + right + cols * panel[0] + (cols - 1) * wspace
    height = top + bottom + rows * panel[1] + (rows - 1) * hspace
    fig = attach(Figure(figsize=(width, height)))
    if panels is None:
        axes = fig.subplots(rows, cols, squeeze=False, sharex=sharex, sharey=sharey)
    else:
        spec = fig.add_gridspec(rows, cols)
        axes = np.array([fig.add_subplot(spec[i // cols, i % cols]) for i in range(panels)])
    for ax in axes.flat:  # at most 5 ticks a linear axis, not ~9: each is two lines and a text to lay out
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, steps=NICE_STEPS))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5, steps=NICE_STEPS))
        if grid:  # now, while the axes hold few ticks: later, grid() restyles every tick built
            ax.grid(alpha=GRID_ALPHA, axis=grid)
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height,
                        top=1 - top / height, wspace=wspace / panel[0], hspace=hspace / panel[1])
    return fig, axes


class InView(Locator):
    """Another locator's ticks less those outside the view. matplotlib builds a Tick (two tick
    lines, a grid line, two texts: ~0.5 ms) for every location a locator gives and draws the
    ones in view; MaxNLocator and LogLocator give one past each end, 38 of the default study's
    193 major ticks."""

    def __init__(self, inner: Locator) -> None:
        self.inner = inner

    def set_axis(self, axis: Axis) -> None:
        super().set_axis(axis)
        self.inner.set_axis(axis)

    def __call__(self) -> np.ndarray:
        locs = np.asarray(self.inner(), dtype=float)
        transform = self.axis.get_transform()
        lo, hi = np.sort(transform.transform(np.array(self.axis.get_view_interval(), dtype=float)))
        with np.errstate(invalid="ignore", divide="ignore"):  # a log axis' locations at or below 0: out
            at = transform.transform(locs)
        slack = 1e-6 * (hi - lo)  # looser than matplotlib's own test: nothing it would draw is dropped
        return locs[(at >= lo - slack) & (at <= hi + slack)]

    def tick_values(self, vmin: float, vmax: float) -> Any:
        return self.inner.tick_values(vmin, vmax)

    def nonsingular(self, v0: float, v1: float) -> tuple[float, float]:
        return self.inner.nonsingular(v0, v1)

    def view_limits(self, vmin: float, vmax: float) -> tuple[float, float]:
        return self.inner.view_limits(vmin, vmax)

    def set_params(self, **kwargs: Any) -> None:
        self.inner.set_params(**kwargs)


def save(fig: Figure, path: Path, title: str | None = None, fmt: str = "png") -> Path:
    """Title, major ticks in view only (`InView`), write as `fmt` (the suffix follows it),
    done: every figure ends the same way."""
    if title:
        fig.suptitle(title, fontsize=10)
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):  # a shared axis shares its locator: wrapped once
            if not isinstance(locator := axis.get_major_locator(), (InView, NullLocator)):
                axis.set_major_locator(InView(locator))
    path = fresh_target(path.with_suffix(f".{fmt}"))  # a link there is replaced, not written through
    # PNG: zlib level 1, not PIL's 6: about half the encode time, files 10-15% larger
    fig.savefig(path, dpi=DPI, format=fmt, **({"pil_kwargs": {"compress_level": 1}} if fmt == "png" else {}))
    return path


def panel_title(ax: Axes, text: str, size: float = 9) -> None:
    """A panel's title at a fixed height: matplotlib otherwise measures every tick label
    of the panel (and of the panels it shares axes with) to place it."""
    ax.set_title(text, fontsize=size, y=1.0)


def curves(ax: Axes, xy: list[tuple[Any, Any]], colors: list[Any], labels: list[str] | None = None,
           lw: float = 1, ls: str = "-") -> list[Line2D]:
    """Lines (x, y) drawn as what ax.plot draws, in one LineCollection: one artist, drawn in
    one call, where a Line2D each costs ~1 ms to build, scale to and draw. A gap where a value
    is not finite, as a line has. Returns a stand-in for each labelled line, for `legend`."""
    if not xy:
        return []
    segments = [np.column_stack([np.asarray(x, dtype=float), np.asarray(y, dtype=float)]) for x, y in xy]
    dashed = ls not in ("-", "solid")  # the caps and joins ax.plot gives solid and dashed lines
    style = "dash" if dashed else "solid"
    ax.add_collection(LineCollection(segments, colors=colors, linewidths=lw, linestyles=ls, zorder=Line2D.zorder,
                                     capstyle=mpl.rcParams[f"lines.{style}_capstyle"],
                                     joinstyle=mpl.rcParams[f"lines.{style}_joinstyle"]))
    if not COLLECTIONS_SCALE:
        ax.autoscale(enable=None)  # add_collection set the data limits only: the view set when next read, as ax.plot does
    return [Line2D([], [], color=c, lw=lw, ls=ls, label=label) for c, label in zip(colors, labels or [])]


def legend(ax: Axes, handles: list[Line2D] | None = None, **kw: Any) -> None:
    """A legend when something drawn has a label (matplotlib warns otherwise); `handles`:
    the stand-ins `curves` returned, for lines drawn as a collection."""
    if handles:
        ax.legend(handles=handles, **kw)
    else:
        shared_legend([ax], **kw)


def shared_legend(axes: Any, **kw: Any) -> None:
    """One legend for panels that draw alike (the same styles for the same labels): every
    label any of them has, in the first panel; none when nothing has a label. A legend costs
    about a tenth of a figure."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        axes[0].legend(list(handles.values()), list(handles), **kw)


def colors(name: str, n: int) -> list[Any]:
    """n colours spread over a sequential colormap, stopping short of its palest end (viridis'
    yellow is hard to see on white); a qualitative one (tab10) taken colour by colour."""
    cmap = colormaps[name]
    if getattr(cmap, "N", 256) <= 20:  # qualitative: its own colours, in order
        return [cmap(i % cmap.N) for i in range(n)]
    return [cmap(0.85 * i / max(n - 1, 1)) for i in range(n)]


def log_axis(ax: Axes, which: str = "y") -> bool:
    """Log scale for what is already drawn, when it spans a decade or more: ticks at the
    decades (and at 2 and 5 when it spans less than three), written as plain numbers.
    Within a decade a log axis would show one tick or none, so it stays linear; says which."""
    lim = ax.dataLim
    lo, hi = (lim.y0, lim.y1) if which == "y" else (lim.x0, lim.x1)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo > 0 and hi >= 10 * lo):
        return False
    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    if hi < 1000 * lo:
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(PLAIN)
    axis.set_minor_locator(NullLocator())  # eight ticks a decade, each a Line2D and a Text to lay out
    return True


def step_axis(ax: Axes, steps: np.ndarray) -> None:
    """Steps on x. The telemetry schedule logs steps log-spaced (dense early, sparse late),
    so a long run gets a symmetric-log axis: linear up to step 1, then logarithmic."""
    ax.set_xlabel("step")
    if len(steps) and np.nanmax(steps) >= 50:
        ax.set_xscale("symlog", linthresh=1, linscale=0.4)
        ax.xaxis.set_major_formatter(PLAIN)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlim(left=max(ax.get_xlim()[0], float(np.nanmin(steps)) - 0.5))  # the margin is no negative step
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def layer_axis_name(which: str) -> str:
    """What a layer axis holds, for its label."""
    return {"weighted": "conv/linear layer", "all": "layer"}.get(which, f"{which} layer")


def each_layer(rows: pd.DataFrame, *columns: str) -> tuple[np.ndarray, ...]:
    """Each layer of a table once (its first row), in forward (layer_idx) order: its layer_idx,
    then each of `columns`. Arrays, not table operations (~0.3 ms each, and a figure reads
    its tables several times)."""
    idx, first = np.unique(rows["layer_idx"].to_numpy(), return_index=True)
    return (idx, *(rows[c].to_numpy()[first] for c in columns))


class LayerAxis:
    """Which layers a per-layer figure draws, and where. `weighted` (the default): the conv and
    linear outputs, so lines follow the depth of the network instead of zig-zagging between a
    conv and the activation after it, and nets of different layouts line up; `all`: every
    tracked module in forward order; or one module type (`ReLU`, `BatchNorm2d`, ...). The
    layers sit at 0, 1, 2, ... along the axis, labelled with their names where they fit."""

    def __init__(self, rows: pd.DataFrame, which: str = "weighted") -> None:
        from initlab.diagnose import WEIGHTED

        idx, names, types = each_layer(rows, "layer", "module_type")
        chosen = {"weighted": np.isin(types, list(WEIGHTED)), "all": np.ones(len(idx), dtype=bool)}.get(
            which, types == which)
        self.missing = which if not chosen.any() else None  # a type the model does not have: every layer, said so
        if not chosen.any():
            chosen, which = np.ones(len(idx), dtype=bool), "all"
        self.which = which
        self.names = [str(n) for n in names[chosen]]
        self._index = pd.Index(idx[chosen])  # a layer's position along the axis: its place here

    def place(self, d: pd.DataFrame, *columns: str) -> tuple[np.ndarray, ...]:
        """The rows of the chosen layers in order: their positions x, then each of `columns`."""
        x = self._index.get_indexer(d["layer_idx"].to_numpy())
        rows = np.flatnonzero(x >= 0)
        rows = rows[np.argsort(x[rows], kind="stable")]
        return (x[rows], *(d[c].to_numpy()[rows] for c in columns))

    def first_at_or_after(self, layer_idx: int) -> int | None:
        later = np.flatnonzero(self._index >= layer_idx)
        return int(later[0]) if len(later) else None

    def label(self, ax: Axes) -> None:
        ax.set_xlabel(f"{layer_axis_name(self.which)} (forward order)" + (f"; no {self.missing} layer here" if self.missing else ""))
        n = len(self.names)
        if n:  # the whole depth, also where a diverged layer leaves the rest without finite values
            ax.set_xlim(-0.5, n - 0.5)
        if 0 < n <= 12:
            ax.set_xticks(range(n), self.names, rotation=30, ha="right", fontsize=7)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=10))


class BinAxis:
    """Positions along the fixed histogram layout, labelled with the values the bins hold.

    A histogram's bins (from hist.parquet: bin, lo, hi) are drawn one unit wide, in value
    order, so every bin is visible whether it holds 1e-8 or 1e3; the tick labels are the
    decade edges in values (-10, -0.1, 0, 0.1, 10), a symmetric log axis."""

    def __init__(self, bins: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        self.n_bins = int(bins.max()) + 1
        self.lo = np.full(self.n_bins, np.nan)
        self.hi = np.full(self.n_bins, np.nan)
        self.lo[bins], self.hi[bins] = lo, hi

    def ticks(self, first: int, last: int, most: int = 7) -> tuple[list[float], list[str]]:
        """Tick positions and labels between bins `first` and `last` (inclusive): 0 and the
        bin edges that are whole decades, every n-th decade on each side so that at most
        `most` remain (n the same on both sides, so the axis reads symmetric)."""
        zero, decades = [], []  # decades: (exponent, position, value)
        for b in range(first, last + 1):
            if self.lo[b] == 0 and self.hi[b] == 0:  # the exactly-zero bin
                zero.append(b + 0.5)
            edge = self.hi[b]
            if np.isfinite(edge) and edge != 0 and b < last:
                exponent = np.log10(abs(edge))
                if abs(exponent - round(exponent)) < 1e-6:
                    decades.append((round(exponent), b + 1.0, float(edge)))
        # the smallest decade sits two bins from 0 (the underflow bin between): labels collide
        decades = [d for d in decades if all(abs(d[1] - z) > 3 for z in zero)]
        every = 1
        while len(zero) + sum(1 for e, _, _ in decades if e % every == 0) > most:
            every += 1
        kept = [(p, plain(v)) for e, p, v in decades if e % every == 0] + [(p, "0") for p in zero]
        for b in range(first, last + 1):  # the overflow bins, named by their bound, the nearest decade yielding
            if np.isinf(self.lo[b]) or np.isinf(self.hi[b]):
                bound = self.hi[b] if np.isinf(self.lo[b]) else self.lo[b]
                kept = [k for k in kept if abs(k[0] - (b + 0.5)) > 3]
                kept.append((b + 0.5, ("≤" if bound < 0 else "≥") + plain(bound)))
        kept.sort()
        return [p for p, _ in kept], [t for _, t in kept]

    def shade(self, ax: Axes, first: int, last: int, vertical: bool = True) -> None:
        """The bins that are not log bins, lightly: underflow (0 < |x| < min_abs) grey,
        overflow (|x| >= max_abs, inf included) red."""
        span = ax.axvspan if vertical else ax.axhspan
        for b in range(first, last + 1):
            under = (self.lo[b] == 0) != (self.hi[b] == 0) and np.isfinite(self.lo[b]) and np.isfinite(self.hi[b])
            over = np.isinf(self.lo[b]) or np.isinf(self.hi[b])
            if under or over:
                span(b, b + 1, color="tab:red" if over else "0.6", alpha=0.12, lw=0)

    def label(self, axis: Any, first: int, last: int) -> None:
        pos, labels = self.ticks(first, last)
        axis.set_major_locator(FixedLocator(pos))
        text = {round(p, 6): t for p, t in zip(pos, labels)}
        axis.set_major_formatter(FuncFormatter(lambda v, _pos: text.get(round(v, 6), "")))
        axis.set_minor_locator(NullLocator())
