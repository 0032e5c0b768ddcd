"""Fused numba kernels: one call per block updates top-k, bottom-k, moments, zeros and histogram, each
direction's row of projections read from memory once and then from cache by a few vectorised passes.

Each direction (a row of the [K, B] projection block) is handled by one thread from start to end, in
row order, so results do not depend on the number of threads. Candidates that cannot enter the current
top-k or bottom-k are rejected a chunk at a time, by comparing the chunk's max and min with the current
k-th values, before any insertion.
"""

from __future__ import annotations

import numba as nb
import numpy as np

# Reassociation lets the float64 sums vectorise. No nnan/ninf, and no nsz: with reassoc it breaks the
# isfinite check below (seen with numba 0.68).
_FASTMATH = {"reassoc", "contract"}


def pebay_merge(n_a, mean_a, m2_a, m3_a, m4_a, n_b, mean_b, m2_b, m3_b, m4_b):
    """Pébay (2008) pairwise update of central moment sums; exact in exact arithmetic.

    Plain arithmetic, so the numba kernels (scalars) and the torch DeviceTally (tensors) share one formula.
    """
    n = n_a + n_b
    delta = mean_b - mean_a
    d_n = delta / n
    d_n2 = d_n * d_n
    term = delta * d_n * n_a * n_b
    mean = mean_a + d_n * n_b
    m4 = (
        m4_a
        + m4_b
        + term * d_n2 * (n_a * n_a - n_a * n_b + n_b * n_b)
        + 6.0 * d_n2 * (n_a * n_a * m2_b + n_b * n_b * m2_a)
        + 4.0 * d_n * (n_a * m3_b - n_b * m3_a)
    )
    m3 = m3_a + m3_b + term * d_n * (n_a - n_b) + 3.0 * d_n * (n_a * m2_b - n_b * m2_a)
    m2 = m2_a + m2_b + term
    return mean, m2, m3, m4


_pebay_merge_jit = nb.njit(fastmath=_FASTMATH, cache=True, inline="always")(pebay_merge)


@nb.njit(fastmath=_FASTMATH, cache=True, inline="always")
def _merge_moments(n_a, mean_a, m2_a, m3_a, m4_a, n_b, mean_b, m2_b, m3_b, m4_b):  # pragma: no cover - jit
    """``pebay_merge``, taking the second part as it is when the first is empty."""
    if n_a == 0:
        return mean_b, m2_b, m3_b, m4_b
    return _pebay_merge_jit(n_a, mean_a, m2_a, m3_a, m4_a, n_b, mean_b, m2_b, m3_b, m4_b)


# Rows are scanned in chunks of _CHUNK values. Each chunk's min and max, taken in one vectorised pass, give
# the row's range (for the histogram) and tell which chunks hold a value that beats the current k-th value
# of either list: only those (rare once the lists are full) take the scalar insertion loop.
_CHUNK = 64


@nb.njit(cache=True, inline="always")
def _order_key(bits):  # pragma: no cover - jit
    """The int32 whose order is the order of the float32 with these bits (and back: it is its own inverse).

    numba's float min and max do not vectorise; integer ones do (0.14 against 0.36 ns a value, one thread).
    """
    return bits ^ ((bits >> np.int32(31)) & np.int32(0x7FFFFFFF))


@nb.njit(cache=True, inline="always")
def _bits_min_max(bits, start, stop):  # pragma: no cover - jit
    """The float32 bits of the least and the greatest value of ``bits[start:stop]``, compared as order keys."""
    lo = np.int32(0x7FFFFFFF)
    hi = np.int32(-0x80000000)
    for b in range(start, stop):
        key = _order_key(bits[b])
        lo = min(lo, key)
        hi = max(hi, key)
    return _order_key(lo), _order_key(hi)


@nb.njit(cache=True)
def _chunk_min_max(row, cmin, cmax):  # pragma: no cover - jit
    """Fill ``cmin``/``cmax`` with each chunk's extremes of a finite float32 row; return the row's, as float64.

    Compared as order keys (``_order_key``), which needs no NaN: the caller has already rejected rows whose
    sums are not finite. -0.0 comes out below 0.0, which is harmless: every later use compares floats, to
    which the two are equal.
    """
    bits = row.view(np.int32)
    lo_bits = cmin.view(np.int32)
    hi_bits = cmax.view(np.int32)
    n_rows = row.shape[0]
    full = n_rows // _CHUNK
    for j in range(full):  # a constant trip count, which vectorises better than a clipped one
        lo_bits[j], hi_bits[j] = _bits_min_max(bits, j * _CHUNK, j * _CHUNK + _CHUNK)
    if full < cmin.shape[0]:
        lo_bits[full], hi_bits[full] = _bits_min_max(bits, full * _CHUNK, n_rows)
    lo = cmin[0]
    hi = cmax[0]
    for j in range(1, cmin.shape[0]):
        lo = min(lo, cmin[j])
        hi = max(hi, cmax[j])
    return np.float64(lo), np.float64(hi)


