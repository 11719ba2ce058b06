"""`Registry`: named extension points (objective terms, deployment targets), each name
registered once. The built-ins register themselves on import; tests add and remove their own."""

from __future__ import annotations

from typing import Protocol, TypeVar


class Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=Named)


class Registry(dict[str, T]):
    """Items by name, in registration order (which is the order they are listed and shown)."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def register(self, item: T) -> T:
        if item.name in self:
            raise ValueError(f"{self.what} `{item.name}` is already registered")
        self[item.name] = item
        return item

    def unregister(self, name: str) -> None:
        self.pop(name, None)
