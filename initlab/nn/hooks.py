"""PyTorch hooks only inside a block that removes them (miniai's `Hooks`): every place initlab
hooks a model or an optimizer registers through `hooked`."""

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def hooked(handles: Iterable[Any]) -> Iterator[list[Any]]:
    """Register the hooks `handles` yields (pass a generator: a registration that raises
    leaves none of the earlier ones behind), and remove them all when the block ends, however
    it ends. Yields the handles."""
    kept: list[Any] = []
    try:
        for handle in handles:
            kept.append(handle)
        yield kept
    finally:
        for handle in reversed(kept):
            handle.remove()
