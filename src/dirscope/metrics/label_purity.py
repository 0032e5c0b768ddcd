"""``label_purity``: the share of a set's most frequent label. Higher is more coherent; 1 for k = 1."""

from __future__ import annotations

import numpy as np

from .base import Metric, Pool, register
from .labels import set_label_counts


def score(sets: np.ndarray, pool: Pool) -> np.ndarray:
    """max over labels of (count / k), in [1/k, 1]."""
    return set_label_counts(sets, pool).max(axis=1) / sets.shape[1]


METRIC = register(
    Metric(
        name="label_purity",
        help="share of the most frequent label among the k examples (higher = more coherent)",
        needs=("labels",),
        score_sets=score,
        null="label_counts",
    )
)
