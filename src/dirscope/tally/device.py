"""The tally in torch, with its state on the projections' device, so a GPU scan never copies projections out.

Same semantics as the numba ``Tally``, and the same state: ``state_dict()`` is the CPU tally's format, so
results, checkpoints and merges reuse the CPU code. Per block of projections [K, B]:

- one pass reads the block once for the float64 moment sums about the running mean, min, max, zeros, the
  histogram counts on the current grids, and the top and bottom candidates. On CUDA it is one Triton
  kernel (``triton_pass``) that also merges the moments and the k-lists; elsewhere, or without Triton, the
  same in eager torch (``block_stats``, then a sort of the candidates of all directions at once);
- top-k and bottom-k by threshold: a value is a candidate only if it beats the current k-th value strictly
  (an equal value never displaces the lower index that came first). Only candidates are sorted, after the
  current lists, so equal values keep the lower index. While the lists are filling, the block's own k-th
  value is the threshold;
- histograms follow the CPU tally's grids exactly: a direction whose block does not fit its grid (or that
  has none yet) is widened on the CPU with ``histogram.py`` (a few small rows) and its block counted again;
- the Triton pass's outcome (non-finite values, histograms off their grids, more candidates than it keeps)
  is read one block late: each block's pass is launched on the previous pass's output before that output is
  checked, so the GPU does not wait for the CPU between blocks. A block found to need a fix is fixed and the
  pass after it run again; ``settle()``, which every read of the state calls, checks the last block.
"""

from __future__ import annotations

import warnings
from types import ModuleType
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from . import histogram
from .kernels import pebay_merge
from .tally import _ARRAYS, NonFiniteValues, Tally, TallyResult

if TYPE_CHECKING:
    from .triton_pass import BlockPass

# Histogram counts are summed as 16-bit fields, four bins to an int64, so one pass needs no scatter;
# a chunk of at most this many rows keeps every field below 2**16.
_CHUNK = 65_535
_FIELDS = 4
_TOP, _BOTTOM = 1, 2
FITS, NONFINITE = 1, 2  # bits of the Triton pass's status per direction
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # read as they are by the Triton pass


MAX_FUSED_K = 256  # the Triton pass merges 2 * candidate_capacity(k) keys per direction in registers


def candidate_capacity(k: int) -> int:
    """Candidates the Triton pass keeps per direction and block: a first block's k, and as many ties."""
    return 1 << (max(2 * k, 16) - 1).bit_length()


# What the Triton pass writes anew per block, in BlockPass order.
KERNEL_STATE = ("mean", "m2", "m3", "m4", "vmin", "vmax", "zeros", "hist", "top_v", "top_i", "bot_v", "bot_i")


class _Pending(NamedTuple):
    """A Triton pass whose output is already the tally's state, unchecked, with what it takes to redo it."""

    block: BlockPass
    v: torch.Tensor
    indices: np.ndarray
    top_thr: torch.Tensor
    bot_thr: torch.Tensor
    before: dict[str, torch.Tensor]  # the state the pass read (it writes new tensors, so these stay intact)
    count: int
    last_index: int


class BlockStats(NamedTuple):
    """What one read of a block [K, b] gives, per direction (and ``code`` per value)."""

    s1: torch.Tensor
    s2: torch.Tensor
    s3: torch.Tensor
    s4: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    zeros: torch.Tensor
    counts: torch.Tensor  # int64 [K, bins]: values inside the current grid only
    code: torch.Tensor  # int8 [K, b]: 1 top candidate, 2 bottom candidate, 3 both


