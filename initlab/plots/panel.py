"""The axes initlab's figures are made of: matplotlib's Axes, except that an axis' ticks after
its first are copies of the first rather than built anew.

matplotlib builds each tick (two tick lines, a grid line, two labels) from keyword arguments,
markers included, then copies the first tick's properties onto it: ~0.45 ms a tick in
matplotlib 3.11, where a copy of the first tick takes ~0.04 ms and is the same tick at once.
The default study's figures build 84 first ticks (each axis' first major and minor one) and
copy the other 123. A copy's parts share what matplotlib's own copy of the properties shares
(transforms, clip box, markers, which are immutable) and get what a new artist has of its own
(callbacks, font properties). A tick holding anything else that is not a plain value (another
matplotlib, an attribute set by hand) is built as matplotlib builds it."""

import copy
from enum import Enum
from typing import Any

import numpy as np
from matplotlib import cbook
from matplotlib.axes import Axes
from matplotlib.axis import Axis, Tick, XAxis, YAxis

COPY_TICKS = True  # False: every tick built by matplotlib (the reference the tests compare with)
PARTS = ("tick1line", "tick2line", "gridline", "label1", "label2")
# what a tick and its parts hold besides plain values: shared with the first tick, as
# matplotlib's own copy of its properties (Axis._copy_tick_props) shares them, replaced by the
# next set_data (a line's data, path and cached path), or made anew for each copy
SHARED = frozenset({"_axes", "_parent_figure", "clipbox", "_clippath", "_transform", "_path_effects", "_marker",
                    "stale_callback", "_xorig", "_yorig", "_x", "_y", "_xy", "_path", "_transformed_path"})
MADE_ANEW = frozenset({"_callbacks", "_fontproperties", *PARTS})
PLAIN = (int, float, complex, str, bytes, bool, type(None), frozenset)


def _plain(value: Any) -> bool:
    return type(value) in PLAIN or isinstance(value, (np.generic, Enum)) or (
        type(value) is tuple and all(_plain(v) for v in value))


def copyable(tick: Tick) -> bool:
    """Whether every part of `tick` holds only what a copy knows how to treat."""
    return all(name in SHARED or name in MADE_ANEW or _plain(value)
               for part in (tick, *(getattr(tick, p, None) for p in PARTS)) if part is not None
               for name, value in vars(part).items())


def _twin(artist: Any) -> Any:
    twin = copy.copy(artist)  # through Artist.__getstate__: no stale callback, no cached renderer
    twin.stale_callback = artist.stale_callback
    twin._callbacks = cbook.CallbackRegistry(signals=["pchanged"])
    return twin


def copy_tick(tick: Tick) -> Tick:
    """A tick like `tick`, at its place (the axis moves it): see the module's docstring."""
    twin = _twin(tick)
    for name in PARTS:
        part = _twin(getattr(tick, name))
        if hasattr(part, "_fontproperties"):  # set in place by set_fontsize & co.
            part._fontproperties = part._fontproperties.copy()
        setattr(twin, name, part)
    return twin


class CopiedTicks(Axis):
    """An axis whose ticks after the first are copies of the first (`copy_tick`)."""

    def _more(self, ticks: list[Tick], numticks: int, major: bool) -> list[Tick]:
        if COPY_TICKS and len(ticks) < numticks and copyable(first := ticks[0]):
            ticks.extend(copy_tick(first) for _ in range(numticks - len(ticks)))
        return (super().get_major_ticks if major else super().get_minor_ticks)(numticks)

    def get_major_ticks(self, numticks: int | None = None) -> list[Tick]:
        if numticks is None:
            numticks = len(self.get_majorticklocs())
        return self._more(self.majorTicks, numticks, major=True)

    def get_minor_ticks(self, numticks: int | None = None) -> list[Tick]:
        if numticks is None:
            numticks = len(self.get_minorticklocs())
        return self._more(self.minorTicks, numticks, major=False)


class PanelXAxis(CopiedTicks, XAxis):
    pass


class PanelYAxis(CopiedTicks, YAxis):
    pass


class Panel(Axes):
    """Axes with `CopiedTicks` axes; made by `base.figure` (axes_class=Panel)."""

    def _init_axis(self) -> None:  # Axes._init_axis (the hook matplotlib's projections use), these axes
        self.xaxis = PanelXAxis(self, clear=False)
        self.spines.bottom.register_axis(self.xaxis)
        self.spines.top.register_axis(self.xaxis)
        self.yaxis = PanelYAxis(self, clear=False)
        self.spines.left.register_axis(self.yaxis)
        self.spines.right.register_axis(self.yaxis)
