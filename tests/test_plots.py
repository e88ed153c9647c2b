"""Figures: what their axes say (values, steps), and only the figures a run has data for."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from initlab.report.plots import base
from initlab.report.plots import run as plots
from initlab.rundir.store import load_run


@pytest.fixture
def drawn(monkeypatch) -> dict[str, object]:
    """The figures the plot functions save, by file stem, kept open for inspection."""
    figs: dict[str, object] = {}
    original = base.save

    def keep(fig, path: Path, title=None, fmt="png"):
        figs[path.stem] = fig
        return original(fig, path, title, fmt)

    monkeypatch.setattr(plots, "save", keep)
    return figs


def _labels(axis) -> list[str]:
    axis.figure.canvas.draw()  # tick labels exist once drawn
    return [t.get_text() for t in axis.get_ticklabels() if t.get_text()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 60-step run with histograms: log-spaced logged steps, as the default schedule logs."""
    from initlab.app.study import run_study
    from tests.conftest import SHRINK, compose_cfg

    run_dir = tmp_path_factory.mktemp("trained")
    run_study(compose_cfg([*SHRINK, "train.steps=60", "telemetry=full"]), run_dir)
    return run_dir


def test_histogram_axes_are_values_and_steps_not_indices(trained: Path, drawn, tmp_path: Path) -> None:
    run = load_run(trained)
    plots.plot_run(run.stats, run.metrics, run.config, tmp_path, run.hist)
    ridge = drawn["hist_first_last"].axes[0]
    labels = _labels(ridge.xaxis)
    values = [t for t in labels if t[0] not in "≤≥"]  # the overflow bins are named by their bound
    assert "0" in values and all(float(t) == 0 or round(np.log10(abs(float(t))), 6).is_integer() for t in values)
    assert values == sorted(values, key=float) and len(values) <= 7  # decades in value order, thinned
    assert "value" in ridge.get_xlabel()
    image = drawn["act_hist_image"].axes[0]
    assert image.get_xscale() == "symlog"  # steps 0..59, logged log-spaced
    x = image.collections[0].get_coordinates()[..., 0]
    steps = np.sort(run.hist["step"].unique())
    assert x.min() == pytest.approx(steps[0] - 0.5) and x.max() == pytest.approx(steps[-1] + 0.5)
    assert "0" in _labels(image.yaxis)
    fig = drawn["act_hist_image"]
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]  # only the panels drawn, ticks on the outer ones only
    (bar,) = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]  # one colour bar reads every panel
    assert "log(1 + count)" in bar.get_title(loc="right")
    assert {p.collections[0].get_clim() for p in panels} == {(0.0, max(float(np.max(p.collections[0].get_array()))
                                                                        for p in panels))}
    cols = 4 if len(panels) >= 4 else len(panels)
    assert len(panels) == min(base.MAX_LINES, run.hist.query("kind == 'act'")["layer_idx"].nunique())
    for i, ax in enumerate(panels):
        assert ax.get_xlim() == panels[-1].get_xlim() and ax.get_ylim() == panels[0].get_ylim()
        assert bool(_labels(ax.xaxis)) == (i + cols >= len(panels)), i  # nothing below: step ticks
        assert bool(_labels(ax.yaxis)) == (i % cols == 0), i  # first of its row: value ticks
    names = [t.get_text() for t in drawn["telemetry"].axes[0].get_legend().get_texts()]
    assert names and all(n.endswith(")") and "(" in n for n in names), names  # "3: layers.3 (ReLU)"
    for name in ("telemetry", "dead", "update_ratio"):
        ax = drawn[name].axes[0]
        assert ax.get_xscale() == "symlog" and ax.get_xlim()[0] >= -0.5, name
    # what is drawn is the table's counts: a panel's cells, log(1 + count) at (bin, step); the
    # ridges, each histogram's share per bin scaled to the layer's peak
    act = run.hist[run.hist["kind"] == "act"]
    idx = int(panels[1].get_title().split(":")[0])
    cells = np.asarray(panels[1].collections[0].get_array()).reshape(-1, len(steps))
    first = int(panels[1].get_ylim()[0])
    for r in act[act["layer_idx"] == idx].sample(20, random_state=0).itertuples():
        assert cells[r.bin - first, np.searchsorted(steps, r.step)] == pytest.approx(np.log1p(r.count))
    solid, dashed = ridge.collections[0].get_segments(), ridge.collections[1].get_segments()  # first, last step
    lo = int(solid[1][0, 0])  # the first bin edge drawn

    def heights(line: np.ndarray) -> np.ndarray:  # a ridge's height over each bin, from its baseline
        return line[1:-1:2, 1] - line[0, 1]

    tallest = max(heights(solid[1]).max(), heights(dashed[1]).max())
    assert tallest == pytest.approx(0.9)  # row 1 (the second picked layer) scaled to its own peak
    at_first = act[(act["step"] == steps[0]) & (act["layer_idx"] == idx)]
    expected = np.zeros(len(heights(solid[1])))
    expected[at_first["bin"].to_numpy() - lo] = at_first["count"].to_numpy()
    assert heights(solid[1]) / heights(solid[1]).max() == pytest.approx(expected / expected.max())


