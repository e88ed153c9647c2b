"""The comparison figures of a sweep: final losses over the swept factors, per-layer std at
step 0 overlaid per combination, and loss curves (mean and band over seeds)."""

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

from initlab.report.plots.base import (
    LayerAxis,
    drawing,
    figure,
    layer_axis_name,
    legend,
    log_axis,
    panel_title,
    save,
)
from initlab.report.plots.headline import plot_headline
from initlab.report.plots.transfer import plot_lr_transfer, transfer_axes
from initlab.rundir.safe import own_dir
from initlab.rundir.store import LOSS_TAIL


def _combo(row: pd.Series, factors: list[str]) -> str:
    """'depth=6, norm_position=pre': the factors' last dotted parts where those stay distinct
    (a legend of full keys runs off the figure)."""
    short = [f.rsplit(".", 1)[-1] for f in factors]
    names = short if len(set(short)) == len(short) else factors
    return ", ".join(f"{n}={row[f]}" for n, f in zip(names, factors)) or "all jobs"


def _read_step0(path: str) -> pd.DataFrame:
    import pyarrow.dataset as pads

    p = Path(path) / "stats.parquet"
    if not p.exists() or not any(p.glob("*.parquet")):
        return pd.DataFrame()
    flt = (pads.field("step") == 0) & pads.field("kind").isin(["act", "grad"])
    return pads.dataset(p, format="parquet").to_table(
        columns=["layer_idx", "layer", "module_type", "kind", "std"], filter=flt).to_pandas()


def _band(ax: Axes, x: np.ndarray, ys: list[np.ndarray], label: str, color: Any, log: bool = False) -> None:
    """Mean line, and a min-max band when there are several seeds."""
    stack = np.vstack(ys)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice": a step no job reached
        mean = np.exp(np.nanmean(np.log(stack), 0)) if log else np.nanmean(stack, 0)
        lo, hi = np.nanmin(stack, 0), np.nanmax(stack, 0)
    ax.plot(x, mean, color=color, lw=1.3, label=label + (f" (n={len(ys)})" if len(ys) > 1 else ""))
    if len(ys) > 1:
        ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)