@nb.njit(cache=True, inline="always")
def _scratch(n_rows, n_bins):  # pragma: no cover - jit
    """Scratch for ``_count_bins``: each value's bin, and four partial histograms."""
    return np.empty(n_rows, np.uint32), np.empty((4, n_bins), np.int64)


@nb.njit(fastmath=_FASTMATH, cache=True, inline="always")
def _insert_desc(vals, idxs, filled, value, index):  # pragma: no cover - jit
    """Insert into a row sorted by value descending; equal values keep earlier (lower-index) entries first."""
    k = vals.shape[0]
    pos = filled if filled < k else k - 1
    while pos > 0 and vals[pos - 1] < value:
        vals[pos] = vals[pos - 1]
        idxs[pos] = idxs[pos - 1]
        pos -= 1
    vals[pos] = value
    idxs[pos] = index


@nb.njit(fastmath=_FASTMATH, cache=True, inline="always")
def _insert_asc(vals, idxs, filled, value, index):  # pragma: no cover - jit
    """Insert into a row sorted by value ascending; equal values keep earlier (lower-index) entries first."""
    k = vals.shape[0]
    pos = filled if filled < k else k - 1
    while pos > 0 and vals[pos - 1] > value:
        vals[pos] = vals[pos - 1]
        idxs[pos] = idxs[pos - 1]
        pos -= 1
    vals[pos] = value
    idxs[pos] = index


@nb.njit(fastmath=_FASTMATH, cache=True, inline="always")
def _add_moments(row, n_seen, c, mean, m2, m3, m4):  # pragma: no cover - jit
    """Merge ``row``'s moments into direction ``c``'s; return whether they were finite (else nothing changes)
    and how many values were exactly 0."""
    n_rows = row.shape[0]
    shift = mean[c] if n_seen > 0 else np.float64(row[0])
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    s4 = 0.0
    z = 0
    for b in range(n_rows):
        v = np.float64(row[b])
        d = v - shift
        d2 = d * d
        s1 += d
        s2 += d2
        s3 += d2 * d
        s4 += d2 * d2
        z += v == 0.0
    if not np.isfinite(s4 + s1):
        return False, z
    mu = s1 / n_rows
    bm2 = s2 - n_rows * mu * mu
    bm3 = s3 - 3.0 * mu * s2 + 2.0 * n_rows * mu * mu * mu
    bm4 = s4 - 4.0 * mu * s3 + 6.0 * mu * mu * s2 - 3.0 * n_rows * mu * mu * mu * mu
    mean[c], m2[c], m3[c], m4[c] = _merge_moments(
        np.float64(n_seen),
        mean[c],
        m2[c],
        m3[c],
        m4[c],
        np.float64(n_rows),
        shift + mu,
        max(bm2, 0.0),
        bm3,
        max(bm4, 0.0),
    )
    return True, z


