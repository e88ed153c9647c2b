"""Model registry: build any architecture by name for any input shape and class count."""

from collections.abc import Mapping
from typing import Any

from torch import nn

from initlab.defaults import preset

# Importing the families fills the registry.
from initlab.models import cnn, external, mlp, nin, resnet, vit  # noqa: F401
from initlab.models.base import MODELS, ModelRequest, ShapeError, own_norm, register, require_image
from initlab.nn import acts
from initlab.nn.norms import NormSpec


def build_model(name: str, cfg: Mapping[str, Any] | None, in_shape: tuple[int, ...], num_classes: int,
                bn: bool = False, norm: "str | Mapping[str, Any] | NormSpec | None" = None) -> nn.Module:
    """Build a registered model; unknown names list the valid ones. `cfg` is merged over
    conf/model/NAME.yaml, so a library caller gives only what differs. `norm`: a norm name
    (`group`), conf/norm's keys as a dict, or a NormSpec; `bn=True` is short for norm="batch"."""
    builder = MODELS.get(name)
    full = preset("model", name, cfg)
    spec = own_norm(name, NormSpec.of(norm if norm is not None else ("batch" if bn else "auto")))
    model = builder(ModelRequest(full, tuple(in_shape), num_classes, spec))
    spec.check_built(model)
    return model


ACTIVATIONS = acts.ACTIVATIONS
__all__ = ["ACTIVATIONS", "MODELS", "ModelRequest", "NormSpec", "ShapeError", "build_model", "own_norm",
           "register", "require_image"]
