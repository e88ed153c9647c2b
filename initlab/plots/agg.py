"""The Agg canvas initlab's figures are written with: matplotlib's, except that a string is
laid out and rasterised once per process, in one FreeType call, rather than glyph by glyph
in every figure it appears in.

matplotlib 3.11 draws each glyph of a text through Python (a FreeType transform, a render
and a blit per glyph): 28% of the default study's figures went to rendering their ~230 tick
labels, titles and legend texts, and laying out one string in FreeType costs ~0.4 ms, paid
again for every figure that measures or draws it. FreeType's `set_text` +
`draw_glyphs_to_bitmap` (what matplotlib up to 3.10 drew with, and what its own text metrics
still measure with) renders the whole string at once, one layout for its metrics and its
bitmap; both are kept per string, font and size, in the process and on disk between
processes (initlab/plots/textstore.py), and the bitmap blitted (rotated when the text is) at
the nearest whole pixel. Where a matplotlib lacks those calls, its own renderer draws.

And inside `writing()` (a set of figures: plot_run, plot_sweep) a PNG is encoded on a thread
while the next figure is drawn: Pillow's compressor releases the GIL, and its filtering and
zlib took ~15% of the default study's figures. What that thread has not started when the set
is drawn is encoded by the caller's thread, beside it."""

import functools
import json
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from math import cos, radians, sin
from os import PathLike
from typing import Any, NamedTuple

import matplotlib as mpl
import matplotlib.image
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg, get_hinting_flag
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.ft2font import FT2Font

from initlab.plots import textstore

WHOLE_STRINGS = all(hasattr(FT2Font, m) for m in ("set_text", "draw_glyphs_to_bitmap", "get_image",
                                                 "get_bitmap_offset", "get_descent", "get_width_height")) \
    and hasattr(RendererAgg, "_prepare_font")
KEPT = 10_000  # strings kept, ~1 kB each (the default study's figures: 125, 126 kB); past that it starts again


class Raster(NamedTuple):
    """A string rendered at angle 0: its coverage bitmap, where the bitmap sits against the
    text's origin and the font's descent (pixels)."""
    image: np.ndarray
    x_offset: float
    y_offset: float
    descent: float


Metrics = tuple[float, float, float]  # width, height, descent (pixels)
_strings: dict[tuple, tuple[Metrics, Raster]] = {}
_heights: dict[tuple, tuple[float | None, float | None, float | None]] = {}
# the strings kept on disk (initlab/plots/textstore.py): read at this process's first
# string laid out; and those laid out since, written back when a set of figures is drawn
_stored: dict[str, textstore.Entry] | None = None
_fresh: dict[str, textstore.Entry] = {}


def _key(s: str, prop: FontProperties, dpi: float) -> tuple:
    return (s, tuple(prop.get_family()), prop.get_style(), prop.get_variant(), prop.get_weight(),
            prop.get_stretch(), prop.get_file(), prop.get_size_in_points(), dpi, get_hinting_flag(),
            mpl.rcParams["text.hinting_factor"], mpl.rcParams["text.kerning_factor"])


def keep_on_disk() -> None:
    """Add the strings laid out since the last call to the store on disk."""
    global _stored
    if not _fresh:
        return
    where = textstore.path()
    entries = textstore.read(where)
    entries.update(_fresh)
    textstore.write(where, entries)
    _stored = entries
    _fresh.clear()


def _kept(store: dict, key: tuple, value: Any) -> Any:
    if len(store) >= KEPT:
        store.clear()
    store[key] = value
    return value


