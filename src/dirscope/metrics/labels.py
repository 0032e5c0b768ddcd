"""Shared by the label metrics: each set's label multiset as counts, computed without a [M, classes] table."""

from __future__ import annotations

import numpy as np

from .base import Pool


def set_label_counts(sets: np.ndarray, pool: Pool) -> np.ndarray:
    """int64 [M, k]: per set, how often each of its distinct labels occurs, then zeros (rows sum to k).

    Sorting each set's labels and counting runs costs O(M k log k) whatever the number of classes, so
    ImageNet's 1,000 classes cost no more than MNIST's 10.
    """
    picked = np.asarray(pool["labels"])[sets]
    if picked.size and picked.min() < 0:  # only the sets' own labels: a pool may hold unknown labels elsewhere
        raise ValueError("labels must be >= 0; drop examples with unknown label (-1) before scoring")
    ordered = np.sort(picked, axis=1)
    n_sets, k = ordered.shape
    starts = np.ones_like(ordered, dtype=bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    run = np.cumsum(starts, axis=1) - 1
    flat = (np.arange(n_sets)[:, None] * k + run).ravel()
    return np.bincount(flat, minlength=n_sets * k).reshape(n_sets, k)
