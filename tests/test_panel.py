"""The axes initlab's figures are made of (initlab/plots/panel.py): ticks after an axis' first
are copies of it, and the figures are the pixels matplotlib's own ticks draw."""

from pathlib import Path

import numpy as np
import pytest
from matplotlib.axis import XTick, YTick

from initlab.plots import base, panel


def _figure() -> object:
    """Every kind of axis initlab draws: linear, log (plain labels), symlog steps, layer names
    rotated, fixed histogram bins, shared x, grids on both, one and no axis; and minor ticks."""
    steps = np.array([0, 1, 2, 5, 10, 20, 50, 100, 200, 300.0])
    fig, axes = base.figure(1, 3, sharex=True)
    linear, log, symlog = axes[0]
    linear.plot(steps, np.sin(steps / 40), marker="o")
    log.plot(steps, 10.0 ** (steps / 60))
    base.log_axis(log)
    symlog.plot(steps, steps / 300)
    for ax in axes[0]:
        base.step_axis(ax, steps)
    fig2, row = base.figure(1, 2, grid="x")
    names, bins = row[0]
    names.plot(range(4), [1, 0.5, 0.25, 0.1])
    _layer_axis().label(names)
    bins.plot([0, 40], [0, 1])
    bins.xaxis.set_major_locator(base.FixedLocator([0.5, 10, 20, 39.5]))
    bins.tick_params(axis="x", labelsize=7)
    _, none = base.figure(1, 1, grid=None)
    none[0][0].plot([1, 2], [3, 4])
    none[0][0].minorticks_on()  # minor ticks: copied from the axis' first minor one
    return [fig, fig2, none[0][0].figure]


def _layer_axis() -> base.LayerAxis:
    import pandas as pd

    rows = pd.DataFrame({"layer_idx": [0, 1, 2, 3], "layer": ["features.0", "features.2", "classifier", "head"],
                         "module_type": ["Conv2d", "Conv2d", "Linear", "Linear"]})
    return base.LayerAxis(rows)


def _pixels(figs) -> list[np.ndarray]:
    out = []
    for fig in figs:
        fig.canvas.draw()
        out.append(np.asarray(fig.canvas.buffer_rgba()).copy())
    return out


@pytest.fixture
def built(monkeypatch) -> dict[str, int]:
    """How many ticks matplotlib builds (Tick.__init__), by axis kind."""
    counts = {"x": 0, "y": 0}
    for cls, key in ((XTick, "x"), (YTick, "y")):
        init = cls.__init__

        def counted(self, *args, _init=init, _key=key, **kwargs):
            counts[_key] += 1
            _init(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", counted)
    return counts


def test_copied_ticks_draw_what_built_ticks_draw(monkeypatch) -> None:
    copied = _pixels(_figure())
    monkeypatch.setattr(panel, "COPY_TICKS", False)
    assert all(np.array_equal(a, b) for a, b in zip(copied, _pixels(_figure())))


def test_only_an_axis_first_ticks_are_built(built: dict[str, int], monkeypatch) -> None:
    figs = _figure()
    _pixels(figs)
    axes = [ax for fig in figs for ax in fig.axes]
    drawn = sum(len(axis.majorTicks) + len(axis.minorTicks) for ax in axes for axis in (ax.xaxis, ax.yaxis))
    assert len(axes[-1].yaxis.minorTicks) > 1
    # the first major and minor tick of each axis, no more, though the axes hold many
    assert built["x"] + built["y"] <= 4 * len(axes) < drawn
    monkeypatch.setattr(panel, "COPY_TICKS", False)
    built["x"] = built["y"] = 0
    _pixels(_figure())
    assert built["x"] + built["y"] >= drawn  # matplotlib builds every one


def test_a_copied_tick_is_a_tick_of_its_own() -> None:
    fig, axes = base.figure(1, 1)
    ax = axes[0][0]
    ax.plot([0, 10], [0, 10])
    fig.canvas.draw()
    first, copy = ax.xaxis.majorTicks[0], ax.xaxis.majorTicks[2]
    assert copy is not first and all(getattr(copy, p) is not getattr(first, p) for p in panel.PARTS)
    assert copy.label1.get_text() != first.label1.get_text()  # each at its own place, with its label
    copy.label1.set_fontsize(20)
    copy.tick1line.set_markeredgecolor("red")
    assert first.label1.get_fontsize() != 20 and first.tick1line.get_markeredgecolor() != "red"
    assert not ax.stale
    copy.stale = True  # a change to a tick is the axes' change
    assert ax.stale
    seen = []
    copy.label1.add_callback(lambda artist: seen.append(artist))
    first.label1.set_alpha(0.5)  # a property changed: its artist's callbacks called
    copy.label1.set_alpha(0.5)
    assert seen == [copy.label1]  # a callback is its artist's only
    ax.tick_params(axis="x", labelsize=5, colors="green")  # what applies to an axis applies to each of its ticks
    fig.canvas.draw()
    assert {t.label1.get_fontsize() for t in ax.xaxis.majorTicks} == {5}
    assert {t.tick1line.get_markeredgecolor() for t in ax.xaxis.majorTicks} == {"green"}


def test_a_tick_holding_more_than_a_copy_knows_is_built(built: dict[str, int]) -> None:
    fig, axes = base.figure(1, 1)
    ax = axes[0][0]
    ax.plot([0, 10], [0, 10])
    ax.xaxis.majorTicks[0].label1.extra = []  # a mutable value the copy would share
    assert not panel.copyable(ax.xaxis.majorTicks[0])
    before = built["x"]
    fig.canvas.draw()
    assert built["x"] - before == len(ax.xaxis.majorTicks) - 1  # built as matplotlib builds them
    assert not any(hasattr(t.label1, "extra") for t in ax.xaxis.majorTicks[1:])


def test_a_run_figures_are_the_same_with_copied_ticks(tmp_path: Path, run, monkeypatch) -> None:
    from PIL import Image

    from initlab.plots import plot_run
    from initlab.store import load_run

    _, run_dir = run("train.steps=30", "telemetry=full", "plots=false")
    data = load_run(run_dir)
    files = {}
    for copy in (True, False):
        monkeypatch.setattr(panel, "COPY_TICKS", copy)
        files[copy] = plot_run(data.stats, data.metrics, data.config, tmp_path / str(copy), data.hist)
    assert len(files[True]) >= 7
    for a, b in zip(files[True], files[False]):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))), a.name
