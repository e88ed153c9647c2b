"""torch.optim's optimizers without the import of torch._dynamo that eager runs never use.

torch wraps `Optimizer.add_param_group`, `zero_grad`, `state_dict` and `load_state_dict` in
`torch._disable_dynamo`, which imports torch._dynamo at the first call, and every `step()`
in `_use_grad_for_differentiable`, which imports it to place a graph break (the upstream
thread: pytorch#162595). That import is 1-3 s on a 2-core CPU, most of a short run's
start-up. Outside `torch.compile` both wrappers only call the function they wrap (`step()`
with grad mode set to `differentiable`). `eager(cls)` is the subclass whose methods are
those functions themselves, so its numbers are torch's bit for bit; initlab never compiles,
so nothing is lost. Users' own optimizers (`initlab.watch`) are left as they are.

Fail-soft: the wrappers are recognised by their code objects, and only while those code
objects name exactly the globals they name today; a torch whose wrappers lack, rename or
change them gets `cls` itself (torch's behaviour, the import included). Off with
INITLAB_SPEEDUPS=0.
"""

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from initlab.speedups import enabled, fell_back

OptimizerClass = TypeVar("OptimizerClass", bound=type[torch.optim.Optimizer])

# the global names each wrapper's code refers to as of torch 2.2-2.14: a wrapper that refers
# to anything else does something this module does not know to do, and is left on
_DISABLE_DYNAMO_NAMES = {"getattr", "torch._dynamo", "_dynamo", "disable", "__dynamo_disable"}
_USE_GRAD_NAMES = {"torch._dynamo", "cast", "Optimizer", "is_grad_enabled", "set_grad_enabled", "defaults",
                   "_dynamo", "graph_break"}


@functools.cache
def _wrapper_codes() -> tuple[Any, Any] | None:
    """The code objects of torch's two wrappers, or None where they are not as expected."""
    try:
        from torch.optim.optimizer import _use_grad_for_differentiable

        disable = torch._disable_dynamo(lambda: None).__code__
        use_grad = _use_grad_for_differentiable(lambda self: None).__code__
    except (AttributeError, ImportError, TypeError) as exc:
        fell_back("eager_optim", f"torch's optimizer wrappers are not where expected ({exc})")
        return None
    if set(disable.co_names) - _DISABLE_DYNAMO_NAMES or set(use_grad.co_names) - _USE_GRAD_NAMES:
        fell_back("eager_optim", "torch's optimizer wrappers changed")
        return None
    return disable, use_grad


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


def eager(cls: OptimizerClass) -> OptimizerClass:
    """`cls` with its torch._dynamo wrappers taken off (see the module's docstring); `cls`
    itself when the speed-ups are off or torch's wrappers are not as expected."""
    if not enabled():
        return cls
    return _eager(cls)


@functools.cache
def _eager(cls: OptimizerClass) -> OptimizerClass:
    codes = _wrapper_codes()
    if codes is None:
        return cls
    disable, use_grad = codes
    methods: dict[str, Callable[..., Any]] = {}
    for name in dir(cls):
        f = getattr(cls, name)
        if (inner := _unwrap_to(f, disable)) is not None:
            methods[name] = inner
        elif (inner := _unwrap_to(f, use_grad)) is not None:
            methods[name] = _step_without_graph_break(inner)
    return type(cls.__name__, (cls,), {**methods, "__module__": __name__, "__doc__": cls.__doc__})
