"""What every model family registers with and builds from: the request, the registry, the
shape checks. The families import this; models/__init__.py imports the families."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from initlab.errors import InitlabError
from initlab.nn import acts
from initlab.nn.norms import NormSpec
from initlab.registry import Registry


@dataclass(frozen=True)
class ModelRequest:
    """Everything a builder needs: its own config, the data's shape and classes, the norm."""

    cfg: Mapping[str, Any]
    in_shape: tuple[int, ...]
    num_classes: int
    norm: NormSpec = NormSpec()

    @property
    def act_layer(self) -> Callable[[], nn.Module] | None:
        maxv = self.cfg["act_maxv"]
        return acts.make(self.cfg["act"], float(self.cfg["act_slope"]), float(self.cfg["act_sub"]),
                         None if maxv is None else float(maxv))

    def norm_layer(self, dim: int, optional: bool = False) -> Callable[[int], nn.Module] | None:
        """The norm's factory for Linear (dim 1), conv (2) or token (3) layers; `optional`:
        none where the norm cannot apply (instance norm on a conv net's Linear head)."""
        return self.norm.layer(dim, f"model={self.cfg['name']}'s {('Linear', 'conv', 'token')[dim - 1]} layers",
                               optional)

    @property
    def norm_position(self) -> str:
        """Where the norm sits; `bn_position`, when given, is its older name."""
        return self.cfg.get("bn_position") or self.cfg["norm_position"]


Builder = Callable[[ModelRequest], nn.Module]
MODELS: Registry[Builder] = Registry("model")
DEFAULT_NORMS: dict[str, str] = {}  # what norm=auto (the default) builds: none, unless a model says


def register(name: str, default_norm: str = "none") -> Callable[[Builder], Builder]:
    DEFAULT_NORMS[name] = default_norm
    return MODELS.register(name)


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


def own_norm(name: str, spec: NormSpec) -> NormSpec:
    """norm=auto made concrete: the norm model `name` builds by default."""
    return NormSpec.of({**spec.as_dict(), "name": DEFAULT_NORMS[name]}) if spec.name == "auto" else spec
