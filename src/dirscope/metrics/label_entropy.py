"""``label_entropy``: Shannon entropy (nats) of a set's labels. LOWER is more coherent; 0 for k = 1."""

from __future__ import annotations

import numpy as np
from scipy.special import entr

from .base import Metric, Pool, register
from .labels import set_label_counts


def score(sets: np.ndarray, pool: Pool) -> np.ndarray:
    """-sum p log p over the set's label shares p, in [0, log k]. The shares are summed in sorted order, so
    sets with the same label counts score the very same float (ties with the null stay ties)."""
    shares = np.sort(set_label_counts(sets, pool), axis=1) / sets.shape[1]
    return entr(shares).sum(axis=1)


METRIC = register(
    Metric(
        name="label_entropy",
        help="entropy (nats) of the labels among the k examples (LOWER = more coherent)",
        needs=("labels",),
        score_sets=score,
        higher_is_better=False,
        null="label_counts",
    )
)
