"""The normalisation layers of the zoo: which layer `norm=NAME` puts where, and layers that
hand telemetry the statistics they normalised with.

torch's LayerNorm/GroupNorm compute a per-sample (per-group) mean and variance and throw
them away. The layers here call the same native kernels (`native_layer_norm`,
`native_group_norm`, which return mean and 1/std beside the output) and, while a recorder
listens (`stats_sink` set), pass them on: the recorder's `norm_mean`/`norm_var` rows cost no
second pass over the input. RMSNorm computes its mean square itself and hands that over.

What each normalises over (for a sample of a conv layer's [C, H, W] output):
- batch: each channel over the batch and the positions (nn.BatchNorm1d/2d);
- layer: all of C, H, W of one sample (Wu & He's LayerNorm: GroupNorm with one group, so it
  takes any image size; per-channel gamma/beta); on flat [N, C] or tokens [N, T, D], the last dim;
- group: each of `groups` channel groups of one sample over its channels and positions;
- instance: each channel of one sample over its positions (GroupNorm with one channel per
  group); a Linear layer's output has one value per channel, nothing to normalise over;
- rms: like layer, dividing by the root mean square without subtracting the mean (Zhang &
  Sennrich 2019).
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from initlab.errors import InitlabError

NORMS = ("auto", "none", "batch", "layer", "group", "instance", "rms")  # auto: the model's own (none, vit: layer)
# (mean | None, var) per sample/group, as the layer computed them; RMSNorm: (None, mean square)
StatsSink = Callable[[torch.Tensor | None, torch.Tensor], None]


class NormStatsMixin:
    """`stats_sink`: called in forward with the statistics the layer normalised with."""

    stats_sink: StatsSink | None = None

    def _emit(self, mean: torch.Tensor | None, var: torch.Tensor) -> None:
        if self.stats_sink is not None:
            self.stats_sink(None if mean is None else mean.detach(), var.detach())


def _var(rstd: torch.Tensor, eps: float) -> torch.Tensor:
    return rstd.detach().pow(-2) - eps  # rstd = 1/sqrt(var + eps)


class LayerNorm(NormStatsMixin, nn.LayerNorm):
    """nn.LayerNorm (over the last dims) that exposes its per-sample mean and variance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, mean, rstd = torch.native_layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        if self.stats_sink is not None:
            self._emit(mean, _var(rstd, self.eps))
        return y


