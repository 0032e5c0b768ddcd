"""A seeded uniform sample of the rows of a stream whose length may be unknown (reservoir sampling)."""

from __future__ import annotations

import numpy as np


class Reservoir:
    """Keeps a uniform random sample of ``size`` row indices from everything passed to ``update``.

    Algorithm R, vectorised per block: row t (0-based) replaces a random slot with probability size/(t+1).
    The draws come from one seeded generator in stream order, so the sample is reproducible.
    """

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        if size < 0:
            raise ValueError("a reservoir size must be >= 0")
        self.size = size
        self.rng = rng
        self.seen = 0
        self.rows = np.empty(0, np.int64)

    def update(self, indices: np.ndarray) -> None:
        indices = np.asarray(indices, np.int64)
        free = max(0, self.size - self.rows.size)
        self.rows = np.concatenate([self.rows, indices[:free]])
        rest = indices[free:]
        if rest.size and self.size:
            positions = self.seen + free + np.arange(rest.size)
            slots = self.rng.integers(0, positions + 1)
            for slot, row in zip(slots[slots < self.size], rest[slots < self.size], strict=True):
                self.rows[slot] = row
        self.seen += indices.size

    def result(self) -> np.ndarray:
        """The sampled row indices, sorted."""
        return np.sort(self.rows)
