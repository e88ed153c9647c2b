"""A study's headline figure: its claim drawn the way its paper draws it, as the experiment's
YAML declares (`headline:`), titled with the claim. Two forms:

- a final number against a swept factor: `x` (a swept key), `y` (a column of sweep.parquet,
  e.g. val_loss, loss_avg, val_accuracy), one line per value of `lines`;
- a step-0 statistic by layer: `layers: {kind, stat, param}` (e.g. weight_grad's norm of each
  weight), one line per value of `lines`.

`panels` (a swept key) splits either into one panel per value; whatever else was swept (seeds)
is the mean line and its min-max band. A list of declarations draws headline.png, headline_2.png…
"""

from __future__ import annotations

import numbers
import textwrap
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from initlab.checks import headline_problem
from initlab.rundir.layout import STATS_DIR

if TYPE_CHECKING:  # pandas and matplotlib: imported to draw, not to import this module
    import pandas as pd

NAMES = {"val_loss": "held-out loss", "val_accuracy": "held-out accuracy", "loss_avg": "training loss (last 50 steps)",
         "final_loss": "training loss (last step)", "final_accuracy": "training accuracy (last step)"}


def _values(done: pd.DataFrame, key: str | None) -> list[Any]:
    return [None] if key is None else list(dict.fromkeys(done[key]))


def _step0(path: str, layers: dict[str, Any]) -> pd.DataFrame:
    """A job's step-0 rows of one kind (and parameter), read with a filter."""
    import pandas as pd
    import pyarrow.dataset as pads

    p = Path(path) / STATS_DIR
    if not p.exists() or not any(p.glob("*.parquet")):
        return pd.DataFrame()
    flt = (pads.field("step") == 0) & (pads.field("kind") == str(layers["kind"]))
    d = pads.dataset(p, format="parquet").to_table(filter=flt).to_pandas()
    if layers.get("param") and "param" in d:
        d = d[d["param"] == layers["param"]]
    if layers.get("match"):  # a glob on the layer names, e.g. the MLP blocks' second Linear
        d = d[[fnmatch(str(n), str(layers["match"])) for n in d["layer"]]]
    return d


def plot_headline(done: pd.DataFrame, spec: dict[str, Any], path: Path, fmt: str = "png") -> Path | None:
    """plots/headline.png (headline_2.png, ...): the declared claim over the jobs that finished
    (ok or diverged)."""
    from initlab.report.plots.base import colors, figure, legend, log_axis, panel_title, save

    if done.empty or headline_problem(spec, list(done.columns)):
        return None
    panels = _values(done, spec.get("panels"))
    lines = _values(done, spec.get("lines"))
    palette = colors("tab10", len(lines))
    fig, axes = figure(1, len(panels), (4.6, 3.4), bottom=1.0, top=0.95)  # room for a claim on two or three lines
    for ax, panel in zip(axes[0], panels):
        sub = done if panel is None else done[done[spec["panels"]] == panel]
        for k, (color, line) in enumerate(zip(palette, lines)):
            jobs = sub if line is None else sub[sub[spec["lines"]] == line]
            label = "" if line is None else f"{spec['lines']}={line}"
            if "x" in spec:
                _final(ax, jobs, spec, color, label, list(dict.fromkeys(done[spec["x"]])),
                       0.08 * (k - (len(lines) - 1) / 2))
            else:
                _by_layer(ax, jobs, spec["layers"], color, label)
        if panel is not None:
            panel_title(ax, f"{spec['panels']}={panel}", 9)
        if "x" in spec:
            ax.set_xlabel(spec["x"])
            ax.set_ylabel(NAMES.get(spec["y"], spec["y"]))
            xs = list(dict.fromkeys(done[spec["x"]]))
            if spec.get("log_x") and _numeric(xs):
                ax.set_xscale("log", base=2)
            if len(xs) <= 8 or not _numeric(xs):  # the swept values themselves, not a locator's round numbers
                place = _position(xs)
                ax.set_xticks([place(v) for v in xs], [str(v) for v in xs])
            if not _numeric(xs):
                ax.set_xlim(-0.5, len(xs) - 0.5)
        else:
            kind, stat = spec["layers"]["kind"], spec["layers"]["stat"]
            ax.set_ylabel(f"{kind} {stat} at step 0")
            log_axis(ax)
        if lines != [None]:
            legend(ax, fontsize=7, loc="best")
    width = int(fig.get_figwidth() * 13)  # characters of the 10 pt title that fit across the figure
    return save(fig, path, "\n".join(textwrap.wrap(str(spec["title"]), width)), fmt)


def _final(ax: Any, jobs: pd.DataFrame, spec: dict[str, Any], color: Any, label: str, order: list[Any],
           shift: float) -> None:
    """The mean of `y` over the jobs at each x (seeds), with its min-max range: a line and band
    over a numeric x; over a categorical x (norm=batch,group: 0, 1, ... in the order swept)
    points with range bars, nudged by `shift` so that lines do not hide each other."""
    import pandas as pd

    y = pd.to_numeric(jobs[spec["y"]], errors="coerce")
    g = y.groupby(jobs[spec["x"]].map(_position(order)), sort=True)
    x, mean, lo, hi = g.mean().index.to_numpy(dtype=float), g.mean().to_numpy(), g.min().to_numpy(), g.max().to_numpy()
    n = int(g.size().max()) if len(g) else 0
    label += f" (mean of {n})" if n > 1 else ""
    if not _numeric(order):
        ax.errorbar(x + shift, mean, yerr=[mean - lo, hi - mean], fmt="o", ms=5, capsize=3, color=color, label=label)
        return
    ax.plot(x, mean, marker="o", ms=4, lw=1.4, color=color, label=label)
    if n > 1:
        ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)


def _numeric(values: list[Any]) -> bool:
    """Numbers (numpy's too), not flags: bn=false,true is two categories."""
    return all(isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) for v in values)


def _position(order: list[Any]) -> Any:
    """x values to positions: themselves when numbers, else their place in the sweep's order."""
    if _numeric(order):
        return lambda v: float(v)
    place = {str(v): i for i, v in enumerate(order)}
    return lambda v: float(place[str(v)])


def _by_layer(ax: Any, jobs: pd.DataFrame, layers: dict[str, Any], color: Any, label: str) -> None:
    """The statistic of each weighted layer in forward order, mean over the jobs (geometric: a log
    axis), with its min-max band."""
    from initlab.report.plots.base import LayerAxis

    rows = [_step0(p, layers) for p in jobs["path"]]
    rows = [r for r in rows if len(r)]
    if not rows:
        return
    axis = LayerAxis(rows[0], "weighted")
    ys = np.vstack([axis.place(r, layers["stat"])[1] for r in rows if len(axis.place(r, layers["stat"])[1])
                    == len(axis.names)]) if rows else np.empty((0, 0))
    if not len(ys):
        return
    with np.errstate(all="ignore"):
        mean = np.exp(np.nanmean(np.log(ys), 0))
    x = np.arange(ys.shape[1])
    ax.plot(x, mean, marker="o", ms=3, lw=1.4, color=color, label=label + (f" (mean of {len(ys)})" if len(ys) > 1 else ""))
    if len(ys) > 1:
        ax.fill_between(x, ys.min(0), ys.max(0), color=color, alpha=0.2, lw=0)
    axis.label(ax)
