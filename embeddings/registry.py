"""Representations by name, each declared once where it is defined.

A pooling layer is a class in ``embeddings.pooling`` decorated with
``@POOLINGS.register``; a classical rung of the ladder is a class in
``embeddings.rungs`` decorated with ``@RUNGS.register``. Everything else (configs, the
command line, the trainers, the ladder, the starting point, the embedders) looks them up
here by name, so adding one is one new class and its test.

Importing ``embeddings`` imports both modules, so the registries are full before anything
asks them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries in declaration order; ``registry[name]`` or a ValueError naming the
    choices."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, entry: T) -> T:
        """Class decorator: add ``entry`` under its ``name`` attribute."""
        name = str(getattr(entry, "name", "") or "")
        if not name:
            raise ValueError(f"a {self.kind} needs a name")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is declared twice")
        self._entries[name] = entry
        return entry

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name!r}; choose one of {', '.join(self._entries)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def names(self, where: Callable[[T], bool] | None = None) -> tuple[str, ...]:
        """The names in declaration order (those whose entry ``where`` accepts)."""
        return tuple(n for n, e in self._entries.items() if where is None or where(e))

    def check(self, name: str) -> None:
        self[name]


#: pooling layer classes (``embeddings.pooling.Pooling`` subclasses)
POOLINGS: Registry[Any] = Registry("pooling")
#: classical rungs (``embeddings.rungs.Rung`` subclasses)
RUNGS: Registry[Any] = Registry("rung")