def test_a_loss_within_a_decade_stays_linear_and_labelled(trained: Path, drawn, tmp_path: Path) -> None:
    run = load_run(trained)
    plots.plot_metrics(run.metrics, "t", tmp_path / "metrics")
    ax = drawn["metrics"].axes[0]
    assert ax.get_yscale() == "linear" and len(_labels(ax.yaxis)) >= 3
    diverging = pd.DataFrame({"step": np.arange(50), "loss": np.geomspace(2.3, 6.6e25, 50)})
    plots.plot_metrics(diverging, "t", tmp_path / "metrics")
    ax = drawn["metrics"].axes[0]
    labels = _labels(ax.yaxis)  # decades as plain numbers (matplotlib < 3.8 labels every fourth)
    assert ax.get_yscale() == "log" and any(t.startswith("1e+2") for t in labels) and not any("$" in t for t in labels)


def test_a_probe_draws_no_curves(run, tmp_path: Path) -> None:
    _, run_dir = run("train.steps=0", "plots=true")
    names = sorted(p.name for p in (run_dir / "plots").iterdir())
    assert names == ["grad_flow.png", "hist_first_last.png", "step0_std.png"]


def test_bin_ticks_are_symmetric_decades_around_zero() -> None:
    from initlab.telemetry.hist import HistSpec

    spec = HistSpec()
    lo, hi = spec.bounds()
    axis = base.BinAxis(np.arange(spec.n_bins), lo, hi)
    pos, labels = axis.ticks(0, spec.n_bins - 1)
    assert pos == sorted(pos)
    assert labels[0] == "≤-1e+06" and labels[-1] == "≥1e+06"  # the overflow bins, by their bound
    inner = labels[1:-1]
    assert "0" in inner and len(inner) <= 7
    values = [float(t) for t in inner if t != "0"]
    assert sorted(values) == sorted(-v for v in values)  # the same decades either side


