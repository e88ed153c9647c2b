"""The theory next to the measurement: per-layer activation and gradient std predicted at
init from the actual weights, in the mean-field way (Glorot, He, Poole et al.).

Forward, each element of a layer's output is treated as Gaussian across units and
samples: Linear/Conv give Var = fan_in * Var(W) * E[x^2] + Var(b) and mean mean(b); an
activation gives E[phi(h)] and E[phi(h)^2] by Gauss-Hermite quadrature, so any
nonlinearity works; any norm layer (BatchNorm in training mode, LayerNorm, GroupNorm,
InstanceNorm) resets the scale to its gamma and beta, RMSNorm the mean square to gamma^2;
Dropout(p) scales E[x^2] by 1/(1-p). Backward, from the measured gradient at the network's
output: Linear/Conv give E[g^2] * fan_out * Var(W) (fan_out per input element: out
channels * kernel area / stride^2), an activation E[phi'(h)^2], a norm gamma^2 / Var(input)
(RMSNorm: / E[input^2]; the mean subtraction's small projection is ignored); BatchNorm's backward, which runs through its batch statistics, is not predicted.
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

from initlab.nn import acts
from initlab.nn.hooks import hooked
from initlab.nn.kinds import BATCH_NORMS, NORMS, RMS_NORMS, WEIGHTED, is_leaf

_X, _W = np.polynomial.hermite.hermgauss(96)
_W = _W / math.sqrt(math.pi)


def gaussian_moments(f: Callable, mean: float, var: float) -> tuple[float, float]:
    """E[f(h)] and E[f(h)^2] for h ~ N(mean, var), by Gauss-Hermite quadrature."""
    h = mean + math.sqrt(2 * max(var, 0.0)) * _X
    y = f(h)
    return float(np.sum(_W * y)), float(np.sum(_W * y * y))


@dataclass
class LayerSpec:
    """What the theory needs of one tracked module, read at init."""

    name: str
    kind: str  # weighted | act | norm | batchnorm | rms | dropout | other
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
def _trace(model: nn.Module, in_shape: Sequence[int]) -> tuple[bool, dict[str, tuple[int, ...]]]:
    """One eval-mode forward of two zero samples: (whether the leaf modules form one chain,
    each taking the previous one's output; conv input sizes, for padding-aware fans).
    A residual add, a concatenation or a function applied between modules breaks the chain:
    the theory then has no prediction."""
    leaves = [(n, m) for n, m in model.named_modules() if n and is_leaf(m)]
    outputs: list[torch.Tensor] = []  # kept alive so no tensor's identity is reused
    sizes: dict[str, tuple[int, ...]] = {}
    chain = [True]

    def pre(name: str, m: nn.Module):
        def hook(mod: nn.Module, args: tuple) -> None:
            x = args[0] if args else None
            if not outputs or x is not outputs[-1]:
                chain[0] = False
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and isinstance(x, torch.Tensor):
                sizes[name] = tuple(x.shape[2:])
        return hook

    def post(mod: nn.Module, args: tuple, out: object) -> None:
        if isinstance(out, torch.Tensor):
            outputs.append(out)
        else:
            chain[0] = False

    x = torch.zeros(2, *in_shape, device=next(model.parameters()).device)
    outputs.append(x)
    was_training = model.training
    model.eval()
    try:
        with hooked(h for n, m in leaves for h in (m.register_forward_pre_hook(pre(n, m)),
                                                  m.register_forward_hook(post))):
            out = model(x)
    finally:
        model.train(was_training)
    return chain[0] and out is outputs[-1], sizes


@torch.no_grad()
def layer_specs(model: nn.Module, in_shape: Sequence[int] | None = None) -> dict[str, LayerSpec] | None:
    """Specs of every leaf module by name; None where the theory cannot predict (residual
    networks, anything whose modules do not form one chain). `in_shape` lets the chain be
    checked and conv layers account for zero padding."""
    sizes: dict[str, tuple[int, ...]] = {}
    if in_shape is not None:
        chain, sizes = _trace(model, in_shape)
        if not chain:
            return None
    elif any(hasattr(m, "branch") for m in model.modules()):
        return None
    specs = {}
    for name, m in model.named_modules():
        if not name or not is_leaf(m):
            continue
        if isinstance(m, WEIGHTED):
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
        elif isinstance(m, NORMS):
            weight, bias = getattr(m, "weight", None), getattr(m, "bias", None)
            g = weight.detach().double() if weight is not None else torch.ones(1, dtype=torch.float64)
            bb = bias.detach().double() if bias is not None else torch.zeros(1, dtype=torch.float64)
            # BatchNorm's backward runs through its batch statistics, which the chain rule here leaves
            # out: its gradients are not predicted (the measured ones re-anchor the layers below)
            kind = "rms" if isinstance(m, RMS_NORMS) else "batchnorm" if isinstance(m, BATCH_NORMS) else "norm"
            specs[name] = LayerSpec(name, kind, gamma2=float((g * g).mean()), beta_mean=float(bb.mean()),
                                    beta_var=float(bb.var(correction=0)))
        elif isinstance(m, nn.Dropout):
            specs[name] = LayerSpec(name, "dropout", p=m.p)
        elif (fns := acts.theory_fns(m)) is not None:
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
        elif spec.kind in ("norm", "batchnorm"):
            mean, var = spec.beta_mean, spec.gamma2 + spec.beta_var
        elif spec.kind == "rms":  # x / rms(x) * gamma: mean square gamma^2, the mean scaled alike
            mean = in_mean / math.sqrt(max(m2, 1e-30)) * math.sqrt(spec.gamma2)
            var = spec.gamma2 - mean * mean
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
            if spec is None or spec.kind in ("other", "batchnorm"):
                measured = grads.loc[below] if below in grads.index else None
                g2 = float(measured["std"]) ** 2 + float(measured["mean"]) ** 2 if measured is not None else math.nan
                predicted = False
            elif spec.kind == "weighted":
                g2 = spec.fan_out * spec.w_var * g2
            elif spec.kind == "act":
                g2 = gaussian_moments(spec.fns[1], in_mean, in_var)[1] * g2
            elif spec.kind == "norm":
                g2 = spec.gamma2 / max(in_var, 1e-30) * g2
            elif spec.kind == "rms":
                g2 = spec.gamma2 / max(in_var + in_mean * in_mean, 1e-30) * g2
            else:
                g2 = g2 / (1 - spec.p)
            rows.append({"layer": order[i - 1].layer, "layer_idx": below, "kind": "grad",
                         "theory_std": math.sqrt(g2) if predicted and math.isfinite(g2) else math.nan})
    return pd.DataFrame(rows)
