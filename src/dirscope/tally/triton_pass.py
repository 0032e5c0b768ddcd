"""The DeviceTally's per-block pass as one Triton kernel: one program per direction reads its row once.

The eager pass (``device.block_stats``) costs many full-size temporaries and a scan of the candidate codes
for every block. On an H200 (1M rows, K = 4,096, B = 16,384) the GEMM plus the tally took 58x the bf16
projection GEMM alone eager, 15x with that pass compiled by ``torch.compile``, and 3.3x with this kernel
(docs/benchmarks-gpu.md). Each program streams its row of the block [K, B], ``STEP`` tiles at a time (the
next step's loaded while this one is counted), and:

- sums the float64 moments about the running mean, takes min, max and zeros, and counts the histogram on
  the direction's current grid (values outside it are left out: the block then does not fit, and the
  caller counts it again on a wider grid);
- merges the block's moments into the running ones (Pébay, the CPU kernels' own formula) and writes the
  new state to separate buffers, so a block with a non-finite value leaves the tally untouched;
- compacts the top and bottom candidates (values beyond the current k-th) in row order into scratch rows,
  re-reading only the tiles where the first read found some (a bit per tile), then merges them with the
  direction's current lists in registers: one sort of keys (value, position), where the current list
  comes before the candidates and candidates keep their row order, so equal values keep the lower dataset
  index; a list without candidates is copied as it is. The new lists go to separate buffers too.

A direction with more than ``cap`` candidates in one block is flagged; the caller then keeps the old lists
and selects that block by the general path. ``flags`` gathers, over all directions: any non-finite, any
histogram that did not fit its grid, the largest candidate count.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import FunctionType
from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

from .device import KERNEL_STATE
from .kernels import pebay_merge

if TYPE_CHECKING:
    from .device import DeviceTally

# Values per tile and warps per program: the fastest of six pairs on an H200 (K = 4,096, B = 16,384) before
# STEP existed, 78 ms for 1M rows against 83 ms at (512, 8) and 98 ms at (1024, 8). STEP (a power of two, at
# most 64): tiles loaded at once. That kernel waited on memory (one 512-byte tile of bf16 in flight per
# program, waited for at once); with STEP = 2 and the next step loaded ahead, two are in flight while two
# are counted, at 88 registers a thread against 80 (benchmarks/triton_static.py, sm_90). Not yet timed on
# a GPU: benchmarks/gpu_tune.py sweeps the three.
TILE, NUM_WARPS, STEP = 256, 4, 2
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # as triton.jit reads it, when this module loads


def _device_function(fn: FunctionType) -> triton.JITFunction:
    """A plain-arithmetic function as a Triton device function, so the numba kernels' formula is shared.

    Triton's interpreter wants ``triton.language`` among the function's globals: a copy gets it.
    """
    return triton.jit(FunctionType(fn.__code__, {**fn.__globals__, "tl": tl}, fn.__name__))


_pebay = _device_function(pebay_merge)


@triton.jit
def _tile_counts(x, valid, scale, off, n_bins, HIST_BINS: tl.constexpr):
    """Histogram counts of a tile of float64 values on the grid floor(x * scale) - off, as ``count_bins``;
    values outside the grid and masked lanes are left out.

    Masked out rather than sent to an overflow bin, so that ``HIST_BINS`` is ``n_bins`` (64 by default)
    and not the next power of two above it. On sm_90 (Triton 3.9) a call is a clear of ``HIST_BINS``
    shared-memory counters, one shared atomic increment a value and a read back, between barriers: the
    bins cost only the clear and the read.
    """
    t = tl.floor(x * scale) - off
    inside = valid & (t >= 0) & (t < n_bins)
    return tl.histogram(tl.where(inside, t, 0).to(tl.int32), HIST_BINS, mask=inside)


@triton.jit
def _either(a, b):
    return a | b


@triton.jit
def _store_candidates(values_ptr, index_ptr, hit, value, index, n_before, CAP: tl.constexpr):
    """Append the tile's hits after the ``n_before`` earlier ones (in column order), up to ``CAP``."""
    pos = n_before + tl.cumsum(hit.to(tl.int32), axis=0) - 1
    keep = hit & (pos < CAP)
    tl.store(values_ptr + pos, value, mask=keep)
    tl.store(index_ptr + pos, index, mask=keep)