def test_sweep_loss_curves_survive_a_diverged_job_and_many_combinations(tmp_path: Path, monkeypatch) -> None:
    """12 combinations, one of them diverging to 1e25: the scale of the others (it leaves the top),
    twelve distinct colours, the diverged job marked, held-out points drawn, no warnings."""
    import warnings

    from initlab.report.plots import sweep

    figs = {}
    original = base.save
    monkeypatch.setattr(sweep, "save", lambda fig, path, title=None, fmt="png":
                        figs.setdefault(path.stem, fig) and original(fig, path, title, fmt))
    rows = []
    for j in range(12):
        job = tmp_path / str(j)
        job.mkdir()
        steps = np.arange(40)
        loss = np.geomspace(2.3, 6.6e25, 40) if j == 3 else 2.3 * np.exp(-steps / (20 + j))
        val = np.where(steps % 10 == 9, loss * 1.1, np.nan)
        pd.DataFrame({"step": steps, "loss": loss, "val_loss": val}).to_parquet(job / "metrics.parquet")
        rows.append({"path": str(job), "status": "diverged" if j == 3 else "ok", "final_loss": loss[-1],
                     "steps_done": 40, "diverged_step": 39 if j == 3 else np.nan, "lr": 0.1 * (j + 1)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        made = sweep.plot_sweep(pd.DataFrame(rows), ["lr"], tmp_path / "plots")
    assert [p.name for p in made] == ["grid_final_loss.png", "step0_std_overlay.png", "loss_curves.png"]
    ax = figs["loss_curves"].axes[0]
    assert ax.get_ylim()[1] < 3  # the scale of the jobs that trained: the 1e25 one leaves the top
    lines = [ln for ln in ax.get_lines() if ln.get_label() and not ln.get_label().startswith("_")]
    assert len(lines) == 12 and len({ln.get_color() for ln in lines}) == 12
    assert any("(1 diverged: dashed)" in ln.get_label() for ln in lines)
    assert sum(1 for ln in ax.get_lines() if ln.get_marker() == "o") == 11  # held-out, the combinations that trained
    assert [ln.get_linestyle() for ln in lines if "diverged" in ln.get_label()] == ["--"]  # the diverged job alone
    assert figs["grid_final_loss"].axes[0].get_title() == "final training loss"


def test_the_layer_axis_holds_what_the_user_chose(trained: Path, drawn, tmp_path: Path) -> None:
    """By default the conv/linear outputs, named; `all` every tracked module; a module type
    only those; a type the model lacks: every layer, and the axis says so."""
    run = load_run(trained)
    s0 = run.stats[(run.stats.step == 0) & (run.stats.kind == "act")].sort_values("layer_idx")
    weighted = s0[s0.module_type.isin(["Conv2d", "Linear"])]["layer"].tolist()
    plots.plot_step0(run.stats, "t", tmp_path / "step0_std")
    ax = drawn["step0_std"].axes[0]
    assert _labels(ax.xaxis) == weighted and ax.get_xlabel() == "conv/linear layer (forward order)"
    assert len(ax.get_lines()[0].get_xdata()) == len(weighted)
    plots.plot_step0(run.stats, "t", tmp_path / "step0_std", layers="ReLU")
    ax = drawn["step0_std"].axes[0]
    assert _labels(ax.xaxis) == s0[s0.module_type == "ReLU"]["layer"].tolist()
    plots.plot_step0(run.stats, "t", tmp_path / "step0_std", layers="all")
    assert len(drawn["step0_std"].axes[0].get_lines()[0].get_xdata()) == len(s0)
    plots.plot_step0(run.stats, "t", tmp_path / "step0_std", layers="LayerNorm")
    ax = drawn["step0_std"].axes[0]
    assert ax.get_xlabel() == "layer (forward order); no LayerNorm layer here"


@pytest.mark.parametrize("fmt,magic", [("svg", b"<svg"), ("pdf", b"%PDF")])
def test_plot_format_writes_vector_figures(trained: Path, tmp_path: Path, fmt: str, magic: bytes) -> None:
    from initlab.report.build import report_run
    from initlab.report.html import write_html

    made = report_run(trained, fmt=fmt)
    figs = [p for p in made if p.parent.name == "plots"]
    assert figs and all(p.suffix == f".{fmt}" and magic in p.read_bytes()[:4096] for p in figs)
    page = write_html(trained).read_text()
    assert page.count("image/svg+xml" if fmt == "svg" else "application/pdf") == len(figs)  # as images, not markup
    for p in figs:
        p.unlink()


def test_no_full_collection_while_drawing(trained: Path, monkeypatch, tmp_path: Path) -> None:
    """plot_run and plot_sweep start no full cycle collection while they draw (it walked the
    whole heap: 0.2 s of ~1 s of figures) and leave the collector as they found it, also when
    drawing fails. With INITLAB_SPEEDUPS=0 the collector is left alone throughout."""
    import gc

    from initlab.report.plots.sweep import plot_sweep
    from initlab.speedups import enabled
    from initlab.speedups.collector import NEVER

    seen: list[int] = []
    original = base.save

    def counting(fig, path: Path, title=None, fmt="png"):
        seen.append(gc.get_threshold()[2])
        return original(fig, path, title, fmt)

    monkeypatch.setattr(plots, "save", counting)
    run = load_run(trained)
    before = gc.get_threshold()
    paused = NEVER if enabled() else before[2]
    made = plots.plot_run(run.stats, run.metrics, run.config, tmp_path / "a", run.hist, run.probe)
    assert made and seen == [paused] * len(made)
    assert gc.get_threshold() == before

    def broken(*args, **kwargs):
        assert gc.get_threshold()[2] == paused
        raise RuntimeError("a figure failed")

    monkeypatch.setattr("initlab.report.plots.sweep._grid_final_loss", broken)
    with pytest.raises(RuntimeError):
        plot_sweep(pd.DataFrame({"status": ["ok"], "seed": [0], "path": [str(trained)]}), ["seed"], tmp_path / "s")
    assert gc.get_threshold() == before


def test_one_legend_names_every_line_the_panels_share(drawn, tmp_path: Path) -> None:
    steps = np.arange(10)
    metrics = pd.DataFrame({"step": steps, "loss": np.linspace(2.3, 2.0, 10), "accuracy": np.linspace(0.1, 0.3, 10),
                            "val_accuracy": np.where(steps % 5 == 4, 0.25, np.nan)})  # held-out: accuracy only
    plots.plot_metrics(metrics, "t", tmp_path / "metrics")
    legends = [ax.get_legend() for ax in drawn["metrics"].axes if ax.get_legend() is not None]
    assert len(legends) == 1 and legends[0].axes is drawn["metrics"].axes[0]
    assert [t.get_text() for t in legends[0].get_texts()] == ["train", "held-out"]
    held_out = [line for ax in drawn["metrics"].axes for line in ax.lines if line.get_label() == "held-out"]
    assert legends[0].get_lines()[1].get_color() == held_out[0].get_color()  # the legend's style is the line's


@pytest.mark.parametrize("ls", ["-", "--"])
def test_lines_drawn_as_one_collection_look_as_plotted(ls: str) -> None:
    """base.curves draws the pixels ax.plot draws: the same view (margins on a symlog step
    axis), gaps where a value is not finite, the same caps, joins and dashes; and its legend
    stand-ins carry each line's colour and label."""
    steps = np.array([0, 1, 2, 5, 10, 20, 50, 100, 200, 300.0])
    ys = [np.sin(steps / 40 + k) for k in range(4)]
    ys[1][3], ys[2][6] = np.nan, np.inf
    palette = base.colors("viridis", len(ys))

    def pixels(draw) -> np.ndarray:
        fig, axes = base.figure(1, 2, sharex=True)
        for ax in axes[0]:
            draw(ax)
            base.step_axis(ax, steps)
            ax.grid(alpha=0.3)
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba()).copy()

    plotted = pixels(lambda ax: [ax.plot(steps, y, color=c, lw=1, ls=ls) for y, c in zip(ys, palette)])
    collected = pixels(lambda ax: base.curves(ax, [(steps, y) for y in ys], palette, ls=ls))
    assert (plotted != collected).any(axis=-1).mean() < 0.001
    fig, axes = base.figure(1, 1)
    handles = base.curves(axes[0][0], [(steps, y) for y in ys], palette, [f"layer {k}" for k in range(4)])
    assert [h.get_label() for h in handles] == [f"layer {k}" for k in range(4)]
    assert [h.get_color() for h in handles] == palette


def test_ticks_are_built_for_the_view_only_and_draw_the_same(tmp_path: Path) -> None:
    """base.save keeps a locator's ticks outside the view from being built (InView): the
    figure's pixels are what the plain locators draw."""
    def make():
        fig, axes = base.figure(1, 2)
        linear, log = axes[0]
        linear.plot([0.3, 9.7], [0.13, 0.87])
        log.plot([1, 2, 3], [0.02, 3, 800])
        base.log_axis(log)
        return fig

    plain = make()
    plain.suptitle("t", fontsize=10)
    plain.canvas.draw()
    shown = make()
    base.save(shown, tmp_path / "f", "t")
    assert np.array_equal(np.asarray(plain.canvas.buffer_rgba()), np.asarray(shown.canvas.buffer_rgba()))

    def outside(fig) -> int:
        n = 0
        for ax in fig.axes:
            for axis in (ax.xaxis, ax.yaxis):
                lo, hi = sorted(axis.get_view_interval())
                slack = 1e-9 * (hi - lo)
                n += sum(not lo - slack <= t.get_loc() <= hi + slack for t in axis.majorTicks)
        return n

    assert outside(plain) > 0 and outside(shown) == 0


def test_the_layer_axis_places_the_chosen_layers_in_forward_order() -> None:
    """LayerAxis: the weighted layers at 0, 1, ...; rows of other layers left out; a row's
    columns kept with it; the first position at or after a layer (the non-finite marker)."""
    rows = pd.DataFrame({"layer_idx": [3, 0, 1, 2, 0], "layer": ["r2", "conv", "r1", "fc", "conv"],
                         "module_type": ["ReLU", "Conv2d", "ReLU", "Linear", "Conv2d"],
                         "std": [4.0, 1.0, 2.0, 3.0, 1.5]})
    axis = base.LayerAxis(rows)
    assert axis.names == ["conv", "fc"] and axis.which == "weighted"
    x, std = axis.place(rows, "std")
    assert x.tolist() == [0, 0, 1] and std.tolist() == [1.0, 1.5, 3.0]  # stable: a layer's rows in table order
    assert [axis.first_at_or_after(i) for i in (0, 1, 2, 3)] == [0, 1, 1, None]
    relu = base.LayerAxis(rows, "ReLU")
    assert relu.names == ["r1", "r2"] and relu.place(rows)[0].tolist() == [0, 1]
    missing = base.LayerAxis(rows, "LayerNorm")
    assert missing.which == "all" and missing.missing == "LayerNorm" and len(missing.names) == 4


def _diverged_step0(n: int = 40, bad_from: int = 20) -> pd.DataFrame:
    """Step 0 of a net whose activations grow 10x a layer and overflow at layer `bad_from`; no
    finite gradient (the loss was inf); a theory line that runs on to 1e40."""
    rows = []
    for i in range(n):
        act = 10.0 ** i if i < bad_from else np.inf
        rows.append(dict(step=0, kind="act", layer_idx=i, layer=f"layers.{i}", module_type="Linear", std=act,
                         nonfinite=0 if i < bad_from else 10, theory_std=10.0 ** i))
        rows.append(dict(step=0, kind="grad", layer_idx=i, layer=f"layers.{i}", module_type="Linear", std=np.nan,
                         nonfinite=10, theory_std=np.nan))
    return pd.DataFrame(rows)


def test_a_diverged_step0_keeps_its_scale_names_its_empty_panel_and_spans_the_depth(drawn, tmp_path: Path) -> None:
    """The 100-layer divergence figure: the theory no longer sets the scale (drawn within three decades
    of the measured), the gradient panel says it has nothing finite instead of a 0.95-1.05 axis, and
    the x axis spans every layer, past the divergence."""
    plots.plot_step0(_diverged_step0(), "t", tmp_path / "step0_std")
    act, grad = drawn["step0_std"].axes[:2]
    theory = [line for line in act.get_lines() if line.get_linestyle() == "--" and line.get_marker() == "x"]
    assert theory and max(theory[0].get_ydata()) <= 10.0 ** 19 * 1e3
    assert act.get_xlim() == (-0.5, 39.5) and act.get_yscale() == "log"
    assert not [ln for ln in grad.get_lines() if len(ln.get_xdata()) > 1]  # nothing drawn
    assert any("no finite grad std" in t.get_text() for t in grad.texts) and list(grad.get_yticks()) == []


def test_a_probe_of_several_inits_is_titled_by_them_and_draws_the_runs_own_theory(drawn, tmp_path: Path) -> None:
    per_draw = pd.DataFrame([dict(init=init, seed=seed, kind=kind, layer_idx=i, layer=f"l{i}", module_type="Linear",
                                  std=(1.0 if init == "kaiming" else 0.5 ** i) * (1 + 0.01 * seed))
                             for init in ("default", "kaiming") for seed in range(3) for kind in ("act", "grad")
                             for i in range(4)])
    theory = per_draw[(per_draw["init"] == "kaiming") & (per_draw["seed"] == 0)].assign(theory_std=1.0)
    plots.plot_probe(per_draw, theory, "mlp (relu) · init=kaiming · norm=none", tmp_path / "probe", own="kaiming")
    fig = drawn["probe"]
    assert any("init=default,kaiming" in t.get_text() for t in fig.findobj(lambda o: hasattr(o, "get_text")))
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "theory (the run's own draw, kaiming)" in labels and "default: mean over 3 seeds" in labels
