"""Model registry: build any architecture by name for any input shape and class count."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from initlab.defaults import preset
from initlab.errors import InitlabError
from initlab.nn import acts
from initlab.registry import Registry


@dataclass(frozen=True)
class ModelRequest:
    """Everything a builder needs: its own config, the data's shape and classes, BN on/off."""

    cfg: Mapping[str, Any]
    in_shape: tuple[int, ...]
    num_classes: int
    bn: bool

    @property
    def act_layer(self) -> Callable[[], nn.Module] | None:
        maxv = self.cfg["act_maxv"]
        return acts.make(self.cfg["act"], float(self.cfg["act_slope"]), float(self.cfg["act_sub"]),
                         None if maxv is None else float(maxv))

    def norm_layer(self, dim: int) -> Callable[[int], nn.Module] | None:
        if not self.bn:
            return None
        return nn.BatchNorm1d if dim == 1 else nn.BatchNorm2d

    @property
    def bn_position(self) -> str:
        return self.cfg["bn_position"]


Builder = Callable[[ModelRequest], nn.Module]
MODELS: Registry[Builder] = Registry("model")
register = MODELS.register


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


def build_model(name: str, cfg: Mapping[str, Any] | None, in_shape: tuple[int, ...], num_classes: int,
                bn: bool = False) -> nn.Module:
    """Build a registered model; unknown names list the valid ones. `cfg` is merged over
    conf/model/NAME.yaml, so a library caller gives only what differs."""
    builder = MODELS.get(name)
    full = preset("model", name, cfg)
    return builder(ModelRequest(full, tuple(in_shape), num_classes, bn))


# Importing the families fills the registry.
from initlab.models import cnn, external, mlp, nin, resnet  # noqa: E402,F401

ACTIVATIONS = acts.ACTIVATIONS
__all__ = ["ACTIVATIONS", "MODELS", "ModelRequest", "ShapeError", "build_model", "register"]
