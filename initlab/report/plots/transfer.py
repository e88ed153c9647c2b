"""Learning-rate transfer (Tensor Programs V, Figure 1): a sweep over width × learning rate
(× parametrisation) drawn as training loss against learning rate, a curve per width and a panel
per parametrisation, and the table of each width's best rate with the optimum's shift."""

from pathlib import Path

import numpy as np
import pandas as pd

from initlab.report.plots.base import colors, figure, panel_title, save

LR = "optim.lr"
WIDTH_KEYS = ("model.width", "model.dim", "model.channels", "model.width_mult")
LOSS = "loss_avg"  # the training loss over the last steps: one minibatch is noise


def transfer_axes(df: pd.DataFrame, factors: list[str]) -> tuple[str, str | None] | None:
    """(width key, param key or None) when the sweep is a width × learning-rate grid."""
    width = next((k for k in WIDTH_KEYS if k in factors), None)
    if LR not in factors or width is None:
        return None
    return width, ("param" if "param" in df.columns and df["param"].nunique() > 1 else None)


def lr_optima(df: pd.DataFrame, width: str, param: str | None) -> pd.DataFrame:
    """Per (param, width): the learning rate of the lowest median training loss over seeds, its
    loss, and its shift in grid steps from the optimum at the smallest width (jobs whose loss is
    not finite count as worst)."""
    d = df.assign(_loss=pd.to_numeric(df[LOSS], errors="coerce").where(lambda s: np.isfinite(s)))
    grid = np.sort(d[LR].astype(float).unique())
    rows = []
    for p, pg in d.groupby(param) if param else [("", d)]:
        first = None
        for w, wg in sorted(pg.groupby(width), key=lambda kv: float(str(kv[0]).strip("[]").split(",")[0])):
            med = wg.groupby(LR)["_loss"].median().dropna()
            if med.empty:
                continue
            best = float(med.idxmin())
            index = int(np.searchsorted(grid, best))
            first = index if first is None else first
            rows.append({"param": p, "width": w, "best_lr": best, "loss": float(med.min()), "shift": index - first})
    return pd.DataFrame(rows)


def plot_lr_transfer(df: pd.DataFrame, width: str, param: str | None, out_dir: Path, fmt: str = "png") -> Path:
    """Training loss against learning rate (log2), a line per width, a panel per param, the
    optimum of each width marked."""
    d = df.assign(_loss=pd.to_numeric(df[LOSS], errors="coerce"))
    params = list(dict.fromkeys(d[param])) if param else [""]
    widths = sorted(d[width].unique(), key=lambda w: float(str(w).strip("[]").split(",")[0]))
    palette = colors("viridis", len(widths))
    optima = lr_optima(df, width, param)
    fig, axes = figure(1, len(params), (4.2, 3.2), sharey=True, right=1.6)
    finite = d["_loss"][np.isfinite(d["_loss"])]
    top = float(finite.quantile(0.9)) if len(finite) else 1.0
    for ax, p in zip(axes[0], params):
        pg = d[d[param] == p] if param else d
        for w, color in zip(widths, palette):
            med = pg[pg[width] == w].groupby(LR)["_loss"].median()
            x = med.index.to_numpy(dtype=float)
            ax.plot(x, np.minimum(med.to_numpy(), top * 1.5), marker="o", ms=3, lw=1.2, color=color,
                    label=f"{width.split('.')[-1]}={w}")
            best = optima[(optima["param"] == p) & (optima["width"] == w)]
            if len(best):
                ax.plot(best["best_lr"], best["loss"], marker="*", ms=9, color=color, mec="black", mew=0.5)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("learning rate")
        shift = optima[optima["param"] == p]["shift"]
        panel_title(ax, (f"param={p}" if p else "") + (f" · optimum moves {int(shift.iloc[-1]):+d} grid steps"
                                                       if len(shift) else ""), 9)
    axes[0][0].set_ylabel("training loss (last 50 steps)")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)
    return save(fig, out_dir / "lr_transfer", "learning-rate transfer: training loss against learning rate by width",
                fmt)
