"""The comparison figures of a sweep: final losses over the swept factors, per-layer std at
step 0 overlaid per combination, and loss curves (mean and band over seeds)."""

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes

from initlab.plots.base import figure, log_axis, panel_title, save


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


def _band(ax: Axes, x: np.ndarray, ys: list[np.ndarray], label: str, color: Any, log: bool = False) -> None:
    """Mean line, and a min-max band when there are several seeds."""
    stack = np.vstack(ys)
    with np.errstate(all="ignore"):
        mean = np.exp(np.nanmean(np.log(stack), 0)) if log else np.nanmean(stack, 0)
    ax.plot(x, mean, color=color, lw=1.3, label=label + (f" (n={len(ys)})" if len(ys) > 1 else ""))
    if len(ys) > 1:
        ax.fill_between(x, np.nanmin(stack, 0), np.nanmax(stack, 0), color=color, alpha=0.2, lw=0)


def _grid_final_loss(done: pd.DataFrame, groups: list[str], cmap: Any, out_dir: Path, fmt: str) -> Path:
    fig, axes = figure(1, 1, (5.0, 3.6), left=1.2, right=1.2, bottom=1.0)
    ax = axes[0][0]
    if len(groups) >= 2:
        grid = done.pivot_table(index=groups[0], columns=groups[1], values="final_loss", aggfunc="mean")
        im = ax.imshow(grid.to_numpy(dtype=float), cmap="viridis_r", aspect="auto")
        ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns])
        ax.set_yticks(range(grid.shape[0]), [str(i) for i in grid.index])
        ax.set_xlabel(groups[1])
        ax.set_ylabel(groups[0])
        values = grid.to_numpy(dtype=float)
        mid = np.nanmean(values) if np.isfinite(values).any() else 0.0
        for (i, j), v in np.ndenumerate(values):  # dark text on the light (low-loss) cells
            ax.text(j, i, f"{v:.3g}", ha="center", va="center", color="k" if v < mid else "w", fontsize=9)
        fig.colorbar(im, ax=ax, label="final loss (mean over other factors)")
    else:
        means = done.groupby("combo")["final_loss"].mean()
        ax.bar(range(len(means)), means.to_numpy(), color=[cmap(i % 10) for i in range(len(means))])
        ax.set_xticks(range(len(means)), means.index, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("final loss")
    panel_title(ax, "final training loss", 9)
    return save(fig, out_dir / "grid_final_loss", fmt=fmt)


def _step0_overlay(done: pd.DataFrame, cmap: Any, out_dir: Path, fmt: str) -> Path:
    fig, axes = figure(1, 2, (5.0, 3.6))
    for ci, (combo, jobs) in enumerate(done.groupby("combo", sort=False)):
        s0s = [_read_step0(path) for path in jobs["path"]]
        for ax, kind in zip(axes[0], ("act", "grad")):
            curves = [s[s["kind"] == kind].sort_values("layer_idx").set_index("layer_idx")["std"]
                      for s in s0s if len(s)]
            curves = [c for c in curves if len(c)]
            if curves:
                frame = pd.concat(curves, axis=1)
                vals = frame.to_numpy(dtype=float, copy=True).T
                vals[~np.isfinite(vals) | (vals <= 0)] = np.nan
                _band(ax, frame.index.to_numpy(), list(vals), combo, cmap(ci % 10), log=True)
    for ax, kind in zip(axes[0], ("activation", "gradient")):
        log_axis(ax)
        ax.set_xlabel("layer index (forward order)")
        ax.set_ylabel(f"{kind} std at step 0")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower left")
    return save(fig, out_dir / "step0_std_overlay", "per-layer statistics at init", fmt)


def _loss_curves(done: pd.DataFrame, cmap: Any, out_dir: Path, fmt: str) -> Path:
    fig, axes = figure(1, 1, (6.5, 3.8))
    ax = axes[0][0]
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
    ax.legend(fontsize=7, loc="upper right")
    return save(fig, out_dir / "loss_curves", fmt=fmt)


def plot_sweep(df: pd.DataFrame, factors: list[str], out_dir: Path, fmt: str = "png") -> list[Path]:
    """Comparison figures of a sweep: the grid of final losses over the swept factors,
    per-layer step-0 std overlaid per combination, and loss curves (not for probes: one
    step is no curve)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = [f for f in factors if f != "seed"]
    done = df[df["status"].isin(["ok", "diverged"])].copy()
    if done.empty:
        return []
    done["combo"] = done.apply(lambda r: _combo(r, groups), axis=1)
    cmap = colormaps["tab10"]
    made = [_grid_final_loss(done, groups, cmap, out_dir, fmt), _step0_overlay(done, cmap, out_dir, fmt)]
    if df.get("steps_done") is None or (df["steps_done"].fillna(0) > 1).any():
        made.append(_loss_curves(done, cmap, out_dir, fmt))
    return made
