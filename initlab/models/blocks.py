"""Shared building blocks. Layers take classes (norm_layer, act_layer), not flags."""

from collections.abc import Callable

import torch
from torch import nn

from initlab.checks import MISSING, check_choice, check_num, get_value, is_num
from initlab.errors import ConfigError
from initlab.nn.acts import ACTIVATIONS, GeneralRelu

ModuleFactory = Callable[..., nn.Module]
NORM_POSITIONS = ("before_act", "after_act")


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


def _norm_act(
    nf: int,
    norm_layer: ModuleFactory | None,
    act_layer: Callable[[], nn.Module] | None,
    norm_position: str,
) -> list[nn.Module]:
    norm = [norm_layer(nf)] if norm_layer is not None else []
    act = [act_layer()] if act_layer is not None else []
    return norm + act if norm_position == "before_act" else act + norm


def _bias(norm_layer: ModuleFactory | None, act_layer: object, norm_position: str) -> bool:
    # A norm right after the layer subtracts the mean, so a bias there is dead weight.
    norm_follows = norm_layer is not None and (norm_position == "before_act" or act_layer is None)
    return not norm_follows


def conv_block(
    ni: int,
    nf: int,
    kernel_size: int,
    stride: int = 1,
    padding: int | None = None,
    norm_layer: ModuleFactory | None = None,
    act_layer: Callable[[], nn.Module] | None = None,
    norm_position: str = "before_act",
) -> list[nn.Module]:
    """conv -> [norm] -> [act] (or conv -> act -> norm): a flat list for nn.Sequential."""
    padding = kernel_size // 2 if padding is None else padding
    bias = _bias(norm_layer, act_layer, norm_position)
    conv = nn.Conv2d(ni, nf, kernel_size, stride=stride, padding=padding, bias=bias)
    return [conv, *_norm_act(nf, norm_layer, act_layer, norm_position)]


def linear_block(
    ni: int,
    nf: int,
    norm_layer: ModuleFactory | None = None,
    act_layer: Callable[[], nn.Module] | None = None,
    norm_position: str = "before_act",
) -> list[nn.Module]:
    """linear -> [norm] -> [act] (or linear -> act -> norm)."""
    bias = _bias(norm_layer, act_layer, norm_position)
    return [nn.Linear(ni, nf, bias=bias), *_norm_act(nf, norm_layer, act_layer, norm_position)]


def check_zoo_model(cfg: object, positions: tuple[str, ...] = NORM_POSITIONS) -> None:
    """The keys every zoo model has: the nonlinearity and where the norm sits."""
    check_choice(cfg, "model.act", ACTIVATIONS)
    check_num(cfg, "model.act_slope", 0.0, strict=False)
    check_num(cfg, "model.act_sub", float("-inf"), strict=False)
    maxv = get_value(cfg, "model.act_maxv")
    if maxv is not MISSING and maxv is not None and not is_num(maxv):
        raise ConfigError("model.act_maxv", maxv, "expected null (no clip) or a number")
    check_choice(cfg, "model.norm_position", positions)
    if get_value(cfg, "model.bn_position") not in (MISSING, None):  # the older name: conv nets' positions only
        check_choice(cfg, "model.bn_position", NORM_POSITIONS)


__all__ = ["ACTIVATIONS", "NORM_POSITIONS", "Bias", "GeneralRelu", "Scale", "check_zoo_model", "conv_block", "linear_block"]
