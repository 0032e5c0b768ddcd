"""Null models: each score against the same score over uniformly random k-subsets of the dataset.

Draws are vectorised (R subsets scored by one call of the metric's own ``score``), seeded by a caller's
``numpy.random.Generator`` (derive it with ``seeding.numpy_rng(seed, "null", metric, str(k))``) and
cached per (metric, k, draws, dataset fingerprint) so every layer and direction shares one null.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import DirscopeError
from .base import Metric, Pool, get_metric

DEFAULT_DRAWS = 2000
_CHUNK_CELLS = 1 << 22  # random keys drawn at once when picking subsets of a population pool


@dataclass(frozen=True, eq=False)
class NullSummary:
    """A metric's null distribution at one k: mean, std (ddof=1) and the sorted finite draws.

    Draws whose score is NaN (e.g. no attribute varies) are left out, so ``len(draws)`` may be < R.
    """

    mean: float
    std: float
    draws: np.ndarray


class NullCache:
    """Null summaries of one process, by key; the first computation for a key wins.

    Keep one per run and derive each null's generator from the same names as its key, so a hit returns
    exactly what a fresh computation would.
    """

    def __init__(self) -> None:
        self._summaries: dict[Hashable, NullSummary] = {}

    def __len__(self) -> int:
        return len(self._summaries)

    def get(self, key: Hashable, compute: Callable[[], NullSummary]) -> NullSummary:
        """The summary stored under ``key``, computed by ``compute()`` on first use."""
        if key not in self._summaries:
            self._summaries[key] = compute()
        return self._summaries[key]


def null_summary(
    metric: Metric | str,
    k: int,
    rng: np.random.Generator,
    *,
    population: Pool | None = None,
    label_counts: Mapping[int, int] | None = None,
    draws: int = DEFAULT_DRAWS,
    cache: NullCache | None = None,
    fingerprint: str | None = None,
) -> NullSummary:
    """The null of ``metric`` at set size ``k`` from ``draws`` random k-subsets.

    Label metrics (``metric.null == "label_counts"``) draw from ``label_counts``, the exact class counts
    of the rows the sets were drawn from (for a run's layer: its rows with finite activations; multivariate
    hypergeometric), reading their ``constants`` from
    ``population``; the others draw subsets of
    ``population``, a pool built from a seeded random sample of the dataset. With a ``cache`` the key is
    (metric, k, draws, fingerprint); without a ``fingerprint`` it is a hash of the data the null reads.
    """
    metric = get_metric(metric)
    if draws < 2:
        raise ValueError(f"a null needs at least 2 draws, got {draws}")

    def compute() -> NullSummary:
        return _summarise(metric, *_null_sets(metric, k, draws, rng, population, label_counts))

    if cache is None:
        return compute()
    return cache.get((metric.name, k, draws, fingerprint or _fingerprint(metric, population, label_counts)), compute)


def against_null(scores: np.ndarray, null: NullSummary) -> tuple[np.ndarray, np.ndarray]:
    """(z, percentile) of each score: z = (s - mean) / std, NaN where std is 0 or s is NaN; percentile =
    share of null draws below s plus half of those equal to it, in [0, 1], NaN for NaN s or no draws.

    Both are unoriented: for a metric with ``higher_is_better = False`` coherent sets get low values.
    """
    s = np.asarray(scores, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (s - null.mean) / null.std if null.std > 0 else np.full_like(s, np.nan)
    if len(null.draws) == 0:
        return z, np.full_like(s, np.nan)
    below = np.searchsorted(null.draws, s, side="left")
    not_above = np.searchsorted(null.draws, s, side="right")
    percentile = (below + 0.5 * (not_above - below)) / len(null.draws)
    return z, np.where(np.isnan(s), np.nan, percentile)


def _summarise(metric: Metric, sets: np.ndarray, pool: Pool) -> NullSummary:
    values = metric.score(sets, pool)
    finite = np.sort(values[np.isfinite(values)])
    if len(finite) < 2:
        return NullSummary(np.nan, np.nan, finite)
    return NullSummary(float(finite.mean()), float(finite.std(ddof=1)), finite)


def _null_sets(
    metric: Metric,
    k: int,
    draws: int,
    rng: np.random.Generator,
    population: Pool | None,
    label_counts: Mapping[int, int] | None,
) -> tuple[np.ndarray, Pool]:
    """``draws`` random sets of size k and the pool they index."""
    if metric.null == "label_counts":
        if label_counts is None:
            raise DirscopeError(f"the null of {metric.name!r} needs the dataset's class counts; pass label_counts")
        sets, labels = label_count_sets(k, draws, rng, label_counts)
        return sets, {**labels, **{key: (population or {})[key] for key in metric.constants}}
    if population is None:
        raise DirscopeError(
            f"the null of {metric.name!r} needs a population pool (a random sample of the dataset); pass population"
        )
    return population_subsets(k, draws, rng, metric.pool_size(population)), population


def label_count_sets(
    k: int, draws: int, rng: np.random.Generator, label_counts: Mapping[int, int]
) -> tuple[np.ndarray, Pool]:
    """Random k-subsets of a dataset with these exact class counts, as sets over a synthetic label pool.

    Each draw is a multivariate hypergeometric count vector; its labels fill k consecutive pool rows
    (grouped by class, which no label metric can see).
    """
    classes = np.array(sorted(label_counts), dtype=np.int64)
    counts = np.array([label_counts[c] for c in sorted(label_counts)], dtype=np.int64)
    if classes.size == 0 or classes.min() < 0 or counts.min() < 0:
        raise ValueError("label_counts must map labels >= 0 to counts >= 0")
    if counts.sum() < k:
        raise DirscopeError(f"the dataset has {counts.sum()} labelled examples, fewer than k={k}; lower k")
    drawn = rng.multivariate_hypergeometric(counts, k, size=draws)
    labels = np.repeat(np.tile(classes, draws), drawn.ravel())
    return np.arange(draws * k, dtype=np.int64).reshape(draws, k), {"labels": labels}


def population_subsets(k: int, draws: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """int64 [draws, k]: uniform k-subsets (without replacement) of range(size), one per row.

    The positions of the k smallest of ``size`` i.i.d. uniform keys form a uniform random k-subset.
    """
    if size < k:
        raise DirscopeError(f"the null population has {size} examples, fewer than k={k}; sample more or lower k")
    rows_per_chunk = max(1, _CHUNK_CELLS // size)
    chunks = []
    for start in range(0, draws, rows_per_chunk):
        keys = rng.random((min(rows_per_chunk, draws - start), size))
        chunks.append(np.argpartition(keys, k - 1, axis=1)[:, :k])
    return np.concatenate(chunks).astype(np.int64)


def _fingerprint(metric: Metric, population: Pool | None, label_counts: Mapping[int, int] | None) -> str:
    """A content hash of what this metric's null reads, for callers without a dataset fingerprint."""
    digest = hashlib.sha256()
    read = (*metric.needs, *metric.constants)
    if metric.null == "label_counts":  # labels come from the counts; constants (a similarity matrix) from the pool
        digest.update(repr(sorted((int(c), int(n)) for c, n in (label_counts or {}).items())).encode())
        read = metric.constants
    for key in read:
        array = np.ascontiguousarray((population or {}).get(key, np.zeros(0)))
        digest.update(f"{key}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