def count_bins(x: torch.Tensor, scale: torch.Tensor, off: torch.Tensor, bins: int) -> torch.Tensor:
    """Histogram counts [K, bins] of float64 values [K, b] (b <= 65535) on grids floor(x * scale) - off.

    Values outside a grid are not counted. Sums of packed 16-bit fields instead of a scatter, so a
    compiled version is one reduction pass without atomics.
    """
    t = torch.floor(x * scale[:, None]) - off[:, None].to(torch.float64)
    inside = (t >= 0) & (t < bins)
    b = torch.where(inside, t, 0.0).to(torch.int64)
    unit = torch.where(inside, torch.ones_like(b) << ((b % _FIELDS) * 16), 0)
    group = b // _FIELDS
    packed = torch.stack([torch.where(group == g, unit, 0).sum(1) for g in range(-(-bins // _FIELDS))], 1)
    fields = (packed[:, :, None] >> (16 * torch.arange(_FIELDS, device=x.device))) & 0xFFFF
    return fields.reshape(x.shape[0], -1)[:, :bins]


def block_stats(
    v: torch.Tensor,
    shift: torch.Tensor,
    top_thr: torch.Tensor,
    bot_thr: torch.Tensor,
    scale: torch.Tensor,
    off: torch.Tensor,
    bins: int,
) -> BlockStats:
    """Moment sums about ``shift``, extremes, zeros, histogram counts and candidate codes of float32 ``v``."""
    x = v.to(torch.float64)
    d = x - shift[:, None]
    d2 = d * d
    code = candidate_codes(v, top_thr, bot_thr)
    return BlockStats(
        d.sum(1),
        d2.sum(1),
        (d2 * d).sum(1),
        (d2 * d2).sum(1),
        x.amin(1),
        x.amax(1),
        (v == 0).sum(1),
        count_bins(x, scale, off, bins),
        code,
    )


def candidate_codes(v: torch.Tensor, top_thr: torch.Tensor, bot_thr: torch.Tensor) -> torch.Tensor:
    """int8 [K, b] per value: 1 a top candidate, 2 a bottom candidate, 3 both (while the lists fill)."""
    return (v > top_thr[:, None]).to(torch.int8) + (v < bot_thr[:, None]).to(torch.int8) * _BOTTOM


class _Fused:
    """The Triton pass (``triton_pass``), imported on first use; given up for the process if it fails."""

    module: ModuleType | None = None
    failed = False

    @classmethod
    def kernel(cls) -> ModuleType | None:
        if cls.module is None and not cls.failed:
            try:
                from . import triton_pass
            except ImportError as exc:  # a CPU-only torch build has no Triton
                cls.give_up(exc)
                return None
            cls.module = triton_pass
        return None if cls.failed else cls.module

    @classmethod
    def give_up(cls, exc: Exception) -> None:
        cls.failed = True
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        warnings.warn(f"the Triton tally pass is unavailable ({first}); the device tally runs unfused", stacklevel=4)


class DeviceTally:
    """Running statistics of K directions on a torch device; feed blocks [K, B] in increasing row order.

    ``fused`` (default: on CUDA) runs the per-block pass as one Triton kernel, for k up to ``MAX_FUSED_K``;
    without a GPU only Triton's interpreter (``TRITON_INTERPRET=1``) can run it, which the tests use.
    """

    def __init__(
        self, n_directions: int, k: int, bins: int = 64, device: str | torch.device = "cpu", fused: bool | None = None
    ) -> None:
        if n_directions < 1 or k < 1 or bins < 2:
            raise ValueError("a tally needs n_directions >= 1, k >= 1 and bins >= 2")
        self.device = torch.device(device)
        self.fused = self.device.type == "cuda" if fused is None else fused
        self.k, self.bins = k, bins
        self._pending: _Pending | None = None
        self._load(Tally(n_directions, k, bins).state_dict())

    def _load(self, state: dict[str, np.ndarray]) -> None:
        for name in _ARRAYS:  # copies: the tally updates in place, and must not write into the caller's arrays
            setattr(self, name, torch.tensor(np.asarray(state[name]), device=self.device))
        count, last_index, self.k, self.bins = (int(v) for v in state["meta"])
        self.count, self.last_index = count, last_index
        # 1 / bin width, computed exactly by numpy (torch.ldexp goes through an inexact pow)
        self.scale = torch.from_numpy(histogram.scale_of(state["hist_exp"])).to(self.device)

    @property
    def n_directions(self) -> int:
        return self.top_v.shape[0]

    @classmethod
    def from_state_dict(
        cls, state: dict[str, np.ndarray], device: str | torch.device = "cpu", fused: bool | None = None
    ) -> DeviceTally:
        """Continue a tally (e.g. a checkpoint's, in the CPU tally's format) on ``device``."""
        meta = state["meta"]
        tally = cls(state["top_v"].shape[0], int(meta[2]), int(meta[3]), device, fused)
        tally._load(state)
        return tally

    def state_dict(self) -> dict[str, np.ndarray]:
        """The state in the CPU tally's format: the only time it leaves the device."""
        self.settle()
        state = {name: getattr(self, name).cpu().numpy().copy() for name in _ARRAYS}  # not a view of the live state
        state["meta"] = np.array([self.count, self.last_index, self.k, self.bins], np.int64)
        return state

    def to_tally(self) -> Tally:
        """The same state as a CPU ``Tally``."""
        return Tally.from_state_dict(self.state_dict())

    def result(self) -> TallyResult:
        return self.to_tally().result()

    def merge(self, other: Tally | DeviceTally) -> Tally:
        """The exact tally of the union of two disjoint sets of rows, merged on the CPU."""
        return self.to_tally().merge(other.to_tally() if isinstance(other, DeviceTally) else other)

    def update(self, values: torch.Tensor, indices: np.ndarray) -> None:
        """Fold in ``values[K, B]`` for dataset rows ``indices`` (increasing, after all seen rows).

        With the Triton pass, the block is checked during the next update or ``settle()``, so ``values``
        must not change until then, and ``NonFiniteValues`` for it may be raised there.
        """
        indices = np.ascontiguousarray(indices, dtype=np.int64)
        if values.ndim != 2 or values.shape[0] != self.n_directions or values.shape[1] != indices.shape[0]:
            raise ValueError(f"expected values [{self.n_directions}, B] matching indices, got {tuple(values.shape)}")
        if indices.size == 0:
            return
        if indices[0] <= self.last_index or np.any(np.diff(indices) <= 0):
            raise ValueError("rows must arrive in strictly increasing index order")
        v = values.to(self.device)
        if v.dtype not in _KERNEL_DTYPES or v.stride(1) != 1:
            v = v.to(torch.float32).contiguous()
        if self.fused and self._speculate(v, indices):
            return
        self.settle()
        top_thr, bot_thr = self._thresholds(v)
        self._update_eager(v.to(torch.float32).contiguous(), indices, top_thr, bot_thr)
        self._advance(indices)

    def settle(self) -> None:
        """Check the last Triton pass (a synchronisation) and fix its block if needed. Raises
        ``NonFiniteValues`` for that block, leaving the state as it was before it."""
        pending, self._pending = self._pending, None
        if pending is not None and not self._clean(pending):
            self._restore(pending)
            self._adopt(pending)

    def _advance(self, indices: np.ndarray) -> None:
        self.count += indices.size
        self.last_index = int(indices[-1])

    def _speculate(self, v: torch.Tensor, indices: np.ndarray) -> bool:
        """Run the Triton pass on the current state and take its output as the state at once, then check the
        pass before it: if that one needs a fix, fix it and run this block again. False: the pass cannot run."""
        previous, self._pending = self._pending, None
        current = self._launch_pending(v, indices)
        if previous is not None and not self._clean(previous):
            self._restore(previous)  # what this block's pass read was wrong: drop it
            self._adopt(previous)
            current = self._launch_pending(v, indices)
        self._pending = current
        if current is not None and current.count == 0:
            self.settle()  # a first block always needs fixing (its histograms have no grid yet): at once
        return current is not None

    def _launch_pending(self, v: torch.Tensor, indices: np.ndarray) -> _Pending | None:
        top_thr, bot_thr = self._thresholds(v)
        block = self._launch(v, indices, top_thr, bot_thr)
        if block is None:
            return None
        before = {name: getattr(self, name) for name in KERNEL_STATE}
        pending = _Pending(block, v, indices, top_thr, bot_thr, before, self.count, self.last_index)
        for name in KERNEL_STATE:
            setattr(self, name, getattr(block, name))
        self._advance(indices)
        return pending

    def _clean(self, pending: _Pending) -> bool:
        """Whether a pass's output needs no fix (reading its flags waits for it)."""
        return not any(self._outcome(pending))

    def _outcome(self, pending: _Pending) -> tuple[bool, bool, bool]:
        """Whether the pass met a non-finite value, a histogram off its grid, more candidates than it keeps."""
        any_nonfinite, any_unfit, most = pending.block.flags.tolist()
        return bool(any_nonfinite), bool(any_unfit), most > candidate_capacity(self.k)

    def _restore(self, pending: _Pending) -> None:
        for name, tensor in pending.before.items():
            setattr(self, name, tensor)
        self.count, self.last_index = pending.count, pending.last_index

    def _launch(
        self, v: torch.Tensor, indices: np.ndarray, top_thr: torch.Tensor, bot_thr: torch.Tensor
    ) -> BlockPass | None:
        """The Triton pass over the block, or None where it cannot run (then the eager pass does the work)."""
        kernel = _Fused.kernel() if self.k <= MAX_FUSED_K else None
        if kernel is None:
            return None
        consecutive = indices[-1] - indices[0] == indices.size - 1
        rows = None if consecutive else torch.from_numpy(indices).to(self.device)
        try:
            return kernel.block_pass(self, v, rows, int(indices[0]), top_thr, bot_thr, candidate_capacity(self.k))
        except Exception as exc:  # no GPU compiler here, or a Triton that cannot build the kernel
            _Fused.give_up(exc)
            return None

    def _adopt(self, pending: _Pending) -> None:
        """Take a pass's output as the state after its block, from the state before it, and widen histograms;
        if a direction had more candidates than the kernel keeps, select the block again from the old lists by
        the general path."""
        block, v = pending.block, pending.v
        any_nonfinite, any_unfit, overflow = self._outcome(pending)
        if any_nonfinite:
            raise NonFiniteValues(torch.nonzero(block.status & NONFINITE).flatten().cpu().numpy())
        for name in ("mean", "m2", "m3", "m4", "vmin", "vmax", "zeros", "hist"):
            setattr(self, name, getattr(block, name))
        if any_unfit:
            self._widen(v, torch.nonzero((block.status & FITS) == 0).flatten())
        if overflow:
            v32 = v.to(torch.float32)
            self._select_both(v32, pending.indices, candidate_codes(v32, pending.top_thr, pending.bot_thr))
        else:
            self.top_v, self.top_i, self.bot_v, self.bot_i = block.top_v, block.top_i, block.bot_v, block.bot_i
        self._advance(pending.indices)

    def _update_eager(self, v: torch.Tensor, indices: np.ndarray, top_thr: torch.Tensor, bot_thr: torch.Tensor) -> None:
        """The same update in plain torch operations (CPU tensors, or no Triton)."""
        shift = self.mean if self.count else v[:, 0].to(torch.float64)
        stats = self._read(v, shift, top_thr, bot_thr)
        nonfinite = ~torch.isfinite(stats.s4 + stats.s1 + stats.lo + stats.hi)
        lo, hi, off = stats.lo * self.scale, stats.hi * self.scale, self.hist_off
        fits = self.hist_ready & (lo >= off) & (hi < off + self.bins)  # compared in float64, as the CPU kernel
        any_nonfinite, all_fit = torch.stack([nonfinite.any(), fits.all()]).tolist()
        if any_nonfinite:
            raise NonFiniteValues(torch.nonzero(nonfinite).flatten().cpu().numpy())
        self._add_moments(stats, shift, v.shape[1])
        self.zeros += stats.zeros
        self.vmin = torch.minimum(self.vmin, stats.lo)
        self.vmax = torch.maximum(self.vmax, stats.hi)
        self.hist += torch.where(fits[:, None], stats.counts, 0)
        if not all_fit:
            self._widen(v, torch.nonzero(~fits).flatten())
        self._select_both(v, indices, stats.code)

    def _read(self, v: torch.Tensor, shift: torch.Tensor, top_thr: torch.Tensor, bot_thr: torch.Tensor) -> BlockStats:
        """One pass over the block, in chunks of at most 65,535 rows whose partial results combine."""
        args = (shift, top_thr, bot_thr, self.scale, self.hist_off, self.bins)
        parts = [block_stats(c, *args) for c in v.split(_CHUNK, dim=1)]
        if len(parts) == 1:
            return parts[0]
        return BlockStats(
            *(sum(p[i] for p in parts) for i in range(4)),
            torch.stack([p.lo for p in parts]).amin(0),
            torch.stack([p.hi for p in parts]).amax(0),
            sum(p.zeros for p in parts),
            sum(p.counts for p in parts),
            torch.cat([p.code for p in parts], 1),
        )

    def _thresholds(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Values strictly above ``top`` (below ``bot``) are candidates; float32, contiguous.

        Full lists: the current k-th values. Filling lists: the block's own k-th value (ties included, by
        stepping one float below it), since k values of the block already reach it; -inf/inf if B <= k.
        """
        if self.count >= self.k:
            return self.top_v[:, -1].contiguous(), self.bot_v[:, -1].contiguous()
        inf = torch.full((v.shape[0],), torch.inf, device=v.device)
        if v.shape[1] <= self.k:
            return -inf, inf
        kth_top = torch.topk(v, self.k, dim=1).values[:, -1].to(torch.float32)
        kth_bot = torch.topk(v, self.k, dim=1, largest=False).values[:, -1].to(torch.float32)
        return torch.nextafter(kth_top, -inf), torch.nextafter(kth_bot, inf)

    def _add_moments(self, stats: BlockStats, shift: torch.Tensor, n_rows: int) -> None:
        """The block's central moments from its sums about ``shift``, merged into the running ones (Pébay)."""
        n = float(n_rows)
        mu = stats.s1 / n
        bm2 = (stats.s2 - n * mu * mu).clamp_min(0.0)
        bm3 = stats.s3 - 3.0 * mu * stats.s2 + 2.0 * n * mu * mu * mu
        bm4 = (stats.s4 - 4.0 * mu * stats.s3 + 6.0 * mu * mu * stats.s2 - 3.0 * n * mu**4).clamp_min(0.0)
        if self.count == 0:
            self.mean, self.m2, self.m3, self.m4 = shift + mu, bm2, bm3, bm4
            return
        self.mean, self.m2, self.m3, self.m4 = merge_moments(
            float(self.count), self.mean, self.m2, self.m3, self.m4, n, shift + mu, bm2, bm3, bm4
        )

    def _widen(self, v: torch.Tensor, columns: torch.Tensor) -> None:
        """Regrid the listed histograms on the CPU, exactly as ``Tally._widen``, then count their block."""
        lo, hi = self.vmin[columns].cpu().numpy(), self.vmax[columns].cpu().numpy()
        old_exp, old_off = self.hist_exp[columns].cpu().numpy(), self.hist_off[columns].cpu().numpy()
        new_exp = histogram.fit_exponent(lo, hi, self.bins, at_least=old_exp)
        new_off = histogram.centred_offset(lo, hi, new_exp, self.bins)
        moved = histogram.regrid(self.hist[columns].cpu().numpy(), old_off, old_exp, new_off, new_exp)
        exp_t, off_t = torch.from_numpy(new_exp).to(self.device), torch.from_numpy(new_off).to(self.device)
        scale = torch.from_numpy(histogram.scale_of(new_exp)).to(self.device)
        counts = self._count_rows(v, columns, scale, off_t)
        self.hist[columns] = torch.from_numpy(moved).to(self.device) + counts
        self.hist_exp[columns], self.hist_off[columns], self.scale[columns] = exp_t, off_t, scale
        self.hist_ready[columns] = True

    def _count_rows(self, v: torch.Tensor, rows: torch.Tensor, scale: torch.Tensor, off: torch.Tensor) -> torch.Tensor:
        """Histogram counts of ``v[rows]`` on the given grids: by Triton where the block pass runs by Triton."""
        kernel = _Fused.kernel() if self.fused else None  # ``update`` gave ``v`` a dtype the kernel reads
        if kernel is not None:
            try:
                return kernel.count_rows(v, rows, scale, off, self.bins)
            except Exception as exc:  # as in _launch
                _Fused.give_up(exc)
        x = v[rows].to(torch.float64)
        return sum(count_bins(c, scale, off, self.bins) for c in x.split(_CHUNK, dim=1))

    def _select_both(self, v: torch.Tensor, indices: np.ndarray, code: torch.Tensor) -> None:
        """Fold the block's coded candidates into both lists."""
        rows = torch.from_numpy(indices).to(self.device)
        self._select(self.top_v, self.top_i, v, rows, code, _TOP, descending=True)
        self._select(self.bot_v, self.bot_i, v, rows, code, _BOTTOM, descending=False)

    def _select(
        self,
        keep_v: torch.Tensor,
        keep_i: torch.Tensor,
        v: torch.Tensor,
        rows: torch.Tensor,
        code: torch.Tensor,
        bit: int,
        descending: bool,
    ) -> None:
        """Fold the candidates marked ``bit`` into the sorted lists (in place), ties toward the lower index."""
        direction, column = torch.nonzero(code & bit, as_tuple=True)
        if direction.numel() == 0:
            return
        filled = min(self.count, self.k)
        touched = torch.zeros(self.n_directions, dtype=torch.bool, device=v.device)
        touched[direction] = True
        old = torch.nonzero(touched).flatten()
        # State first, then the block's candidates (both in row order): the stable sort keeps this order
        # among equal values, which is increasing dataset index.
        which = torch.cat([old.repeat_interleave(filled), direction])
        values = torch.cat([keep_v[old, :filled].flatten(), v[direction, column]])
        index = torch.cat([keep_i[old, :filled].flatten(), rows[column]])
        rank_key = _ordered(values)
        key = which * (1 << 32) + ((1 << 32) - 1 - rank_key if descending else rank_key)
        order = torch.sort(key, stable=True).indices
        which = which[order]
        per_direction = torch.bincount(which, minlength=self.n_directions)
        starts = torch.cumsum(per_direction, 0) - per_direction
        rank = torch.arange(which.numel(), device=v.device) - starts[which]
        kept = rank < self.k
        keep_v[which[kept], rank[kept]] = values[order][kept]
        keep_i[which[kept], rank[kept]] = index[order][kept]


def _ordered(values: torch.Tensor) -> torch.Tensor:
    """float32 -> int64 in [0, 2**32) with the same order (-0.0 and 0.0 equal), for sort keys."""
    canonical = torch.where(values == 0, torch.zeros_like(values), values)
    bits = canonical.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    negative = bits >= (1 << 31)
    return torch.where(negative, 0xFFFFFFFF - bits, bits + (1 << 31))


def merge_moments(
    n_a: float,
    mean_a: torch.Tensor,
    m2_a: torch.Tensor,
    m3_a: torch.Tensor,
    m4_a: torch.Tensor,
    n_b: float,
    mean_b: torch.Tensor,
    m2_b: torch.Tensor,
    m3_b: torch.Tensor,
    m4_b: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pébay (2008) pairwise update of central moment sums: the CPU kernels' own formula, on tensors."""
    return pebay_merge(n_a, mean_a, m2_a, m3_a, m4_a, n_b, mean_b, m2_b, m3_b, m4_b)