@nb.njit(parallel=True, fastmath=_FASTMATH, cache=True)
def update_kernel(
    values,
    indices,
    n_seen,
    filled,
    top_v,
    top_i,
    bot_v,
    bot_i,
    mean,
    m2,
    m3,
    m4,
    zeros,
    vmin,
    vmax,
    hist,
    hist_off,
    hist_scale,
    hist_ready,
    needs_rebin,
    nonfinite,
    n_parts,
):  # pragma: no cover - jit
    """Fold one block ``values[K, B]`` (rows ``indices``, increasing and beyond all seen) into the state.

    The directions are split into ``n_parts`` runs of consecutive directions (one per thread, say), and each
    run is folded in order by one thread with its own scratch, so the result does not depend on the split.
    """
    n_dirs, n_rows = values.shape
    n_bins = hist.shape[1]
    for part in nb.prange(n_parts):
        # Scratch once per thread, not per direction: each allocation updates numba's shared atomic counters.
        cmin = np.empty((n_rows + _CHUNK - 1) // _CHUNK, values.dtype)
        cmax = np.empty_like(cmin)
        bins, lanes = _scratch(n_rows, n_bins)
        for c in range(part * n_dirs // n_parts, (part + 1) * n_dirs // n_parts):
            row = values[c]
            finite, z = _add_moments(row, n_seen, c, mean, m2, m3, m4)
            if not finite:
                nonfinite[c] = True
                continue
            lo, hi = _chunk_min_max(row, cmin, cmax)
            zeros[c] += z
            vmin[c] = min(vmin[c], lo)
            vmax[c] = max(vmax[c], hi)

            scale = hist_scale[c]
            off = hist_off[c]
            # Compared in float64 (floor(v*s) - off >= 0 iff v*s >= off), so huge ratios never overflow int64.
            if hist_ready[c] and lo * scale >= off and hi * scale < off + n_bins:
                _count_bins(row, scale, off, hist[c], bins, lanes)
            else:
                needs_rebin[c] = True

            _update_extremes(row, indices, filled, top_v[c], top_i[c], bot_v[c], bot_i[c], cmin, cmax)


@nb.njit(fastmath=_FASTMATH, cache=True, inline="always")
def _update_extremes(row, indices, filled, tv, ti, bv, bi, cmin, cmax):  # pragma: no cover - jit
    """Insert the values of ``row`` that enter the top-k (``tv``) or bottom-k (``bv``) lists, in row order;
    ``cmin``/``cmax`` (each chunk's extremes) let chunks with no such value be skipped unread."""
    k = tv.shape[0]
    n_rows = row.shape[0]
    # Both lists fill in step (every value enters both until they hold k), so one count serves both.
    first = 0
    while filled < k and first < n_rows:
        _insert_desc(tv, ti, filled, row[first], indices[first])
        _insert_asc(bv, bi, filled, row[first], indices[first])
        filled += 1
        first += 1
    if filled < k:
        return
    top_thr = tv[k - 1]
    bot_thr = bv[k - 1]
    # Full lists from here on: the two lists are independent, so each scans only the chunks it may gain from.
    for j in range(cmin.shape[0]):
        start = max(j * _CHUNK, first)
        stop = min(j * _CHUNK + _CHUNK, n_rows)
        if cmax[j] > top_thr:
            for b in range(start, stop):
                if row[b] > top_thr:
                    _insert_desc(tv, ti, k, row[b], indices[b])
                    top_thr = tv[k - 1]
        if cmin[j] < bot_thr:
            for b in range(start, stop):
                if row[b] < bot_thr:
                    _insert_asc(bv, bi, k, row[b], indices[b])
                    bot_thr = bv[k - 1]


@nb.njit(fastmath=_FASTMATH, cache=True, inline="always")
def _count_bins(row, scale, off, h, bins, lanes):  # pragma: no cover - jit
    """Add each value of ``row`` to its bin of ``h`` (all in range); ``bins`` [B] and ``lanes`` [4, n_bins]
    are scratch. The bins are computed first, in a pass that vectorises, then counted into four copies of the
    histogram in turn, so that neighbours in one bin do not wait on each other's store; unsigned bins spare
    numba's check for negative indices. 0.45 against 0.68 ns a value for one loop over signed bins (4,096-row
    blocks, one thread of an AVX-512 CPU)."""
    n_rows = row.shape[0]
    for b in range(n_rows):
        bins[b] = np.uint32(np.int64(np.floor(np.float64(row[b]) * scale)) - off)
    if n_rows < 4 * h.shape[0]:  # too few values to repay clearing and adding up four copies
        for b in range(n_rows):
            h[bins[b]] += 1
        return
    lanes[:] = 0
    l0, l1, l2, l3 = lanes[0], lanes[1], lanes[2], lanes[3]
    whole = n_rows - n_rows % 4
    for b in range(0, whole, 4):
        l0[bins[b]] += 1
        l1[bins[b + 1]] += 1
        l2[bins[b + 2]] += 1
        l3[bins[b + 3]] += 1
    for b in range(whole, n_rows):
        l0[bins[b]] += 1
    for j in range(h.shape[0]):
        h[j] += l0[j] + l1[j] + l2[j] + l3[j]


@nb.njit(parallel=True, fastmath=_FASTMATH, cache=True)
def histogram_kernel(values, columns, hist, hist_off, hist_scale):  # pragma: no cover - jit
    """Count ``values[c]`` into the histograms of the listed directions (after their grids were widened)."""
    for j in nb.prange(columns.shape[0]):
        c = columns[j]
        bins, lanes = _scratch(values.shape[1], hist.shape[1])
        _count_bins(values[c], hist_scale[c], hist_off[c], hist[c], bins, lanes)


@nb.njit(inline="always")
def _first(v_a, i_a, v_b, i_b, descending):  # pragma: no cover - jit
    """Whether entry a precedes entry b: more extreme value first, ties toward the lower index, empty slots last."""
    if i_a < 0:
        return False
    if i_b < 0:
        return True
    if v_a == v_b:
        return i_a < i_b
    return v_a > v_b if descending else v_a < v_b


@nb.njit(parallel=True, cache=True)
def merge_extremes_kernel(v_a, i_a, v_b, i_b, descending, out_v, out_i):  # pragma: no cover - jit
    """Per row, the k first of two sorted lists: one linear merge, O(K·k) (a sort of both is ~100x slower)."""
    n_rows, k = v_a.shape
    for r in nb.prange(n_rows):
        p = 0
        q = 0
        for j in range(k):
            if q == k or (p < k and _first(v_a[r, p], i_a[r, p], v_b[r, q], i_b[r, q], descending)):
                out_v[r, j] = v_a[r, p]
                out_i[r, j] = i_a[r, p]
                p += 1
            else:
                out_v[r, j] = v_b[r, q]
                out_i[r, j] = i_b[r, q]
                q += 1
