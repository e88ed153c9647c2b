"""The one activation table: for every nonlinearity initlab knows, its layer class, the
`model.act` name that builds it, its init gain, where it is dead or saturated, and the
theory's phi and phi' (as numpy functions of the pre-activation).

Models build from it (`make`), inits take their gain from it (`gain_name`), telemetry asks
it for the dead region (`region`) and the theory for phi/phi' (`theory_fns`). A class it
does not list (a user's own activation) is still recorded; it just gets no dead fraction
and no theory prediction.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import nn

Fn = Callable[[np.ndarray], np.ndarray]


class GeneralRelu(nn.Module):
    """fast.ai's GeneralRelu: leaky_relu(x, leak) - sub, clipped at maxv. Subtracting `sub`
    pulls the mean of a (leaky) ReLU's output back towards zero."""

    def __init__(self, leak: float = 0.1, sub: float = 0.4, maxv: float | None = None) -> None:
        super().__init__()
        self.leak, self.sub, self.maxv = leak, sub, maxv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.leaky_relu(x, self.leak) - self.sub
        return x.clamp_max(self.maxv) if self.maxv is not None else x

    def extra_repr(self) -> str:
        return f"leak={self.leak}, sub={self.sub}, maxv={self.maxv}"


def _sigmoid(h: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-h))


def _normal_pdf(h: np.ndarray) -> np.ndarray:
    return np.exp(-h * h / 2) / math.sqrt(2 * math.pi)


def _normal_cdf(h: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))


def _relu_fns(m: nn.Module) -> tuple[Fn, Fn]:
    return (lambda h: np.maximum(h, 0.0)), (lambda h: (h > 0).astype(float))


def _leaky_fns(m: nn.Module) -> tuple[Fn, Fn]:
    a = m.negative_slope
    return (lambda h: np.where(h > 0, h, a * h)), (lambda h: np.where(h > 0, 1.0, a))


def _general_relu_fns(m: nn.Module) -> tuple[Fn, Fn]:
    leak, sub, top = m.leak, m.sub, m.maxv if m.maxv is not None else np.inf

    def shifted(h: np.ndarray) -> np.ndarray:
        return np.where(h > 0, h, leak * h) - sub

    return ((lambda h: np.minimum(shifted(h), top)),
            (lambda h: np.where(shifted(h) >= top, 0.0, np.where(h > 0, 1.0, leak))))


def _tanh_fns(m: nn.Module) -> tuple[Fn, Fn]:
    return np.tanh, (lambda h: 1 - np.tanh(h) ** 2)


def _sigmoid_fns(m: nn.Module) -> tuple[Fn, Fn]:
    return _sigmoid, (lambda h: _sigmoid(h) * (1 - _sigmoid(h)))


def _gelu_fns(m: nn.Module) -> tuple[Fn, Fn]:
    return (lambda h: h * _normal_cdf(h)), (lambda h: _normal_cdf(h) + h * _normal_pdf(h))


@dataclass(frozen=True)
class Act:
    """One row of the table."""

    cls: type[nn.Module]
    name: str | None = None  # the `model.act` value that builds it (None: recognised, not built)
    gain_name: str | None = "relu"  # torch.nn.init.calculate_gain's nonlinearity; None: from E[phi(z)^2] (`gain`)
    region: str | None = None  # relu (x <= 0 is dead) | tanh | sigmoid (saturated bands) | None
    nonneg: bool = False  # outputs never negative (plain ReLU): cheaper dead counts
    theory: Callable[[nn.Module], tuple[Fn, Fn]] | None = None


