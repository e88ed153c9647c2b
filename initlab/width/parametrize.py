"""Width parametrisations: SP (standard, what PyTorch does), NTK, and μP (the Maximal Update
parametrisation, Tensor Programs V), each as a table of per-role scalings relative to a base
model, applied to a model and returned as optimizer parameter groups.

Every scheme here keeps the weights' own init for input and hidden weights: each fan-in-scaled
init (PyTorch's default, Kaiming, Xavier, LSUV's orthonormal start) already gives them variance
∝ 1/fan_in, which is what SP, NTK and μP all ask of them. What differs, with m the parameter's
width multiplier (its growing dimension over the base's):

| role | SP | NTK | μP |
| --- | --- | --- | --- |
| input weights, biases, norm gains: lr (SGD) | ×1 | ×1 | ×m |
| input weights, biases, norm gains: lr (Adam) | ×1 | ×1 | ×1 |
| hidden weights: lr (SGD) | ×1 | ×1/m | ×1 |
| hidden weights: lr (Adam) | ×1 | ×1/√m | ×1/m |
| output weights: lr (SGD) | ×1 | ×1/m | ×m |
| output weights: lr (Adam) | ×1 | ×1/√m | ×1 |
| output: init, multiplier | as is, 1 | as is, 1 | weights and bias ×√m, input ×1/m: output variance ∝ 1/fan_in² as TP5's table (or zero init: `readout_zero`) |
| Adam ε | ×1 | ×1 | ×1/m where the gradient shrinks as 1/m (hidden and output weights) |
| weight decay (Adam, AdamW) | as given | as given | divided by the lr multiplier, so lr·wd is the same at every width (as mup's `MuAdam`) |
| attention logits (modules with `logit_scale`) | 1/√d | 1/√d | √d₀/d (1/√d at the base) |

μP's readout (weights and bias ×√m, its input ×1/m, Adam's lr ×1) is microsoft/mup's
`MuReadout` with `MuAdam`; with SGD, mup's `MuSGD` multiplies every vector-like parameter's lr (one growing
dimension: input weights, biases, the readout) by m, as here. The depth multipliers of
depth-μP (`depth="sqrt"`: 1/√L on each residual branch) and CompleteP (`"linear"`: 1/L) apply
to modules with a `branch_mult` attribute (the zoo's ResNet blocks and ViT blocks).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from initlab.errors import InitlabError
from initlab.width.roles import Role, infer_roles

PARAMS = ("sp", "ntk", "mup")
DEPTHS = ("none", "sqrt", "linear")
OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclass(frozen=True)
class Scaling:
    """What one parametrisation does to one role: exponents of the width multiplier m."""

    lr_sgd: float = 0.0
    lr_adam: float = 0.0
    eps_adam: float = 0.0


# (param, role) -> exponents of m; absent: all 0 (the parameter is left as SP leaves it)
TABLE: dict[tuple[str, str], Scaling] = {
    ("ntk", "hidden"): Scaling(lr_sgd=-1.0, lr_adam=-0.5),
    ("ntk", "output"): Scaling(lr_sgd=-1.0, lr_adam=-0.5),
    ("mup", "input"): Scaling(lr_sgd=1.0),
    ("mup", "vector"): Scaling(lr_sgd=1.0),
    ("mup", "hidden"): Scaling(lr_adam=-1.0, eps_adam=-1.0),
    ("mup", "output"): Scaling(lr_sgd=1.0, eps_adam=-1.0),
}


@dataclass
class Applied:
    """What `parametrize` did to a model: kept on it, so a second call is refused."""

    param: str
    roles: list[Role]
    output_mult: float
    handles: list[Any]


def _readout_modules(model: nn.Module, roles: list[Role]) -> list[tuple[str, nn.Module, Role]]:
    modules = dict(model.named_modules())
    out = []
    for r in roles:
        if r.role == "output" and r.name.endswith("weight"):
            name = r.name.rsplit(".", 1)[0] if "." in r.name else ""
            out.append((name, modules[name], r))
    return out


def _input_hook(mult: float) -> Callable[..., Any]:
    """The readout's input times `mult` (mup's MuReadout: its bias is not scaled)."""
    def hook(module: nn.Module, args: tuple) -> tuple:
        return (args[0] * mult, *args[1:])
    return hook


def parametrize(model: nn.Module, param: str, base: nn.Module, *, optimizer: str = "adam", lr: float,
                weight_decay: float = 0.0, eps: float = 1e-8, readout_zero: bool = False,
                depth: str = "none", base_depth: int | None = None, delta: nn.Module | None = None
                ) -> list[dict[str, Any]]:
    """Apply width parametrisation `param` (`sp`, `ntk`, `mup`) to `model`, whose width
    dimensions are found against `base` (the same architecture at the base width), and return
    the optimizer parameter groups for `optimizer` (`sgd`, `adam`, `adamw`) at base rate `lr`:
    pass them to the optimizer as they are (`torch.optim.AdamW(groups)`). Each group carries
    `role`, `names`, `lr_mult` and, for Adam, its `eps`. See the module's table.

    `base` (and `delta`, the model at any other width, needed when `model` may be at the base
    width itself) are read for their shapes only: build them on the meta device
    (`with torch.device("meta"): base = make_model(64)`) to spend no memory and draw no
    random numbers. `readout_zero`: the readout's weights start at zero (μP's alternative to
    its small init).
    `depth`: `sqrt` (depth-μP) or `linear` (CompleteP) multiplies each residual branch by
    1/√L or 1/L, L the number of residual blocks (modules with `branch_mult`), relative to
    `base_depth` blocks when given."""
    if param not in PARAMS:
        raise InitlabError(f"param={param!r} is invalid: choose from {list(PARAMS)}")
    if optimizer not in OPTIMIZERS:
        raise InitlabError(f"parametrize: optimizer={optimizer!r} is invalid: choose from {list(OPTIMIZERS)}")
    if depth not in DEPTHS:
        raise InitlabError(f"param.depth={depth!r} is invalid: choose from {list(DEPTHS)}")
    if getattr(model, "_initlab_param", None) is not None:
        raise InitlabError("parametrize: this model is parametrised already; build a fresh one")
    roles = infer_roles(model, base, delta)
    handles: list[Any] = []
    output_mult = 1.0
    if param == "mup":
        for _name, module, role in _readout_modules(model, roles):
            output_mult = 1.0 / role.fan_in_mult
            handles.append(module.register_forward_pre_hook(_input_hook(output_mult)))
            with torch.no_grad():  # var ∝ 1/fan_in² after the multiplier, not 1/fan_in³
                for p in (module.weight, getattr(module, "bias", None)):
                    if p is not None:
                        p.mul_(math.sqrt(role.fan_in_mult))
        _scale_attention(model, base)
    if readout_zero:
        for _name, module, _role in _readout_modules(model, roles):
            with torch.no_grad():
                module.weight.zero_()
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
    _scale_branches(model, depth, base_depth)
    model._initlab_param = Applied(param, roles, output_mult, handles)
    return _groups(model, param, roles, optimizer, lr, weight_decay, eps)


def _scale_attention(model: nn.Module, base: nn.Module) -> None:
    """μP's attention: logits q·k/d rather than /√d, pinned to 1/√d at the base width."""
    base_heads = {n: m for n, m in base.named_modules() if hasattr(m, "head_dim")}
    for name, m in model.named_modules():
        if hasattr(m, "logit_scale") and hasattr(m, "head_dim") and name in base_heads:
            d, d0 = m.head_dim, base_heads[name].head_dim
            m.logit_scale = math.sqrt(d0) / d


