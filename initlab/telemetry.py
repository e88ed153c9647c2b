"""Per-layer statistics gathered on the device with one transfer per logged step.

On a logged step, forward hooks on every tracked leaf module compute statistics of its
output (`act`) and a tensor hook does the same for dLoss/d output (`grad`); parameter
tensors, their gradients and the optimizer's update are summarised around the step, and
each BatchNorm's running and batch statistics are read off its buffers. All of it stays
on the device as small tensors until `collect()` concatenates them and makes the step's
single device->host copy. Hooks exist only inside `record()`: unlogged steps run bare.

The kernels are chosen for cost: mean and variance come from a sum and a dot product of
the centred, max-scaled tensor (about 15x cheaper on CPU than torch.var_mean's Welford
pass, and immune to float32 overflow of squares), histograms bucket a fixed strided
sample of each tensor, and batch statistics of BN are recovered from the change of its
running buffers instead of a pass over its input.
"""

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Any

import numpy as np
import torch
from torch import nn

# Per-row statistics, in the order of the tensor returned by tensor_stats().
STATS = ("mean", "std", "min", "max", "zero_frac", "dead_frac", "dead_units", "nonfinite", "numel")
KINDS = ("act", "grad", "weight", "weight_grad", "update",
         "bn_running_mean", "bn_running_var", "bn_batch_mean", "bn_batch_var")
_SKIP = (nn.Flatten, nn.Unflatten, nn.Identity)
RELU_FAMILY = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
               nn.SiLU, nn.Mish, nn.Softplus)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
NAN = float("nan")


@dataclass(frozen=True)
class HistSpec:
    """Fixed symmetric log-spaced bins, identical for every step, layer, run and device.

    Layout, in value order: [-inf, -max_abs) overflow, K negative bins, (-min_abs, min_abs)
    underflow (non-zero), exactly zero, K positive bins, [max_abs, inf] overflow. NaNs are
    not binned (they are counted in `nonfinite`). A strided sample of at most `sample`
    elements per tensor is binned.
    """

    min_abs: float = 1e-6
    max_abs: float = 1e6
    bins_per_decade: int = 4
    sample: int = 4096

    @property
    def k(self) -> int:
        return round(math.log10(self.max_abs / self.min_abs) * self.bins_per_decade)

    @property
    def n_bins(self) -> int:
        return 2 * self.k + 4

    def edges(self) -> np.ndarray:
        return np.logspace(math.log10(self.min_abs), math.log10(self.max_abs), self.k + 1)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) of every bin in the layout, for the long-format table."""
        e, k = self.edges(), self.k
        lo = np.concatenate([[-np.inf], -e[::-1][:-1], [-e[0], 0.0], e[:-1], [e[-1]]])
        hi = np.concatenate([[-e[-1]], -e[::-1][1:], [e[0], 0.0], e[1:], [np.inf]])
        assert len(lo) == len(hi) == 2 * k + 4
        return lo, hi

    def as_dict(self) -> dict[str, Any]:
        return {"min_abs": self.min_abs, "max_abs": self.max_abs,
                "bins_per_decade": self.bins_per_decade, "sample": self.sample, "n_bins": self.n_bins}


def _histogram(x: torch.Tensor, spec: HistSpec, edges: torch.Tensor) -> torch.Tensor:
    """Counts per bin of a strided sample of x (NaN excluded), float64[n_bins]."""
    flat = x.reshape(-1)
    stride = max(1, -(-flat.numel() // spec.sample))
    s = flat[::stride]
    k = spec.k
    # bucketize: 0 below min_abs, 1..k inside, k+1 at or above max_abs
    b = torch.bucketize(s.abs(), edges, right=True)
    pos = k + 3 + (b - 1).clamp(0, k)  # positive side: k+3 .. 2k+3 (overflow)
    neg = k - (b - 1).clamp(0, k)  # negative side: k .. 0 (overflow)
    code = torch.where(s > 0, pos, neg)
    code = torch.where(b == 0, torch.full_like(code, k + 1), code)  # underflow, either sign
    code = torch.where(s == 0, torch.full_like(code, k + 2), code)
    code = code[~torch.isnan(s)]
    return torch.bincount(code, minlength=spec.n_bins).to(torch.float64)


def _dead_mask(x: torch.Tensor, module: nn.Module, thresholds: Mapping[str, float]) -> torch.Tensor | None:
    """Elements in the activation's dead (ReLU family: <= 0) or saturated region."""
    if isinstance(module, RELU_FAMILY):
        return x <= 0
    if isinstance(module, nn.Tanh):
        return x.abs() > thresholds["tanh"]
    if isinstance(module, nn.Sigmoid):
        return (x < thresholds["sigmoid_low"]) | (x > thresholds["sigmoid_high"])
    return None


