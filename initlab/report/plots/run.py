"""The figures of one run: statistics at step 0, telemetry over training, histograms,
gradient flow, update ratios, the probe's spread over weight draws, and the loss curves."""

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.ticker import NullLocator

from initlab.report.plots import base
from initlab.report.plots.base import (
    BinAxis,
    LayerAxis,
    colors,
    curves,
    drawing,
    each_layer,
    figure,
    legend,
    log_axis,
    panel_title,
    save,
    shared_legend,
    step_axis,
)
from initlab.report.plots.formats import plot_formats
from initlab.rundir.safe import own_dir


def title_of(config: dict[str, Any]) -> str:
    """'conv4 · init=default · norm=batch' from a run's config."""
    model = config.get("model", {}).get("arch") or config.get("model", {}).get("name", "?")
    act = config.get("model", {}).get("act")
    title = f"{model}" + (f" ({act})" if act else "")
    if "init" in config:
        title += f" · init={config['init'].get('name', '?')}"
    norm = {True: "batch", False: "none"}.get(config.get("bn"), (config.get("norm") or {}).get("name"))
    if norm and norm != "auto":  # auto: an external model's own
        title += f" · norm={norm}"
    return title


def _first_nonfinite_idx(df: pd.DataFrame) -> int | None:
    bad = df[(df["nonfinite"] > 0) | ~np.isfinite(df["std"])]
    return int(bad["layer_idx"].min()) if len(bad) else None


def _theory_line(ax: Axes, t: pd.DataFrame, axis: LayerAxis, label: str) -> None:
    """The predicted std per layer, dashed, where it is finite."""
    x, std = axis.place(t[np.isfinite(t["theory_std"]) & (t["theory_std"] > 0)], "theory_std")
    ax.plot(x, std, ls="--", color="black", lw=1, marker="x", ms=3, label=label)


def _within_reach(t: pd.DataFrame, lo: float, hi: float) -> pd.DataFrame:
    """The theory's rows within three decades of what was measured: a prediction running on to
    1e+124 past a diverged layer would set the scale and flatten the measurement."""
    return t[(t["theory_std"] > lo / 1e3) & (t["theory_std"] < hi * 1e3)]


def _nothing_finite(ax: Axes, kind: str, ylabel: str, axis: LayerAxis) -> None:
    """A panel whose every value is non-finite says so instead of drawing an empty 0.95-1.05 axis."""
    ax.text(0.5, 0.5, f"no finite {kind} std at step 0\n(the forward pass diverged)", ha="center", va="center",
            transform=ax.transAxes, color="red", fontsize=9)
    ax.set_yticks([])
    axis.label(ax)
    ax.set_ylabel(ylabel)


def _depth_axis(ax: Axes, ylabel: str, axis: LayerAxis) -> None:
    """Per-layer std against depth: log scale, the unit line dotted (and in the range the
    ticks are chosen for)."""
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    log_axis(ax)
    axis.label(ax)
    ax.set_ylabel(ylabel)


KINDS = (("act", "activation std"), ("grad", "gradient std (dL/d output)"))


def plot_step0(stats: pd.DataFrame, title: str, path: Path, fmt: str = "png", layers: str = "weighted"
               ) -> Path | None:
    """Per-layer activation and gradient std at init against depth, log scale."""
    s0 = stats[stats["step"] == stats["step"].min()]
    if s0.empty:
        return None
    axis = LayerAxis(s0[s0["kind"].isin(["act", "grad"])], layers)
    fig, axes = figure(1, 2, sharex=True, bottom=1.0, left=1.05)  # room for 1e+112 beside the label
    for ax, (kind, label) in zip(axes[0], KINDS):
        d = s0[s0["kind"] == kind]
        x, std = axis.place(d, "std")
        finite = np.isfinite(std) & (std > 0)
        if not finite.any():
            _nothing_finite(ax, kind, label, axis)
            continue
        ax.plot(x[finite], std[finite], marker="o", ms=3, lw=1.2, label="measured")
        if "theory_std" in d and d["theory_std"].notna().any():
            _theory_line(ax, _within_reach(d, std[finite].min(), std[finite].max()), axis,
                         "theory (mean field, actual weights)")
        _depth_axis(ax, label, axis)
        bad = _first_nonfinite_idx(d) if not d.empty else None
        x = axis.first_at_or_after(bad) if bad is not None else None
        if x is not None:
            name = d.loc[d["layer_idx"] == bad, "layer"].iloc[0]
            ax.axvline(x, color="red", ls="--", lw=1)
            ax.text(x, 0.95, f" non-finite from {name}", color="red",
                    transform=ax.get_xaxis_transform(), va="top", fontsize=8)
    if "theory_std" in s0 and s0["theory_std"].notna().any():  # measured alone needs no legend
        shared_legend(axes[0], fontsize=7, loc="best")  # two lines: finding the empty corner is cheap
    return save(fig, path, f"{title}: statistics at step 0", fmt)


