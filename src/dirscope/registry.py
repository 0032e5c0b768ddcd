"""Name-to-constructor registries: a new model source, data source or direction family is one registration."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .errors import DirscopeError
from .specs import Spec, parse_spec, suggest

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    build: Callable[..., T]
    help: str
    takes_arg: bool | None  # True: arg required, False: no arg, None: optional


class Registry(Generic[T]):
    """Maps the name part of a spec to a constructor ``build(arg, **context)``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(
        self, name: str, *, help: str, takes_arg: bool | None = None
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorate(build: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(name, build, help, takes_arg)
            return build

        return decorate

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def entry(self, spec: Spec | str) -> Entry[T]:
        spec = parse_spec(spec, self.kind) if isinstance(spec, str) else spec
        entry = self._entries.get(spec.name)
        if entry is None:
            known = ", ".join(self.names())
            raise DirscopeError(f"unknown {self.kind} {str(spec)!r}{suggest(spec.name, self.names())} (known: {known})")
        if entry.takes_arg is True and not spec.arg:
            raise DirscopeError(f"{self.kind} {spec.name!r} needs an argument: {spec.name}:... ({entry.help})")
        if entry.takes_arg is False and spec.arg:
            raise DirscopeError(f"{self.kind} {spec.name!r} takes no argument, got {str(spec)!r}")
        return entry

    def build(self, spec: Spec | str, **context: Any) -> T:
        """Build the object a spec names; unknown names fail with the closest suggestions."""
        spec = parse_spec(spec, self.kind) if isinstance(spec, str) else spec
        return self.entry(spec).build(spec.arg, **context)

    def help_text(self) -> str:
        return "\n".join(f"  {e.name:<16} {e.help}" for e in self.entries())