def _scale_branches(model: nn.Module, depth: str, base_depth: int | None) -> None:
    blocks = [m for m in model.modules() if hasattr(m, "branch_mult")]
    if depth == "none":
        return
    if not blocks:
        raise InitlabError(f"param.depth={depth} needs residual blocks with a branch multiplier (the zoo's resnet "
                           "and vit); this model has none")
    ratio = len(blocks) / base_depth if base_depth else len(blocks)
    mult = 1 / math.sqrt(ratio) if depth == "sqrt" else 1 / ratio
    for m in blocks:
        m.branch_mult = mult


def _groups(model: nn.Module, param: str, roles: list[Role], optimizer: str, lr: float, weight_decay: float,
            eps: float) -> list[dict[str, Any]]:
    params = dict(model.named_parameters())
    adam = optimizer in ("adam", "adamw")
    groups: dict[tuple[str, float, float], dict[str, Any]] = {}
    for r in roles:
        s = TABLE.get((param, r.role), Scaling())
        m = r.width_mult
        lr_mult = m ** (s.lr_adam if adam else s.lr_sgd)
        eps_mult = m ** s.eps_adam if adam else 1.0
        key = (r.role, lr_mult, eps_mult)
        g = groups.setdefault(key, {"params": [], "names": [], "role": r.role, "lr_mult": lr_mult,
                                    "lr": lr * lr_mult, "weight_decay": weight_decay})
        if adam:
            g["eps"] = eps * eps_mult
        if adam and param == "mup":  # lr·wd the same at every width, as mup's MuAdam
            g["weight_decay"] = weight_decay / lr_mult
        g["params"].append(params[r.name])
        g["names"].append(r.name)
    return list(groups.values())


def describe_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The groups without their tensors: what the run's config records."""
    return [{k: v for k, v in g.items() if k != "params"} for g in groups]