def probe_spread(per_draw: pd.DataFrame) -> pd.DataFrame:
    """Per init scheme, layer and kind (act, grad) of a probe: mean, sd, min and max of the
    std over seeds."""
    d = per_draw[per_draw["kind"].isin(["act", "grad"])]
    if "init" not in d:
        d = d.assign(init="")
    order = {name: i for i, name in enumerate(dict.fromkeys(d["init"]))}  # as given, not alphabetical
    band = (d.groupby(["init", "kind", "layer_idx", "layer", "module_type"], sort=False)["std"]
            .agg(std_mean="mean", std_sd="std", std_min="min", std_max="max", seeds="count").reset_index())
    return band.sort_values(["init", "kind", "layer_idx"], key=lambda c: c.map(order) if c.name == "init" else c,
                            kind="stable", ignore_index=True)


def plot_probe(per_draw: pd.DataFrame, theory: pd.DataFrame | None, title: str, path: Path,
               fmt: str = "png", layers: str = "weighted", own: str | None = None) -> Path | None:
    """probe.seeds=N: per-layer std at init, mean over the seeds with the min-max band (one
    line per init scheme of probe.inits), beside the theory's prediction for the run's own
    draw (`own`: the run's init scheme; the theory reads the run's weights). The theory is drawn
    only within a few decades of what was measured: a prediction running to 1e+124 would set
    the scale; a panel with nothing finite says so."""
    if per_draw.empty:
        return None
    band = probe_spread(per_draw)
    n = int(per_draw["seed"].nunique())
    inits = list(dict.fromkeys(band["init"]))
    fig, axes = figure(1, 2, sharex=True, bottom=1.0, left=1.05)  # room for 1e+112 beside the label
    axis = LayerAxis(band, layers)
    for ax, (kind, label) in zip(axes[0], KINDS):
        finite = band[(band["kind"] == kind) & np.isfinite(band["std_mean"]) & (band["std_mean"] > 0)]
        for init, color in zip(inits, colors("tab10", 10)):
            x, mean, lo, hi = axis.place(finite[finite["init"] == init], "std_mean", "std_min", "std_max")
            name = f"{init}: " if len(inits) > 1 else ""
            ax.plot(x, mean, marker="o", ms=3, lw=1.2, color=color, label=f"{name}mean over {n} seeds")
            if n > 1:
                ax.fill_between(x, lo, hi, color=color, alpha=0.25, lw=0,
                                label=None if len(inits) > 1 else "min-max over seeds")
        if finite.empty:
            _nothing_finite(ax, kind, label, axis)
            continue
        if theory is not None and not theory.empty and (len(inits) == 1 or own in inits):
            t = _within_reach(theory[theory["kind"] == kind], finite["std_min"].min(), finite["std_max"].max())
            who = "seed of the run" if len(inits) == 1 else f"the run's own draw, {own}"
            _theory_line(ax, t, axis, f"theory ({who})")
        _depth_axis(ax, label, axis)
    shared_legend(axes[0], fontsize=7, loc="best")  # few lines: searching for the emptiest corner is cheap
    schemes = f" × {len(inits)} init schemes" if len(inits) > 1 else ""
    if len(inits) > 1:  # the run's title names its own init; the figure holds them all
        title = re.sub(r"init=[^ ]+", "init=" + ",".join(map(str, inits)), title)
    return save(fig, path, f"{title}: step 0 over {n} seeds{schemes}", fmt)


def _layers(d: pd.DataFrame) -> list[tuple[int, str]]:
    """The layers of a table (layer_idx, name) in forward order."""
    idx, names = each_layer(d, "layer")
    return list(zip(idx.tolist(), map(str, names)))


