"""PNG figures encoded on a thread while the next figure is drawn.

Inside `writing()` (a set of figures: plot_run, plot_sweep) a figure saved as PNG is drawn
by matplotlib's Agg canvas as usual, and its pixels are handed to a thread that encodes them
with Pillow (whose compressor releases the GIL) while this thread draws the next figure.
What that thread has not started when the set is drawn is encoded here, beside it. Only
public API: `FigureCanvasAgg.print_png`, `buffer_rgba` and `matplotlib.image.imsave`.
"""

import functools
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from os import PathLike
from typing import Any

import matplotlib.image
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

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


class Canvas(FigureCanvasAgg):
    """FigureCanvasAgg whose PNGs are encoded on `writing()`'s thread when there is one; SVG
    and PDF go to their own backends as before."""

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


def attach(fig: Figure) -> Figure:
    """Draw and write `fig` with `Canvas` (PNGs behind the drawing inside `writing()`)."""
    Canvas(fig)
    return fig
