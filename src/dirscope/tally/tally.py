"""Streaming, mergeable per-direction statistics: exact top-k and bottom-k, moments, zeros and a histogram.

Memory is O(K·k + K·bins) whatever the number of rows. Ties break toward the lower dataset index, both
while streaming and when two tallies merge, so a sharded or resumed run equals a single pass row for row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from . import histogram
from .kernels import _merge_moments, histogram_kernel, merge_extremes_kernel, update_kernel


class NonFiniteValues(ValueError):
    """Projections that are NaN or infinite (e.g. float32 overflow); ``directions`` lists the offenders."""

    def __init__(self, directions: np.ndarray) -> None:
        super().__init__(f"non-finite projections for directions {directions[:5].tolist()}")
        self.directions = directions


@dataclass
class TallyResult:
    """Final statistics of K directions over ``count`` rows. Top rows are sorted most extreme first."""

    count: int
    top_values: np.ndarray  # float32 [K, min(k, count)], descending
    top_indices: np.ndarray  # int64, same shape
    bottom_values: np.ndarray  # float32, ascending
    bottom_indices: np.ndarray
    mean: np.ndarray  # float64 [K]
    var: np.ndarray  # population variance (ddof=0)
    skew: np.ndarray  # NaN where the variance is 0
    kurtosis: np.ndarray  # Pearson kurtosis: 3 for a Gaussian; NaN where the variance is 0
    zeros: np.ndarray  # int64 [K]: exact zeros
    min: np.ndarray
    max: np.ndarray
    hist_counts: np.ndarray  # int64 [K, bins]
    hist_start: np.ndarray  # float64 [K]: left edge of bin 0
    hist_width: np.ndarray  # float64 [K]: a power of two


_ARRAYS = (
    "top_v",
    "top_i",
    "bot_v",
    "bot_i",
    "mean",
    "m2",
    "m3",
    "m4",
    "zeros",
    "vmin",
    "vmax",
    "hist",
    "hist_off",
    "hist_exp",
    "hist_ready",
)


class Tally:
    """Running statistics of K directions; feed blocks of projections [K, B] in increasing row order.

    A block with non-finite values raises ``NonFiniteValues`` after its finite directions were folded in
    (in place, one pass: checking first would read every block twice), so the tally then refuses any use:
    continue from a state saved before that block.
    """

    def __init__(self, n_directions: int, k: int, bins: int = 64) -> None:
        if n_directions < 1 or k < 1 or bins < 2:
            raise ValueError("a tally needs n_directions >= 1, k >= 1 and bins >= 2")
        n, self.k, self.bins = n_directions, k, bins
        self.count = 0
        self.last_index = -1
        self.spoiled: np.ndarray | None = None  # the directions of a block that raised NonFiniteValues
        self.top_v = np.full((n, k), -np.inf, np.float32)
        self.top_i = np.full((n, k), -1, np.int64)
        self.bot_v = np.full((n, k), np.inf, np.float32)
        self.bot_i = np.full((n, k), -1, np.int64)
        self.mean, self.m2, self.m3, self.m4 = (np.zeros(n) for _ in range(4))
        self.zeros = np.zeros(n, np.int64)
        self.vmin = np.full(n, np.inf)
        self.vmax = np.full(n, -np.inf)
        self.hist = np.zeros((n, bins), np.int64)
        self.hist_off = np.zeros(n, np.int64)
        self.hist_exp = np.full(n, histogram.MIN_EXPONENT, np.int64)
        self.hist_ready = np.zeros(n, np.bool_)

    @property
    def n_directions(self) -> int:
        return self.top_v.shape[0]

    def update(self, values: np.ndarray, indices: np.ndarray) -> None:
        """Fold in ``values[K, B]`` (float32) for dataset rows ``indices`` (increasing, after all seen rows)."""
        self._check_unspoiled()
        values = np.ascontiguousarray(values, dtype=np.float32)
        indices = np.ascontiguousarray(indices, dtype=np.int64)
        if values.ndim != 2 or values.shape[0] != self.n_directions or values.shape[1] != indices.shape[0]:
            raise ValueError(f"expected values [{self.n_directions}, B] matching indices, got {values.shape}")
        if indices.size == 0:
            return
        if indices[0] <= self.last_index or np.any(np.diff(indices) <= 0):
            raise ValueError("rows must arrive in strictly increasing index order")
        needs_rebin = np.zeros(self.n_directions, np.bool_)
        nonfinite = np.zeros(self.n_directions, np.bool_)
        update_kernel(
            values,
            indices,
            self.count,
            min(self.count, self.k),
            self.top_v,
            self.top_i,
            self.bot_v,
            self.bot_i,
            self.mean,
            self.m2,
            self.m3,
            self.m4,
            self.zeros,
            self.vmin,
            self.vmax,
            self.hist,
            self.hist_off,
            histogram.scale_of(self.hist_exp),
            self.hist_ready,
            needs_rebin,
            nonfinite,
            min(self.n_directions, numba.get_num_threads()),
        )
        if nonfinite.any():
            self.spoiled = np.flatnonzero(nonfinite)
            raise NonFiniteValues(self.spoiled)
        self.count += indices.size
        self.last_index = int(indices[-1])
        if needs_rebin.any():
            columns = np.flatnonzero(needs_rebin)
            self._widen(columns)
            histogram_kernel(values, columns, self.hist, self.hist_off, histogram.scale_of(self.hist_exp))

    def _check_unspoiled(self) -> None:
        if self.spoiled is not None:
            raise ValueError(
                f"this tally was part-updated by a block with non-finite projections (directions "
                f"{self.spoiled[:5].tolist()}); continue from a state saved before it"
            )

    def _widen(self, columns: np.ndarray) -> None:
        """Move the listed histograms to grids that cover their whole [min, max] so far."""
        lo, hi = self.vmin[columns], self.vmax[columns]
        old_exp = self.hist_exp[columns]
        new_exp = histogram.fit_exponent(lo, hi, self.bins, at_least=old_exp)
        new_off = histogram.centred_offset(lo, hi, new_exp, self.bins)
        self.hist[columns] = histogram.regrid(self.hist[columns], self.hist_off[columns], old_exp, new_off, new_exp)
        self.hist_exp[columns] = new_exp
        self.hist_off[columns] = new_off
        self.hist_ready[columns] = True

    def merge(self, other: Tally) -> Tally:
        """The exact tally of the union of two disjoint sets of rows."""
        self._check_unspoiled()
        other._check_unspoiled()
        if (self.n_directions, self.k, self.bins) != (other.n_directions, other.k, other.bins):
            raise ValueError("only tallies of the same directions, k and bins can merge")
        out = Tally(self.n_directions, self.k, self.bins)
        out.count = self.count + other.count
        out.last_index = max(self.last_index, other.last_index)
        out.top_v, out.top_i = _merge_extremes(self.top_v, self.top_i, other.top_v, other.top_i, descending=True)
        out.bot_v, out.bot_i = _merge_extremes(self.bot_v, self.bot_i, other.bot_v, other.bot_i, descending=False)
        if self.count == 0 or other.count == 0:
            src = other if self.count == 0 else self
            out.mean, out.m2, out.m3, out.m4 = (a.copy() for a in (src.mean, src.m2, src.m3, src.m4))
        else:
            out.mean, out.m2, out.m3, out.m4 = _merge_moments(
                float(self.count),
                self.mean,
                self.m2,
                self.m3,
                self.m4,
                float(other.count),
                other.mean,
                other.m2,
                other.m3,
                other.m4,
            )
        out.zeros = self.zeros + other.zeros
        out.vmin = np.minimum(self.vmin, other.vmin)
        out.vmax = np.maximum(self.vmax, other.vmax)
        out._merge_histograms(self, other)
        return out

    def _merge_histograms(self, a: Tally, b: Tally) -> None:
        ready = a.hist_ready | b.hist_ready
        cols = np.flatnonzero(ready)
        if cols.size == 0:
            return
        floor = np.maximum(
            np.where(a.hist_ready, a.hist_exp, histogram.MIN_EXPONENT),
            np.where(b.hist_ready, b.hist_exp, histogram.MIN_EXPONENT),
        )[cols]
        lo, hi = self.vmin[cols], self.vmax[cols]
        new_exp = histogram.fit_exponent(lo, hi, self.bins, at_least=floor)
        new_off = histogram.centred_offset(lo, hi, new_exp, self.bins)
        total = np.zeros((cols.size, self.bins), np.int64)
        for src in (a, b):
            total += histogram.regrid(src.hist[cols], src.hist_off[cols], src.hist_exp[cols], new_off, new_exp)
        self.hist[cols], self.hist_off[cols], self.hist_exp[cols] = total, new_off, new_exp
        self.hist_ready[cols] = True

    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything needed to continue exactly where this tally stopped (for checkpoints)."""
        self._check_unspoiled()
        state = {name: getattr(self, name).copy() for name in _ARRAYS}
        state["meta"] = np.array([self.count, self.last_index, self.k, self.bins], np.int64)
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, np.ndarray]) -> Tally:
        count, last_index, k, bins = (int(v) for v in state["meta"])
        tally = cls(state["top_v"].shape[0], k, bins)
        for name in _ARRAYS:
            setattr(tally, name, np.array(state[name], dtype=getattr(tally, name).dtype))
        tally.count, tally.last_index = count, last_index
        return tally

    def result(self) -> TallyResult:
        """Final statistics; the top and bottom lists hold min(k, count) rows."""
        self._check_unspoiled()
        n = self.count
        kept = min(self.k, n)
        with np.errstate(divide="ignore", invalid="ignore"):
            spread = np.where(self.m2 > 0, self.m2, np.nan)
            skew = np.sqrt(n) * self.m3 / spread**1.5
            kurtosis = n * self.m4 / spread**2
            var = self.m2 / n if n else np.full_like(self.m2, np.nan)
        width = np.ldexp(1.0, self.hist_exp)
        hist_off, hist = self._centred_histograms()
        return TallyResult(
            count=n,
            top_values=self.top_v[:, :kept].copy(),
            top_indices=self.top_i[:, :kept].copy(),
            bottom_values=self.bot_v[:, :kept].copy(),
            bottom_indices=self.bot_i[:, :kept].copy(),
            mean=self.mean.copy() if n else np.full_like(self.mean, np.nan),
            var=var,
            skew=skew,
            kurtosis=kurtosis,
            zeros=self.zeros.copy(),
            min=self.vmin.copy(),
            max=self.vmax.copy(),
            hist_counts=hist,
            hist_start=hist_off * width,
            hist_width=width,
        )

    def _centred_histograms(self) -> tuple[np.ndarray, np.ndarray]:
        """Offsets and counts with the spare bins split evenly around [min, max], an exact shift: so the
        histogram depends only on the rows and the grid width, not on when the grid last widened."""
        off, hist = self.hist_off.copy(), self.hist.copy()
        cols = np.flatnonzero(self.hist_ready)
        if cols.size:
            e = self.hist_exp[cols]
            off[cols] = histogram.centred_offset(self.vmin[cols], self.vmax[cols], e, self.bins)
            hist[cols] = histogram.regrid(self.hist[cols], self.hist_off[cols], e, off[cols], e)
        return off, hist


def _merge_extremes(
    v_a: np.ndarray, i_a: np.ndarray, v_b: np.ndarray, i_b: np.ndarray, descending: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k best of two sorted lists by value, ties toward the lower index; empty slots go last."""
    out_v, out_i = np.empty_like(v_a), np.empty_like(i_a)
    merge_extremes_kernel(v_a, i_a, v_b, i_b, descending, out_v, out_i)
    return out_v, out_i
