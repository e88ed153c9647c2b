"""Models from outside the zoo: any nn.Module the Hydra way (`model=target`,
`model._target_=pkg.Class` with its arguments beside it), and any torchvision classifier
by name (`model=torchvision model.arch=resnet50`, weights=None, the class count from the
data). `bn` does not apply to them (they bring their own normalisation); a model that
cannot take the data's input shape gets one line saying what it needs."""

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from initlab.errors import InitlabError
from initlab.models.base import ModelRequest, ShapeError, register

EXTERNAL = ("target", "torchvision")
# Keys of conf/model/{target,torchvision}.yaml that are initlab's, not the model's arguments.
_OWN_KEYS = {"name", "arch", "act", "act_slope", "act_sub", "act_maxv", "bn_position", "norm_position"}
# torchvision builders whose training-mode output is not plain logits unless told so.
_TV_KWARGS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def _check_forward(model: nn.Module, name: str, req: ModelRequest) -> None:
    """One eval-mode forward of two zero samples: the shape the data has, and the logits."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *req.in_shape))
    except Exception as exc:  # the model's own error, cut to its first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ShapeError(name, req.in_shape, f"its forward failed: {first[:200]}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InitlabError(f"model={name} returns {got} for a batch of 2: expected logits of shape "
                           f"(batch, {req.num_classes})")
    if out.shape[1] != req.num_classes:
        raise InitlabError(f"model={name} returns {out.shape[1]} logits but data has {req.num_classes} classes: "
                           f"set model.num_classes={req.num_classes} (or the model's own argument)")


@register("target")
def build_target(req: ModelRequest) -> nn.Module:
    """hydra.utils.instantiate on `model._target_` and its arguments."""
    from hydra.utils import instantiate

    target = req.cfg.get("_target_")
    if not target or target == "???":
        raise InitlabError("model=target needs model._target_, e.g. model._target_=torchvision.models.resnet18")
    kwargs = {k: v for k, v in req.cfg.items() if k not in _OWN_KEYS and k != "_target_"}
    if kwargs.get("num_classes") == "auto":
        kwargs["num_classes"] = req.num_classes
    elif kwargs.get("num_classes", 0) is None:
        del kwargs["num_classes"]
    try:
        model = instantiate({"_target_": target, **kwargs})
    except Exception as exc:
        cause = exc.__cause__ or exc
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise InitlabError(f"model._target_={target!r} could not be built: {first[:200]}") from None
    if not isinstance(model, nn.Module):
        raise InitlabError(f"model._target_={target!r} built a {type(model).__name__}, not a torch.nn.Module")
    _check_forward(model, f"target ({target})", req)
    return model


def torchvision_archs() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


@register("torchvision")
def build_torchvision(req: ModelRequest) -> nn.Module:
    """torchvision.models.get_model(arch, weights=None, num_classes=<the data's>)."""
    import torchvision.models as tvm

    arch = req.cfg["arch"]
    archs = torchvision_archs()
    if arch not in archs:
        raise InitlabError(f"model.arch={arch!r} is invalid: choose a torchvision classifier, e.g. "
                           f"{', '.join(a for a in archs if a in ('resnet18', 'resnet50', 'vgg11', 'densenet121', 'vit_b_16', 'convnext_tiny'))} "
                           f"({len(archs)} in all: torchvision.models.list_models(module=torchvision.models))")
    kwargs: dict[str, Any] = {**_TV_KWARGS.get(arch, {}), "num_classes": req.num_classes}
    if arch.startswith("vit_") and len(req.in_shape) == 3:
        kwargs["image_size"] = req.in_shape[1]  # position embeddings for the data's size
    kwargs.update({k: v for k, v in _extra(req.cfg).items()})
    if len(req.in_shape) != 3 or req.in_shape[0] != 3:
        raise ShapeError(f"torchvision (arch={arch})", req.in_shape,
                         "torchvision's classifiers take 3-channel images [3,H,W] (e.g. data=cifar10, "
                         "or data=synthetic data.shape=[3,32,32])")
    try:
        model = tvm.get_model(arch, weights=None, **kwargs)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InitlabError(f"model.arch={arch}: {first[:200]}") from None
    _check_forward(model, f"torchvision (arch={arch})", req)
    return model


def _extra(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Builder arguments given beside initlab's own keys (e.g. model.dropout=0.2)."""
    return {k: v for k, v in cfg.items() if k not in _OWN_KEYS and k not in ("weights", "_target_")}
