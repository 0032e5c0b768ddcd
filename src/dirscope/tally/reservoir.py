"""A seeded uniform sample of the rows of a stream whose length may be unknown (reservoir sampling)."""

from __future__ import annotations

from typing import Any

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

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the same stream of draws (for checkpoints); the RNG state is JSON-able."""
        return {"size": self.size, "seen": self.seen, "rows": self.rows.copy(), "rng": self.rng.bit_generator.state}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Reservoir:
        rng = np.random.Generator(getattr(np.random, state["rng"]["bit_generator"])())
        rng.bit_generator.state = state["rng"]
        reservoir = cls(int(state["size"]), rng)
        reservoir.seen = int(state["seen"])
        reservoir.rows = np.asarray(state["rows"], np.int64).copy()
        return reservoir

    def result(self) -> np.ndarray:
        """The sampled row indices, sorted."""
        return np.sort(self.rows)
