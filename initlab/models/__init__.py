"""Model registry: build any architecture by name for any input shape and class count."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from initlab.errors import InitlabError
from initlab.models.blocks import ACTIVATIONS, act_factory


@dataclass(frozen=True)
class ModelRequest:
    """Everything a builder needs: its own config, the data's shape and classes, BN on/off."""

    cfg: Mapping[str, Any]
    in_shape: tuple[int, ...]
    num_classes: int
    bn: bool

    @property
    def act_layer(self) -> Callable[[], nn.Module] | None:
        maxv = self.cfg.get("act_maxv")
        return act_factory(self.cfg.get("act", "relu"), float(self.cfg.get("act_slope", 0.01)),
                           float(self.cfg.get("act_sub", 0.4)), None if maxv is None else float(maxv))

    def norm_layer(self, dim: int) -> Callable[[int], nn.Module] | None:
        if not self.bn:
            return None
        return nn.BatchNorm1d if dim == 1 else nn.BatchNorm2d

    @property
    def bn_position(self) -> str:
        return self.cfg.get("bn_position", "before_act")


Builder = Callable[[ModelRequest], nn.Module]
MODELS: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        MODELS[name] = fn
        return fn

    return deco


class ShapeError(InitlabError):
    """A model that cannot take the data's input shape."""

    def __init__(self, model: str, shape: tuple[int, ...], needs: str) -> None:
        super().__init__(
            f"model={model} cannot take input shape {list(shape)}: {needs}"
        )


def require_image(name: str, shape: tuple[int, ...], min_hw: int) -> None:
    """Conv nets need [C,H,W] with H, W at least `min_hw`."""
    if len(shape) != 3:
        raise ShapeError(
            name, shape, f"it needs images [C,H,W] of at least {min_hw}x{min_hw} "
            "(use model=mlp for flat inputs)"
        )
    if min(shape[1:]) < min_hw:
        raise ShapeError(name, shape, f"the smallest input it accepts is {min_hw}x{min_hw}")


def build_model(name: str, cfg: Mapping[str, Any], in_shape: tuple[int, ...], num_classes: int, bn: bool) -> nn.Module:
    """Build a registered model; unknown names list the valid ones."""
    if name not in MODELS:
        raise InitlabError(f"model={name!r} is invalid: choose from {', '.join(sorted(MODELS))}")
    return MODELS[name](ModelRequest(dict(cfg), tuple(in_shape), num_classes, bn))


# Importing the families fills the registry.
from initlab.models import cnn, mlp, resnet  # noqa: E402,F401

__all__ = ["ACTIVATIONS", "MODELS", "ModelRequest", "ShapeError", "build_model", "register"]
