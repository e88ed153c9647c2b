"""telemetry.formats' figure: where each layer's values sit against the formats' ranges, and
how much of each layer's gradient the run's format flushes to zero over training."""

from pathlib import Path

import numpy as np
import pandas as pd

from initlab.report.plots.base import colors, figure, panel_title, save

KINDS = (("act", "activations"), ("grad", "gradients (dL/d output)"))
# (smallest subnormal, smallest normal, largest finite) as plain numbers: the figures never import
# torch; telemetry/formats.py reads the same from torch.finfo, and tests/test_precision.py holds them equal
LIMITS: dict[str, tuple[float, float, float]] = {
    "fp16": (2.0**-24, 2.0**-14, 65504.0),
    "bf16": (2.0**-133, 2.0**-126, 3.3895313892515355e38),
    "e4m3": (2.0**-9, 2.0**-6, 448.0),
    "e5m2": (2.0**-16, 2.0**-14, 57344.0),
}


def formats_in(stats: pd.DataFrame) -> list[str]:
    """The formats a run recorded, in the order it recorded them."""
    return [c.removesuffix("_zero") for c in stats.columns if c.endswith("_zero") and c.removesuffix("_zero") in LIMITS]


def plot_formats(stats: pd.DataFrame, title: str, path: Path, fmt: str = "png", held_in: str | None = None
                 ) -> Path | None:
    """Left, per kind: each layer's magnitudes at the last logged step on a log2 axis (the rms as a
    dot, amin..amax as a bar) over each format's subnormal (darker) and normal (lighter) bands.
    Right, layer by logged step: in a run whose gradients are held in a low format (`held_in`),
    the fraction of them exactly zero (what it flushed, and the zeros the gradient has anyway);
    otherwise the fraction the first format recorded would flush (a what-if)."""
    names = formats_in(stats)
    if not names or "amax" not in stats:
        return None
    shown = held_in if held_in in names else names[0]
    last = stats[stats["step"] == stats["step"].max()]
    fig, axes = figure(1, 3, (3.6, 3.4), left=0.9, right=1.1, wspace=0.9, bottom=1.0, grid="y")
    band_colors = dict(zip(names, colors("tab10", 10)))
    with np.errstate(divide="ignore", invalid="ignore"):
        span = np.log2(last[["amin", "amax"]].to_numpy(dtype=float))
    span = span[np.isfinite(span)]
    ylim = (span.min() - 6, span.max() + 6) if span.size else (-30.0, 20.0)  # the data, not bf16's 2**-133..2**128
    for ax, (kind, label) in zip(axes[0][:2], KINDS):
        d = last[last["kind"] == kind].sort_values("layer_idx")
        for name in names:
            sub, tiny, top = LIMITS[name]
            ax.axhspan(np.log2(sub), np.log2(tiny), color=band_colors[name], alpha=0.22, lw=0)
            ax.axhspan(np.log2(tiny), np.log2(top), color=band_colors[name], alpha=0.07, lw=0,
                       label=f"{name}: subnormal 2^{np.log2(sub):.0f}, normal 2^{np.log2(tiny):.0f}..{top:.3g}")
        if not d.empty:
            x = np.arange(len(d))
            with np.errstate(divide="ignore", invalid="ignore"):
                rms = np.log2(np.sqrt(d["mean"].to_numpy() ** 2 + d["std"].to_numpy() ** 2))
                lo, hi = np.log2(d["amin"].to_numpy()), np.log2(d["amax"].to_numpy())
            ok = np.isfinite(lo) & np.isfinite(hi)
            ax.vlines(x[ok], lo[ok], hi[ok], color="black", lw=1.2)
            ax.plot(x[np.isfinite(rms)], rms[np.isfinite(rms)], "o", ms=3, color="tab:red")
            ax.set_xticks(x[:: max(1, len(x) // 8)])
        ax.set_ylim(*ylim)
        ax.set_xlabel("layer (forward order)")
        ax.set_ylabel("log2 |value|")
        panel_title(ax, f"{label}, step {int(last['step'].max())}")
    axes[0][0].legend(fontsize=6, loc="lower left", framealpha=0.8)
    ax = axes[0][2]
    if held_in in names:  # the run's gradients are held in that format: what it lost is already zero
        column, what = "zero_frac", f"gradient values exactly zero, held in {held_in} (its underflow and true zeros), %"
    else:
        column, what = f"{shown}_zero", f"gradient values {shown} would flush to zero, %"
    g = stats[stats["kind"] == "grad"].pivot_table(index="layer_idx", columns="step", values=column, dropna=False)
    if g.empty:
        ax.set_axis_off()
    else:
        percent = g.to_numpy() * 100
        image = ax.imshow(percent, aspect="auto", origin="lower", cmap="magma", vmin=0,
                          vmax=max(1.0, float(np.nanmax(percent)) if np.isfinite(percent).any() else 1.0),
                          extent=(-0.5, g.shape[1] - 0.5, -0.5, g.shape[0] - 0.5), interpolation="nearest")
        cbar = fig.colorbar(image, ax=ax, fraction=0.08, pad=0.03)
        cbar.ax.tick_params(labelsize=7)
        steps = g.columns.to_numpy()
        at = np.unique(np.linspace(0, len(steps) - 1, min(5, len(steps))).round().astype(int))
        ax.set_xticks(at, [str(steps[i]) for i in at])
        ax.set_xlabel("logged step")
        ax.set_ylabel("layer (forward order)")
        panel_title(ax, what, 8)
    return save(fig, path, f"{title}: values against the formats' ranges (dot: rms; bar: amin..amax)", fmt)
