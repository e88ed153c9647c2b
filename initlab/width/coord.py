"""The coordinate check (microsoft/mup's, with a verdict): train a model at several widths for a
few steps on one fixed batch and record, per module and step, the size of its output (`act`),
of the change of its output that the last weight update caused (`update`, ΔW·x) and of its
weights (`weight`). Under μP every module's output stays the same size as the width grows;
under SP some grow. The slope of log2 l1 against log2 width says it in one number per
(layer, step), and the verdict says whether every activation's slope is within tolerance."""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from initlab.errors import InitlabError
from initlab.nn.hooks import hooked
from initlab.width.parametrize import OPTIMIZERS, PARAMS, parametrize

KINDS = ("act", "update", "weight")
TOLERANCE = 0.1  # |slope| of log2 l1 against log2 width at or below this: flat
_CONV = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}


@dataclass
class CoordResult:
    """What `coord_check` measured: `table` (one row per param, width, seed, step, layer and
    kind: l1, std, rms), `slopes` (per param, layer, kind and step: the slope of log2 l1 against
    log2 width, its sd over seeds) and `verdict` (per param: flat, or the drifting layers)."""

    table: pd.DataFrame
    tolerance: float = TOLERANCE
    slopes: pd.DataFrame = field(init=False)
    verdict: dict[str, dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.slopes = fit_slopes(self.table)
        self.verdict = verdicts(self.slopes, self.tolerance)

    def plot(self, path: str | Path, fmt: str = "png") -> Path:
        """mup's figure: a panel per step shown, x = width (log2), y = mean |output| (log), a line
        per layer with its seed spread as a band, a row per parametrisation on one y range."""
        from initlab.report.plots.coord import plot_coord_check  # matplotlib: only when drawn

        return plot_coord_check(self.table, self.verdict, Path(path), fmt)


def shapes_only(make: Callable[[Any], nn.Module], width: Any) -> nn.Module:
    """`make(width)` for its parameters' shapes: on the meta device (no memory, no random
    numbers drawn), or, for a builder that must compute (LSUV's forward), built with the random
    state restored after."""
    try:
        with torch.device("meta"):
            return make(width)
    except Exception:  # noqa: BLE001 - any builder's failure on meta: build it for real
        with torch.random.fork_rng():
            return make(width)


def _first_batch(batches: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batches, (tuple, list)) and len(batches) == 2 and all(isinstance(t, torch.Tensor) for t in batches):
        return batches[0], batches[1]
    try:
        x, y = next(iter(batches))
    except (TypeError, StopIteration, ValueError) as exc:
        raise InitlabError("coord_check: batches must be an (x, y) pair of tensors or an iterable of them") from exc
    return x, y


def _optimizer(name: str, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(groups)
    if name == "adam":
        return torch.optim.Adam(groups)
    return torch.optim.AdamW(groups)


def _sizes(t: torch.Tensor) -> tuple[float, float, float]:
    """mean |t|, std and rms of `t`: three reductions, no temporary copies (torch's cascaded sums
    keep float32's relative error near 1e-7, far inside what a slope over widths can see)."""
    t = t.detach().float().reshape(-1)
    n = t.numel()
    l1, l2, total = torch.stack([torch.linalg.vector_norm(t, 1), torch.linalg.vector_norm(t, 2), t.sum()]).tolist()
    sq = l2 * l2
    var = (sq - total * total / n) / (n - 1) if n > 1 else float("nan")
    return l1 / n, max(var, 0.0) ** 0.5 if n > 1 else float("nan"), (sq / n) ** 0.5


class _Recorder:
    """Per forward: every leaf module's output, its ΔW·x under the last update, its weight."""

    def __init__(self, model: nn.Module, kinds: Sequence[str] = KINDS) -> None:
        self.model = model
        self.kinds = set(kinds)
        self.leaves = [(n, m) for n, m in model.named_modules() if n and not any(True for _ in m.children())]
        self.delta: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.before: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.rows: list[tuple[str, str, str, float, float, float]] = []
        self.order: dict[str, int] = {}

    def hook(self, name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple, out: Any) -> None:
            t = out if isinstance(out, torch.Tensor) else (out[0] if isinstance(out, (tuple, list)) and out and
                                                           isinstance(out[0], torch.Tensor) else None)
            if t is None or not t.is_floating_point():
                return
            self.order.setdefault(name, len(self.order))
            kind_type = type(module).__name__
            with torch.no_grad():
                if "act" in self.kinds:
                    self.rows.append((name, kind_type, "act", *_sizes(t)))
                if name in self.delta and args and isinstance(args[0], torch.Tensor):
                    dw, db = self.delta[name]
                    change = self._apply(module, args[0], dw, db)
                    if change is not None:
                        self.rows.append((name, kind_type, "update", *_sizes(change)))
                w = getattr(module, "weight", None)
                if "weight" in self.kinds and isinstance(w, torch.Tensor):
                    self.rows.append((name, kind_type, "weight", *_sizes(w)))
        return record

    @staticmethod
    def _apply(module: nn.Module, x: torch.Tensor, dw: torch.Tensor, db: torch.Tensor | None) -> torch.Tensor | None:
        if isinstance(module, nn.Linear):
            return F.linear(x, dw, db)
        conv = _CONV.get(type(module))
        if conv is not None and module.padding_mode == "zeros" and isinstance(module.padding, tuple):
            return conv(x, dw, db, module.stride, module.padding, module.dilation, module.groups)
        return None

    def snapshot(self) -> None:
        """Before the optimizer's step: the weights the update starts from."""
        if "update" not in self.kinds:
            return
        self.before = {n: (m.weight.detach().clone(), m.bias.detach().clone() if getattr(m, "bias", None) is not None
                           else None)
                       for n, m in self.leaves if isinstance(getattr(m, "weight", None), torch.Tensor)}

    def updated(self) -> None:
        """After the step: ΔW (and Δb) of each weighted leaf."""
        self.delta = {}
        modules = dict(self.leaves)
        for n, (w0, b0) in self.before.items():
            m = modules[n]
            db = m.bias.detach() - b0 if b0 is not None else None
            self.delta[n] = (m.weight.detach() - w0, db)


def coord_check(make_model: Callable[[int], nn.Module], widths: Sequence[int], batches: Any, *,
                optimizer: str = "adam", lr: float = 1e-3, param: str | Iterable[str] = "mup",
                base_width: int | None = None, steps: int = 10, seeds: int = 3, weight_decay: float = 0.0,
                loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
                tolerance: float = TOLERANCE, readout_zero: bool = False, device: str | torch.device = "cpu",
                kinds: Sequence[str] = KINDS, progress: Callable[[str], None] | None = None) -> CoordResult:
    """Train `make_model(width)` for `steps` steps on the first batch of `batches` (the same batch
    every step, as mup's check does), for every width × parametrisation × seed, each
    parametrised against `make_model(base_width)` (default: the smallest width) with
    `initlab.parametrize`; record each module's output, its ΔW·x and its weight at every step
    (step 0: at init). `param`: one of sp, ntk, mup or several; `kinds`: what to record of
    act, update, weight (the verdict reads act). Returns a CoordResult."""
    params = [param] if isinstance(param, str) else list(param)
    if unknown := [p for p in params if p not in PARAMS]:
        raise InitlabError(f"coord_check: param {unknown} is invalid: choose from {list(PARAMS)}")
    if optimizer not in OPTIMIZERS:
        raise InitlabError(f"coord_check: optimizer={optimizer!r} is invalid: choose from {list(OPTIMIZERS)}")
    widths = sorted({int(w) for w in widths})
    if len(widths) < 2:
        raise InitlabError("coord_check: give at least two widths (a slope needs two points)")
    if not kinds or set(kinds) - set(KINDS) or "act" not in kinds:
        raise InitlabError(f"coord_check: kinds={list(kinds)} is invalid: act and any of update, weight")
    if steps < 1 or seeds < 1:
        raise InitlabError("coord_check: steps and seeds must be >= 1")
    base_width = int(base_width or widths[0])
    x, y = _first_batch(batches)
    x, y = x.to(device), y.to(device)
    frames = []
    for p in params:
        for width in widths:
            if progress is not None:
                progress(f"param={p} width={width}: {seeds} seed{'s' if seeds > 1 else ''} x {steps} steps")
            for seed in range(seeds):
                frames.append(_one(make_model, p, width, base_width, seed, x, y, optimizer, lr, weight_decay,
                                   steps, loss_fn, readout_zero, device, kinds))
    return CoordResult(pd.concat(frames, ignore_index=True), tolerance)


def _one(make_model: Callable[[int], nn.Module], param: str, width: int, base_width: int, seed: int,
         x: torch.Tensor, y: torch.Tensor, optimizer: str, lr: float, weight_decay: float, steps: int,
         loss_fn: Callable[..., torch.Tensor], readout_zero: bool, device: str | torch.device,
         kinds: Sequence[str]) -> pd.DataFrame:
    torch.manual_seed(seed)
    model = make_model(width)
    base, other = shapes_only(make_model, base_width), shapes_only(make_model, 2 * base_width)
    groups = parametrize(model, param, base, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                         readout_zero=readout_zero, delta=other)
    model.to(device).train()
    rec = _Recorder(model, kinds)  # a μP readout's input multiplier runs first: the hooks see what its forward sees
    opt = _optimizer(optimizer, groups)
    out = []
    for step in range(steps):
        rec.rows = []
        with hooked(m.register_forward_hook(rec.hook(n)) for n, m in rec.leaves):
            loss = loss_fn(model(x), y)
        out += [(step, *r) for r in rec.rows]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        rec.snapshot()
        opt.step()
        rec.updated()
    df = pd.DataFrame(out, columns=["step", "layer", "module_type", "kind", "l1", "std", "rms"])
    df.insert(0, "seed", seed)
    df.insert(0, "width", width)
    df.insert(0, "param", param)
    df.insert(df.columns.get_loc("layer") + 1, "layer_idx", df["layer"].map(rec.order).astype(int))
    return df


def fit_slopes(table: pd.DataFrame) -> pd.DataFrame:
    """Per (param, layer, kind, step): the least-squares slope of log2 l1 against log2 width for
    each seed, then their mean and sd over seeds. Widths where l1 is 0 or not finite are left
    out of a seed's fit (a zero-initialised readout at step 0)."""
    rows = []
    keys = ["param", "layer", "layer_idx", "module_type", "kind", "step"]
    for key, g in table.groupby(keys, sort=True):
        per_seed = []
        for _, s in g.groupby("seed"):
            ok = np.isfinite(s["l1"].to_numpy()) & (s["l1"].to_numpy() > 0)
            if ok.sum() >= 2:
                per_seed.append(np.polyfit(np.log2(s["width"].to_numpy()[ok]), np.log2(s["l1"].to_numpy()[ok]), 1)[0])
        rows.append((*key, float(np.mean(per_seed)) if per_seed else np.nan,
                     float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else np.nan, len(per_seed)))
    return pd.DataFrame(rows, columns=[*keys, "slope", "slope_sd", "seeds"]).sort_values(
        ["param", "kind", "step", "layer_idx"], ignore_index=True)


def verdicts(slopes: pd.DataFrame, tolerance: float = TOLERANCE) -> dict[str, dict[str, Any]]:
    """Per param: `flat` when every activation's |slope| is within `tolerance` at every step
    after the first update (step >= 1; at step 0 a μP readout shrinks as it should); else the
    drifting layers, each with its largest slope and the first step it drifts."""
    out: dict[str, dict[str, Any]] = {}
    for param, g in slopes.groupby("param", sort=False):
        act = g[(g["kind"] == "act") & (g["step"] >= 1) & g["slope"].notna()]
        drift = act[act["slope"].abs() > tolerance]
        layers = []
        for (layer, idx), d in drift.groupby(["layer", "layer_idx"], sort=False):
            worst = d.loc[d["slope"].abs().idxmax()]
            layers.append({"layer": layer, "layer_idx": int(idx), "slope": float(worst["slope"]),
                           "at_step": int(worst["step"]), "from_step": int(d["step"].min())})
        layers.sort(key=lambda r: r["layer_idx"])
        out[str(param)] = {"verdict": "flat" if not layers else "drifts", "tolerance": tolerance,
                           "max_abs_slope": float(act["slope"].abs().max()) if len(act) else float("nan"),
                           "drifting": layers}
    return out
