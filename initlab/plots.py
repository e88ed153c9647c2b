"""DataFrames -> figures. Reads parquet-shaped tables only; never imports torch."""

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files, never windows: runs headless on CI and clusters
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

MAX_LINES = 10


def title_of(config: dict[str, Any]) -> str:
    """'conv4 · init=default · bn=false' from a run's config."""
    model = config.get("model", {}).get("name", "?")
    init = config.get("init", {}).get("name", "?")
    bn = str(config.get("bn", "?")).lower()
    act = config.get("model", {}).get("act")
    return f"{model}" + (f" ({act})" if act else "") + f" · init={init} · bn={bn}"


def _first_nonfinite_idx(df: pd.DataFrame) -> int | None:
    bad = df[(df["nonfinite"] > 0) | ~np.isfinite(df["std"])]
    return int(bad["layer_idx"].min()) if len(bad) else None


def plot_step0(stats: pd.DataFrame, title: str, path: Path) -> Path | None:
    """Per-layer activation and gradient std at init against layer index, log scale."""
    s0 = stats[stats["step"] == stats["step"].min()]
    if s0.empty:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    for ax, kind, label in zip(axes, ("act", "grad"), ("activation std", "gradient std (dL/d output)")):
        d = s0[s0["kind"] == kind].sort_values("layer_idx")
        finite = d[np.isfinite(d["std"]) & (d["std"] > 0)]
        ax.plot(finite["layer_idx"], finite["std"], marker="o", ms=3, lw=1.2)
        ax.set_yscale("log")
        ax.set_xlabel("layer index (forward order)")
        ax.set_ylabel(label)
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        bad = _first_nonfinite_idx(d) if not d.empty else None
        if bad is not None:
            ax.axvline(bad, color="red", ls="--", lw=1)
            ax.text(bad, 0.95, f" non-finite from layer {bad}", color="red",
                    transform=ax.get_xaxis_transform(), va="top", fontsize=8)
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"{title}: statistics at step 0")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    fig.suptitle(f"{title}: activations over training")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_metrics(metrics: pd.DataFrame, title: str, path: Path) -> Path | None:
    """Loss and accuracy curves, training batches and held-out evaluations."""
    if metrics.empty:
        return None
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 4))
    ax_l.plot(metrics["step"], metrics["loss"], lw=1, label="train")
    ax_a.plot(metrics["step"], metrics["accuracy"], lw=1, label="train")
    if "val_loss" in metrics:
        v = metrics.dropna(subset=["val_loss"])
        ax_l.plot(v["step"], v["val_loss"], "o-", ms=4, label="held-out")
        ax_a.plot(v["step"], v["val_accuracy"], "o-", ms=4, label="held-out")
    finite = metrics["loss"][np.isfinite(metrics["loss"])]
    if len(finite) and (finite > 0).all():
        ax_l.set_yscale("log")
    for ax, name in ((ax_l, "loss"), (ax_a, "accuracy")):
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_run(stats: pd.DataFrame, metrics: pd.DataFrame, config: dict[str, Any], out_dir: Path) -> list[Path]:
    """Every figure of one run into `out_dir`; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    title = title_of(config)
    made = []
    if not stats.empty:
        made.append(plot_step0(stats, title, out_dir / "step0_std.png"))
        made.append(plot_over_steps(stats, title, out_dir / "telemetry.png"))
    made.append(plot_metrics(metrics, title, out_dir / "metrics.png"))
    return [p for p in made if p is not None]
