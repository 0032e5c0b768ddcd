"""Type rules for JSON a user may have edited by hand (a run's manifest, a cache's index): checked once where
it is read, so a damaged key is one line naming it rather than a traceback wherever it is used."""

from __future__ import annotations

from typing import Any

Rule = tuple[str, bool, str]  # (key, whether it holds, what it must be)


def first_problem(rules: list[Rule]) -> str | None:
    """``"KEY must be WHAT"`` for the first rule that fails, or None."""
    return next((f"{key} must be {what}" for key, ok, what in rules if not ok), None)


def is_int(value: Any, least: int | None = None) -> bool:
    """An integer (JSON's true and false are not integers here), of at least ``least`` when given."""
    return isinstance(value, int) and not isinstance(value, bool) and (least is None or value >= least)


def list_of(value: Any, kind: type) -> bool:
    """A list whose items are all ``kind`` (bools are not integers here)."""
    return isinstance(value, list) and all(isinstance(v, kind) and not isinstance(v, bool) for v in value)
