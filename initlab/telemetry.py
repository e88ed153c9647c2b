"""Per-layer activation and gradient statistics, gathered on the device.

On a logged step, forward hooks on every tracked leaf module compute the statistics of
its output (`act`) and register a tensor hook for the gradient of the loss with respect
to that output (`grad`). Statistics stay on the device as small tensors; `collect()`
stacks them and makes the step's single device->host transfer. Hooks exist only inside
`record()`, so unlogged steps run the bare model.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

STATS = ("mean", "std", "min", "max", "zero_frac", "nonfinite", "numel")
KINDS = ("act", "grad")
# Containers and pure reshapes carry no information of their own.
_SKIP = (nn.Flatten, nn.Unflatten, nn.Identity)


def tracked_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf modules worth watching: Linear, Conv, BatchNorm, activations, pooling, dropout."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if name and not any(True for _ in m.children()) and not isinstance(m, _SKIP)
    ]


def tensor_stats(x: torch.Tensor) -> torch.Tensor:
    """mean, std, min, max, zero fraction, non-finite count, numel of `x` as float64[7].

    Computed on x's device without a sync. The variance is taken of x / max|x| and scaled
    back, so a tensor of finite values near float32's limit (the 100-layer N(0,1) net
    reaches 1e37) gets a finite std instead of an overflowed square.
    """
    x = x.detach()
    if x.dtype != torch.float64:
        x = x.float()
    n = x.numel()
    lo, hi = torch.aminmax(x)
    absmax = torch.maximum(lo.abs(), hi.abs())
    scale = torch.where(torch.isfinite(absmax) & (absmax > 0), absmax, torch.ones_like(absmax))
    var, mean = torch.var_mean(x / scale, correction=1 if n > 1 else 0)
    nonfinite = n - torch.isfinite(x).sum()
    zeros = (x == 0).sum()
    f64 = torch.float64
    return torch.stack([
        mean.to(f64) * scale.to(f64),
        var.to(f64).sqrt() * scale.to(f64),
        lo.to(f64),
        hi.to(f64),
        zeros.to(f64) / n,
        nonfinite.to(f64),
        torch.tensor(float(n), dtype=f64, device=x.device),
    ])


@dataclass(frozen=True)
class Slot:
    """One (module call, kind) in forward order."""

    layer: str
    module_type: str
    layer_idx: int


class Telemetry:
    """Hooks that record per-layer statistics on logged steps."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = tracked_modules(model)
        self._order: dict[tuple[str, int], int] = {}  # (name, call #) -> layer_idx
        self._pending: list[tuple[Slot, str, torch.Tensor]] = []
        self._calls: dict[str, int] = {}

    def _slot(self, name: str, module: nn.Module) -> Slot:
        call = self._calls.get(name, 0)
        self._calls[name] = call + 1
        key = (name, call)
        if key not in self._order:  # forward order, fixed at first sight
            self._order[key] = len(self._order)
        layer = name if call == 0 else f"{name}#{call}"  # a module used twice in one forward
        return Slot(layer, type(module).__name__, self._order[key])

    def _hook(self, name: str):
        def hook(module: nn.Module, args: object, out: object) -> None:
            if not isinstance(out, torch.Tensor):
                return
            slot = self._slot(name, module)
            self._pending.append((slot, "act", tensor_stats(out)))
            if out.requires_grad:
                out.register_hook(lambda g: self._pending.append((slot, "grad", tensor_stats(g))))

        return hook

    @contextmanager
    def record(self) -> Iterator[None]:
        """Attach the hooks for one forward/backward; always removed on exit."""
        self._calls.clear()
        handles = [m.register_forward_hook(self._hook(name)) for name, m in self.modules]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def collect(self, step: int) -> dict[str, np.ndarray] | None:
        """The step's rows as columns: one stack, one transfer to the host."""
        if not self._pending:
            return None
        pending, self._pending = self._pending, []
        values = torch.stack([v for _, _, v in pending]).cpu().numpy()  # (rows, len(STATS))
        cols: dict[str, np.ndarray] = {
            "step": np.full(len(pending), step, dtype=np.int64),
            "layer": np.array([s.layer for s, _, _ in pending], dtype=object),
            "layer_idx": np.array([s.layer_idx for s, _, _ in pending], dtype=np.int32),
            "module_type": np.array([s.module_type for s, _, _ in pending], dtype=object),
            "kind": np.array([k for _, k, _ in pending], dtype=object),
        }
        for i, stat in enumerate(STATS):
            col = values[:, i]
            cols[stat] = col.astype(np.int64) if stat in ("nonfinite", "numel") else col
        return cols


def first_nonfinite(cols: dict[str, np.ndarray] | None) -> tuple[str, int] | None:
    """(layer, layer_idx) of the earliest activation holding a NaN or inf, if any."""
    if cols is None:
        return None
    mask = (cols["kind"] == "act") & (cols["nonfinite"] > 0)
    if not mask.any():
        return None
    i = np.flatnonzero(mask)[np.argmin(cols["layer_idx"][mask])]
    return str(cols["layer"][i]), int(cols["layer_idx"][i])


def is_logged(step: int, last: int, first: int, every: int) -> bool:
    """Every step below `first`, then every `every`-th, and always the last."""
    return step < first or step % every == 0 or step == last
