"""What a coherence metric is: a vectorised score of many k-example sets, plus the pool data it reads.

A *set* is a row of an int array ``sets [M, k]`` of positions into a *pool*: a mapping from names to
arrays that describe the pooled examples. ``needs`` names per-row arrays (first axis = pool position);
``constants`` names whole-pool arrays (e.g. a reference scale). Scores are float64 [M].
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..errors import DirscopeError
from ..registry import Registry

Pool = Mapping[str, np.ndarray]
ScoreFn = Callable[[np.ndarray, Pool], np.ndarray]


@dataclass(frozen=True)
class Metric:
    """One coherence metric.

    ``score_sets`` gets sets already checked (int64 [M, k], distinct in-range positions, k >= ``min_k``)
    and a pool holding ``needs`` and ``constants``. ``null`` says where its null draws come from:
    ``"pool"`` draws uniform k-subsets of a population pool; ``"label_counts"`` draws label multisets
    from the dataset's exact class counts (only for metrics that read nothing but ``labels``).
    """

    name: str
    help: str
    needs: tuple[str, ...]
    score_sets: ScoreFn
    higher_is_better: bool = True
    min_k: int = 1
    constants: tuple[str, ...] = ()
    null: Literal["pool", "label_counts"] = "pool"

    def score(self, sets: np.ndarray, pool: Pool) -> np.ndarray:
        """Scores float64 [M] of the sets ``sets [M, k]``; higher means more coherent iff ``higher_is_better``."""
        sets = self.check_sets(sets, self.pool_size(pool))
        if len(sets) == 0:
            return np.zeros(0)
        return np.asarray(self.score_sets(sets, pool), dtype=np.float64)

    def pool_size(self, pool: Pool) -> int:
        """Rows in the pool, after checking it holds what this metric reads and the per-row arrays agree."""
        missing = [key for key in (*self.needs, *self.constants) if key not in pool]
        if missing:
            raise DirscopeError(
                f"metric {self.name!r} needs pool data {', '.join(map(repr, missing))}; "
                f"provide it or leave {self.name!r} out"
            )
        sizes = {key: len(pool[key]) for key in self.needs}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"metric {self.name!r}: pool arrays differ in length: {sizes}")
        return next(iter(sizes.values()))

    def check_sets(self, sets: np.ndarray, pool_size: int) -> np.ndarray:
        """Sets as int64 [M, k] of distinct positions below ``pool_size``; too small a k is a user error."""
        sets = np.asarray(sets)
        if sets.ndim != 2 or not (np.issubdtype(sets.dtype, np.integer) or sets.size == 0):
            raise ValueError(f"sets must be an int array [M, k], got {sets.dtype} {sets.shape}")
        if sets.shape[1] < self.min_k:
            raise DirscopeError(
                f"metric {self.name!r} needs sets of at least {self.min_k} examples, got k={sets.shape[1]}; "
                f"use k >= {self.min_k}"
            )
        sets = sets.astype(np.int64)
        if sets.size and (sets.min() < 0 or sets.max() >= pool_size):
            raise ValueError(f"set positions must lie in [0, {pool_size}), got [{sets.min()}, {sets.max()}]")
        ordered = np.sort(sets, axis=1)
        if np.any(ordered[:, 1:] == ordered[:, :-1]):
            raise ValueError("a set holds the same pool position twice; sets must be k distinct examples")
        return sets


METRICS: Registry[Metric] = Registry("metric")


def register(metric: Metric) -> Metric:
    """Add a metric to ``METRICS`` under its name (metrics take no spec argument)."""

    def build(_arg: str | None) -> Metric:
        return metric

    METRICS.register(metric.name, help=metric.help, takes_arg=False)(build)
    return metric


def get_metric(metric: Metric | str) -> Metric:
    """A metric object from itself or its registered name (unknown names fail with suggestions)."""
    return metric if isinstance(metric, Metric) else METRICS.build(metric)


def degenerate(values: np.ndarray, zeros: np.ndarray | None = None) -> np.ndarray:
    """bool [M]: sets chosen by dataset index rather than by the direction, so their examples say nothing
    about it: their k >= 2 values are all equal (a dead ReLU unit, whose "top-k" is the lowest indices), or,
    given ``zeros`` (each set's direction's exact zeros over the data, from ``stats``), they hold some zeros
    of more (a nearly dead unit: its few positive rows padded with the lowest-index zero rows, the same rows
    for every such unit).

    A single value (k = 1) cannot show a tie on its own; catch constant directions there from the run's
    ``stats`` (std 0). NaN never equals anything, so sets with NaN are not degenerate.
    """
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"values must be [M, k], got shape {values.shape}")
    tied = np.all(values == values[:, :1], axis=1) & (values.shape[1] >= 2)
    if zeros is None:
        return tied
    held = np.count_nonzero(values == 0, axis=1)
    return tied | ((held > 0) & (np.asarray(zeros) > held))