class Renderer(RendererAgg):
    """RendererAgg drawing and measuring plain text a string at a time (mathtext and TeX as
    matplotlib does)."""

    def _string(self, s: str, prop: FontProperties, antialiased: bool) -> tuple[Metrics, Raster]:
        """The metrics and the bitmap of a plain string: kept in this process, else on disk
        (textstore), else laid out in one FreeType call for both (~0.3 ms a string in
        matplotlib 3.11; drawing the bitmap from it costs a tenth of that)."""
        global _stored
        key = (*_key(s, prop, self.dpi), antialiased)
        if (hit := _strings.get(key)) is not None:
            return hit
        font = self._prepare_font(prop)
        name, stamp = json.dumps(key, default=repr), textstore.font_stamp(font.fname)  # repr: FreeType flags
        if _stored is None:
            _stored = textstore.read(textstore.path())
        entry = _stored.get(name)
        if entry is None or entry.font != stamp:
            font.set_text(s, 0.0, flags=get_hinting_flag())  # angle 0: the bitmap is rotated when blitted
            w, h = font.get_width_height()
            font.draw_glyphs_to_bitmap(antialiased=antialiased)
            xo, yo = font.get_bitmap_offset()
            # a copy: the font's bitmap is overwritten by the next string
            entry = _fresh[name] = textstore.Entry(stamp, (w / 64.0, h / 64.0, font.get_descent() / 64.0,
                                                           xo / 64.0, yo / 64.0), np.array(font.get_image()))
        w, h, descent, xo, yo = entry.numbers
        return _kept(_strings, key, ((w, h, descent), Raster(entry.image, xo, yo, descent)))

    def get_text_width_height_descent(self, s: str, prop: FontProperties, ismath: bool | str
                                      ) -> tuple[float, float, float]:
        if ismath:
            return super().get_text_width_height_descent(s, prop, ismath)
        # text is measured before it is drawn: the bitmap made now, as Text draws by default
        return self._string(s, prop, bool(mpl.rcParams["text.antialiased"]))[0]

    def _get_font_height_metrics(self, prop: FontProperties) -> tuple[float | None, float | None, float | None]:
        """The font's ascent, descent and line gap at this size (pixels), what matplotlib
        3.11's Text layout reads from the font's OS/2 or hhea table for every text it lays
        out (which matplotlib asks a renderer for first); kept per font and size."""
        key = _key("", prop, self.dpi)
        if (hit := _heights.get(key)) is not None:
            return hit
        font = self._prepare_font(prop)
        scale = prop.get_size_in_points() * self.dpi / 72 / font.get_sfnt_table("head")["unitsPerEm"]
        found: tuple[float | None, float | None, float | None] = (None, None, None)  # matplotlib measures then
        for table_name, gap, ascent, descent in (("OS/2", "sTypoLineGap", "sTypoAscender", "sTypoDescender"),
                                                  ("hhea", "lineGap", "ascent", "descent")):
            if (table := font.get_sfnt_table(table_name)) is not None:
                found = (table[ascent] * scale, -table[descent] * scale, table[gap] * scale)
                break
        return _kept(_heights, key, found)

    def draw_text(self, gc: Any, x: float, y: float, s: str, prop: FontProperties, angle: float,
                  ismath: bool | str = False, mtext: Any = None) -> None:
        if ismath or not s:
            return super().draw_text(gc, x, y, s, prop, angle, ismath, mtext)
        r = self._string(s, prop, bool(gc.get_antialiased()))[1]
        x = round(x + r.x_offset + r.descent * sin(radians(angle)))
        y = round(y + r.y_offset + r.descent * cos(radians(angle)))
        self._renderer.draw_text_image(r.image, x, y + 1, angle, gc)


Job = Callable[[], Any]
_encoder: ContextVar[tuple[ThreadPoolExecutor, list[tuple[Future, Job]]] | None] = ContextVar("encoder",
                                                                                              default=None)


def _here(job: Job) -> Future:
    done: Future = Future()
    try:
        done.set_result(job())
    except BaseException as e:  # kept for the caller, as the thread's future keeps it
        done.set_exception(e)
    return done


@contextmanager
def writing() -> Iterator[None]:
    """The PNG files of the figures saved inside are encoded on one thread, behind the
    drawing; all of them are written (or the first failure raised) when the block ends.
    When it ends, this thread encodes what the other has not started, from the last back,
    as the other goes on from the first: the drawing is done, and an encode on the other
    thread takes 2-4x its CPU time while this one draws (it waits for the GIL). Nested
    blocks share the outermost's thread."""
    if _encoder.get() is not None:
        yield
        return
    pool, jobs = ThreadPoolExecutor(1, thread_name_prefix="initlab-png"), []
    token = _encoder.set((pool, jobs))
    try:
        yield
    finally:
        _encoder.reset(token)
        done = {id(future): _here(job) for future, job in reversed(jobs) if future.cancel()}
        pool.shutdown(wait=True)
    for future, _ in jobs:
        done.get(id(future), future).result()
    keep_on_disk()


class Canvas(FigureCanvasAgg):
    """FigureCanvasAgg with `Renderer`; savefig uses it for PNG (and the other raster
    formats), SVG and PDF go to their own backends as before."""

    def print_png(self, filename_or_obj: Any, *, metadata: dict[str, str] | None = None,
                  pil_kwargs: dict[str, Any] | None = None, **_figure_settings: Any) -> None:
        """matplotlib's print_png (draw, then Pillow encodes the pixels), the encoding on
        `writing()`'s thread when there is one and the target is a file name. print_figure
        hands a third party's method its dpi, colours etc. too: set on the figure already."""
        encoder = _encoder.get()
        if encoder is None or not isinstance(filename_or_obj, (str, PathLike)):
            return super().print_png(filename_or_obj, metadata=metadata, pil_kwargs=pil_kwargs)
        FigureCanvasAgg.draw(self)
        pixels = np.array(self.buffer_rgba())  # a copy: the figure may be drawn again
        pool, jobs = encoder
        job = functools.partial(matplotlib.image.imsave, filename_or_obj, pixels, format="png", origin="upper",
                                dpi=self.figure.dpi, metadata=metadata, pil_kwargs=pil_kwargs)
        jobs.append((pool.submit(job), job))

    def get_renderer(self) -> RendererAgg:
        w, h = self.get_width_height(physical=True)
        key = (w, h, self.figure.dpi)
        if getattr(self, "_renderer_key", None) != key:
            self.renderer = Renderer(w, h, self.figure.dpi)
            self._renderer_key = key
        return self.renderer


def attach(fig: Figure) -> Figure:
    """Draw and write `fig` with `Canvas` (whole strings; PNGs behind the drawing inside
    `writing()`) when this matplotlib has the whole-string calls; else as matplotlib does."""
    if WHOLE_STRINGS:
        Canvas(fig)
    return fig
