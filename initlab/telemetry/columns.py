"""A logged step's rows -> tidy columns: stats (one row per layer, kind and parameter) and
the long-format histogram table (one row per non-empty bin)."""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from initlab.telemetry.hist import HistSpec
from initlab.telemetry.stats import INTEGER, STATS

KINDS = ("act", "grad", "weight", "weight_grad", "update",
         "bn_running_mean", "bn_running_var", "bn_batch_mean", "bn_batch_var", "norm_mean", "norm_var")
PARAM_KINDS = ("weight", "weight_grad", "update")
_KINDS = np.array(KINDS, dtype=object)
KIND_CODE = {k: i for i, k in enumerate(KINDS)}

Columns = dict[str, np.ndarray]


@dataclass(frozen=True)
class Slot:
    """One module call, in forward order."""

    layer: str
    module_type: str
    layer_idx: int


def stats_columns(step: int, slots: Sequence[Slot], kinds: Sequence[str], params: Sequence[str],
                  index: np.ndarray, stats: np.ndarray, n_params: int) -> Columns:
    """The stats table of one step from its rows' identities and float64 STATS rows."""
    n = len(slots)
    kind = np.fromiter((KIND_CODE[k] for k in kinds), dtype=np.int8, count=n)
    cols: Columns = {
        "step": np.full(n, step, dtype=np.int64),
        "layer": np.array([s.layer for s in slots], dtype=object),
        "layer_idx": np.fromiter((s.layer_idx for s in slots), dtype=np.int32, count=n),
        "module_type": np.array([s.module_type for s in slots], dtype=object),
        "kind": _KINDS[kind],
        "param": np.array(params, dtype=object),
    }
    for i, stat in enumerate(STATS):
        cols[stat] = stats[:, i].astype(np.int64) if stat in INTEGER else stats[:, i]
    cols["mean"][kind == KIND_CODE["update"]] *= -1  # the snapshot held before - after
    with np.errstate(all="ignore"):
        cols["absmax"] = np.maximum(np.abs(cols["min"]), np.abs(cols["max"]))
        # sum of squares from mean and unbiased variance: no extra pass on the device
        numel = cols["numel"].astype(np.float64)
        cols["norm"] = np.sqrt((numel - 1) * cols["std"] ** 2 + numel * cols["mean"] ** 2)
        cols["ratio"] = _ratios(kind, index, cols["std"], n_params)
    return cols


def _ratios(kind: np.ndarray, index: np.ndarray, std: np.ndarray, n_params: int) -> np.ndarray:
    """grad:data (weight_grad std / weight std) and update:data (update std / weight std),
    both against the weights as they are after the step."""
    weight_std = np.full(n_params + 1, np.nan)  # the last entry: no weight row
    w = kind == KIND_CODE["weight"]
    weight_std[index[w]] = std[w]
    ratio = np.full(len(kind), np.nan)
    r = (kind == KIND_CODE["weight_grad"]) | (kind == KIND_CODE["update"])
    denom = weight_std[index[r]]
    ratio[r] = np.where(denom > 0, std[r] / denom, np.nan)
    return ratio


def hist_columns(cols: Columns, hist_rows: Sequence[int], counts: np.ndarray, spec: HistSpec,
                 bounds: tuple[np.ndarray, np.ndarray]) -> Columns:
    """Long format: one row per non-empty bin of each histogram row."""
    counts = counts.reshape(len(hist_rows), spec.n_bins)
    lo, hi = bounds
    r, b = np.nonzero(counts)
    rows = np.asarray(hist_rows)[r]
    return {
        "step": cols["step"][rows] if len(rows) else np.zeros(0, dtype=np.int64),
        "layer": cols["layer"][rows],
        "layer_idx": cols["layer_idx"][rows],
        "module_type": cols["module_type"][rows],
        "kind": cols["kind"][rows],
        "bin": b.astype(np.int16),
        "lo": lo[b],
        "hi": hi[b],
        "count": counts[r, b].astype(np.int64),
    }


def nonfinite_rows(cols: Columns) -> np.ndarray:
    """Rows whose tensor went non-finite: NaN or inf elements, or a statistic that overflowed
    (finite values whose mean or norm is inf). A row of zero elements is not non-finite (its mean
    is undefined, not a divergence), nor is one element's undefined unbiased std."""
    numel = cols["numel"] if "numel" in cols else np.full(len(cols["nonfinite"]), 2)  # a table without counts: non-empty
    with np.errstate(invalid="ignore"):
        bad = cols["nonfinite"] != 0
        if "mean" in cols:
            bad |= (numel > 0) & ~np.isfinite(cols["mean"].astype(float))
        for name in ("std", "norm"):
            if name in cols:
                bad |= (numel > 1) & ~np.isfinite(cols[name])
    return bad


def first_nonfinite(cols: Columns | None, kinds: tuple[str, ...] = ("act",), last: bool = False
                    ) -> tuple[str, int] | None:
    """(layer, layer_idx) of the earliest row of `kinds` in forward order that went non-finite
    (`last`: the latest, i.e. for gradients where the backward pass first went non-finite)."""
    if cols is None:
        return None
    mask = np.isin(cols["kind"], kinds) & nonfinite_rows(cols)
    if not mask.any():
        return None
    pick = np.argmax if last else np.argmin
    i = np.flatnonzero(mask)[pick(cols["layer_idx"][mask])]
    return str(cols["layer"][i]), int(cols["layer_idx"][i])
