"""Shared building blocks. Layers take classes (norm_layer, act_layer), not flags."""

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

ModuleFactory = Callable[..., nn.Module]

ACTIVATIONS = ("relu", "leaky_relu", "general_relu", "tanh", "sigmoid", "gelu", "linear")
BN_POSITIONS = ("before_act", "after_act")


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


class Scale(nn.Module):
    """A learnable scalar multiplier (Fixup's branch multiplier, SkipInit's alpha)."""

    def __init__(self, init: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((1,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class Bias(nn.Module):
    """A learnable scalar bias (Fixup's scalar biases before convs and activations)."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


def act_factory(name: str, slope: float = 0.01, sub: float = 0.4,
                maxv: float | None = None) -> Callable[[], nn.Module] | None:
    """The activation class for `model.act`; None for `linear` (no module at all, so a
    linear net's layer indices count only its Linear/Conv layers, as in the lesson)."""
    table: dict[str, Callable[[], nn.Module] | None] = {
        "relu": nn.ReLU,
        "leaky_relu": partial(nn.LeakyReLU, negative_slope=slope),
        "general_relu": partial(GeneralRelu, leak=slope, sub=sub, maxv=maxv),
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
        "gelu": nn.GELU,
        "linear": None,
    }
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(table)}")
    return table[name]


def _norm_act(
    nf: int,
    norm_layer: ModuleFactory | None,
    act_layer: Callable[[], nn.Module] | None,
    bn_position: str,
) -> list[nn.Module]:
    norm = [norm_layer(nf)] if norm_layer is not None else []
    act = [act_layer()] if act_layer is not None else []
    return norm + act if bn_position == "before_act" else act + norm


def _bias(norm_layer: ModuleFactory | None, act_layer: object, bn_position: str) -> bool:
    # A norm right after the layer subtracts the mean, so a bias there is dead weight.
    norm_follows = norm_layer is not None and (bn_position == "before_act" or act_layer is None)
    return not norm_follows


def conv_block(
    ni: int,
    nf: int,
    kernel_size: int,
    stride: int = 1,
    padding: int | None = None,
    norm_layer: ModuleFactory | None = None,
    act_layer: Callable[[], nn.Module] | None = None,
    bn_position: str = "before_act",
) -> list[nn.Module]:
    """conv -> [norm] -> [act] (or conv -> act -> norm): a flat list for nn.Sequential."""
    padding = kernel_size // 2 if padding is None else padding
    bias = _bias(norm_layer, act_layer, bn_position)
    conv = nn.Conv2d(ni, nf, kernel_size, stride=stride, padding=padding, bias=bias)
    return [conv, *_norm_act(nf, norm_layer, act_layer, bn_position)]


def linear_block(
    ni: int,
    nf: int,
    norm_layer: ModuleFactory | None = None,
    act_layer: Callable[[], nn.Module] | None = None,
    bn_position: str = "before_act",
) -> list[nn.Module]:
    """linear -> [norm] -> [act] (or linear -> act -> norm)."""
    bias = _bias(norm_layer, act_layer, bn_position)
    return [nn.Linear(ni, nf, bias=bias), *_norm_act(nf, norm_layer, act_layer, bn_position)]
