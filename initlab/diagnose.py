"""Diagnosis: named flags from a run's statistics, with thresholds from `diagnose` config.

Flags are plain dicts (`flag`, `detail`, numbers) so they go into summary.json, a rich
table at the end of a run, and columns of sweep.parquet alike. Reads DataFrames only.
"""

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from initlab.nn.names import WEIGHTED_TYPES

WEIGHTED = WEIGHTED_TYPES  # by class name: the tables hold names
DEFAULTS = {
    "vanishing_ratio": 0.1,     # weighted-layer std ratio across the net below this at step 0
    "exploding_ratio": 10.0,    # ... above this
    "dead_frac": 0.9,           # an activation layer with more dead/saturated elements
    "update_ratio_low": 1e-5,   # median update:data ratio of weights below this
    "update_ratio_high": 1e-1,  # ... above this
    "underflow": 0.01,          # a layer's gradients flushed to zero in the run's format above this fraction
}


def depth_ratio(step0: pd.DataFrame, kind: str) -> float:
    """How the std of the weighted layers' outputs changes across the net at one step:
    activations last/first, gradients first/last (they flow backwards). For gradients the
    classifier is left out once there are three weighted layers: with a fan-out of a few
    classes, its backward factor fan_out * Var(W) is tiny under any fan-in init. Layers
    whose std is exactly zero were zeroed on purpose (Fixup) and are left out too. NaN
    without two such layers; inf where any of them holds a non-finite value (the scale is
    lost, not a large number: a ratio of the finite layers around it would be)."""
    # numpy on the columns, not pandas on the frame: the probe asks this of every draw
    sel = (step0["kind"].to_numpy() == kind) & step0["module_type"].isin(WEIGHTED).to_numpy()
    order = np.argsort(step0["layer_idx"].to_numpy()[sel], kind="stable")
    std = step0["std"].to_numpy(dtype=float)[sel][order]
    nonfinite = step0["nonfinite"].to_numpy()[sel][order] if "nonfinite" in step0 else np.zeros(len(std))
    if kind == "grad" and len(std) >= 3:
        std, nonfinite = std[:-1], nonfinite[:-1]
    if len(std) >= 2 and (~np.isfinite(std) | (nonfinite != 0)).any():
        return float("inf")
    std = std[np.isfinite(std) & (std > 0)]
    if len(std) < 2:
        return float("nan")
    ratio = float(std[-1] / std[0])
    return 1 / ratio if kind == "grad" else ratio


def diagnose(stats: pd.DataFrame, summary: Mapping[str, Any], thresholds: Mapping[str, float] | None = None) -> list[dict]:
    """Every flag that fires for a run, in a stable order."""
    t = {**DEFAULTS, **(thresholds or {})}
    flags: list[dict] = []
    if summary.get("status") == "diverged" and summary.get("diverged"):
        d = summary["diverged"]
        what = "loss" if d.get("loss") is not None else d.get("kind") or "value"
        where = f"; first non-finite layer {d['layer']}" if d.get("layer") else ""
        flags.append({"flag": "diverged", "detail": f"non-finite {what} at step {d['step']}{where}",
                      "step": d["step"], "layer": d.get("layer"), "kind": what})
    if stats.empty:
        return flags
    s0 = stats[stats["step"] == stats["step"].min()]
    for kind, name in (("act", "activations"), ("grad", "gradients")):
        ratio = depth_ratio(s0, kind)
        if np.isnan(ratio):
            continue
        if ratio < t["vanishing_ratio"]:
            flags.append({"flag": f"vanishing_{kind}", "detail": f"{name} std shrinks {1 / ratio:.3g}x "
                          "from the input side to the output side at init" if kind == "act" else
                          f"{name} std shrinks {1 / ratio:.3g}x from the last hidden layer back to the first at init",
                          "ratio": ratio})
        elif math.isinf(ratio):
            flags.append({"flag": f"exploding_{kind}", "detail": f"{name} overflow to non-finite values across "
                          "the network at init (no finite std ratio)", "ratio": ratio})
        elif ratio > t["exploding_ratio"]:
            flags.append({"flag": f"exploding_{kind}", "detail": f"{name} std grows {ratio:.3g}x across the "
                          "network at init", "ratio": ratio})
    if "dead_frac" in stats:
        last = stats[(stats["step"] == stats["step"].max()) & (stats["kind"] == "act")]
        dead = last[last["dead_frac"] > t["dead_frac"]]
        if len(dead):
            flags.append({"flag": "dead_layers", "detail": f"{len(dead)} activation layer(s) over "
                          f"{t['dead_frac']:.0%} dead/saturated at step {int(last['step'].max())}: "
                          + ", ".join(dead["layer"].head(5)), "layers": dead["layer"].tolist()})
    upd = stats[(stats["kind"] == "update") & (stats.get("param", "") == "weight")] if "param" in stats else stats.iloc[:0]
    upd = upd[np.isfinite(upd["ratio"]) & (upd["ratio"] > 0)]
    if len(upd):
        med = float(upd["ratio"].median())
        if med < t["update_ratio_low"] or med > t["update_ratio_high"]:
            flags.append({"flag": "update_ratio", "detail": f"median update:data ratio {med:.2g} is outside "
                          f"[{t['update_ratio_low']:g}, {t['update_ratio_high']:g}] (about 1e-3 is healthy)",
                          "ratio": med})
    underflow = _grad_underflow(stats, summary, t["underflow"])
    if underflow is not None:
        flags.append(underflow)
    return flags


def _grad_underflow(stats: pd.DataFrame, summary: Mapping[str, Any], threshold: float) -> dict | None:
    """Layers whose gradients (dLoss/d output) would lose more than `threshold` of their non-zero
    values to zero in the first of telemetry.formats they are not already held in: the median
    over the logged steps, so one odd step does not fire it."""
    held_in = (summary.get("precision") or {}).get("name")
    # what-ifs only: gradients already held in the run's format have lost what they lose (zero_frac)
    zero_cols = [c for c in stats.columns if c.endswith("_zero") and c != "zero_frac" and c != f"{held_in}_zero"]
    if not zero_cols:
        return None
    col = zero_cols[0]
    grads = stats[stats["kind"] == "grad"]
    lost = grads.groupby("layer", sort=False)[col].median().dropna()
    lost = lost[lost > threshold].sort_values(ascending=False)
    if lost.empty:
        return None
    fmt = col.removesuffix("_zero")
    where = ", ".join(f"{layer} ({v:.1%})" for layer, v in lost.head(5).items())
    return {"flag": "grad_underflow", "detail": f"{len(lost)} layer(s) would lose more than {threshold:.0%} of their gradient "
            f"values to zero in {fmt}: {where}. Loss scaling (precision=fp16 precision.loss_scale=dynamic), an init "
            "that keeps the gradients' scale (init=kaiming) or a norm helps", "format": fmt,
            "layers": lost.index.tolist(), "fractions": lost.round(6).tolist()}
