"""DataFrames -> figures. Reads parquet-shaped tables only; never imports torch."""

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files, never windows: runs headless on CI and clusters
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

MAX_LINES = 10


def _save(fig: plt.Figure, path: Path, title: str | None = None, dpi: int = 110) -> Path:
    """Title, tight layout, write, close: every figure ends the same way."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def title_of(config: dict[str, Any]) -> str:
    """'conv4 · init=default · bn=false' from a run's config."""
    model = config.get("model", {}).get("arch") or config.get("model", {}).get("name", "?")
    act = config.get("model", {}).get("act")
    title = f"{model}" + (f" ({act})" if act else "")
    if "init" in config:
        title += f" · init={config['init'].get('name', '?')}"
    if "bn" in config:
        title += f" · bn={str(config['bn']).lower()}"
    return title


def _first_nonfinite_idx(df: pd.DataFrame) -> int | None:
    bad = df[(df["nonfinite"] > 0) | ~np.isfinite(df["std"])]
    return int(bad["layer_idx"].min()) if len(bad) else None


def _theory_line(ax: plt.Axes, t: pd.DataFrame, label: str) -> None:
    """The predicted std per layer, dashed, where it is finite."""
    t = t[np.isfinite(t["theory_std"]) & (t["theory_std"] > 0)].sort_values("layer_idx")
    ax.plot(t["layer_idx"], t["theory_std"], ls="--", color="black", lw=1, marker="x", ms=3, label=label)


def _depth_axis(ax: plt.Axes, ylabel: str) -> None:
    """Per-layer std against forward order: log scale, the unit line dotted."""
    ax.set_yscale("log")
    ax.set_xlabel("layer index (forward order)")
    ax.set_ylabel(ylabel)
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.grid(alpha=0.3, which="both")


def plot_step0(stats: pd.DataFrame, title: str, path: Path) -> Path | None:
    """Per-layer activation and gradient std at init against layer index, log scale."""
    s0 = stats[stats["step"] == stats["step"].min()]
    if s0.empty:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    for ax, kind, label in zip(axes, ("act", "grad"), ("activation std", "gradient std (dL/d output)")):
        d = s0[s0["kind"] == kind].sort_values("layer_idx")
        finite = d[np.isfinite(d["std"]) & (d["std"] > 0)]
        ax.plot(finite["layer_idx"], finite["std"], marker="o", ms=3, lw=1.2, label="measured")
        if "theory_std" in d and d["theory_std"].notna().any():
            _theory_line(ax, d, "theory (mean field, actual weights)")
            ax.legend(fontsize=7)
        _depth_axis(ax, label)
        bad = _first_nonfinite_idx(d) if not d.empty else None
        if bad is not None:
            ax.axvline(bad, color="red", ls="--", lw=1)
            ax.text(bad, 0.95, f" non-finite from layer {bad}", color="red",
                    transform=ax.get_xaxis_transform(), va="top", fontsize=8)
    return _save(fig, path, f"{title}: statistics at step 0", dpi=110)