def _pick_layers(d: pd.DataFrame) -> list[tuple[int, str]]:
    """At most MAX_LINES layers, evenly spread over the depth, first and last included."""
    layers = _layers(d)
    keep = np.unique(np.linspace(0, len(layers) - 1, min(base.MAX_LINES, len(layers))).round().astype(int))
    return [layers[k] for k in keep]


def _by_layer(d: pd.DataFrame, picked: list[tuple[int, str]], columns: list[str]) -> list[dict[str, np.ndarray]]:
    """Each picked layer's steps and `columns`, as arrays in step order: one sort and one split
    of the table rather than a filter a layer (~0.5 ms each)."""
    idx, step = d["layer_idx"].to_numpy(), d["step"].to_numpy()
    order = np.lexsort((step, idx))
    idx, values = idx[order], {c: d[c].to_numpy()[order] for c in ("step", *columns)}
    wanted = [layer_idx for layer_idx, _ in picked]
    bounds = zip(np.searchsorted(idx, wanted, side="left"), np.searchsorted(idx, wanted, side="right"))
    return [{c: v[lo:hi] for c, v in values.items()} for lo, hi in bounds]


def plot_over_steps(stats: pd.DataFrame, title: str, path: Path, fmt: str = "png") -> Path | None:
    """fast.ai-style telemetry: per-layer mean, std and zero fraction over steps."""
    d = stats[stats["kind"] == "act"]
    if d["step"].nunique() < 2:
        return None
    fig, axes = figure(1, 3, (4.2, 3.2), sharex=True, wspace=0.6)
    picked = _pick_layers(d)
    rows = _by_layer(d, picked, ["mean", "std", "zero_frac"])
    palette = colors("viridis", len(picked))
    types = dict(zip(d["layer_idx"].to_numpy(), d["module_type"].to_numpy()))
    labels = [f"{idx}: {layer} ({types[idx]})" for idx, layer in picked]
    for ax, col in zip(axes[0], ("mean", "std", "zero_frac")):  # each panel's stand-ins alike: one legend
        handles = curves(ax, [(r["step"], r[col]) for r in rows], palette, labels)
    for ax, col in zip(axes[0], ("mean", "std", "fraction exactly zero")):
        panel_title(ax, col, 9)
        step_axis(ax, d["step"].to_numpy())
    legend(axes[0][0], handles, fontsize=6, loc="upper left")
    return save(fig, path, f"{title}: activations over training", fmt)