# Order matters only for subclasses; none of these subclass another.
TABLE: tuple[Act, ...] = (
    Act(nn.ReLU, "relu", "relu", "relu", nonneg=True, theory=_relu_fns),
    Act(nn.LeakyReLU, "leaky_relu", "leaky_relu", "relu", theory=_leaky_fns),
    Act(GeneralRelu, "general_relu", "leaky_relu", "relu", theory=_general_relu_fns),  # gain: a = leak
    Act(nn.Tanh, "tanh", "tanh", "tanh", theory=_tanh_fns),
    Act(nn.Sigmoid, "sigmoid", "sigmoid", "sigmoid", theory=_sigmoid_fns),
    # calculate_gain knows no GELU: its gain comes from its second moment (`gain`). No region: its
    # negative side is small, not dead, so a "dead" count of it would be a wrong number.
    Act(nn.GELU, "gelu", None, None, theory=_gelu_fns),
    # Recognised in any model (torchvision, timm, a user's): ReLU6 is dead where <= 0; the smooth
    # ones have no dead region (no fraction rather than a wrong one), and take ReLU's gain.
    Act(nn.ReLU6, None, "relu", "relu", nonneg=True),
    Act(nn.PReLU, None, "relu", "relu"),
    *(Act(cls, None, "relu", None) for cls in (nn.ELU, nn.CELU, nn.SiLU, nn.Mish, nn.Softplus, nn.Hardswish)),
    Act(nn.SELU, None, "selu", None),
)

# model.act names, in the order the docs list them; `linear` means no activation module.
ACTIVATIONS: tuple[str, ...] = tuple(a.name for a in TABLE if a.name) + ("linear",)
_BY_NAME = {a.name: a for a in TABLE if a.name}


def lookup(module: nn.Module) -> Act | None:
    """The table row of an activation module, or None for anything else."""
    for a in TABLE:
        if type(module) is a.cls:
            return a
    for a in TABLE:
        if isinstance(module, a.cls):
            return a
    return None


def is_activation(module: nn.Module) -> bool:
    return lookup(module) is not None


def gain(act: str, slope: float = 0.01) -> float:
    """The init gain of a `model.act` name: calculate_gain's where it knows the nonlinearity, else
    1 / sqrt(E[phi(z)^2]) for z ~ N(0, 1) (He et al.'s argument: it keeps E[x^2] through a layer;
    ReLU's sqrt(2) is this number), by Gauss-Hermite quadrature of the table's phi."""
    name = gain_name(act)
    if name is not None:
        return nn.init.calculate_gain(name, slope if name == "leaky_relu" else None)
    row = _BY_NAME[act]
    if row.theory is None:
        raise ValueError(f"no gain for activation {act!r}: calculate_gain does not know it and the table has no phi")
    phi = row.theory(row.cls())[0]
    z, w = np.polynomial.hermite_e.hermegauss(96)
    return float(1 / math.sqrt(float(np.sum(w * phi(z) ** 2)) / math.sqrt(2 * math.pi)))


def gain_name(act: str) -> str | None:
    """calculate_gain's nonlinearity for a `model.act` name (`linear`: linear); None where the gain
    is computed from the activation's second moment (`gain`)."""
    if act == "linear":
        return "linear"
    if act not in _BY_NAME:
        raise ValueError(f"unknown activation {act!r}; choose from {', '.join(ACTIVATIONS)}")
    return _BY_NAME[act].gain_name


def make(name: str, slope: float, sub: float, maxv: float | None) -> Callable[[], nn.Module] | None:
    """The factory of `model.act`; None for `linear` (no module at all, so a linear net's
    layer indices count only its Linear/Conv layers, as in the lesson)."""
    if name == "linear":
        return None
    if name not in _BY_NAME:
        raise ValueError(f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}")
    cls = _BY_NAME[name].cls
    if cls is nn.LeakyReLU:
        return partial(nn.LeakyReLU, negative_slope=slope)
    if cls is GeneralRelu:
        return partial(GeneralRelu, leak=slope, sub=sub, maxv=maxv)
    return cls


def theory_fns(module: nn.Module) -> tuple[Fn, Fn] | None:
    """(phi, phi') of an activation module the theory can propagate through."""
    a = lookup(module)
    return a.theory(module) if a is not None and a.theory is not None else None
