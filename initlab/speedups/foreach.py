"""Multi-tensor ops over a model's parameter list: torch's `_foreach_*` kernels where they
are there (one launch for many tensors on a GPU, the way torch.optim updates parameters),
else one public op per tensor. The numbers are the same either way; INITLAB_SPEEDUPS=0 takes
the per-tensor ops."""

from collections.abc import Sequence

import torch

from initlab.speedups import enabled, fell_back


def _kernel(name: str) -> object | None:
    f = getattr(torch, name, None) if enabled() else None
    if f is None and enabled():
        fell_back(name, "this torch has no such kernel")
    return f


def copy_(dst: Sequence[torch.Tensor], src: Sequence[torch.Tensor]) -> None:
    """dst[i].copy_(src[i]) for every i."""
    if (f := _kernel("_foreach_copy_")) is not None:
        f(list(dst), list(src))
        return
    for d, s in zip(dst, src):
        d.copy_(s)


def sub_(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> None:
    """a[i] -= b[i] for every i, in place."""
    if (f := _kernel("_foreach_sub_")) is not None:
        f(list(a), list(b))
        return
    for x, y in zip(a, b):
        x.sub_(y)


def norms(tensors: Sequence[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """The 2-norm of each tensor, accumulated in `dtype`, as one 1-d tensor."""
    if (f := _kernel("_foreach_norm")) is not None:
        try:
            return torch.stack(f(list(tensors), 2, dtype=dtype))
        except (TypeError, RuntimeError):  # torch releases before the dtype argument
            fell_back("_foreach_norm", "this torch's kernel takes no dtype")
    return torch.stack([torch.linalg.vector_norm(t, dtype=dtype) for t in tensors])