class GroupNorm(NormStatsMixin, nn.GroupNorm):
    """nn.GroupNorm that exposes its per-(sample, group) mean and variance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[0], x.shape[1]
        y, mean, rstd = torch.native_group_norm(x, self.weight, self.bias, n, c, x[0, 0].numel(),
                                                self.num_groups, self.eps)
        if self.stats_sink is not None:
            self._emit(mean, _var(rstd, self.eps))
        return y


class LayerNorm2d(GroupNorm):
    """LayerNorm of a conv layer: each sample over all its channels and positions."""

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(1, num_channels, eps=eps, affine=affine)


class InstanceNorm2d(GroupNorm):
    """InstanceNorm (no running statistics, per-channel affine): each channel of each sample
    over its positions. Equal to nn.InstanceNorm2d(affine=True), and it exposes its statistics."""

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(num_channels, num_channels, eps=eps, affine=affine)


class RMSNorm(NormStatsMixin, nn.Module):
    """x / sqrt(mean(x^2) + eps) * gamma, the mean square over `dims` of each sample, with a
    gamma per channel (`channel_dim`): the last dim for flat inputs and tokens, dim 1 for images."""

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True, image: bool = False) -> None:
        super().__init__()
        self.num_channels, self.eps, self.image = num_channels, eps, image
        self.weight = nn.Parameter(torch.ones(num_channels)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(1, x.dim())) if self.image else (-1,)
        ms = x.pow(2).mean(dims, keepdim=True)
        y = x * torch.rsqrt(ms + self.eps)
        if self.weight is not None:
            y = y * (self.weight.view(-1, *([1] * (x.dim() - 2))) if self.image else self.weight)
        self._emit(None, ms)
        return y

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, affine={self.weight is not None}"


@dataclass(frozen=True)
class NormSpec:
    """The `norm` config group as one value: which layer, its eps, affine and group count."""

    name: str = "none"
    eps: float = 1e-5
    affine: bool = True
    groups: int | str = "auto"  # group only: a count, or auto (8, or the largest count <= 8 that divides)
    sync: bool = False  # batch only, under torchrun: SyncBatchNorm (the global batch's statistics)

    @classmethod
    def of(cls, spec: "str | Mapping[str, Any] | NormSpec | None") -> "NormSpec":
        """A norm name (`group`), a dict of conf/norm's keys, or a spec; None is no norm."""
        if isinstance(spec, NormSpec):
            return spec
        if spec is None:
            return cls()
        from initlab.defaults import preset

        if isinstance(spec, str):
            spec = {"name": spec}
        d = preset("norm", str(spec.get("name", "none")), spec)
        return cls(str(d["name"]), float(d.get("eps", 1e-5)), bool(d.get("affine", True)), d.get("groups", "auto"),
                   bool(d.get("sync", False)))

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "eps": self.eps, "affine": self.affine, "groups": self.groups, "sync": self.sync}

    @property
    def active(self) -> bool:
        return self.name != "none"

    def _group_norm(self, channels: int) -> nn.Module:
        if self.groups == "auto":
            return GroupNorm(max(g for g in range(1, 9) if channels % g == 0), channels, self.eps, self.affine)
        if channels % int(self.groups):  # named once the model is built: `check_built`
            m = GroupNorm(1, channels, self.eps, self.affine)
            m.invalid_groups = int(self.groups)
            return m
        return GroupNorm(int(self.groups), channels, self.eps, self.affine)

    def check_built(self, model: nn.Module) -> None:
        """A group count that does not divide a layer's channels: one line naming the layer."""
        for name, m in model.named_modules():
            if getattr(m, "invalid_groups", None):
                raise InitlabError(f"norm.groups={m.invalid_groups} does not divide the {m.num_channels} channels "
                                   f"of {name}: give a divisor of every normalised layer's channels, or norm.groups=auto")

    def layer(self, dim: int, layer: str = "a normalised layer", optional: bool = False
              ) -> Callable[[int], nn.Module] | None:
        """The factory of this norm for a layer with `dim` = 1 (Linear: [N, C]), 2 (conv:
        [N, C, H, W]) or 3 (tokens: [N, T, D], normalised per token); None for no norm.
        `optional`: where the norm cannot apply (instance on a conv net's Linear head), none."""
        n, eps, affine = self.name, self.eps, self.affine
        if n == "none":
            return None
        if n == "batch":
            if dim == 3:
                raise InitlabError("norm=batch does not apply to tokens (model=vit takes norm=layer, rms or none)")
            bn = nn.BatchNorm1d if dim == 1 else nn.BatchNorm2d
            return lambda c: bn(c, eps=eps, affine=affine)
        if n == "layer":
            return (lambda c: LayerNorm2d(c, eps, affine)) if dim == 2 else \
                (lambda c: LayerNorm(c, eps=eps, elementwise_affine=affine))
        if n == "rms":
            return lambda c: RMSNorm(c, eps, affine, image=dim == 2)
        if dim == 3:
            raise InitlabError(f"norm={n} does not apply to tokens (model=vit takes norm=layer, rms or none)")
        if n == "group":
            return self._group_norm
        if n == "instance":
            if dim == 1:
                if optional:
                    return None
                raise InitlabError(f"norm=instance has nothing to normalise in {layer}: a Linear layer's output "
                                   "has one value per channel (use norm=layer or norm=group)")
            return lambda c: InstanceNorm2d(c, eps, affine)
        raise InitlabError(f"norm={n!r} is invalid: choose from {', '.join(NORMS)}")


def exposes_stats(module: nn.Module) -> bool:
    return isinstance(module, NormStatsMixin)


__all__ = ["NORMS", "GroupNorm", "InstanceNorm2d", "LayerNorm", "LayerNorm2d", "NormSpec", "RMSNorm",
           "exposes_stats"]
