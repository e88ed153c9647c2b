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


@dataclass(frozen=True)
class WidthKnob:
    """The config key that sets a model's width (`param.base_width` is in its units): an int
    (`width`, `dim`), a float multiplier (`width_mult`), or a list of channel counts scaled
    together (`channels`: the width is the first)."""

    key: str

    def get(self, cfg: Mapping[str, Any]) -> float:
        v = cfg[self.key]
        return v[0] if isinstance(v, (list, tuple)) else v

    def set(self, cfg: Mapping[str, Any], width: float) -> dict[str, Any]:
        """`cfg` at `width`; an InitlabError where the width cannot be built (a fraction of a channel)."""
        v = cfg[self.key]
        if isinstance(v, (list, tuple)):
            scaled = [c * width / v[0] for c in v]
            if any(abs(c - round(c)) > 1e-9 or c < 1 for c in scaled):
                raise InitlabError(f"model.{self.key}={list(v)} cannot be scaled to a first entry of {width:g}: "
                                   "every entry must stay a whole number of channels")
            return {**cfg, self.key: [int(round(c)) for c in scaled]}
        if isinstance(v, float):
            return {**cfg, self.key: float(width)}
        if float(width) != int(width) or width < 1:
            raise InitlabError(f"model.{self.key} must be a whole number >= 1, not {width:g}")
        return {**cfg, self.key: int(width)}


Builder = Callable[[ModelRequest], nn.Module]
MODELS: Registry[Builder] = Registry("model")
DEFAULT_NORMS: dict[str, str] = {}  # what norm=auto (the default) builds: none, unless a model says
WIDTHS: dict[str, WidthKnob] = {}  # the models with a width knob (param=ntk|mup scale it)
Check = Callable[[Any], None]  # a composed config -> ConfigError on a bad value of the model's own keys
MODEL_CHECKS: dict[str, Check] = {}


def register(name: str, default_norm: str = "none", width: str | None = None, check: Check | None = None
             ) -> Callable[[Builder], Builder]:
    """A model family's builder, its default norm, the config key of its width, and the check
    of its own config keys (run before any work)."""
    DEFAULT_NORMS[name] = default_norm
    if width is not None:
        WIDTHS[name] = WidthKnob(width)
    if check is not None:
        MODEL_CHECKS[name] = check
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
