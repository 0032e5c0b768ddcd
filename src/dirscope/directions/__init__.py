"""Direction families (``basis``, ``random:N``, ``rotation[:ALPHA]``, ``pca:N``, ``file:PATH``), combined.

A new family is one module that registers a ``build(arg, *, ctx) -> FamilyBlock`` in ``FAMILIES``,
plus its import below.
"""

from __future__ import annotations

from . import basis, file, pca, random, rotation, sweep  # noqa: F401  (importing registers the families)
from .base import EXPANSIONS, FAMILIES, REPEAT_KEYS, FamilyBlock, FamilyContext, FitData, normalize_rows
from .combine import DirectionSet, build_directions
from .rotation import fractional_power, haar_rotation

__all__ = [
    "EXPANSIONS",
    "FAMILIES",
    "REPEAT_KEYS",
    "DirectionSet",
    "FamilyBlock",
    "FamilyContext",
    "FitData",
    "build_directions",
    "fractional_power",
    "haar_rotation",
    "normalize_rows",
]
