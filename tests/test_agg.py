"""How initlab writes its PNG figures (initlab/plots/agg.py): text a string at a time, kept
per string, and PNGs encoded behind the drawing. What is drawn must not change."""

from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from initlab.plots import agg, base, textstore

pytestmark = pytest.mark.skipif(not agg.WHOLE_STRINGS, reason="this matplotlib lacks the whole-string calls")

TEXTS = [  # (string, size, rotation): tick labels, rotated layer names, titles, the symbols initlab writes
    ("0.0001", 7, 0), ("features.4", 7, 30), ("activation std", 10, 90),
    ("conv4 (relu) · init=default · norm=none", 10, 0), ("≤-1e+06 × 5", 9, 0),
]


def _ink(canvas_type: type, text: str, size: float, rotation: float) -> np.ndarray:
    fig = Figure(figsize=(4, 3))
    canvas = canvas_type(fig)
    fig.text(0.3, 0.4, text, fontsize=size, rotation=rotation)
    canvas.draw()
    return 255 - np.asarray(canvas.buffer_rgba())[..., :3].mean(axis=2)


@pytest.mark.parametrize("text,size,rotation", TEXTS)
def test_a_string_lands_where_matplotlib_draws_it(text: str, size: float, rotation: float) -> None:
    ours, theirs = _ink(agg.Canvas, text, size, rotation), _ink(FigureCanvasAgg, text, size, rotation)
    assert theirs.sum() > 0
    assert ours.sum() == pytest.approx(theirs.sum(), rel=0.05)  # the same glyphs, antialiased alike

    def box(ink: np.ndarray) -> np.ndarray:
        rows, cols = np.nonzero(ink > 64)
        return np.array([rows.min(), rows.max(), cols.min(), cols.max()])

    assert np.abs(box(ours) - box(theirs)).max() <= 1  # at most a pixel away: whole-pixel placement


def test_a_string_is_laid_out_once(monkeypatch) -> None:
    """One FreeType layout per string for its metrics and its bitmap, one font-height lookup
    per font size, nothing again in a later figure."""
    calls, drawn = [], set()
    prepare, draw_text = agg.Renderer._prepare_font, agg.Renderer.draw_text
    monkeypatch.setattr(agg.Renderer, "_prepare_font", lambda self, prop: calls.append(prop) or prepare(self, prop))
    monkeypatch.setattr(agg.Renderer, "draw_text", lambda self, gc, x, y, s, prop, *a, **kw: drawn.add(
        (s, prop.get_size_in_points())) or draw_text(self, gc, x, y, s, prop, *a, **kw))
    monkeypatch.setattr(agg, "_strings", {})
    monkeypatch.setattr(agg, "_heights", {})
    monkeypatch.setattr(agg, "_stored", {})  # nothing on disk
    monkeypatch.setattr(agg, "_fresh", {})

    def draw() -> None:
        fig, axes = base.figure(1, 2)
        for ax in axes.flat:
            ax.plot([0, 1, 2], [1, 10, 100])
            ax.set_title("the same title")
        fig.canvas.draw()

    draw()
    first = len(calls)
    assert first <= len(drawn) + len({size for _, size in drawn})
    draw()
    assert first > 0 and len(calls) == first  # the second figure's strings were all kept


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


def test_without_the_whole_string_calls_matplotlib_draws(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(agg, "WHOLE_STRINGS", False)
    fig, axes = base.figure(1, 1)
    assert not isinstance(fig.canvas, agg.Canvas)
    axes[0][0].plot([0, 1], [0, 1])
    with agg.writing():
        path = base.save(fig, tmp_path / "f", "t")
    with Image.open(path) as im:
        assert im.format == "PNG"


def _figure_pixels(path: Path | None = None) -> np.ndarray:
    fig, axes = base.figure(1, 2)
    for ax in axes.flat:
        ax.plot([0, 1, 2], [1, 10, 100])
        ax.set_title("kept from one process to the next")
    if path is not None:
        base.save(fig, path)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba()).copy()


@pytest.fixture
def new_process(tmp_path: Path, monkeypatch) -> Path:
    """A store file of its own, and the process's strings forgotten (as in a new process)."""
    where = tmp_path / "store" / "text.npz"
    monkeypatch.setattr(textstore, "path", lambda: where)
    for name, empty in (("_strings", {}), ("_stored", None), ("_fresh", {})):
        monkeypatch.setattr(agg, name, empty)
    return where


def _forget() -> None:
    agg._strings.clear()
    agg._stored = None


def test_strings_kept_on_disk_are_not_laid_out_again(new_process: Path, tmp_path: Path) -> None:
    with agg.writing():
        first = _figure_pixels(tmp_path / "a")
    kept = textstore.read(new_process)
    assert len(kept) >= 5 and not agg._fresh  # tick labels and the title, written when the set was drawn
    _forget()
    assert np.array_equal(_figure_pixels(), first)  # the same pixels from the stored bitmaps
    assert agg._fresh == {}  # and nothing laid out again


def test_a_changed_font_file_lays_its_strings_out_again(new_process: Path, tmp_path: Path, monkeypatch) -> None:
    with agg.writing():
        first = _figure_pixels(tmp_path / "a")
    _forget()
    stamp = textstore.font_stamp
    monkeypatch.setattr(textstore, "font_stamp", lambda fname: stamp(fname) + " (changed)")
    assert np.array_equal(_figure_pixels(), first)
    assert len(agg._fresh) >= 5  # every string again: the stored ones name the font as it was


@pytest.mark.parametrize("content", [b"", b"not a zip file", b"PK\x03\x04 a broken zip"])
def test_an_unreadable_store_is_replaced(new_process: Path, tmp_path: Path, content: bytes) -> None:
    new_process.parent.mkdir(parents=True)
    new_process.write_bytes(content)
    with agg.writing():
        _figure_pixels(tmp_path / "a")
    assert (tmp_path / "a.png").exists() and len(textstore.read(new_process)) >= 5


def test_a_store_that_cannot_be_written_leaves_the_figures(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "a file").write_text("")
    monkeypatch.setattr(textstore, "path", lambda: tmp_path / "a file" / "text.npz")  # under a file: no directory
    for name, empty in (("_strings", {}), ("_stored", None), ("_fresh", {})):
        monkeypatch.setattr(agg, name, empty)
    with agg.writing():
        _figure_pixels(tmp_path / "b")
    assert (tmp_path / "b.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a file", "b.png"]  # no temporary file left


def test_the_store_keeps_its_last_entries(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(textstore, "KEPT", 3)
    entries = {f"k{i}": textstore.Entry("font", (1.0, 2.0, 0.5, 0.0, 3.0), np.full((2, i + 1), i, np.uint8))
               for i in range(5)}
    textstore.write(tmp_path / "t.npz", entries)
    back = textstore.read(tmp_path / "t.npz")
    assert list(back) == ["k2", "k3", "k4"]
    assert all(np.array_equal(back[k].image, entries[k].image) and back[k] == entries[k]._replace(image=back[k].image)
               for k in back)
