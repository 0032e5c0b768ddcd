"""The one parser for spec strings such as ``mnist``, ``npz:PATH``, ``python:mod:fn`` or ``basis,random:64``."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import DirscopeError


@dataclass(frozen=True)
class Spec:
    """A parsed ``name[:arg]`` string. ``arg`` keeps any further colons (paths, ``module:callable``)."""

    name: str
    arg: str | None = None

    def __str__(self) -> str:
        return self.name if self.arg is None else f"{self.name}:{self.arg}"


def parse_spec(text: str, what: str = "spec") -> Spec:
    """Split ``text`` at its first colon into a name and an optional argument."""
    text = text.strip()
    if not text:
        raise DirscopeError(f"empty {what}; give a name such as those listed by --help")
    name, sep, arg = text.partition(":")
    name = name.strip()
    if not name:
        raise DirscopeError(f"{what} {text!r} has no name before ':'")
    return Spec(name, arg.strip() if sep else None)


def parse_spec_list(text: str, what: str = "spec") -> list[Spec]:
    """Parse a comma-separated list of specs, e.g. ``basis,random:64``."""
    return [parse_spec(p, what) for p in split_list(text, what)]


def split_list(text: str, what: str = "spec", example: str = "basis,random:64") -> list[str]:
    """The stripped items of a comma-separated list: spec lists, and the API's names given as one string."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise DirscopeError(f"empty {what} list; give at least one, e.g. {example!r}")
    return parts


def suggest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """A ``did you mean`` phrase with the closest choices, or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def parse_int(arg: str | None, what: str, minimum: int = 1) -> int:
    """Parse a positive integer argument of a spec, with a one-line error."""
    try:
        value = int(arg) if arg is not None else None
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise DirscopeError(f"{what} needs an integer >= {minimum}, got {arg!r}")
    return value


def parse_float(arg: str | None, what: str) -> float:
    """Parse a float argument of a spec, with a one-line error."""
    try:
        return float(arg)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DirscopeError(f"{what} needs a number, got {arg!r}") from None