def _logged(metrics: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    """The steps at which `column` was logged, and its values there."""
    y = metrics[column].to_numpy(dtype=float, na_value=np.nan)
    return metrics["step"].to_numpy()[~np.isnan(y)], y[~np.isnan(y)]


def plot_metrics(metrics: pd.DataFrame, title: str, path: Path, fmt: str = "png") -> Path | None:
    """Loss and accuracy: the training batches faint, their running mean over ~1/30 of the run,
    the held-out evaluations as points. Nothing to draw for a probe (fewer than two logged steps)."""
    panels = [(name, val) for name, val in (("loss", "val_loss"), ("accuracy", "val_accuracy"))
              if name in metrics or val in metrics]
    if metrics.empty or not panels or metrics["step"].nunique() < 2:
        return None
    fig, axes = figure(1, len(panels), (4.6, 3.3))
    for ax, (name, val) in zip(axes[0], panels):
        if name in metrics:
            step, y = _logged(metrics, name)
            window = max(1, len(y) // 30)  # a minibatch is noise: the running mean over ~1/30 of the run
            ax.plot(step, y, lw=0.6, color="tab:blue", alpha=0.3)
            smooth = pd.Series(y).rolling(window, min_periods=1).mean().to_numpy()
            ax.plot(step, smooth, lw=1.4, color="tab:blue", label=f"train (running mean of {window})" if window > 1
                    else "train")
        if val in metrics:
            step, y = _logged(metrics, val)
            ax.plot(step, y, "o", ms=5, color="tab:orange", label="held-out")  # evaluations, not a curve
        if name == "loss":
            log_axis(ax)  # when the loss falls by a decade or more
        ax.set_xlabel("step")
        panel_title(ax, name, 9)
    shared_legend(axes[0], fontsize=8, loc="upper right" if panels[0][0] == "loss" else "lower right")
    return save(fig, path, title, fmt)


def _grid(n: int, panel: tuple[float, float] = (2.9, 2.1)) -> tuple[Any, list[Axes], int]:
    """n small panels, four to a row (the last row may be short), and how many to a row."""
    cols = min(4, n)
    fig, axes = figure(-(-n // cols), cols, panel, wspace=0.45, hspace=0.55, left=1.0, bottom=0.65, panels=n,
                       grid=None)
    return fig, list(axes.flat), cols


def _hist_axis(d: pd.DataFrame) -> tuple[BinAxis, int, int]:
    """The bin axis of a histogram table and the range of bins any of its rows fills."""
    axis = BinAxis(d["bin"].to_numpy(), d["lo"].to_numpy(), d["hi"].to_numpy())
    used = d.loc[d["count"] > 0, "bin"]
    first, last = (int(used.min()), int(used.max())) if len(used) else (0, axis.n_bins - 1)
    return axis, max(first - 1, 0), min(last + 1, axis.n_bins - 1)


def _counts(d: pd.DataFrame, layers: list[int], steps: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """A histogram table's counts as an array [layer, step, bin] (zero where no row), and
    which (layer, step) have rows: one pass over the table, not a filter per histogram
    (~0.5 ms each, 40 of them in hist_first_last)."""
    li = pd.Index(layers).get_indexer(d["layer_idx"].to_numpy())
    si = pd.Index(steps).get_indexer(d["step"].to_numpy())
    keep = (li >= 0) & (si >= 0)
    li, si = li[keep], si[keep]
    counts = np.zeros((len(layers), len(steps), n_bins))
    counts[li, si, d["bin"].to_numpy()[keep]] = d["count"].to_numpy()[keep]
    present = np.zeros((len(layers), len(steps)), dtype=bool)
    present[li, si] = True
    return counts, present


def plot_hist_image(hist: pd.DataFrame, title: str, path: Path, kind: str = "act",
                    fmt: str = "png") -> Path | None:
    """fast.ai's 'colorful dimension': per layer, the histogram at every logged step, values
    up (symmetric log: the fixed bins), steps across (each logged step as wide as the
    steps it stands for), colour = log(1 + count)."""
    d = hist[hist["kind"] == kind]
    if d.empty or d["step"].nunique() < 2:
        return None
    bins, first, last = _hist_axis(d)
    picked = _pick_layers(d)
    fig, axes, cols = _grid(len(picked))
    steps = np.sort(d["step"].unique())
    x_edges = np.concatenate([[steps[0] - 0.5], (steps[:-1] + steps[1:]) / 2, [steps[-1] + 0.5]])
    y_edges = np.arange(first, last + 2)
    counts, _ = _counts(d, [idx for idx, _ in picked], steps, bins.n_bins)
    shades = [np.log1p(img[:, first:last + 1].T) for img in counts]
    top = max(float(x.max()) for x in shades) or 1.0  # one colour scale for every panel, so one bar reads them all
    for ax, (idx, layer), shade in zip(axes, picked, shades):
        mesh = ax.pcolormesh(x_edges, y_edges, shade, cmap="viridis", shading="flat", rasterized=True,
                             vmin=0.0, vmax=top)
        panel_title(ax, f"{idx}: {layer}", 8)
        ax.tick_params(labelsize=6)
    # the panels show the same steps and bins (same edges, same limits): ticks on the outer
    # panels only, below the last panel of each column and left of each row; inner ticks are
    # objects to build and draw for nothing (the axes are not shared, which would share one
    # locator between outer and inner panels)
    for i, ax in enumerate(axes):
        step_axis(ax, steps)
        if i + cols >= len(axes):
            ax.xaxis.label.set_fontsize(7)
        else:
            ax.xaxis.set_major_locator(NullLocator())
            ax.set_xlabel("")
        if i % cols == 0:
            bins.label(ax.yaxis, first, last)
        else:
            ax.yaxis.set_major_locator(NullLocator())
    fig.supylabel(f"{kind} value (fixed bins, symmetric log)", fontsize=8)
    bar = fig.colorbar(mesh, ax=axes, fraction=0.025, pad=0.02)
    bar.ax.set_title("log(1 + count)", fontsize=7, loc="right")  # above the bar: beside it, the page edge cuts it
    bar.ax.tick_params(labelsize=6)
    return save(fig, path, f"{title}: {kind} histograms over training", fmt)


def plot_dead(stats: pd.DataFrame, title: str, path: Path, fmt: str = "png") -> Path | None:
    """Dead (ReLU family) or saturated (tanh, sigmoid) fraction per activation layer, and
    the fraction of units that never fired in the batch."""
    d = stats[(stats["kind"] == "act") & stats["dead_frac"].notna()] if "dead_frac" in stats else stats.iloc[:0]
    if d.empty or d["step"].nunique() < 2:
        return None
    fig, axes = figure(1, 2, sharex=True)
    ax_f, ax_u = axes[0]
    picked = _pick_layers(d)
    rows = _by_layer(d, picked, ["dead_frac", "dead_units", "module_type"])
    palette = colors("plasma", len(picked))
    handles = curves(ax_f, [(r["step"], r["dead_frac"]) for r in rows], palette,
                     [f"{idx}: {layer} ({r['module_type'][0]})" for (idx, layer), r in zip(picked, rows)])
    curves(ax_u, [(r["step"], r["dead_units"]) for r in rows], palette)
    panel_title(ax_f, "fraction of elements dead / saturated", 9)
    panel_title(ax_u, "fraction of units dead for the whole batch", 9)
    for ax in (ax_f, ax_u):
        step_axis(ax, d["step"].to_numpy())
        ax.set_ylim(-0.02, 1.02)
    legend(ax_f, handles, fontsize=6, loc="upper left")
    return save(fig, path, title, fmt)


def plot_grad_flow(stats: pd.DataFrame, title: str, path: Path, fmt: str = "png", layers: str = "weighted"
                   ) -> Path | None:
    """Gradient flow: per-layer norm of dLoss/d output at a few steps."""
    d = stats[stats["kind"] == "grad"]
    if d.empty:
        return None
    steps = np.sort(d["step"].unique())
    chosen = steps[np.unique(np.linspace(0, len(steps) - 1, min(5, len(steps))).round().astype(int))]
    fig, axes = figure(1, 1, (6.5, 3.4), bottom=1.0)
    ax = axes[0][0]
    axis = LayerAxis(d, layers)
    x, at, norm = axis.place(d[np.isfinite(d["norm"]) & (d["norm"] > 0)], "step", "norm")
    for step, color in zip(chosen, colors("cividis", len(chosen))):
        ax.plot(x[at == step], norm[at == step], marker="o", ms=3, lw=1, color=color, label=f"step {step}")
    log_axis(ax)
    axis.label(ax)
    ax.set_ylabel("gradient norm (dL/d output)")
    legend(ax, fontsize=8, loc="best")  # five short lines: finding the empty corner is cheap
    return save(fig, path, f"{title}: gradient flow", fmt)


def plot_update_ratio(stats: pd.DataFrame, title: str, path: Path, fmt: str = "png") -> Path | None:
    """update std / weight std per weight tensor over steps, on a log axis as every other
    per-layer figure; Karpathy's 1e-3 line."""
    d = stats[(stats["kind"] == "update") & (stats["param"] == "weight")] if "param" in stats else stats.iloc[:0]
    d = d[np.isfinite(d["ratio"]) & (d["ratio"] > 0)]
    if d.empty:
        return None
    fig, axes = figure(1, 1, (6.5, 3.4))
    ax = axes[0][0]
    layers = _layers(d)
    for (_, layer), rows, color in zip(layers, _by_layer(d, layers, ["ratio"]), colors("viridis", len(layers))):
        ax.plot(rows["step"], rows["ratio"], lw=1, color=color,
                marker="." if len(rows["step"]) < 3 else None, label=layer if len(layers) <= 12 else None)
    ax.axhline(1e-3, color="black", ls="--", lw=1, label="1e-3")
    log_axis(ax)
    step_axis(ax, d["step"].to_numpy())
    ax.set_ylabel("update std / weight std")
    legend(ax, fontsize=6, ncol=2, loc="upper right")
    return save(fig, path, f"{title}: update:data ratio", fmt)


def _ridge(baseline: float, heights: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The outline ax.stairs(baseline + heights, edges, baseline=baseline) draws, as a line: a
    StepPatch's data limits are found by walking its path in Python, ~12 ms a ridge here."""
    x = np.repeat(edges, 2)
    y = np.concatenate([[baseline], np.repeat(baseline + heights, 2), [baseline]])
    return x, y


def plot_hist_first_last(hist: pd.DataFrame, title: str, path: Path, fmt: str = "png") -> Path | None:
    """Activation and gradient histograms at the first and the last logged step, one ridge
    per layer (each scaled to its own peak), every bin drawn, values across on the fixed bins."""
    if hist.empty:
        return None
    first_step, last_step = hist["step"].min(), hist["step"].max()
    picked = _pick_layers(hist[hist["kind"] == "act"])
    if not picked:
        return None
    ends = hist[hist["step"].isin([first_step, last_step])]
    bins, lo, hi = _hist_axis(ends)
    fig, axes = figure(1, 2, (5.2, 0.45 * len(picked) + 1.2), sharex=True, left=1.5, wspace=1.4, grid="x")
    edges = np.arange(lo, hi + 2)
    steps = [(first_step, "-")] + ([(last_step, "--")] if last_step != first_step else [])
    for ax, (kind, color, name) in zip(axes[0], (("act", "tab:blue", "activations"),
                                                 ("grad", "tab:orange", "gradients (dL/d output)"))):
        counts, present = _counts(ends[ends["kind"] == kind], [idx for idx, _ in picked],
                                  np.array([step for step, _ in steps]), bins.n_bins)
        with np.errstate(invalid="ignore", divide="ignore"):  # an all-zero histogram: no ridge to scale
            shares = counts[:, :, lo:hi + 1] / counts.sum(axis=2, keepdims=True)
        ridges: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {ls: [] for _, ls in steps}
        for row in range(len(picked)):
            peak = max((shares[row, j].max() for j in range(len(steps)) if present[row, j]), default=0) or 1.0
            for j, (_step, ls) in enumerate(steps):
                if present[row, j]:
                    ridges[ls].append(_ridge(row, 0.9 * shares[row, j] / peak, edges))
        for ls, lines in ridges.items():
            curves(ax, lines, [color] * len(lines), ls=ls)
        ax.set_yticks(range(len(picked)), [f"{idx}: {layer}" for idx, layer in picked], fontsize=7)
        ax.set_ylim(-0.2, len(picked))
        bins.label(ax.xaxis, lo, hi)
        bins.shade(ax, lo, hi)
        ax.tick_params(axis="x", labelsize=7)
        ax.set_xlabel("value (fixed bins, symmetric log; grey: underflow, red: overflow)", fontsize=8)
        panel_title(ax, name, 9)
    # the line styles said in the title rather than in a legend on each panel (~10 ms each)
    ends_said = f"step {first_step} (solid) and step {last_step} (dashed)" if len(steps) > 1 else f"step {first_step}"
    return save(fig, path, f"{title}: histograms at {ends_said}", fmt)


@drawing
def plot_run(stats: pd.DataFrame, metrics: pd.DataFrame, config: dict[str, Any], out_dir: Path,
             hist: pd.DataFrame | None = None, probe: pd.DataFrame | None = None, fmt: str = "png",
             layers: str | None = None) -> list[Path]:
    """Every figure of one run that has data to draw into `out_dir`; returns the files written.
    `layers`: what the per-layer figures' axis holds (LayerAxis), else the run's `plot_layers`."""
    own_dir(out_dir)
    title = title_of(config)
    layers = layers or config.get("plot_layers") or "weighted"
    fmt = config.get("plot_format") or fmt
    made = []
    if not stats.empty:
        made.append(plot_step0(stats, title, out_dir / "step0_std", fmt, layers))
        made.append(plot_over_steps(stats, title, out_dir / "telemetry", fmt))
        made.append(plot_dead(stats, title, out_dir / "dead", fmt))
        made.append(plot_grad_flow(stats, title, out_dir / "grad_flow", fmt, layers))
        made.append(plot_update_ratio(stats, title, out_dir / "update_ratio", fmt))
        made.append(plot_formats(stats, title, out_dir / "formats", fmt, (config.get("precision") or {}).get("name")))
    if hist is not None and not hist.empty:
        made.append(plot_hist_image(hist, title, out_dir / "act_hist_image", fmt=fmt))
        made.append(plot_hist_first_last(hist, title, out_dir / "hist_first_last", fmt))
    if probe is not None and not probe.empty:
        theory = None
        if "theory_std" in stats:
            theory = stats[(stats["step"] == 0) & stats["theory_std"].notna()][
                ["layer_idx", "layer", "module_type", "kind", "theory_std"]]
        made.append(plot_probe(probe, theory, title, out_dir / "probe", fmt, layers,
                               own=(config.get("init") or {}).get("name")))
    made.append(plot_metrics(metrics, title, out_dir / "metrics", fmt))
    return [p for p in made if p is not None]
