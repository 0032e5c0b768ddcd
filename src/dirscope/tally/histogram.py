"""Exact streaming histograms on power-of-two grids.

Direction c counts value v in bin ``floor(v / w_c) - off_c`` with ``w_c = 2**e_c``. Widening a grid doubles
``w_c`` one or more times, so every old bin falls wholly into one new bin: counts stay exact, and two
histograms merge exactly after both are brought to the coarser grid.
"""

from __future__ import annotations

import numpy as np

MIN_EXPONENT = -160  # below the smallest float32 subnormal, so any finite range fits
MAX_EXPONENT = 1100


def fit_exponent(lo: np.ndarray, hi: np.ndarray, n_bins: int, at_least: np.ndarray) -> np.ndarray:
    """The smallest exponent e >= at_least whose grid spans [lo, hi] in ``n_bins`` bins.

    A single value (lo == hi) gets the finest grid that any two float32 values around it could need: they
    differ by at least 2**(E - 24) where 2**E <= |hi|. Grids only ever widen, so a coarser guess here would
    make the bins depend on how the rows were batched (a first block of one row) or sharded.
    """
    span = hi - lo
    with np.errstate(divide="ignore", invalid="ignore"):
        finest = np.floor(np.log2(np.abs(hi))) - 24 - np.ceil(np.log2(n_bins))
        guess = np.where(span > 0, np.ceil(np.log2(span / n_bins)), finest)
    guess = np.where(np.isfinite(guess), guess, MIN_EXPONENT)
    e = np.clip(np.maximum(guess, at_least), MIN_EXPONENT, MAX_EXPONENT).astype(np.int64)
    while True:
        too_narrow = _bin(hi, e) - _bin(lo, e) >= n_bins
        if not too_narrow.any():
            return e
        e = np.where(too_narrow, e + 1, e)


def centred_offset(lo: np.ndarray, hi: np.ndarray, e: np.ndarray, n_bins: int) -> np.ndarray:
    """First bin of a grid that covers [lo, hi] with the spare bins split evenly on both sides."""
    first, last = _bin(lo, e), _bin(hi, e)
    return first - (n_bins - (last - first + 1)) // 2


def regrid(counts: np.ndarray, off: np.ndarray, e: np.ndarray, new_off: np.ndarray, new_e: np.ndarray) -> np.ndarray:
    """Move counts [R, n_bins] from grids (off, e) to coarser grids (new_off, new_e), exactly."""
    n_rows, n_bins = counts.shape
    absolute = off[:, None] + np.arange(n_bins)[None, :]
    shift = np.minimum(new_e - e, 63)  # >> 63 of any in-range bin index is its floor, 0 or -1
    target = (absolute >> shift[:, None]) - new_off[:, None]
    out = np.zeros_like(counts)
    rows = np.broadcast_to(np.arange(n_rows)[:, None], counts.shape)
    live = counts > 0
    np.add.at(out, (rows[live], target[live]), counts[live])
    return out


def scale_of(e: np.ndarray) -> np.ndarray:
    """1 / w = 2**-e as float64 (exact)."""
    return np.ldexp(1.0, -e)


def _bin(v: np.ndarray, e: np.ndarray) -> np.ndarray:
    return np.floor(np.ldexp(v, -e)).astype(np.int64)
