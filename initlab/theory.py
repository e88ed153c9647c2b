"""The theory next to the measurement: per-layer activation and gradient std predicted at
init from the actual weights, in the mean-field way (Glorot, He, Poole et al.).

Forward, each element of a layer's output is treated as Gaussian across units and
samples: Linear/Conv give Var = fan_in * Var(W) * E[x^2] + Var(b) and mean mean(b); an
activation gives E[phi(h)] and E[phi(h)^2] by Gauss-Hermite quadrature, so any
nonlinearity works; BatchNorm (training mode) resets the scale to its gamma and beta;
Dropout(p) scales E[x^2] by 1/(1-p). Backward, from the measured gradient at the network's
output: Linear/Conv give E[g^2] * fan_out * Var(W) (fan_out per input element: out
channels * kernel area / stride^2), an activation E[phi'(h)^2], BatchNorm gamma^2 / Var(input).
Modules with no closed form (pooling) re-anchor on the measured statistics and get no
prediction. Residual networks are not predicted (their branches do not form one chain).
Reads the model once at init; never imports the telemetry.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from initlab.models.blocks import GeneralRelu

_X, _W = np.polynomial.hermite.hermgauss(96)
_W = _W / math.sqrt(math.pi)


def _sigmoid(h: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-h))


def _phi(h: np.ndarray) -> np.ndarray:
    return np.exp(-h * h / 2) / math.sqrt(2 * math.pi)


def _erf_cdf(h: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))


def activation_fns(module: nn.Module) -> tuple[Callable, Callable] | None:
    """(phi, phi') of a supported activation module."""
    if isinstance(module, nn.ReLU):
        return (lambda h: np.maximum(h, 0.0)), (lambda h: (h > 0).astype(float))
    if isinstance(module, nn.LeakyReLU):
        a = module.negative_slope
        return (lambda h: np.where(h > 0, h, a * h)), (lambda h: np.where(h > 0, 1.0, a))
    if isinstance(module, nn.Tanh):
        return np.tanh, (lambda h: 1 - np.tanh(h) ** 2)
    if isinstance(module, nn.Sigmoid):
        return _sigmoid, (lambda h: _sigmoid(h) * (1 - _sigmoid(h)))
    if isinstance(module, GeneralRelu):
        leak, sub, top = module.leak, module.sub, module.maxv if module.maxv is not None else np.inf

        def shifted(h: np.ndarray) -> np.ndarray:
            return np.where(h > 0, h, leak * h) - sub

        return ((lambda h: np.minimum(shifted(h), top)),
                (lambda h: np.where(shifted(h) >= top, 0.0, np.where(h > 0, 1.0, leak))))
    if isinstance(module, nn.GELU):
        return (lambda h: h * _erf_cdf(h)), (lambda h: _erf_cdf(h) + h * _phi(h))
    return None


def gaussian_moments(f: Callable, mean: float, var: float) -> tuple[float, float]:
    """E[f(h)] and E[f(h)^2] for h ~ N(mean, var), by Gauss-Hermite quadrature."""
    h = mean + math.sqrt(2 * max(var, 0.0)) * _X
    y = f(h)
    return float(np.sum(_W * y)), float(np.sum(_W * y * y))


@dataclass
class LayerSpec:
    """What the theory needs of one tracked module, read at init."""

    name: str
    kind: str  # weighted | act | bn | dropout | other
    w_var: float = 0.0
    fan_in: float = 0.0
    fan_out: float = 0.0
    b_mean: float = 0.0
    b_var: float = 0.0
    gamma2: float = 1.0
    beta_mean: float = 0.0
    beta_var: float = 0.0
    p: float = 0.0
    fns: tuple[Callable, Callable] | None = None


def _valid_taps(size: int, kernel: int, stride: int, pad: int, dilation: int) -> tuple[float, int]:
    """(average number of kernel taps that land inside the input, number of outputs) along
    one dimension: zero padding shrinks the effective fan-in near the borders."""
    out = (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
    counts = [sum(0 <= o * stride - pad + t * dilation < size for t in range(kernel)) for o in range(out)]
    return (sum(counts) / out if out > 0 else 0.0), out


def _conv_fans(m: nn.Module, in_size: Sequence[int]) -> tuple[float, float]:
    """Padding-aware mean fan-in per output element and fan-out per input element."""
    taps, n_out, n_in = 1.0, 1, 1
    for size, k, st, pad, dl in zip(in_size, m.kernel_size, m.stride, m.padding, m.dilation):
        t, o = _valid_taps(size, k, st, pad, dl)
        taps, n_out, n_in = taps * t, n_out * o, n_in * size
    return m.in_channels // m.groups * taps, m.out_channels * taps * n_out / n_in


@torch.no_grad()
def layer_specs(model: nn.Module, in_shape: Sequence[int] | None = None) -> dict[str, LayerSpec] | None:
    """Specs of every leaf module by name; None for residual networks. `in_shape` lets conv
    layers account for zero padding (one eval-mode forward of two zero samples)."""
    if any(hasattr(m, "branch") for m in model.modules()):
        return None
    sizes: dict[str, tuple[int, ...]] = {}
    if in_shape is not None:
        convs = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
        hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: sizes.__setitem__(n, tuple(a[0].shape[2:])))
                 for n, m in convs]
        was_training = model.training
        model.eval()
        try:
            model(torch.zeros(2, *in_shape, device=next(model.parameters()).device))
        finally:
            for h in hooks:
                h.remove()
            model.train(was_training)
    specs = {}
    for name, m in model.named_modules():
        if not name or any(True for _ in m.children()):
            continue
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            w = m.weight.detach().double()
            if isinstance(m, nn.Linear):
                fan_in, fan_out = m.in_features, m.out_features
            elif name in sizes and isinstance(m.padding, tuple):
                fan_in, fan_out = _conv_fans(m, sizes[name])
            else:
                k = math.prod(m.kernel_size)
                fan_in = m.in_channels // m.groups * k
                fan_out = m.out_channels * k / math.prod(m.stride)
            b = m.bias.detach().double() if m.bias is not None else torch.zeros(1, dtype=torch.float64)
            specs[name] = LayerSpec(name, "weighted", float(w.var(correction=0)), fan_in, fan_out,
                                    float(b.mean()), float(b.var(correction=0)))
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            g = m.weight.detach().double() if m.weight is not None else torch.ones(1, dtype=torch.float64)
            bb = m.bias.detach().double() if m.bias is not None else torch.zeros(1, dtype=torch.float64)
            specs[name] = LayerSpec(name, "bn", gamma2=float((g * g).mean()), beta_mean=float(bb.mean()),
                                    beta_var=float(bb.var(correction=0)))
        elif isinstance(m, nn.Dropout):
            specs[name] = LayerSpec(name, "dropout", p=m.p)
        elif (fns := activation_fns(m)) is not None:
            specs[name] = LayerSpec(name, "act", fns=fns)
        else:
            specs[name] = LayerSpec(name, "other")
    return specs