def _grid_final_loss(done: pd.DataFrame, groups: list[str], cmap: Any, out_dir: Path, fmt: str,
                     probe: bool) -> Path:
    fig, axes = figure(1, 1, (5.0, 3.6), left=1.2, right=1.2, bottom=1.0, grid=None)
    ax = axes[0][0]
    # the training loss over the last LOSS_TAIL steps where the runs have it: one minibatch is noise
    col = "loss_avg" if not probe and "loss_avg" in done and done["loss_avg"].notna().any() else "final_loss"
    what = "loss at init (step 0)" if probe else \
        f"training loss, last {LOSS_TAIL} steps" if col == "loss_avg" else "final training loss"
    if len(groups) >= 2:
        ok = done.assign(loss=done[col].where(done["status"].eq("ok")),
                         diverged=done["status"].eq("diverged"))
        by = ok.groupby(groups[:2], sort=True)
        grid = by["loss"].mean().unstack()  # diverged jobs are counted, not averaged in
        diverged = by["diverged"].sum().unstack().reindex_like(grid)
        jobs = by.size().unstack().reindex_like(grid)
        im = ax.imshow(grid.to_numpy(dtype=float), cmap="viridis_r", aspect="auto")
        ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns])
        ax.set_yticks(range(grid.shape[0]), [str(i) for i in grid.index])
        ax.set_xlabel(groups[1])
        ax.set_ylabel(groups[0])
        values = grid.to_numpy(dtype=float)
        mid = np.nanmean(values) if np.isfinite(values).any() else 0.0
        for (i, j), v in np.ndenumerate(values):  # dark text on the light (low-loss) cells
            n, k = jobs.iat[i, j], diverged.iat[i, j]
            if not n > 0:
                text = "no job"
            elif np.isfinite(v):
                text = f"{v:.3g}" + (f"\n({int(k)} diverged)" if k else "")
            else:
                text = "diverged" if k else "non-finite"
            ax.text(j, i, text, ha="center", va="center", color="w" if v >= mid else "k", fontsize=8)
        fig.colorbar(im, ax=ax, label="mean of the jobs (diverged left out)")
    else:
        ok = done[col].where(done["status"].eq("ok"))  # as in the grid: diverged jobs not averaged
        means = ok.groupby(done["combo"], sort=False).mean()  # the loss curves' order: the same colours
        ax.bar(range(len(means)), means.to_numpy(), color=[cmap(i) for i in range(len(means))])
        ax.set_xticks(range(len(means)), means.index, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(what)
    panel_title(ax, what, 9)
    return save(fig, out_dir / "grid_final_loss", _study(out_dir, done, groups), fmt)


def _step0_overlay(done: pd.DataFrame, cmap: Any, out_dir: Path, fmt: str, layers: str) -> Path:
    fig, axes = figure(1, 2, (5.0, 3.6), bottom=1.0)
    names: set[tuple[str, ...]] = set()
    shared = None
    for ci, (combo, jobs) in enumerate(done.groupby("combo", sort=False)):
        s0s = [_read_step0(path) for path in jobs["path"]]
        axes_of = [LayerAxis(s, layers) if len(s) else None for s in s0s]  # each job's own layers: nets align
        names |= {tuple(a.names) for a in axes_of if a}
        shared = next((a for a in axes_of if a), None)
        for ax, kind in zip(axes[0], ("act", "grad")):
            curves = [pd.Series(std, index=x) for x, std in (a.place(s[s["kind"] == kind], "std")
                                                              for s, a in zip(s0s, axes_of) if a)]
            curves = [c for c in curves if len(c)]
            if curves:
                frame = pd.concat(curves, axis=1)
                vals = frame.to_numpy(dtype=float, copy=True).T
                vals[~np.isfinite(vals) | (vals <= 0)] = np.nan
                _band(ax, frame.index.to_numpy(), list(vals), combo, cmap(ci), log=True)
    what = layer_axis_name(layers)
    for ax, kind in zip(axes[0], ("activation", "gradient")):
        log_axis(ax)
        if len(names) == 1 and shared is not None:  # every job has the same layers: name them
            shared.label(ax)
        else:
            ax.set_xlabel(f"{what} (forward order)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{kind} std at step 0")
    legend(axes[0][0], fontsize=7, loc="lower left")
    return save(fig, out_dir / "step0_std_overlay", f"{_study(out_dir, done, [])}: per-layer statistics at init",
                fmt)


def _smooth(loss: pd.Series) -> pd.Series:
    """The training loss of single minibatches, as a running mean over ~1/30 of the run."""
    return loss.rolling(max(1, len(loss) // 30), min_periods=1).mean()


def _curve(path: str, batch: int | None = None) -> tuple[pd.Series | None, pd.Series | None]:
    """A job's training loss (running mean, finite steps) and held-out loss, from its metrics,
    over steps, or over samples seen when `batch` (its batch size) is given."""
    mp = Path(path) / "metrics.parquet"
    if not mp.exists():
        return None, None
    m = pd.read_parquet(mp)
    if "loss" not in m:
        return None, None
    if batch:
        m = m.assign(step=(m["step"] + 1) * batch)
    train = _smooth(m[np.isfinite(m["loss"])].set_index("step")["loss"])
    held = m.dropna(subset=["val_loss"]).set_index("step")["val_loss"] if "val_loss" in m else None
    return train, held


def _loss_curves(done: pd.DataFrame, cmap: Any, out_dir: Path, fmt: str) -> Path:
    combos = done["combo"].nunique()
    outside = combos > 6  # many entries: the legend goes beside the axes, not over the curves
    fig, axes = figure(1, 1, (6.5, 3.8), right=3.2 if outside else 0.25)
    ax = axes[0][0]
    groups = list(done.groupby("combo", sort=False))
    # a sweep over the batch size compares jobs by the samples they saw, not by their steps
    per_sample = "train.batch_size" in done and done["train.batch_size"].nunique() > 1

    def batch(job: pd.Series) -> int | None:
        return int(job["train.batch_size"]) if per_sample else None

    labels = {}
    for ci, (combo, jobs) in enumerate(groups):  # first the jobs that did not diverge: they set the scale
        curves, held = [], []
        diverged = jobs["status"].eq("diverged")
        for _, job in jobs[~diverged].iterrows():
            train, val = _curve(job["path"], batch(job))
            if train is not None:
                curves.append(train)
            if val is not None and len(val):
                held.append(val)
        labels[combo] = combo + (f" ({int(diverged.sum())} diverged: dashed)" if diverged.any() else "")
        if curves:
            frame = pd.concat(curves, axis=1)
            _band(ax, frame.index.to_numpy(), list(frame.to_numpy(dtype=float).T), labels.pop(combo), cmap(ci))
        if held:
            v = pd.concat(held, axis=1).mean(axis=1)
            ax.plot(v.index, v.to_numpy(), "o", ms=4, color=cmap(ci), mfc="none")
    limits = None
    if ax.has_data():
        log_axis(ax)  # when the curves that trained span a decade
        limits = ax.get_ylim()
    for ci, (combo, jobs) in enumerate(groups):  # then each diverged job, on that scale, up to where it went
        for _, job in jobs[jobs["status"].eq("diverged")].iterrows():
            train, _ = _curve(job["path"], batch(job))
            if train is not None:
                ax.plot(train.index, train.to_numpy(), ls="--", lw=0.9, color=cmap(ci), label=labels.pop(combo, None))
            if job.get("diverged_step") == job.get("diverged_step"):  # not NaN
                step = job["diverged_step"]
                ax.axvline((step + 1) * batch(job) if per_sample else step, color=cmap(ci), ls=":", lw=1)
    if limits is not None:
        ax.set_ylim(limits)  # a diverged job's 1e25 leaves the top instead of flattening the others
    else:
        log_axis(ax)  # every job diverged: their own scale
    ax.set_xlabel("samples seen" if per_sample else "step")
    ax.set_ylabel("training loss (running mean)")
    panel_title(ax, "o held-out loss · dashed: a job that diverged (off the scale), dotted: where", 8)
    if outside:
        legend(ax, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    else:
        legend(ax, fontsize=7, loc="upper right")
    return save(fig, out_dir / "loss_curves", f"{_study(out_dir, done, [])}: loss curves", fmt)


@drawing
def plot_sweep(df: pd.DataFrame, factors: list[str], out_dir: Path, fmt: str = "png", layers: str = "weighted",
               headlines: list[dict[str, Any]] | None = None) -> list[Path]:
    """Comparison figures of a sweep: the study's headline (as its experiment declares it), the
    grid of final losses over the swept factors, per-layer step-0 std overlaid per combination,
    and loss curves (not for probes: one step is no curve)."""
    own_dir(out_dir)
    groups = [f for f in factors if f != "seed"]
    done = df[df["status"].isin(["ok", "diverged"])].copy()
    if done.empty:
        return []
    done["combo"] = done.apply(lambda r: _combo(r, groups), axis=1)
    cmap = _palette(done["combo"].nunique())
    probe = df.get("steps_done") is not None and not (df["steps_done"].fillna(0) > 1).any()
    made = [plot_headline(done, spec, out_dir / ("headline" if i == 0 else f"headline_{i + 1}"), fmt)
            for i, spec in enumerate(headlines or [])]
    made += [_grid_final_loss(done, groups, cmap, out_dir, fmt, probe), _step0_overlay(done, cmap, out_dir, fmt, layers)]
    if not probe:
        made.append(_loss_curves(done, cmap, out_dir, fmt))
    if (axes := transfer_axes(done, groups)) is not None and "loss_avg" in done:  # a width x learning-rate grid
        made.append(plot_lr_transfer(done, *axes, out_dir, fmt))
    return [p for p in made if p is not None]


def _study(out_dir: Path, done: pd.DataFrame, groups: list[str]) -> str:
    """'experiment=bn_position, 6 jobs over model.bn_position × seed': what the sweep was, from
    its multirun.yaml (the command line's overrides) where it is there."""
    import yaml

    name = ""
    try:
        task = yaml.safe_load((out_dir.parent / "multirun.yaml").read_text())["hydra"]["overrides"]["task"]
        name = next((t for t in task if t.startswith("experiment=")), "")
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        pass
    over = f" over {' × '.join(groups)}" if groups else ""
    return ", ".join(x for x in (name, f"{len(done)} jobs{over}") if x)


def _palette(n: int) -> Callable[[int], Any]:
    """One distinct colour per combination: tab10, tab20 up to 20, a spread colormap beyond."""
    if n <= 10:
        return colormaps["tab10"]
    if n <= 20:
        return colormaps["tab20"]
    cmap = colormaps["turbo"]
    return lambda i: cmap(0.05 + 0.9 * i / max(n - 1, 1))
