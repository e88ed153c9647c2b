"""Which role each parameter plays as the model widens, found by comparing its shape with the
same parameter of a base model (as microsoft/mup's `set_base_shapes` does): a dimension that
differs from the base is a width dimension, and its ratio to the base is the width multiplier.

A weight's dim 0 is its fan-out, the rest its fan-in (Linear, Conv, and every layer torch lays
out as `[out, in, ...]`). Roles, as Tensor Programs V names them:

| role | width dims | e.g. |
| --- | --- | --- |
| `input` | fan-out only | the first Linear or conv, an embedding |
| `hidden` | fan-out and fan-in | every Linear/conv between two widened layers |
| `output` | fan-in only | the classifier (the readout) |
| `vector` | its one dimension (1-d), or a trailing one | a bias or a norm gain of a widened layer, a positional embedding |
| `fixed` | none | anything that does not grow with width |
"""

from dataclasses import dataclass

from torch import nn

from initlab.errors import InitlabError

ROLES = ("input", "hidden", "output", "vector", "fixed")


@dataclass(frozen=True)
class Role:
    """One parameter's role and how much wider than the base it is."""

    name: str  # the parameter's dotted name
    role: str  # one of ROLES
    fan_in_mult: float  # fan-in / the base's (1 when the fan-in does not grow)
    fan_out_mult: float  # fan-out (a vector's length) / the base's

    @property
    def width_mult(self) -> float:
        """The multiplier of the dimension that grows: fan-in where it does, else fan-out."""
        return self.fan_in_mult if self.fan_in_mult != 1 else self.fan_out_mult


def _fan(shape: tuple[int, ...]) -> tuple[int, int]:
    out = shape[0]
    fan_in = 1
    for d in shape[1:]:
        fan_in *= d
    return out, fan_in


def _shape(params: dict[str, nn.Parameter], name: str, which: str, like: tuple[int, ...]) -> tuple[int, ...]:
    if name not in params:
        raise InitlabError(f"parametrize: {name} has no counterpart in the {which} model: build it with the same "
                           "architecture at another width")
    shape = tuple(params[name].shape)
    if len(shape) != len(like):
        raise InitlabError(f"parametrize: {name} is {list(like)} here and {list(shape)} in the {which} model: the "
                           "same parameter must have the same number of dimensions at every width")
    return shape


def _role(grows: set[int]) -> str:
    """A weight's role from the dimensions that grow: [out, in, ...] as torch lays weights out."""
    if not grows:
        return "fixed"
    if 0 in grows:
        return "hidden" if len(grows) > 1 else "input"
    return "output" if 1 in grows else "vector"  # only a trailing dim (a positional embedding's): vector-like


def infer_roles(model: nn.Module, base: nn.Module, delta: nn.Module | None = None) -> list[Role]:
    """Every trainable parameter's role in `model` against the same-named parameter of `base`
    (the model built at the base width): a dimension that differs between `base` and `delta`
    (the model at another width; default `model` itself) is a width dimension, and its size in
    `model` over its size in `base` the multiplier. Give `delta` when `model` may be at the
    base width itself. Raises InitlabError, naming the parameter, where the models do not match
    or where nothing differs (no width dimension)."""
    base_params = dict(base.named_parameters())
    other = dict((delta or model).named_parameters())
    roles = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        shape = tuple(p.shape)
        base_shape, other_shape = _shape(base_params, name, "base", shape), _shape(other, name, "other", shape)
        if len(shape) <= 1:
            grows = bool(shape) and base_shape[0] != other_shape[0]
            roles.append(Role(name, "vector" if grows else "fixed", 1.0, shape[0] / base_shape[0] if shape else 1.0))
            continue
        (out, fan_in), (b_out, b_in) = _fan(shape), _fan(base_shape)
        roles.append(Role(name, _role({d for d in range(len(shape)) if base_shape[d] != other_shape[d]}),
                          fan_in / b_in, out / b_out))
    if not any(r.role != "fixed" for r in roles):
        raise InitlabError("parametrize: no parameter of the model differs in shape from the base model's, so it "
                           "has no width dimension to scale: build the base at a smaller width (e.g. half)")
    return roles
