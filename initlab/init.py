"""Registry of init schemes, applied per module by type.

Every scheme returns a report, one entry per module it touched, so a run says exactly
what was initialised and how; a scheme that touches nothing is an error. Data-dependent
schemes (LSUV) read a batch through the context; residual schemes (Fixup, SkipInit) add
the scalar parameters their papers define to each residual branch.
"""

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from initlab.defaults import preset
from initlab.errors import InitlabError
from initlab.models.blocks import Bias, Scale
from initlab.nn import acts
from initlab.nn.hooks import hooked
from initlab.nn.kinds import DROPOUTS, NORMS, WEIGHTED
from initlab.registry import Registry

InitRecord = dict[str, Any]
Scheme = Callable[[nn.Module, Mapping[str, Any], "InitContext"], list[InitRecord]]
SCHEMES: Registry[Scheme] = Registry("init")
register = SCHEMES.register


class InitContext:
    """What a scheme may need beyond the model: its nonlinearity, as the gain formulas want
    it, and (for data-dependent schemes) a batch of inputs, fetched only when asked for."""

    def __init__(self, act: str, slope: float = 0.01, batch: Callable[[], torch.Tensor] | None = None) -> None:
        self.act, self.slope = act, slope
        self.gain_name = acts.gain_name(act)
        self._batch = batch

    def gain(self) -> float:
        return acts.gain(self.act, self.slope)

    def he(self, w: torch.Tensor, mode: str, uniform: bool = False) -> str:
        """kaiming_(uniform|normal)_ for the model's activation; one calculate_gain does not know
        (GELU) takes its gain from its second moment (acts.gain), said in the returned text."""
        fn = nn.init.kaiming_uniform_ if uniform else nn.init.kaiming_normal_
        dist = "uniform" if uniform else "normal"
        if self.gain_name is None:
            fn(w, mode=mode, nonlinearity="linear")
            with torch.no_grad():
                w.mul_(self.gain())
            return f"kaiming_{dist}_(mode={mode}, gain={self.gain():.4g}: 1/sqrt(E[{self.act}(z)^2]))"
        a = self.slope if self.gain_name == "leaky_relu" else 0.0
        fn(w, a=a, mode=mode, nonlinearity=self.gain_name)
        extra = f", a={a:g}" if self.gain_name == "leaky_relu" else ""
        return f"kaiming_{dist}_(mode={mode}, nonlinearity={self.gain_name}{extra})"

    def batch(self) -> torch.Tensor:
        if self._batch is None:
            raise InitlabError("this init scheme needs a batch of data, and none was given")
        return self._batch()


def _record(name: str, module: nn.Module, how: str) -> InitRecord:
    """What a scheme touched; `weight_std` holds the weight itself until apply_init, once the
    scheme is done, reads its std (or leaves it out for draws nobody reads it of)."""
    return {"module": name, "type": type(module).__name__, "init": how, "weight_std": getattr(module, "weight", None)}


def _weight_std(w: object) -> float | None:
    # numpy's std: torch's took ~3 ms for a 256x256 CPU weight, most of a probe draw's build
    if not isinstance(w, torch.Tensor) or w.numel() <= 1:
        return None
    return float(w.detach().float().cpu().numpy().std(ddof=1))


def _norms_and_biases(model: nn.Module, records: list[InitRecord]) -> None:
    """Shared by every scheme but `default`: BN weight 1 / bias 0, every bias zero."""
    for name, m in model.named_modules():
        if isinstance(m, NORMS) and getattr(m, "weight", None) is not None:
            nn.init.ones_(m.weight)
            if getattr(m, "bias", None) is not None:  # RMSNorm has none
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
def default_init(model: nn.Module, cfg: Mapping[str, Any], ctx: InitContext) -> list[InitRecord]:
    """Each layer's own reset_parameters(): kaiming_uniform_(a=sqrt(5)) for Linear/Conv."""
    records = []
    for name, m in model.named_modules():
        if hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False)):
            m.reset_parameters()
            how = "kaiming_uniform_(a=sqrt(5))" if isinstance(m, WEIGHTED) else "reset_parameters()"
            records.append(_record(name, m, how))
    return records


def _gain(cfg: Mapping[str, Any], ctx: InitContext) -> float:
    g = cfg["gain"]
    return ctx.gain() if g == "auto" else float(g)


@register("xavier")
def xavier_init(model: nn.Module, cfg: Mapping[str, Any], ctx: InitContext) -> list[InitRecord]:
    """Glorot & Bengio: Var(W) = gain^2 * 2 / (fan_in + fan_out)."""
    dist, gain = cfg["distribution"], _gain(cfg, ctx)
    fn = nn.init.xavier_uniform_ if dist == "uniform" else nn.init.xavier_normal_

    def apply(w: torch.Tensor) -> str:
        fn(w, gain=gain)
        return f"xavier_{dist}_(gain={gain:.4g})"

    return _per_weighted(model, apply)


