"""The coordinate check's figure (microsoft/mup's, done well): a panel per step shown, width on
a log2 axis, each layer's mean |output| on a log axis, its seed spread as a band; a row per
parametrisation, every panel on one y range, so SP's growth and μP's flat lines read at once."""

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.ticker import FixedLocator, NullLocator

from initlab.report.plots.base import PLAIN, colors, drawing, figure, panel_title, save
from initlab.rundir.safe import own_dir

MAX_PANELS = 10  # steps shown per row: every recorded step up to this many; past it the first, the last, evenly between


def shown_steps(steps: np.ndarray, most: int = MAX_PANELS) -> list[int]:
    """At most `most` of the recorded steps: the first, the last, and evenly spaced between."""
    steps = np.unique(steps)
    pick = np.unique(np.linspace(0, len(steps) - 1, min(most, len(steps))).round().astype(int))
    return [int(s) for s in steps[pick]]


@drawing
def plot_coord_check(table: pd.DataFrame, verdict: dict[str, dict[str, Any]], path: Path, fmt: str = "png",
                     kind: str = "act") -> Path:
    """One figure of `table` (coord_check's rows) for `kind` (act: the modules' outputs)."""
    own_dir(path.parent)
    d = table[(table["kind"] == kind) & np.isfinite(table["l1"]) & (table["l1"] > 0)]
    params = list(dict.fromkeys(d["param"]))
    steps = shown_steps(d["step"].to_numpy())
    layers = d.drop_duplicates("layer").sort_values("layer_idx")[["layer", "module_type"]].to_numpy()
    palette = colors("viridis", len(layers))
    fig, axes = figure(len(params), len(steps), (2.0, 2.0), sharex=True, sharey=True, left=0.9, right=2.2,
                       wspace=0.2, hspace=0.55, top=0.75)
    for row, param in enumerate(params):
        for col, step in enumerate(steps):
            ax = axes[row][col]
            at = d[(d["param"] == param) & (d["step"] == step)]
            for (layer, mtype), color in zip(layers, palette):
                g = at[at["layer"] == layer].groupby("width")["l1"]
                if not len(g):
                    continue
                w = np.array(sorted(g.groups), dtype=float)
                mean = np.exp(g.apply(lambda s: np.log(s).mean()).reindex(w).to_numpy())
                lo, hi = g.min().reindex(w).to_numpy(), g.max().reindex(w).to_numpy()
                ax.plot(w, mean, color=color, lw=1.2, marker=".", ms=3,
                        label=f"{layer} ({mtype})" if row == 0 and col == 0 else None)
                if g.size().max() > 1:
                    ax.fill_between(w, lo, hi, color=color, alpha=0.18, lw=0)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.xaxis.set_major_locator(FixedLocator(sorted(d["width"].unique())))
            ax.xaxis.set_minor_locator(NullLocator())
            for axis in (ax.xaxis, ax.yaxis):  # 64, 128, …; 0.1, 1, 10: plain numbers, not mathtext
                axis.set_major_formatter(PLAIN)
            ax.tick_params(axis="x", labelsize=7, rotation=45)
            v = verdict.get(param, {})
            panel_title(ax, f"{param} · step {step}", 8)
            if row == len(params) - 1:
                ax.set_xlabel("width")
            if col == 0:  # the row's parametrisation and its verdict (steps 1 on) beside it
                ax.set_ylabel(f"{param}" + (f": {v['verdict']}" if v else "") +
                              f"\nmean |{'output' if kind == 'act' else kind}|")
    fig.legend(loc="upper left", bbox_to_anchor=(1 - 2.1 / fig.get_figwidth(), 1 - 0.8 / fig.get_figheight()),
               fontsize=6, frameon=False)
    title = "coordinate check: each module's output size against width" if kind == "act" else \
        f"coordinate check: {kind} against width"
    return save(fig, path, title, fmt)