@triton.jit
def _compact_candidates(
    row, n_cols, rows_ptr, first_row, top_thr, bot_thr, hit_tiles, top_v, top_i, bot_v, bot_i,
    ROWS_CONTIGUOUS: tl.constexpr, CAP: tl.constexpr, TILE: tl.constexpr,
):  # fmt: skip
    """Write the row's top and bottom candidates, in column order, reading only the tiles that have some:
    tile t when bit t % 64 of ``hit_tiles`` is set."""
    n_top = tl.sum(tl.zeros([TILE], tl.int32), axis=0)
    n_bot = n_top
    for start in range(0, n_cols, TILE):
        if ((hit_tiles >> ((start // TILE) % 64)) & 1) != 0:
            cols = start + tl.arange(0, TILE)
            valid = cols < n_cols
            x32 = tl.load(row + cols, mask=valid, other=0.0).to(tl.float32)
            top, bot = valid & (x32 > top_thr), valid & (x32 < bot_thr)
            contiguous = first_row + cols.to(tl.int64)
            index = contiguous if ROWS_CONTIGUOUS else tl.load(rows_ptr + cols, mask=valid, other=-1)
            canonical = tl.where(x32 == 0, 0.0, x32)
            _store_candidates(top_v, top_i, top, canonical, index, n_top, CAP)
            _store_candidates(bot_v, bot_i, bot, canonical, index, n_bot, CAP)
            n_top += tl.sum(top.to(tl.int32), axis=0)
            n_bot += tl.sum(bot.to(tl.int32), axis=0)


@triton.jit
def _merged_list(
    list_v, list_i, cand_v, cand_i, n_found, k_top, sign, out_v, out_i,
    CAP: tl.constexpr, POS_BITS: tl.constexpr, SORT_BY_RANK: tl.constexpr,
):  # fmt: skip
    """The new k-list of one direction: its current list (``k_top`` long) and ``n_found`` candidates, merged;
    without candidates (most blocks, once the lists are full), the list as it is, copied unsorted."""
    if n_found == 0:
        place = tl.arange(0, CAP)
        kept = place < k_top
        tl.store(out_v + place, tl.load(list_v + place, mask=kept), mask=kept)
        tl.store(out_i + place, tl.load(list_i + place, mask=kept), mask=kept)
    else:
        _sorted_merge(list_v, list_i, cand_v, cand_i, n_found, k_top, sign, out_v, out_i, CAP, POS_BITS, SORT_BY_RANK)


@triton.jit
def _sorted_merge(
    list_v, list_i, cand_v, cand_i, n_found, k_top, sign, out_v, out_i,
    CAP: tl.constexpr, POS_BITS: tl.constexpr, SORT_BY_RANK: tl.constexpr,
):  # fmt: skip
    """The list and the candidates merged by one sort.

    Slot j < CAP is list entry j, slot CAP + c candidate c. The sort key is the value's order (``sign`` -1
    turns the bottom list into a top list), then the slot: earlier rows first among equal values, and all
    keys distinct. ``SORT_BY_RANK`` (Triton's interpreter, whose ``tl.sort`` steps through its network in
    Python) places each entry at its rank, the count of smaller keys, instead: the same order. Unfilled
    list entries (-inf, index -1) take part like any other, so every one of the k places is written.
    """
    slot = tl.arange(0, 2 * CAP)
    listed = slot < CAP
    held = (listed & (slot < k_top)) | (~listed & (slot - CAP < tl.minimum(n_found, CAP)))
    v = tl.where(listed, tl.load(list_v + slot, mask=held & listed, other=0.0), 0.0)
    v = tl.where(listed, v, tl.load(cand_v + slot - CAP, mask=held & ~listed, other=0.0))
    signed = v * sign
    bits = tl.where(signed == 0, 0.0, signed).to(tl.int32, bitcast=True)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # float order as signed int order; -0.0 made +0.0 above
    key = ((~ordered).to(tl.int64) << POS_BITS) | slot.to(tl.int64)  # ascending key = descending value
    key = tl.where(held, key, 1 << 62)
    if SORT_BY_RANK:
        rank = tl.sum((key[None, :] < key[:, None]).to(tl.int32), axis=1)
        src, real, dest = slot, held, rank
    else:
        key = tl.sort(key)
        src, real, dest = key & ((1 << POS_BITS) - 1), key < (1 << 62), slot
    wanted = real & (dest < k_top)
    from_list = src < CAP
    value = tl.where(from_list, tl.load(list_v + src, mask=wanted & from_list, other=0.0), 0.0)
    value = tl.where(from_list, value, tl.load(cand_v + src - CAP, mask=wanted & ~from_list, other=0.0))
    index = tl.where(from_list, tl.load(list_i + src, mask=wanted & from_list, other=-1), -1)
    index = tl.where(from_list, index, tl.load(cand_i + src - CAP, mask=wanted & ~from_list, other=-1))
    tl.store(out_v + dest, tl.where(value == 0, 0.0, value), mask=wanted)
    tl.store(out_i + dest, index, mask=wanted)


@triton.jit(do_not_specialize=["v_stride", "n_cols", "first_row", "count", "first", "n_dirs", "k_top", "n_bins"])
def _block_pass(
    v_ptr, v_stride, n_cols, rows_ptr, first_row, count, first,
    mean_ptr, m2_ptr, m3_ptr, m4_ptr, vmin_ptr, vmax_ptr, zeros_ptr, hist_ptr, off_ptr, scale_ptr, ready_ptr,
    top_thr_ptr, bot_thr_ptr, top_v_ptr, top_i_ptr, bot_v_ptr, bot_i_ptr,
    o_mean_ptr, o_m2_ptr, o_m3_ptr, o_m4_ptr, o_vmin_ptr, o_vmax_ptr, o_zeros_ptr, o_hist_ptr,
    o_top_v_ptr, o_top_i_ptr, o_bot_v_ptr, o_bot_i_ptr,
    status_ptr, cand_v_ptr, cand_i_ptr, flags_ptr, n_dirs, k_top, n_bins,
    ROWS_CONTIGUOUS: tl.constexpr, CAP: tl.constexpr, POS_BITS: tl.constexpr, SORT_BY_RANK: tl.constexpr,
    HIST_BINS: tl.constexpr, TILE: tl.constexpr, STEP: tl.constexpr,
):  # fmt: skip
    """One direction ``d`` of the block: the state in (``*_ptr``), the new state out (``o_*``), as above."""
    d = tl.program_id(0)
    row = v_ptr + d.to(tl.int64) * v_stride
    top_at, bot_at = d.to(tl.int64) * CAP, (d + n_dirs).to(tl.int64) * CAP  # scratch rows of candidates
    shift = tl.where(first != 0, tl.load(row).to(tl.float32).to(tl.float64), tl.load(mean_ptr + d))
    top_thr, bot_thr = tl.load(top_thr_ptr + d), tl.load(bot_thr_ptr + d)
    scale, off = tl.load(scale_ptr + d), tl.load(off_ptr + d).to(tl.float64)

    s1 = tl.zeros([TILE], tl.float64)
    s2 = tl.zeros([TILE], tl.float64)
    s3 = tl.zeros([TILE], tl.float64)
    s4 = tl.zeros([TILE], tl.float64)
    lo = tl.full([TILE], float("inf"), tl.float32)
    hi = tl.full([TILE], float("-inf"), tl.float32)
    zeros = tl.zeros([TILE], tl.int32)
    counts = tl.zeros([HIST_BINS], tl.int32)
    hits_top = tl.zeros([TILE], tl.int32)
    hits_bot = tl.zeros([TILE], tl.int32)
    hit_tiles = tl.zeros([TILE], tl.int64)  # per lane, bit t % 64 set if tile t has a candidate there
    steps = tl.arange(0, STEP)[:, None]
    lanes = steps * TILE + tl.arange(0, TILE)[None, :]
    ahead = tl.load(row + lanes, mask=lanes < n_cols, other=0.0)
    for start in range(0, n_cols, TILE * STEP):  # STEP tiles at once: more loads in flight, same sums
        cols = start + lanes
        valid = cols < n_cols
        x32 = ahead.to(tl.float32)
        # The next step's tiles, loaded now: in flight while these are counted, not waited for next time.
        ahead = tl.load(row + cols + TILE * STEP, mask=cols + TILE * STEP < n_cols, other=0.0)
        x = x32.to(tl.float64)
        dev = tl.where(valid, x - shift, 0.0)
        dev2 = dev * dev
        s1 += tl.sum(dev, axis=0)
        s2 += tl.sum(dev2, axis=0)
        s3 += tl.sum(dev2 * dev, axis=0)
        s4 += tl.sum(dev2 * dev2, axis=0)
        lo = tl.minimum(lo, tl.min(tl.where(valid, x32, float("inf")), axis=0))
        hi = tl.maximum(hi, tl.max(tl.where(valid, x32, float("-inf")), axis=0))
        zeros += tl.sum((valid & (x32 == 0)).to(tl.int32), axis=0)
        flat = tl.reshape(x, [STEP * TILE])
        counts += _tile_counts(flat, tl.reshape(valid, [STEP * TILE]), scale, off, n_bins, HIST_BINS)
        top, bot = valid & (x32 > top_thr), valid & (x32 < bot_thr)
        hits_top += tl.sum(top.to(tl.int32), axis=0)
        hits_bot += tl.sum(bot.to(tl.int32), axis=0)
        tile_bit = tl.full([STEP, 1], 1, tl.int64) << ((start // TILE + steps) % 64).to(tl.int64)
        hit_tiles |= tl.sum(tl.where(top | bot, tile_bit, 0), axis=0)  # distinct bits in a step: sum is or
    n_top, n_bot = tl.sum(hits_top, axis=0), tl.sum(hits_bot, axis=0)
    if n_top + n_bot > 0:  # the row again, apart: its registers would cost the loop above its occupancy
        _compact_candidates(
            row, n_cols, rows_ptr, first_row, top_thr, bot_thr, tl.reduce(hit_tiles, 0, _either),
            cand_v_ptr + top_at, cand_i_ptr + top_at, cand_v_ptr + bot_at, cand_i_ptr + bot_at,
            ROWS_CONTIGUOUS, CAP, TILE,
        )  # fmt: skip

    n = n_cols.to(tl.float64)
    S1, S2, S3, S4 = tl.sum(s1, axis=0), tl.sum(s2, axis=0), tl.sum(s3, axis=0), tl.sum(s4, axis=0)
    mu = S1 / n
    bm2 = tl.maximum(S2 - n * mu * mu, 0.0)
    bm3 = S3 - 3.0 * mu * S2 + 2.0 * n * mu * mu * mu
    bm4 = tl.maximum(S4 - 4.0 * mu * S3 + 6.0 * mu * mu * S2 - 3.0 * n * mu * mu * mu * mu, 0.0)
    mean_b = shift + mu
    old_mean, old_m2 = tl.load(mean_ptr + d), tl.load(m2_ptr + d)
    old_m3, old_m4 = tl.load(m3_ptr + d), tl.load(m4_ptr + d)
    mean, m2, m3, m4 = _pebay(count.to(tl.float64), old_mean, old_m2, old_m3, old_m4, n, mean_b, bm2, bm3, bm4)
    is_first = first != 0
    tl.store(o_mean_ptr + d, tl.where(is_first, mean_b, mean))
    tl.store(o_m2_ptr + d, tl.where(is_first, bm2, m2))
    tl.store(o_m3_ptr + d, tl.where(is_first, bm3, m3))
    tl.store(o_m4_ptr + d, tl.where(is_first, bm4, m4))

    block_lo, block_hi = tl.min(lo, axis=0).to(tl.float64), tl.max(hi, axis=0).to(tl.float64)
    tl.store(o_vmin_ptr + d, tl.minimum(tl.load(vmin_ptr + d), block_lo))
    tl.store(o_vmax_ptr + d, tl.maximum(tl.load(vmax_ptr + d), block_hi))
    tl.store(o_zeros_ptr + d, tl.load(zeros_ptr + d) + tl.sum(zeros, axis=0).to(tl.int64))
    check = S4 + S1 + block_lo + block_hi
    nonfinite = (check != check) | (tl.abs(check) == float("inf"))
    ready = tl.load(ready_ptr + d).to(tl.int1)
    fits = ready & (block_lo * scale >= off) & (block_hi * scale < off + n_bins)
    bins = tl.arange(0, HIST_BINS)
    in_grid = bins < n_bins
    old_hist = tl.load(hist_ptr + d.to(tl.int64) * n_bins + bins, mask=in_grid, other=0)
    new_hist = old_hist + tl.where(fits, counts, 0).to(tl.int64)
    tl.store(o_hist_ptr + d.to(tl.int64) * n_bins + bins, new_hist, mask=in_grid)
    tl.store(status_ptr + d, (fits.to(tl.int8) + nonfinite.to(tl.int8) * 2).to(tl.int8))  # device.FITS, NONFINITE
    tl.atomic_max(flags_ptr, nonfinite.to(tl.int32))
    tl.atomic_max(flags_ptr + 1, 1 - fits.to(tl.int32))
    tl.atomic_max(flags_ptr + 2, tl.maximum(n_top, n_bot))

    tl.debug_barrier()  # the candidates written above, by any thread of this program, are visible below
    at = d.to(tl.int64) * k_top
    _merged_list(
        top_v_ptr + at, top_i_ptr + at, cand_v_ptr + top_at, cand_i_ptr + top_at, n_top, k_top, 1.0,
        o_top_v_ptr + at, o_top_i_ptr + at, CAP, POS_BITS, SORT_BY_RANK,
    )  # fmt: skip
    _merged_list(
        bot_v_ptr + at, bot_i_ptr + at, cand_v_ptr + bot_at, cand_i_ptr + bot_at, n_bot, k_top, -1.0,
        o_bot_v_ptr + at, o_bot_i_ptr + at, CAP, POS_BITS, SORT_BY_RANK,
    )  # fmt: skip


@triton.jit(do_not_specialize=["v_stride", "n_cols", "n_bins"])
def _count_rows(
    v_ptr, v_stride, n_cols, rows_ptr, scale_ptr, off_ptr, out_ptr, n_bins,
    HIST_BINS: tl.constexpr, TILE: tl.constexpr,
):  # fmt: skip
    """Histogram counts of the listed rows of a block on new grids (after widening), as ``device.count_bins``."""
    i = tl.program_id(0)
    row = v_ptr + tl.load(rows_ptr + i) * v_stride
    scale, off = tl.load(scale_ptr + i), tl.load(off_ptr + i).to(tl.float64)
    counts = tl.zeros([HIST_BINS], tl.int32)
    for start in range(0, n_cols, TILE):
        cols = start + tl.arange(0, TILE)
        valid = cols < n_cols
        x = tl.load(row + cols, mask=valid, other=0.0).to(tl.float32).to(tl.float64)
        counts += _tile_counts(x, valid, scale, off, n_bins, HIST_BINS)
    bins = tl.arange(0, HIST_BINS)
    tl.store(out_ptr + i.to(tl.int64) * n_bins + bins, counts.to(tl.int64), mask=bins < n_bins)


def count_rows(v: torch.Tensor, rows: torch.Tensor, scale: torch.Tensor, off: torch.Tensor, bins: int) -> torch.Tensor:
    """Counts [len(rows), bins] of ``v[rows]`` on the grids ``floor(x * scale) - off`` (int64 ``rows``)."""
    out, args, constants = count_arguments(v, rows, scale, off, bins)
    _count_rows[(rows.numel(),)](*args, **constants, num_warps=NUM_WARPS)
    return out


def count_arguments(
    v: torch.Tensor, rows: torch.Tensor, scale: torch.Tensor, off: torch.Tensor, bins: int
) -> tuple[torch.Tensor, tuple, dict]:
    """``count_rows``'s output and ``_count_rows``'s arguments and constants (benchmarks/triton_static.py
    compiles the kernel from them, for a GPU it does not need)."""
    out = torch.empty(rows.numel(), bins, dtype=torch.int64, device=v.device)
    args = (v, v.stride(0), v.shape[1], rows, scale, off, out, bins)
    return out, args, {"HIST_BINS": triton.next_power_of_2(bins), "TILE": TILE}


@dataclass
class BlockPass:
    """What the kernel wrote for one block: the new state, not yet adopted (the lists only if no overflow)."""

    mean: torch.Tensor
    m2: torch.Tensor
    m3: torch.Tensor
    m4: torch.Tensor
    vmin: torch.Tensor
    vmax: torch.Tensor
    zeros: torch.Tensor
    hist: torch.Tensor
    top_v: torch.Tensor
    top_i: torch.Tensor
    bot_v: torch.Tensor
    bot_i: torch.Tensor
    status: torch.Tensor  # int8 [K]: bit 1 the histogram fits its grid, bit 2 a non-finite value
    flags: torch.Tensor  # int32 [3]: any non-finite, any unfit histogram, most candidates of one direction


def block_pass(
    tally: DeviceTally,
    v: torch.Tensor,
    rows: torch.Tensor | None,
    first_row: int,
    top_thr: torch.Tensor,
    bot_thr: torch.Tensor,
    cap: int,
) -> BlockPass:
    """Run the kernel over ``v`` [K, B] (unit column stride) against ``tally``'s state.

    ``rows`` holds the block's dataset indices, or is None when they are ``first_row, first_row + 1, ...``;
    ``cap`` (a power of two, at least k) is the room for candidates per direction.
    """
    out, args, constants = pass_arguments(tally, v, rows, first_row, top_thr, bot_thr, cap)
    _block_pass[(v.shape[0],)](*args, **constants, num_warps=NUM_WARPS)
    return out


def pass_arguments(
    tally: DeviceTally,
    v: torch.Tensor,
    rows: torch.Tensor | None,
    first_row: int,
    top_thr: torch.Tensor,
    bot_thr: torch.Tensor,
    cap: int,
) -> tuple[BlockPass, tuple, dict]:
    """``block_pass``'s output buffers, and ``_block_pass``'s arguments and constants for them."""
    n_dirs, n_cols = v.shape
    out = BlockPass(
        *(torch.empty_like(getattr(tally, name)) for name in KERNEL_STATE),
        status=torch.empty(n_dirs, dtype=torch.int8, device=v.device),
        flags=torch.zeros(3, dtype=torch.int32, device=v.device),
    )
    cand_v = torch.empty(2 * n_dirs, cap, dtype=torch.float32, device=v.device)
    cand_i = torch.empty(2 * n_dirs, cap, dtype=torch.int64, device=v.device)
    args = (
        v, v.stride(0), n_cols, v if rows is None else rows, first_row, tally.count, int(tally.count == 0),
        tally.mean, tally.m2, tally.m3, tally.m4, tally.vmin, tally.vmax, tally.zeros, tally.hist,
        tally.hist_off, tally.scale, tally.hist_ready, top_thr, bot_thr,
        tally.top_v, tally.top_i, tally.bot_v, tally.bot_i,
        out.mean, out.m2, out.m3, out.m4, out.vmin, out.vmax, out.zeros, out.hist,
        out.top_v, out.top_i, out.bot_v, out.bot_i,
        out.status, cand_v, cand_i, out.flags, n_dirs, tally.k, tally.bins,
    )  # fmt: skip
    constants = {
        "ROWS_CONTIGUOUS": rows is None,
        "CAP": cap,
        "POS_BITS": (2 * cap - 1).bit_length(),
        "SORT_BY_RANK": INTERPRETED,
        "HIST_BINS": triton.next_power_of_2(tally.bins),
        "TILE": TILE,
        "STEP": STEP,
    }
    return out, args, constants
