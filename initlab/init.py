"""Registry of init schemes, applied per module by type.

Every scheme returns a report, one entry per module it touched, so a run says exactly
what was initialised and how; a scheme that touches nothing is an error.
"""

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from initlab.errors import InitlabError

WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)

InitRecord = dict[str, Any]
Scheme = Callable[[nn.Module, Mapping[str, Any], "ActInfo"], list[InitRecord]]
SCHEMES: dict[str, Scheme] = {}

# torch.nn.init.calculate_gain knows no GELU; ReLU's gain is the usual stand-in.
_GAIN_NAME = {"relu": "relu", "leaky_relu": "leaky_relu", "tanh": "tanh",
              "sigmoid": "sigmoid", "gelu": "relu", "linear": "linear"}


class ActInfo:
    """The model's nonlinearity, as the gain formulas want it."""

    def __init__(self, act: str, slope: float = 0.01) -> None:
        self.act, self.slope = act, slope
        self.gain_name = _GAIN_NAME[act]

    def gain(self) -> float:
        return nn.init.calculate_gain(self.gain_name, self.slope if self.gain_name == "leaky_relu" else None)


def register(name: str) -> Callable[[Scheme], Scheme]:
    def deco(fn: Scheme) -> Scheme:
        SCHEMES[name] = fn
        return fn

    return deco


def _record(name: str, module: nn.Module, how: str) -> InitRecord:
    w = getattr(module, "weight", None)
    return {
        "module": name,
        "type": type(module).__name__,
        "init": how,
        "weight_std": float(w.detach().float().std()) if w is not None and w.numel() > 1 else None,
    }


def _norms_and_biases(model: nn.Module, records: list[InitRecord]) -> None:
    """Shared by every scheme but `default`: BN weight 1 / bias 0, every bias zero."""
    for name, m in model.named_modules():
        if isinstance(m, NORMS) and getattr(m, "weight", None) is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            records.append(_record(name, m, "weight=1, bias=0"))
        elif isinstance(m, WEIGHTED) and m.bias is not None:
            nn.init.zeros_(m.bias)


def _per_weighted(model: nn.Module, fn: Callable[[torch.Tensor], str]) -> list[InitRecord]:
    records: list[InitRecord] = []
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, WEIGHTED):
                how = fn(m.weight)
                records.append(_record(name, m, how + (", bias=0" if m.bias is not None else "")))
        _norms_and_biases(model, records)
    return records


@register("default")
def default_init(model: nn.Module, cfg: Mapping[str, Any], act: ActInfo) -> list[InitRecord]:
    """Each layer's own reset_parameters(): kaiming_uniform_(a=sqrt(5)) for Linear/Conv."""
    records = []
    for name, m in model.named_modules():
        if hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False)):
            m.reset_parameters()
            how = "kaiming_uniform_(a=sqrt(5))" if isinstance(m, WEIGHTED) else "reset_parameters()"
            records.append(_record(name, m, how))
    return records


def _gain(cfg: Mapping[str, Any], act: ActInfo) -> float:
    g = cfg.get("gain", 1.0)
    return act.gain() if g == "auto" else float(g)


@register("xavier")
def xavier_init(model: nn.Module, cfg: Mapping[str, Any], act: ActInfo) -> list[InitRecord]:
    """Glorot & Bengio: Var(W) = gain^2 * 2 / (fan_in + fan_out)."""
    dist, gain = cfg.get("distribution", "uniform"), _gain(cfg, act)
    fn = nn.init.xavier_uniform_ if dist == "uniform" else nn.init.xavier_normal_

    def apply(w: torch.Tensor) -> str:
        fn(w, gain=gain)
        return f"xavier_{dist}_(gain={gain:.4g})"

    return _per_weighted(model, apply)


@register("kaiming")
def kaiming_init(model: nn.Module, cfg: Mapping[str, Any], act: ActInfo) -> list[InitRecord]:
    """He et al.: Var(W) = gain^2 / fan, gain from the model's activation."""
    dist, mode = cfg.get("distribution", "normal"), cfg.get("mode", "fan_in")
    fn = nn.init.kaiming_uniform_ if dist == "uniform" else nn.init.kaiming_normal_
    a = act.slope if act.gain_name == "leaky_relu" else 0.0

    def apply(w: torch.Tensor) -> str:
        fn(w, a=a, mode=mode, nonlinearity=act.gain_name)
        extra = f", a={a:g}" if act.gain_name == "leaky_relu" else ""
        return f"kaiming_{dist}_(mode={mode}, nonlinearity={act.gain_name}{extra})"

    return _per_weighted(model, apply)


@register("normal")
def normal_init(model: nn.Module, cfg: Mapping[str, Any], act: ActInfo) -> list[InitRecord]:
    """Plain N(0, std^2)."""
    std = float(cfg.get("std", 0.01))

    def apply(w: torch.Tensor) -> str:
        nn.init.normal_(w, 0.0, std)
        return f"normal_(0, {std:g})"

    return _per_weighted(model, apply)


@register("orthogonal")
def orthogonal_init(model: nn.Module, cfg: Mapping[str, Any], act: ActInfo) -> list[InitRecord]:
    """Saxe et al.: a (semi-)orthogonal weight matrix times the gain; biases zero."""
    gain = _gain(cfg, act)

    def apply(w: torch.Tensor) -> str:
        nn.init.orthogonal_(w, gain=gain)
        return f"orthogonal_(gain={gain:.4g})"

    return _per_weighted(model, apply)


def zero_last_bn(model: nn.Module) -> list[InitRecord]:
    """Zero the γ of the last BatchNorm on each residual branch (Goyal et al.; timm's
    zero_init_last): every block starts as its shortcut."""
    records = []
    with torch.no_grad():
        for name, m in model.named_modules():
            branch = getattr(m, "branch", None)
            norms = [(n, b) for n, b in branch.named_modules() if isinstance(b, NORMS)] if branch is not None else []
            if norms:
                sub, bn = norms[-1]
                nn.init.zeros_(bn.weight)
                records.append(_record(f"{name}.branch.{sub}", bn, "weight=0 (last BN of the residual branch)"))
    return records


def apply_init(model: nn.Module, cfg: Mapping[str, Any], act: str, slope: float = 0.01) -> list[InitRecord]:
    """Initialise `model` in place with scheme `cfg['name']`; return what was touched."""
    name = cfg["name"]
    if name not in SCHEMES:
        raise InitlabError(f"init={name!r} is invalid: choose from {', '.join(sorted(SCHEMES))}")
    records = SCHEMES[name](model, cfg, ActInfo(act, slope))
    if not records:
        raise InitlabError(f"init={name} touched no parameter of this model: nothing to initialise")
    if cfg.get("zero_last_bn", False):
        zeroed = zero_last_bn(model)
        if not zeroed:
            raise InitlabError("init.zero_last_bn=true needs residual blocks with BatchNorm "
                               "(model=resnet bn=true, block=basic)")
        records += zeroed
    return records