def predict(specs: dict[str, LayerSpec] | None, step0: pd.DataFrame, input_mean: float,
            input_m2: float) -> pd.DataFrame:
    """theory_std per (layer_idx, kind) for the step-0 rows of act and grad."""
    rows: list[dict] = []
    if specs is None or step0.empty:
        return pd.DataFrame(columns=["layer", "layer_idx", "kind", "theory_std"])
    acts = step0[step0["kind"] == "act"].sort_values("layer_idx")
    grads = step0[step0["kind"] == "grad"].set_index("layer_idx")
    order: Sequence = list(acts.itertuples(index=False))
    # forward: (mean, var) of each module's output; pre-activation state kept for backward
    mean, m2 = input_mean, input_m2
    states: list[tuple[float, float, float, float]] = []  # (in_mean, in_var, out_mean, out_var)
    for r in order:
        spec = specs.get(r.layer)
        in_mean, in_var = mean, m2 - mean * mean
        predicted = True
        if spec is None or spec.kind == "other":
            mean, var, predicted = float(r.mean), float(r.std) ** 2, False  # re-anchor
        elif spec.kind == "weighted":
            var = spec.fan_in * spec.w_var * m2 + spec.b_var
            mean = spec.b_mean
        elif spec.kind == "act":
            mean, m2_out = gaussian_moments(spec.fns[0], in_mean, in_var)
            var = m2_out - mean * mean
        elif spec.kind == "bn":
            mean, var = spec.beta_mean, spec.gamma2 + spec.beta_var
        else:  # dropout
            var = m2 / (1 - spec.p) - mean * mean
        m2 = var + mean * mean
        states.append((in_mean, in_var, mean, var))
        rows.append({"layer": r.layer, "layer_idx": r.layer_idx, "kind": "act",
                     "theory_std": math.sqrt(max(var, 0.0)) if predicted else math.nan})
    # backward: E[g^2] at each module's output, anchored at the network's output
    if len(grads):
        last = order[-1].layer_idx
        g2 = float(grads.loc[last, "std"]) ** 2 + float(grads.loc[last, "mean"]) ** 2 if last in grads.index else math.nan
        rows.append({"layer": order[-1].layer, "layer_idx": last, "kind": "grad", "theory_std": math.sqrt(g2)})
        for i in range(len(order) - 1, 0, -1):
            spec = specs.get(order[i].layer)
            in_mean, in_var = states[i][0], states[i][1]
            below = order[i - 1].layer_idx
            predicted = True
            if spec is None or spec.kind == "other":
                measured = grads.loc[below] if below in grads.index else None
                g2 = float(measured["std"]) ** 2 + float(measured["mean"]) ** 2 if measured is not None else math.nan
                predicted = False
            elif spec.kind == "weighted":
                g2 = spec.fan_out * spec.w_var * g2
            elif spec.kind == "act":
                g2 = gaussian_moments(spec.fns[1], in_mean, in_var)[1] * g2
            elif spec.kind == "bn":
                g2 = spec.gamma2 / max(in_var, 1e-30) * g2
            else:
                g2 = g2 / (1 - spec.p)
            rows.append({"layer": order[i - 1].layer, "layer_idx": below, "kind": "grad",
                         "theory_std": math.sqrt(g2) if predicted and math.isfinite(g2) else math.nan})
    return pd.DataFrame(rows)
