"""How initlab writes its PNG figures (initlab/report/plots/encoder.py): encoded on a thread behind
the drawing of the next figure. What is drawn must not change."""

from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from initlab.report.plots import base
from initlab.report.plots import encoder as agg


def test_a_figure_saved_behind_is_matplotlibs_own_pixels(tmp_path: Path) -> None:
    """The canvas draws as matplotlib's Agg canvas does: the same pixels, byte for byte."""
    def pixels(canvas_type: type) -> np.ndarray:
        fig = Figure(figsize=(4, 3))
        canvas = canvas_type(fig)
        ax = fig.add_subplot()
        ax.plot([0, 1, 2], [1, 10, 100], label="features.4")
        ax.set_title("conv4 (relu) · init=default")
        ax.legend()
        canvas.draw()
        return np.asarray(canvas.buffer_rgba()).copy()

    assert np.array_equal(pixels(agg.Canvas), pixels(FigureCanvasAgg))


def test_pngs_encoded_behind_are_whole_and_failures_raised(tmp_path: Path) -> None:
    def one(path: Path) -> Path:
        fig, axes = base.figure(1, 1)
        axes[0][0].plot([0, 1], [0, 1])
        return base.save(fig, path, "t")

    with agg.writing():
        paths = [one(tmp_path / f"f{i}") for i in range(3)]
        with agg.writing():  # nested: the outer block waits for it
            paths.append(one(tmp_path / "nested"))
    sync = one(tmp_path / "sync")
    assert sync.exists()  # outside a block, written before save returns
    with Image.open(sync) as im:
        expected = np.asarray(im)
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "PNG"
            assert np.array_equal(np.asarray(im), expected)  # decodes whole, the same pixels
    with pytest.raises(FileNotFoundError), agg.writing():
        one(tmp_path / "no such dir" / "f")


def test_pngs_the_thread_has_not_started_are_encoded_when_the_block_ends(tmp_path: Path, monkeypatch) -> None:
    """The drawing done, the block's own thread encodes what the encoder has not started, the
    last first, while the encoder finishes its own; the files are the same, and a failure there
    is raised as one on the encoder is."""
    import threading

    import matplotlib.image

    imsave, here, busy = matplotlib.image.imsave, [], threading.Event()

    def slow_first(fname, *args, **kwargs):
        if threading.current_thread() is threading.main_thread():
            here.append(Path(fname).name)
        elif not busy.is_set():  # the encoder's first: held until this thread has taken the rest
            busy.set()
            for _ in range(200):
                if len(here) == 2:
                    break
                threading.Event().wait(0.05)
        return imsave(fname, *args, **kwargs)

    monkeypatch.setattr(matplotlib.image, "imsave", slow_first)

    def one(path: Path) -> Path:
        fig, axes = base.figure(1, 1)
        axes[0][0].plot([0, 1], [0, 1])
        return base.save(fig, path, "t")

    with agg.writing():
        paths = [one(tmp_path / "f0")]
        busy.wait(10)
        paths += [one(tmp_path / f"f{i}") for i in (1, 2)]
    assert here == ["f2.png", "f1.png"]
    with Image.open(paths[0]) as im:
        expected = np.asarray(im)
    for p in paths:
        with Image.open(p) as im:
            assert np.array_equal(np.asarray(im), expected)
    here.clear()
    busy.clear()
    with pytest.raises(FileNotFoundError), agg.writing():
        one(tmp_path / "f3")
        busy.wait(10)
        one(tmp_path / "no such dir" / "f")
        one(tmp_path / "f4")
    assert here == ["f4.png", "f.png"] and (tmp_path / "f4.png").exists()
