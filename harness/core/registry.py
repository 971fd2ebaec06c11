"""A generic name -> object registry with a decorator, duplicate-name errors and "did you mean".

Used for method adapters (``methods/``) and any other pluggable family (judges,
generation backends).  ``harness methods`` lists the method registry.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """Unknown or duplicate name.  ``str()`` is the plain message (KeyError quotes it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def did_you_mean(name: str, choices: list[str] | tuple[str, ...] | set[str]) -> str:
    """A ' (did you mean X?)' suffix, or '' when nothing is close."""
    close = difflib.get_close_matches(name, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: ``@METHODS.register()`` uses the object's ``name`` attribute."""

        def deco(obj: T) -> T:
            key = name or getattr(obj, "name", None)
            if not isinstance(key, str) or not key:
                raise RegistryError(f"{self.kind}: {obj!r} has no name to register under")
            if key in self._items and self._items[key] is not obj:
                raise RegistryError(
                    f"{self.kind} {key!r} is already registered by {self._items[key]!r}; "
                    "pick another name"
                )
            self._items[key] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, list(self._items))}; "
                f"choose from: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