def tensor_stats(x: torch.Tensor, dead: torch.Tensor | None = None) -> torch.Tensor:
    """mean, std, min, max, zero_frac, dead_frac, dead_units, nonfinite, numel: float64[9].

    Queued on x's device without a sync (on CPU, where reading a scalar is free, the
    non-finite count runs only when min/max show one). The variance is taken of x scaled
    by 1/max|x| and centred, so values near float32's limit (the 100-layer N(0,1) net
    reaches 1e37) give a finite std instead of an overflowed square.
    """
    x = x.detach()
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    n = x.numel()
    f64 = torch.float64
    lo, hi = torch.aminmax(x)
    absmax = torch.maximum(lo.abs(), hi.abs())
    ok = torch.isfinite(absmax) & (absmax > 0)
    scale = torch.where(ok, absmax, torch.ones_like(absmax)).to(f64)
    y = x.reshape(-1) * (1.0 / scale).to(x.dtype)
    mean_y = y.sum(dtype=f64) / n
    y.sub_(mean_y.to(x.dtype))
    var_y = torch.dot(y, y).to(f64) / max(n - 1, 1)
    zeros = n - torch.count_nonzero(x)
    if x.device.type == "cpu" and math.isfinite(lo.item()) and math.isfinite(hi.item()):
        nonfinite = torch.zeros((), dtype=torch.int64)
    else:
        nonfinite = torch.count_nonzero(x * 0)  # inf*0 and nan*0 are NaN, finite*0 is 0
    if dead is None:
        dead_frac = dead_units = torch.tensor(NAN, dtype=f64, device=x.device)
    else:
        dead_frac = dead.sum().to(f64) / n
        # A unit (channel, dim 1) is dead when every element of it in the batch is.
        per_unit = dead.reshape(dead.shape[0], dead.shape[1], -1) if dead.dim() > 1 else dead[None, :, None]
        dead_units = per_unit.all(dim=2).all(dim=0).to(f64).mean()
    return torch.stack([
        mean_y * scale, var_y.sqrt() * scale, lo.to(f64), hi.to(f64), zeros.to(f64) / n,
        dead_frac, dead_units, nonfinite.to(f64), torch.tensor(float(n), dtype=f64, device=x.device),
    ])


@dataclass(frozen=True)
class Slot:
    """One module call, in forward order."""

    layer: str
    module_type: str
    layer_idx: int


def tracked_modules(model: nn.Module, patterns: Sequence[str] = ()) -> list[tuple[str, nn.Module]]:
    """Leaf modules worth watching (Linear, Conv, BN, activations, pooling, dropout), filtered
    by `patterns`: a module is kept if its class name or dotted name matches any (fnmatch)."""
    out = []
    for name, m in model.named_modules():
        if not name or any(True for _ in m.children()) or isinstance(m, _SKIP):
            continue
        if patterns and not any(fnmatch(type(m).__name__, p) or fnmatch(name, p) for p in patterns):
            continue
        out.append((name, m))
    return out


@dataclass
class TelemetryConfig:
    params: bool = True
    bn: bool = True
    hist: HistSpec | None = HistSpec()
    thresholds: Mapping[str, float] | None = None
    modules: Sequence[str] = ()

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> "TelemetryConfig":
        h = cfg.get("hist", {}) or {}
        hist = HistSpec(float(h["min_abs"]), float(h["max_abs"]), int(h["bins_per_decade"]),
                        int(h["sample"])) if h.get("enabled", True) and h else None
        return cls(params=bool(cfg.get("params", True)), bn=bool(cfg.get("bn", True)), hist=hist,
                   thresholds=dict(cfg.get("dead", {}) or {}), modules=list(cfg.get("modules", []) or []))