@register("kaiming")
def kaiming_init(model: nn.Module, cfg: Mapping[str, Any], ctx: InitContext) -> list[InitRecord]:
    """He et al.: Var(W) = gain^2 / fan, gain from the model's activation."""
    dist, mode = cfg["distribution"], cfg["mode"]

    def apply(w: torch.Tensor) -> str:
        return ctx.he(w, mode, uniform=dist == "uniform")

    return _per_weighted(model, apply)


@register("normal")
def normal_init(model: nn.Module, cfg: Mapping[str, Any], ctx: InitContext) -> list[InitRecord]:
    """Plain N(0, std^2)."""
    std = float(cfg["std"])

    def apply(w: torch.Tensor) -> str:
        nn.init.normal_(w, 0.0, std)
        return f"normal_(0, {std:g})"

    return _per_weighted(model, apply)


@register("orthogonal")
def orthogonal_init(model: nn.Module, cfg: Mapping[str, Any], ctx: InitContext) -> list[InitRecord]:
    """Saxe et al.: a (semi-)orthogonal weight matrix times the gain; biases zero."""
    gain = _gain(cfg, ctx)

    def apply(w: torch.Tensor) -> str:
        nn.init.orthogonal_(w, gain=gain)
        return f"orthogonal_(gain={gain:.4g})"

    return _per_weighted(model, apply)


class _Reached(Exception):
    """Raised by a hook to end a forward pass once the layer of interest has run."""


def _output_var(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> float:
    """Variance of `layer`'s output on `x`, running the model only up to that layer."""
    seen: list[float] = []

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        seen.append(float(out.detach().double().var()))
        raise _Reached

    try:
        with hooked([layer.register_forward_hook(hook)]):
            model(x)
    except _Reached:
        pass
    if not seen:
        raise InitlabError(f"init=lsuv: layer {type(layer).__name__} did not run in the forward pass")
    return seen[0]


@register("lsuv")
def lsuv_init(model: nn.Module, cfg: Mapping[str, Any], ctx: InitContext) -> list[InitRecord]:
    """Mishkin & Matas (2016), layer-sequential unit variance: orthonormal weights, then, in
    forward order, divide each layer's weights by the std of its output on a batch until
    |Var - 1| < tol (at most max_iter times). Reports the iterations and variance per layer.
    Measured in training mode (BatchNorm on batch statistics, as at step 0) with dropout off."""
    tol, max_iter = float(cfg["tol"]), int(cfg["max_iter"])
    records = orthogonal_init(model, {"gain": 1.0}, ctx)
    by_name = {r["module"]: r for r in records}
    x = ctx.batch()
    # The forwards below run in training mode (batch statistics, as at step 0) but must not
    # move BatchNorm's running averages: keep the buffers and put them back.
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    was_training = model.training
    model.train()
    for m in model.modules():  # a fresh dropout mask per forward would make the variance a moving target
        if isinstance(m, DROPOUTS):
            m.eval()
    try:
        with torch.no_grad():
            for name, m in model.named_modules():
                if not isinstance(m, WEIGHTED):
                    continue
                var, iters = _output_var(model, m, x), 0
                while abs(var - 1) >= tol and iters < max_iter and math.isfinite(var) and var > 0:
                    m.weight.div_(math.sqrt(var))
                    var, iters = _output_var(model, m, x), iters + 1
                rec = by_name[name]
                rec["init"] = f"orthogonal_(gain=1) + LSUV: output var {var:.3f} after {iters} rescale(s)"
                rec.update(lsuv_iters=iters, lsuv_var=var, lsuv_converged=abs(var - 1) < tol)  # std: as rescaled
    finally:
        model.load_state_dict(buffers, strict=False)
        model.train(was_training)
    return records


def _residual_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(getattr(m, "branch", None), nn.Sequential)]


def _require_residual(model: nn.Module, scheme: str, allow_bn: bool) -> list[tuple[str, nn.Module]]:
    blocks = _residual_blocks(model)
    if not blocks:
        raise InitlabError(f"init={scheme} needs a residual network (model=resnet)")
    if not allow_bn and any(isinstance(m, NORMS) for m in model.modules()):
        raise InitlabError(f"init={scheme} is for residual networks without normalisation: set norm=none (bn=false)")
    return blocks


def _he(w: torch.Tensor, ctx: InitContext, mode: str, scale: float = 1.0) -> str:
    how = ctx.he(w, mode)
    with torch.no_grad():
        w.mul_(scale)
    return how + (f" x {scale:.4g}" if scale != 1 else "")


