"""A seeded uniform sample of the rows of a stream whose length may be unknown, mergeable exactly.

Each row gets a key, a hash of (seed, row index), and the sample is the ``size`` rows with the smallest keys.
So the sample depends only on the seed and the set of rows seen, never on their order, their batching or
how they were split over processes: shards merge exactly, and a resumed run keeps the same rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def row_keys(seed: int, indices: np.ndarray) -> np.ndarray:
    """splitmix64 of the seed's counter advanced by each row index: uniform, independent uint64 keys."""
    counter = np.asarray(indices, np.int64).astype(np.uint64) + np.uint64(1)
    z = np.uint64(seed & 0xFFFFFFFFFFFFFFFF) + counter * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


class Reservoir:
    """Keeps a uniform random sample of ``size`` row indices from everything passed to ``update``.

    Memory is O(size) plus one block: a block's rows are hashed, those that cannot beat the current
    largest kept key are dropped, and the rest compete with the sample by (key, index).
    """

    def __init__(self, size: int, seed: int) -> None:
        if size < 0:
            raise ValueError("a reservoir size must be >= 0")
        self.size = size
        self.seed = int(seed)
        self.seen = 0
        self.rows = np.empty(0, np.int64)  # in (key, index) order
        self.keys = np.empty(0, np.uint64)

    def update(self, indices: np.ndarray) -> None:
        indices = np.asarray(indices, np.int64).reshape(-1)
        self.seen += indices.size
        keys = row_keys(self.seed, indices)
        if self.rows.size == self.size:
            near = keys <= self.keys[-1] if self.size else np.zeros(keys.shape, np.bool_)
            indices, keys = indices[near], keys[near]
        self._keep(np.concatenate([self.rows, indices]), np.concatenate([self.keys, keys]))

    def merge(self, other: Reservoir) -> Reservoir:
        """The sample of the union of two disjoint sets of rows: the one a single pass over both keeps."""
        if (self.size, self.seed) != (other.size, other.seed):
            raise ValueError("only reservoirs of the same size and seed can merge")
        out = Reservoir(self.size, self.seed)
        out.seen = self.seen + other.seen
        out._keep(np.concatenate([self.rows, other.rows]), np.concatenate([self.keys, other.keys]))
        return out

    def _keep(self, rows: np.ndarray, keys: np.ndarray) -> None:
        order = np.lexsort((rows, keys))[: self.size]
        self.rows, self.keys = rows[order], keys[order]

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue (for checkpoints and shards); all but ``rows`` is JSON-able."""
        return {"size": self.size, "seed": self.seed, "seen": self.seen, "rows": self.rows.copy()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Reservoir:
        reservoir = cls(int(state["size"]), int(state["seed"]))
        reservoir.seen = int(state["seen"])
        rows = np.asarray(state["rows"], np.int64)
        reservoir._keep(rows, row_keys(reservoir.seed, rows))
        return reservoir

    def result(self) -> np.ndarray:
        """The sampled row indices, sorted."""
        return np.sort(self.rows)
