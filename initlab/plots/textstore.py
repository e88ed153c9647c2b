"""The strings initlab's canvas laid out (initlab/plots/agg.py), kept on disk from one process
to the next.

Laying a string out costs ~0.3 ms in matplotlib 3.11's FreeType layer: the default study's
first figures in a process lay out 128 strings, ~65 ms of ~0.55 s, and the next run's
figures write the same tick labels, axis names and titles. So their bitmaps and metrics are
kept in one file in matplotlib's cache directory (where it keeps its font list), one file
per matplotlib and FreeType version. An entry is used only with the font file it was laid
out with, unchanged (path, size and modification time). The file is read at the first
string a process lays out, and what a set of figures added is written back once the set is
drawn, by replacing the file whole (another process reads the old file or the new one,
never part of one). A file that cannot be read is no store (it is replaced); one that
cannot be written leaves the figures as they are."""

import json
import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import NamedTuple

import matplotlib as mpl
import numpy as np
from matplotlib import ft2font

log = logging.getLogger(__name__)

VERSION = 1  # of this file's layout
KEPT = 2_000  # entries kept on disk (the default study's figures: 128; a title is ~10 kB)


class Entry(NamedTuple):
    """A laid-out string: the font file it was laid out with, its numbers (width, height,
    descent, and the bitmap's offsets: initlab.plots.agg), and its coverage bitmap."""
    font: str
    numbers: tuple[float, ...]
    image: np.ndarray


def path() -> Path:
    return Path(mpl.get_cachedir()) / (
        f"initlab-text-v{VERSION}-mpl{mpl.__version__}-ft{ft2font.__freetype_version__}.npz")


def font_stamp(fname: str) -> str:
    """A font file as an entry names it: its path, size and modification time."""
    try:
        st = os.stat(fname)
    except OSError:
        return json.dumps([fname])
    return json.dumps([fname, st.st_size, st.st_mtime_ns])


def read(where: Path) -> dict[str, Entry]:
    """The entries kept at `where`, by key; none when there is no such file or it is not one
    of these."""
    try:
        with np.load(where, allow_pickle=False) as z:
            keys, fonts, numbers, shapes, pixels = (z[k] for k in ("keys", "fonts", "numbers", "shapes", "pixels"))
        sizes = shapes.prod(axis=1)
        ends = np.cumsum(sizes)
        if len({len(keys), len(fonts), len(numbers), len(shapes)}) > 1 or (len(ends) and ends[-1] != len(pixels)):
            raise ValueError("entries of unequal length")
        return {str(k): Entry(str(f), tuple(n.tolist()), pixels[e - s:e].reshape(shape))
                for k, f, n, shape, s, e in zip(keys, fonts, numbers, shapes, sizes, ends)}
    except FileNotFoundError:
        return {}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
        log.debug("text store %s unreadable (%s): starting a new one", where, e)
        return {}


def write(where: Path, entries: dict[str, Entry]) -> None:
    """Replace the file at `where` with `entries` (the last KEPT of them)."""
    kept = list(entries.items())[-KEPT:]
    tmp = None
    try:
        where.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=where.parent, prefix=where.stem + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, keys=np.array([k for k, _ in kept], dtype=str),
                     fonts=np.array([e.font for _, e in kept], dtype=str),
                     numbers=np.array([e.numbers for _, e in kept], dtype=float).reshape(len(kept), -1),
                     shapes=np.array([e.image.shape for _, e in kept], dtype=np.int64).reshape(len(kept), 2),
                     pixels=np.concatenate([e.image.ravel() for _, e in kept] or [np.zeros(0, np.uint8)]))
        os.replace(tmp, where)
    except OSError as e:  # a read-only or full cache: the figures are written all the same
        log.debug("text store %s not written: %s", where, e)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
