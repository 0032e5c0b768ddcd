"""Direction families: each builds a [K, D] block of unit vectors; families combine by concatenation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..registry import Registry
from ..specs import Spec

# A function that returns the activations a fitted family learns from: float32 [N, D].
FitData = Callable[[], np.ndarray]


@dataclass
class FamilyBlock:
    """The rows one family spec contributes.

    ``units`` gives the unit index of basis rows, else None. ``label`` overrides the spec's name as the
    rows' family label (``rotation:0.5``, ``file:stem``) so a sweep can tell its blocks apart. ``info``
    is what the run should record about the block (e.g. PCA explained variance); it must be JSON-able.
    """

    vectors: np.ndarray  # float32 [K, D], rows of unit norm
    units: np.ndarray | None = None  # int64 [K] for basis-like families
    label: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FamilyContext:
    """What a family may use: the layer's name and dimension, its own derived seed, fitting data on demand.

    ``specs`` is the whole (expanded) spec list, so a family can label its block apart from its siblings
    (two ``file:`` specs whose files share a name).
    """

    dim: int
    seed: int
    layer: str
    fit_data: FitData | None = None
    specs: tuple[Spec, ...] = ()


FAMILIES: Registry[FamilyBlock] = Registry("direction family")
# Shorthands that stand for several family specs (e.g. ``sweep:6``), expanded before any seed is derived,
# so their blocks draw exactly as the specs they stand for.
EXPANSIONS: Registry[list[Spec]] = Registry("direction family")
# Which specs of a family are repeats of each other, and so draw afresh: by default every spec of a family
# (``random:4`` and ``random:8`` draw two independent blocks). A family whose specs share one draw by design
# maps its arg to a key here: ``rotation`` keys by its label, so every ALPHA moves along one Q.
REPEAT_KEYS: dict[str, Callable[[str | None], str]] = {}


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """Scale each row to unit norm in float64, then store as float32."""
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / norms).astype(np.float32)
