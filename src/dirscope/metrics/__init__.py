"""Coherence metrics of k-example sets, their null models, and label-free statistics per direction.

Pure numpy (and scipy): the orchestrator gathers labels, embeddings or images and calls these. A new
metric is one module that builds a ``Metric`` and passes it to ``register``, plus its import below.
"""

from __future__ import annotations

from . import attribute_coherence, embedding_coherence, label_entropy, label_purity, wordnet  # noqa: F401 (registers)
from .attribute_coherence import reference_std
from .base import METRICS, Metric, Pool, degenerate, get_metric, register
from .direction_stats import NEAR_ZERO_EPS, direction_statistics
from .glyphs import GLYPH_ATTRIBUTES, INK_THRESHOLD, NotGlyphImages, glyph_attributes
from .null import DEFAULT_DRAWS, NullCache, NullSummary, against_null, null_summary

__all__ = [
    "DEFAULT_DRAWS",
    "GLYPH_ATTRIBUTES",
    "INK_THRESHOLD",
    "METRICS",
    "NEAR_ZERO_EPS",
    "Metric",
    "NotGlyphImages",
    "NullCache",
    "NullSummary",
    "Pool",
    "against_null",
    "degenerate",
    "direction_statistics",
    "get_metric",
    "glyph_attributes",
    "null_summary",
    "reference_std",
    "register",
]