@register("fixup")
def fixup_init(model: nn.Module, cfg: Mapping[str, Any], ctx: InitContext) -> list[InitRecord]:
    """Zhang, Dauphin & Ma (2019) for residual nets without normalisation: the last layer of
    each residual branch and the classifier start at zero; the branch's other layers are He
    initialised and scaled by L^(-1/(2m-2)) (L branches, m layers each); every branch gets a
    scalar bias before each conv and activation, and a scalar multiplier (1) then a scalar
    bias at its end."""
    blocks = _require_residual(model, "fixup", allow_bn=False)
    mode = cfg["mode"]
    records: list[InitRecord] = []
    with torch.no_grad():
        in_branch = set()
        for bname, block in blocks:
            convs = [(n, m) for n, m in block.branch.named_children() if isinstance(m, WEIGHTED)]
            m_layers = len(convs)
            scale = len(blocks) ** (-1 / (2 * m_layers - 2)) if m_layers > 1 else 1.0
            for i, (n, m) in enumerate(convs):
                in_branch.add(id(m))
                if i == m_layers - 1:
                    nn.init.zeros_(m.weight)
                    how = "zeros (last layer of the residual branch)"
                else:
                    how = _he(m.weight, ctx, mode, scale)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
                records.append(_record(f"{bname}.branch.{n}", m, how))
            children: list[nn.Module] = []
            for child in block.branch.children():
                if isinstance(child, WEIGHTED) or acts.is_activation(child):
                    children.append(Bias())
                children.append(child)
                if child is convs[-1][1]:
                    children += [Scale(1.0), Bias()]
            block.branch = nn.Sequential(*children)
            records.append({"module": f"{bname}.branch", "type": "Sequential", "init": "scalar biases 0, "
                            "multiplier 1 (Fixup)", "weight_std": None})
        weighted = [(n, m) for n, m in model.named_modules() if isinstance(m, WEIGHTED) and id(m) not in in_branch]
        for i, (n, m) in enumerate(weighted):
            if i == len(weighted) - 1:  # the classifier
                nn.init.zeros_(m.weight)
                how = "zeros (classifier)"
            else:
                how = _he(m.weight, ctx, mode)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
            records.append(_record(n, m, how))
    return records


@register("skipinit")
def skipinit_init(model: nn.Module, cfg: Mapping[str, Any], ctx: InitContext) -> list[InitRecord]:
    """De & Smith (2020): He init, and a learnable scalar alpha = 0 at the end of every
    residual branch, so each block starts as its shortcut (meant for nets without BN)."""
    blocks = _require_residual(model, "skipinit", allow_bn=True)
    mode = cfg["mode"]
    records = _per_weighted(model, lambda w: _he(w, ctx, mode))
    with torch.no_grad():
        for bname, block in blocks:
            block.branch = nn.Sequential(*block.branch.children(), Scale(0.0))
            records.append({"module": f"{bname}.branch", "type": "Sequential",
                            "init": "alpha = 0 multiplies the branch (SkipInit)", "weight_std": None})
    return records


def zero_last_bn(model: nn.Module) -> list[InitRecord]:
    """Zero the γ of the last BatchNorm on each residual branch (Goyal et al.; timm's
    zero_init_last): every block starts as its shortcut."""
    records = []
    with torch.no_grad():
        for name, block in _residual_blocks(model):
            norms = [(n, b) for n, b in block.branch.named_modules() if isinstance(b, NORMS)]
            if norms:
                sub, bn = norms[-1]
                nn.init.zeros_(bn.weight)
                records.append(_record(f"{name}.branch.{sub}", bn, "weight=0 (last norm of the residual branch)"))
    return records


def model_act(model: nn.Module) -> tuple[str, float]:
    """(`model.act` name, slope) of the first activation module the table can name; ReLU
    when there is none (activations called as functions are invisible to modules)."""
    for m in model.modules():
        a = acts.lookup(m)
        if a is not None and a.name is not None:
            slope = getattr(m, "negative_slope", getattr(m, "leak", 0.01))
            return a.name, float(slope)
    return "relu", 0.01


def apply_init(model: nn.Module, scheme: str | Mapping[str, Any] = "default", act: str = "auto",
               slope: float | None = None, batch: Callable[[], torch.Tensor] | torch.Tensor | None = None,
               weight_std: bool = True, **params: Any) -> list[InitRecord]:
    """Initialise `model` in place with a registered scheme; return what was touched (one
    record per module: name, type, how, weight std).

    `scheme`: a name (`kaiming`, ...) or a mapping with `name` and the scheme's keys; missing
    keys, and `params`, fall back on conf/init/NAME.yaml. `act`: the nonlinearity the gains
    assume (`auto`: the model's first activation module). `batch`: inputs, or a function
    returning them, for data-dependent schemes (LSUV). `weight_std=False`: records without
    the weights' std (the probe's draws, whose records nobody reads)."""
    given = {"name": scheme} if isinstance(scheme, str) else dict(scheme)
    name = given["name"]
    fn = SCHEMES.get(name)
    cfg = preset("init", name, {**given, **params})
    if act == "auto":
        act, found_slope = model_act(model)
        slope = found_slope if slope is None else slope
    slope = 0.01 if slope is None else float(slope)  # torch's LeakyReLU default
    batch_fn = (lambda: batch) if isinstance(batch, torch.Tensor) else batch
    records = fn(model, cfg, InitContext(act, slope, batch_fn))
    if not records:
        raise InitlabError(f"init={name} touched no parameter of this model: nothing to initialise")
    if cfg["zero_last_bn"]:
        zeroed = zero_last_bn(model)
        if not zeroed:
            raise InitlabError("init.zero_last_bn=true needs residual blocks with a norm layer "
                               "(model=resnet norm=batch, block=basic)")
        records += zeroed
    for r in records:
        r["weight_std"] = _weight_std(r["weight_std"]) if weight_std else None
    return records