class Telemetry:
    """Records per-layer statistics on logged steps; `collect()` returns them as columns."""

    def __init__(self, model: nn.Module, config: TelemetryConfig | None = None) -> None:
        self.cfg = config or TelemetryConfig()
        self.thresholds = {"tanh": 0.97, "sigmoid_low": 0.03, "sigmoid_high": 0.97, **(self.cfg.thresholds or {})}
        self.model = model
        self.modules = tracked_modules(model, self.cfg.modules)
        self.params = [(mod_name, pname, p) for mod_name, m in model.named_modules()
                       for pname, p in m.named_parameters(recurse=False) if p.requires_grad]
        self._order: dict[tuple[str, int], int] = {}  # (name, call #) -> layer_idx
        self._calls: dict[str, int] = {}
        self._rows: list[tuple[Slot, str, str, torch.Tensor, torch.Tensor | None]] = []
        self._bn_prev: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._before_step: list[torch.Tensor] | None = None
        self._edges: dict[torch.device, torch.Tensor] = {}

    # -- activations and gradients -------------------------------------------------
    def _slot(self, name: str, module: nn.Module) -> Slot:
        call = self._calls.get(name, 0)
        self._calls[name] = call + 1
        key = (name, call)
        if key not in self._order:  # forward order, fixed at first sight
            self._order[key] = len(self._order)
        layer = name if call == 0 else f"{name}#{call}"  # a module used twice in one forward
        return Slot(layer, type(module).__name__, self._order[key])

    def _hist(self, x: torch.Tensor) -> torch.Tensor | None:
        spec = self.cfg.hist
        if spec is None:
            return None
        if x.device not in self._edges:
            self._edges[x.device] = torch.tensor(spec.edges(), dtype=torch.float32, device=x.device)
        return _histogram(x.detach().float(), spec, self._edges[x.device])

    def _add(self, slot: Slot, kind: str, x: torch.Tensor, module: nn.Module | None) -> None:
        dead = _dead_mask(x.detach(), module, self.thresholds) if module is not None else None
        self._rows.append((slot, kind, "", tensor_stats(x, dead), self._hist(x)))

    def _forward_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, out: object) -> None:
            if not isinstance(out, torch.Tensor):
                return
            slot = self._slot(name, module)
            self._add(slot, "act", out, module)
            if self.cfg.bn and isinstance(module, _BN) and name in self._bn_prev:
                self._bn_rows(slot, module, *self._bn_prev.pop(name))
            if out.requires_grad:
                out.register_hook(lambda g: self._add(slot, "grad", g, None))

        return hook

    def _bn_pre_hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            if module.training and module.running_mean is not None:
                self._bn_prev[name] = (module.running_mean.clone(), module.running_var.clone())

        return hook

    def _bn_rows(self, slot: Slot, bn: nn.Module, prev_mean: torch.Tensor, prev_var: torch.Tensor) -> None:
        """Running buffers, and the batch statistics recovered from how they moved:
        new = (1 - m) * old + m * batch  =>  batch = (new - (1 - m) * old) / m."""
        rm, rv = bn.running_mean.detach(), bn.running_var.detach()
        self._rows.append((slot, "bn_running_mean", "", tensor_stats(rm), None))
        self._rows.append((slot, "bn_running_var", "", tensor_stats(rv), None))
        m = bn.momentum
        if m:  # momentum=None (cumulative average) has no fixed inverse
            self._rows.append((slot, "bn_batch_mean", "", tensor_stats((rm - (1 - m) * prev_mean) / m), None))
            self._rows.append((slot, "bn_batch_var", "", tensor_stats((rv - (1 - m) * prev_var) / m), None))

    @contextmanager
    def record(self) -> Iterator[None]:
        """Attach the hooks for one forward/backward; always removed on exit."""
        self._calls.clear()
        handles = [m.register_forward_hook(self._forward_hook(name)) for name, m in self.modules]
        if self.cfg.bn:
            handles += [m.register_forward_pre_hook(self._bn_pre_hook(name))
                        for name, m in self.modules if isinstance(m, _BN)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            self._bn_prev.clear()

    # -- parameters, their gradients and the optimizer's update ---------------------
    def _param_slot(self, module_name: str, p: torch.Tensor) -> Slot:
        idx = self._order.get((module_name, 0), -1)
        module = self.model.get_submodule(module_name)
        return Slot(module_name, type(module).__name__, idx)

    def before_step(self) -> None:
        """After backward, before optimizer.step(): gradients, and a snapshot for the update."""
        if not self.cfg.params:
            return
        for mod, pname, p in self.params:
            if p.grad is not None:
                self._rows.append((self._param_slot(mod, p), "weight_grad", pname, tensor_stats(p.grad), None))
        self._before_step = [p.detach().clone() for _, _, p in self.params]

    def after_step(self, stepped: bool) -> None:
        """After optimizer.step() (or in its place on a probe): the weights, and the update
        each parameter received when there was a step."""
        if not self.cfg.params:
            return
        old = self._before_step if stepped and self._before_step is not None else [None] * len(self.params)
        for (mod, pname, p), before in zip(self.params, old):
            slot = self._param_slot(mod, p)
            self._rows.append((slot, "weight", pname, tensor_stats(p.detach()), None))
            if before is not None:
                self._rows.append((slot, "update", pname, tensor_stats(p.detach() - before), None))
        self._before_step = None

    # -- the one transfer ------------------------------------------------------------
    def collect(self, step: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None] | None:
        """(stats columns, histogram columns) of the step: one concatenation, one copy."""
        if not self._rows:
            return None
        rows, self._rows = self._rows, []
        self._before_step = None
        hist_idx = [i for i, r in enumerate(rows) if r[4] is not None]
        flat = torch.cat([r[3] for r in rows] + [rows[i][4] for i in hist_idx])
        values = flat.cpu().numpy()  # the step's single device -> host transfer
        n, k = len(rows), len(STATS)
        stats = values[: n * k].reshape(n, k)
        cols: dict[str, np.ndarray] = {
            "step": np.full(n, step, dtype=np.int64),
            "layer": np.array([r[0].layer for r in rows], dtype=object),
            "layer_idx": np.array([r[0].layer_idx for r in rows], dtype=np.int32),
            "module_type": np.array([r[0].module_type for r in rows], dtype=object),
            "kind": np.array([r[1] for r in rows], dtype=object),
            "param": np.array([r[2] for r in rows], dtype=object),
        }
        for i, stat in enumerate(STATS):
            cols[stat] = stats[:, i].astype(np.int64) if stat in ("nonfinite", "numel") else stats[:, i]
        with np.errstate(all="ignore"):
            cols["absmax"] = np.maximum(np.abs(cols["min"]), np.abs(cols["max"]))
            # sum of squares from mean and unbiased variance: no extra pass on the device
            nn_ = cols["numel"].astype(np.float64)
            cols["norm"] = np.sqrt((nn_ - 1) * cols["std"] ** 2 + nn_ * cols["mean"] ** 2)
            cols["ratio"] = self._ratios(cols)
        return cols, self._hist_columns(rows, hist_idx, values[n * k:], step)

    @staticmethod
    def _ratios(cols: dict[str, np.ndarray]) -> np.ndarray:
        """grad:data (weight_grad std / weight std) and update:data (update std / weight std),
        both against the weights as they are after the step."""
        ratio = np.full(len(cols["kind"]), np.nan)
        weight_std = {(cols["layer"][i], cols["param"][i]): cols["std"][i]
                      for i in np.flatnonzero(cols["kind"] == "weight")}
        for i in np.flatnonzero(np.isin(cols["kind"], ("weight_grad", "update"))):
            w_std = weight_std.get((cols["layer"][i], cols["param"][i]), np.nan)
            ratio[i] = cols["std"][i] / w_std if w_std > 0 else np.nan
        return ratio

    def _hist_columns(self, rows, hist_idx: list[int], counts: np.ndarray, step: int) -> dict[str, np.ndarray] | None:
        spec = self.cfg.hist
        if spec is None or not hist_idx:
            return None
        counts = counts.reshape(len(hist_idx), spec.n_bins)
        lo, hi = spec.bounds()
        r, b = np.nonzero(counts)  # long format: non-empty bins only
        meta = [rows[i] for i in hist_idx]
        return {
            "step": np.full(len(r), step, dtype=np.int64),
            "layer": np.array([meta[i][0].layer for i in r], dtype=object),
            "layer_idx": np.array([meta[i][0].layer_idx for i in r], dtype=np.int32),
            "module_type": np.array([meta[i][0].module_type for i in r], dtype=object),
            "kind": np.array([meta[i][1] for i in r], dtype=object),
            "bin": b.astype(np.int16),
            "lo": lo[b],
            "hi": hi[b],
            "count": counts[r, b].astype(np.int64),
        }


def first_nonfinite(cols: dict[str, np.ndarray] | None) -> tuple[str, int] | None:
    """(layer, layer_idx) of the earliest activation holding a NaN or inf, if any."""
    if cols is None:
        return None
    mask = (cols["kind"] == "act") & (cols["nonfinite"] > 0)
    if not mask.any():
        return None
    i = np.flatnonzero(mask)[np.argmin(cols["layer_idx"][mask])]
    return str(cols["layer"][i]), int(cols["layer_idx"][i])


class Schedule:
    """Which steps are logged: every step below `first`, every `every`-th, `log_points`
    log-spaced steps over the run, and always the last."""

    def __init__(self, total: int, first: int, every: int, log_points: int = 0) -> None:
        self.total, self.first, self.every = total, first, every
        last = max(total - 1, 0)
        self.log_steps = set(np.unique(np.geomspace(1, max(last, 1), log_points).round().astype(int)).tolist()) \
            if log_points > 0 else set()
        self.last = last

    def __call__(self, step: int) -> bool:
        return step < self.first or step % self.every == 0 or step in self.log_steps or step == self.last
