"""``embedding_coherence``: mean pairwise cosine similarity of a set's reference embeddings.

Higher is more coherent; needs k >= 2. With unit rows u_i, ||sum u_i||^2 = sum ||u_i||^2 + sum_{i!=j} u_i.u_j,
so one sum per set replaces k(k-1)/2 dot products. A zero embedding has cosine similarity 0 with every
vector (its unit row is 0): it still counts as a pair in the mean, pulling the score toward 0.
"""

from __future__ import annotations

import numpy as np

from .base import Metric, Pool, register


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm in float64; zero rows stay zero."""
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)


def score(sets: np.ndarray, pool: Pool) -> np.ndarray:
    """(||sum u_i||^2 - #nonzero u_i) / (k (k - 1)), the mean of u_i.u_j over pairs i != j."""
    units = unit_rows(pool["embeddings"])
    n_sets, k = sets.shape
    total = np.zeros((n_sets, units.shape[1]))
    for j in range(k):  # k gathers of [M, E] instead of one [M, k, E] block
        total += units[sets[:, j]]
    nonzero = np.any(units != 0, axis=1)[sets].sum(axis=1)
    return (np.einsum("me,me->m", total, total) - nonzero) / (k * (k - 1))


METRIC = register(
    Metric(
        name="embedding_coherence",
        help="mean pairwise cosine similarity of the examples' reference embeddings (higher = more coherent)",
        needs=("embeddings",),
        score_sets=score,
        min_k=2,
    )
)