def probe_spread(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Per layer and kind (act, grad) of a probe: mean, sd, min and max of the std over seeds."""
    d = per_seed[per_seed["kind"].isin(["act", "grad"])]
    return (d.groupby(["kind", "layer_idx", "layer", "module_type"], sort=True)["std"]
            .agg(std_mean="mean", std_sd="std", std_min="min", std_max="max", seeds="count")
            .reset_index())


def plot_probe(per_seed: pd.DataFrame, theory: pd.DataFrame | None, title: str, path: Path) -> Path | None:
    """probe.seeds=N: per-layer std at init, mean over the seeds with the min-max band,
    beside the theory's prediction for the run's own draw."""
    if per_seed.empty:
        return None
    band = probe_spread(per_seed)
    n = int(per_seed["seed"].nunique())
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    for ax, kind, label in zip(axes, ("act", "grad"), ("activation std", "gradient std (dL/d output)")):
        d = band[(band["kind"] == kind) & np.isfinite(band["std_mean"]) & (band["std_mean"] > 0)]
        ax.plot(d["layer_idx"], d["std_mean"], marker="o", ms=3, lw=1.2, label=f"mean over {n} seeds")
        ax.fill_between(d["layer_idx"], d["std_min"], d["std_max"], alpha=0.25, lw=0, label="min-max over seeds")
        if theory is not None and not theory.empty:
            _theory_line(ax, theory[theory["kind"] == kind], "theory (seed of the run)")
        _depth_axis(ax, label)
        ax.legend(fontsize=7)
    return _save(fig, path, f"{title}: step 0 over {n} seeds")


def _pick_layers(d: pd.DataFrame) -> list[tuple[int, str]]:
    layers = d[["layer_idx", "layer"]].drop_duplicates().sort_values("layer_idx")
    keep = np.unique(np.linspace(0, len(layers) - 1, min(MAX_LINES, len(layers))).round().astype(int))
    return [tuple(r) for r in layers.iloc[keep].itertuples(index=False)]


def plot_over_steps(stats: pd.DataFrame, title: str, path: Path) -> Path | None:
    """fast.ai-style telemetry: per-layer mean, std and zero fraction over steps."""
    d = stats[stats["kind"] == "act"]
    if d["step"].nunique() < 2:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    cmap = plt.get_cmap("viridis")
    picked = _pick_layers(d)
    for i, (idx, layer) in enumerate(picked):
        rows = d[d["layer_idx"] == idx].sort_values("step")
        color = cmap(i / max(len(picked) - 1, 1))
        for ax, col in zip(axes, ("mean", "std", "zero_frac")):
            ax.plot(rows["step"], rows[col], color=color, lw=1, label=f"{idx}: {layer}")
    for ax, col in zip(axes, ("mean", "std", "fraction exactly zero")):
        ax.set_title(col)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6, loc="best")
    return _save(fig, path, f"{title}: activations over training", dpi=110)


def plot_metrics(metrics: pd.DataFrame, title: str, path: Path) -> Path | None:
    """Loss and accuracy curves (what was logged of them), training batches and held-out
    evaluations."""
    panels = [(name, val) for name, val in (("loss", "val_loss"), ("accuracy", "val_accuracy"))
              if name in metrics or val in metrics]
    if metrics.empty or not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (name, val) in zip(axes[0], panels):
        if name in metrics:
            m = metrics.dropna(subset=[name])
            ax.plot(m["step"], m[name], lw=1, label="train")
        if val in metrics:
            v = metrics.dropna(subset=[val])
            ax.plot(v["step"], v[val], "o-", ms=4, label="held-out")
        if name == "loss" and name in metrics:
            finite = metrics["loss"][np.isfinite(metrics["loss"])]
            if len(finite) and (finite > 0).all():
                ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path, title, dpi=110)


def _grid(n: int, width: float = 3.2, height: float = 2.4) -> tuple[plt.Figure, np.ndarray]:
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat


def plot_hist_image(hist: pd.DataFrame, title: str, path: Path, kind: str = "act") -> Path | None:
    """fast.ai's 'colorful dimension': per layer, the histogram (rows: bins in value order)
    at every logged step (columns), colour = log(1 + count)."""
    d = hist[hist["kind"] == kind]
    if d.empty or d["step"].nunique() < 2:
        return None
    n_bins = int(d["bin"].max()) + 1
    picked = _pick_layers(d)
    fig, axes = _grid(len(picked))
    steps = np.sort(d["step"].unique())
    col_of = {s: i for i, s in enumerate(steps)}
    for ax, (idx, layer) in zip(axes, picked):
        img = np.zeros((n_bins, len(steps)))
        rows = d[d["layer_idx"] == idx]
        img[rows["bin"].to_numpy(), rows["step"].map(col_of).to_numpy()] = rows["count"].to_numpy()
        used = np.flatnonzero(img.sum(1))
        lo, hi = (used.min(), used.max() + 1) if len(used) else (0, n_bins)
        ax.imshow(np.log1p(img[lo:hi]), aspect="auto", origin="lower", cmap="viridis",
                  extent=(0, len(steps), lo, hi), interpolation="nearest")
        ax.set_title(f"{idx}: {layer}", fontsize=8)
        ax.set_xlabel("logged step #", fontsize=7)
        ax.set_ylabel("bin (value order)", fontsize=7)
        ax.tick_params(labelsize=6)
    return _save(fig, path, f"{title}: {kind} histograms over training", dpi=100)


def plot_dead(stats: pd.DataFrame, title: str, path: Path) -> Path | None:
    """Dead (ReLU family) or saturated (tanh, sigmoid) fraction per activation layer, and
    the fraction of units that never fired in the batch."""
    d = stats[(stats["kind"] == "act") & stats["dead_frac"].notna()] if "dead_frac" in stats else stats.iloc[:0]
    if d.empty:
        return None
    fig, (ax_f, ax_u) = plt.subplots(1, 2, figsize=(11, 4))
    cmap = plt.get_cmap("plasma")
    picked = _pick_layers(d)
    for i, (idx, layer) in enumerate(picked):
        rows = d[d["layer_idx"] == idx].sort_values("step")
        color = cmap(i / max(len(picked) - 1, 1))
        ax_f.plot(rows["step"], rows["dead_frac"], color=color, marker="." if len(rows) < 3 else None,
                  lw=1, label=f"{idx}: {layer} ({rows['module_type'].iloc[0]})")
        ax_u.plot(rows["step"], rows["dead_units"], color=color, marker="." if len(rows) < 3 else None, lw=1)
    ax_f.set_title("fraction of elements dead / saturated")
    ax_u.set_title("fraction of units dead for the whole batch")
    for ax in (ax_f, ax_u):
        ax.set_xlabel("step")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    ax_f.legend(fontsize=6)
    return _save(fig, path, title, dpi=110)


def plot_grad_flow(stats: pd.DataFrame, title: str, path: Path) -> Path | None:
    """Gradient flow: per-layer norm of dLoss/d output at a few steps."""
    d = stats[stats["kind"] == "grad"]
    if d.empty:
        return None
    steps = np.sort(d["step"].unique())
    chosen = steps[np.unique(np.linspace(0, len(steps) - 1, min(5, len(steps))).round().astype(int))]
    fig, ax = plt.subplots(figsize=(8, 4))
    cmap = plt.get_cmap("cividis")
    for i, step in enumerate(chosen):
        rows = d[(d["step"] == step) & np.isfinite(d["norm"]) & (d["norm"] > 0)].sort_values("layer_idx")
        ax.plot(rows["layer_idx"], rows["norm"], marker="o", ms=3, lw=1,
                color=cmap(i / max(len(chosen) - 1, 1)), label=f"step {step}")
    ax.set_yscale("log")
    ax.set_xlabel("layer index (forward order)")
    ax.set_ylabel("gradient norm (dL/d output)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path, f"{title}: gradient flow", dpi=110)


def plot_update_ratio(stats: pd.DataFrame, title: str, path: Path) -> Path | None:
    """log10(update std / weight std) per weight tensor over steps; Karpathy's 1e-3 line."""
    d = stats[(stats["kind"] == "update") & (stats["param"] == "weight")] if "param" in stats else stats.iloc[:0]
    d = d[np.isfinite(d["ratio"]) & (d["ratio"] > 0)]
    if d.empty:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    cmap = plt.get_cmap("viridis")
    layers = sorted(d["layer"].unique(), key=lambda name: d[d["layer"] == name]["layer_idx"].iloc[0])
    for i, layer in enumerate(layers):
        rows = d[d["layer"] == layer].sort_values("step")
        ax.plot(rows["step"], np.log10(rows["ratio"]), lw=1, color=cmap(i / max(len(layers) - 1, 1)),
                marker="." if len(rows) < 3 else None, label=layer if len(layers) <= 12 else None)
    ax.axhline(-3, color="black", ls="--", lw=1, label="1e-3")
    ax.set_xlabel("step")
    ax.set_ylabel("log10(update std / weight std)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, path, f"{title}: update:data ratio", dpi=110)


def plot_hist_first_last(hist: pd.DataFrame, title: str, path: Path) -> Path | None:
    """Activation and gradient histograms per layer at the first and the last logged step."""
    if hist.empty:
        return None
    first, last = hist["step"].min(), hist["step"].max()
    picked = _pick_layers(hist[hist["kind"] == "act"])
    if not picked:
        return None
    fig, axes = _grid(len(picked))
    for ax, (idx, layer) in zip(axes, picked):
        for step, ls in ((first, "-"), (last, "--")):
            for kind, color in (("act", "tab:blue"), ("grad", "tab:orange")):
                rows = hist[(hist["step"] == step) & (hist["layer_idx"] == idx) & (hist["kind"] == kind)]
                if rows.empty or (step == last and first == last and ls == "--"):
                    continue
                ax.step(rows["bin"], rows["count"] / rows["count"].sum(), where="mid", ls=ls, color=color,
                        lw=1, label=f"{kind} @ {step}")
        ax.set_title(f"{idx}: {layer}", fontsize=8)
        ax.set_xlabel("bin (value order, log-spaced |x|)", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=5)
    return _save(fig, path, f"{title}: histograms at the first and last logged step", dpi=100)


def plot_run(stats: pd.DataFrame, metrics: pd.DataFrame, config: dict[str, Any], out_dir: Path,
             hist: pd.DataFrame | None = None, probe: pd.DataFrame | None = None) -> list[Path]:
    """Every figure of one run into `out_dir`; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    title = title_of(config)
    made = []
    if not stats.empty:
        made.append(plot_step0(stats, title, out_dir / "step0_std.png"))
        made.append(plot_over_steps(stats, title, out_dir / "telemetry.png"))
        made.append(plot_dead(stats, title, out_dir / "dead.png"))
        made.append(plot_grad_flow(stats, title, out_dir / "grad_flow.png"))
        made.append(plot_update_ratio(stats, title, out_dir / "update_ratio.png"))
    if hist is not None and not hist.empty:
        made.append(plot_hist_image(hist, title, out_dir / "act_hist_image.png"))
        made.append(plot_hist_first_last(hist, title, out_dir / "hist_first_last.png"))
    if probe is not None and not probe.empty:
        theory = None
        if "theory_std" in stats:
            theory = stats[(stats["step"] == 0) & stats["theory_std"].notna()][["layer_idx", "kind", "theory_std"]]
        made.append(plot_probe(probe, theory, title, out_dir / "probe.png"))
    made.append(plot_metrics(metrics, title, out_dir / "metrics.png"))
    return [p for p in made if p is not None]


# -- sweeps ------------------------------------------------------------------------


def _combo(row: pd.Series, factors: list[str]) -> str:
    return ", ".join(f"{f}={row[f]}" for f in factors) or "all jobs"


def _read_step0(path: str) -> pd.DataFrame:
    import pyarrow.dataset as pads

    p = Path(path) / "stats.parquet"
    if not p.exists() or not any(p.glob("*.parquet")):
        return pd.DataFrame()
    flt = (pads.field("step") == 0) & pads.field("kind").isin(["act", "grad"])
    return pads.dataset(p, format="parquet").to_table(
        columns=["layer_idx", "kind", "std"], filter=flt).to_pandas()


def _band(ax: plt.Axes, x: np.ndarray, ys: list[np.ndarray], label: str, color: Any, log: bool = False) -> None:
    """Mean line, and a min-max band when there are several seeds."""
    stack = np.vstack(ys)
    mean = np.exp(np.nanmean(np.log(stack), 0)) if log else np.nanmean(stack, 0)
    ax.plot(x, mean, color=color, lw=1.3, label=label + (f" (n={len(ys)})" if len(ys) > 1 else ""))
    if len(ys) > 1:
        ax.fill_between(x, np.nanmin(stack, 0), np.nanmax(stack, 0), color=color, alpha=0.2, lw=0)


def plot_sweep(df: pd.DataFrame, factors: list[str], out_dir: Path) -> list[Path]:
    """Comparison figures of a sweep: the grid of final losses over the swept factors,
    per-layer step-0 std overlaid per combination, and loss curves (mean and band over seeds)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    groups = [f for f in factors if f != "seed"]
    done = df[df["status"].isin(["ok", "diverged"])].copy()
    if done.empty:
        return made
    done["combo"] = done.apply(lambda r: _combo(r, groups), axis=1)
    cmap = plt.get_cmap("tab10")

    # 1. the grid of final losses
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    if len(groups) >= 2:
        grid = done.pivot_table(index=groups[0], columns=groups[1], values="final_loss", aggfunc="mean")
        im = ax.imshow(grid.to_numpy(dtype=float), cmap="viridis_r", aspect="auto")
        ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns])
        ax.set_yticks(range(grid.shape[0]), [str(i) for i in grid.index])
        ax.set_xlabel(groups[1])
        ax.set_ylabel(groups[0])
        values = grid.to_numpy(dtype=float)
        mid = np.nanmean(values)
        for (i, j), v in np.ndenumerate(values):  # dark text on the light (low-loss) cells
            ax.text(j, i, f"{v:.3g}", ha="center", va="center", color="k" if v < mid else "w", fontsize=9)
        fig.colorbar(im, ax=ax, label="final loss (mean over other factors)")
    else:
        means = done.groupby("combo")["final_loss"].mean()
        ax.bar(range(len(means)), means.to_numpy(), color=[cmap(i % 10) for i in range(len(means))])
        ax.set_xticks(range(len(means)), means.index, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("final loss")
    ax.set_title("final training loss")
    made.append(_save(fig, out_dir / "grid_final_loss.png"))

    # 2. per-layer std at step 0, one line per combination (mean and band over seeds)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ci, (combo, jobs) in enumerate(done.groupby("combo", sort=False)):
        for ax, kind in zip(axes, ("act", "grad")):
            curves = []
            for path in jobs["path"]:
                s0 = _read_step0(path)
                s0 = s0[s0["kind"] == kind].sort_values("layer_idx")
                if len(s0):
                    curves.append(s0.set_index("layer_idx")["std"])
            if curves:
                frame = pd.concat(curves, axis=1)
                vals = frame.to_numpy(dtype=float, copy=True).T
                vals[~np.isfinite(vals) | (vals <= 0)] = np.nan
                _band(ax, frame.index.to_numpy(), list(vals), combo, cmap(ci % 10), log=True)
    for ax, kind in zip(axes, ("activation", "gradient")):
        ax.set_yscale("log")
        ax.set_xlabel("layer index (forward order)")
        ax.set_ylabel(f"{kind} std at step 0")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    made.append(_save(fig, out_dir / "step0_std_overlay.png", "per-layer statistics at init"))

    # 3. loss curves (not for probes: one step is no curve)
    if df.get("steps_done") is not None and not (df["steps_done"].fillna(0) > 1).any():
        return made
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for ci, (combo, jobs) in enumerate(done.groupby("combo", sort=False)):
        curves = []
        for path in jobs["path"]:
            mp = Path(path) / "metrics.parquet"
            if mp.exists():
                curves.append(pd.read_parquet(mp, columns=["step", "loss"]).set_index("step")["loss"])
        if curves:
            frame = pd.concat(curves, axis=1)
            _band(ax, frame.index.to_numpy(), list(frame.to_numpy(dtype=float).T), combo, cmap(ci % 10))
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    made.append(_save(fig, out_dir / "loss_curves.png"))
    return made
