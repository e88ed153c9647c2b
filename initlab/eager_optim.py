"""torch.optim's optimizers without the import of torch._dynamo that eager runs never use.

torch wraps `Optimizer.add_param_group`, `zero_grad`, `state_dict` and `load_state_dict` in
`torch._disable_dynamo`, which imports torch._dynamo at the first call, and every `step()`
in `_use_grad_for_differentiable`, which imports it to place a graph break (the upstream
thread: pytorch#162595). That import is about 3 s on a 2-core CPU, most of a short run's
start-up. Outside `torch.compile` both wrappers only call the function they wrap (`step()`
with grad mode set to `differentiable`). `eager(cls)` is the subclass whose methods are
those functions themselves, so its numbers are torch's bit for bit; initlab never compiles,
so nothing is lost. Users' own optimizers (`initlab.watch`) are left as they are.
"""

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch.optim.optimizer import _use_grad_for_differentiable

OptimizerClass = TypeVar("OptimizerClass", bound=type[torch.optim.Optimizer])

_DISABLE_DYNAMO = torch._disable_dynamo(lambda: None).__code__
_USE_GRAD = _use_grad_for_differentiable(lambda self: None).__code__


def _unwrap_to(f: Callable[..., Any], code: Any) -> Callable[..., Any] | None:
    """The function under `f` that a wrapper with `code` wraps, if any (following
    functools.wraps' __wrapped__: step() may already carry torch's profiling hook)."""
    while f is not None:
        if getattr(f, "__code__", None) is code:
            return f.__wrapped__
        f = getattr(f, "__wrapped__", None)
    return None


def _step_without_graph_break(step: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(step)
    def eager_step(self: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        with torch.set_grad_enabled(self.defaults["differentiable"]):
            return step(self, *args, **kwargs)
    return eager_step


@functools.cache
def eager(cls: OptimizerClass) -> OptimizerClass:
    """`cls` with its torch._dynamo wrappers taken off (see the module's docstring)."""
    methods: dict[str, Callable[..., Any]] = {}
    for name in dir(cls):
        f = getattr(cls, name)
        if (inner := _unwrap_to(f, _DISABLE_DYNAMO)) is not None:
            methods[name] = inner
        elif (inner := _unwrap_to(f, _USE_GRAD)) is not None:
            methods[name] = _step_without_graph_break(inner)
    return type(cls.__name__, (cls,), {**methods, "__module__": __name__, "__doc__": cls.__doc__})
