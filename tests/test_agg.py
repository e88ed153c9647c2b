"""How initlab writes its PNG figures (initlab/plots/agg.py): text a string at a time, kept
per string, and PNGs encoded behind the drawing. What is drawn must not change."""

from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from initlab.plots import agg, base

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


def test_without_the_whole_string_calls_matplotlib_draws(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(agg, "WHOLE_STRINGS", False)
    fig, axes = base.figure(1, 1)
    assert not isinstance(fig.canvas, agg.Canvas)
    axes[0][0].plot([0, 1], [0, 1])
    with agg.writing():
        path = base.save(fig, tmp_path / "f", "t")
    with Image.open(path) as im:
        assert im.format == "PNG"
