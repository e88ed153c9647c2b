"""One registry mechanism for models, inits, datasets and optimizers: register by name,
get by name, and an unknown name is one line listing the choices."""

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from initlab.errors import InitlabError

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """A name -> item table whose misses are `InitlabError`s naming `key` and the choices."""

    def __init__(self, key: str) -> None:
        self.key = key  # the config key the name comes from, e.g. "model"
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(item: T) -> T:
            self._items[name] = item
            return item

        return deco

    def get(self, name: str) -> T:  # type: ignore[override]
        if name not in self._items:
            raise InitlabError(f"{self.key}={name!r} is invalid: choose from {', '.join(self.choices())}")
        return self._items[name]

    def choices(self) -> list[str]:
        return sorted(self._items)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
