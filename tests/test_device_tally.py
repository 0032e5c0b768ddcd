"""DeviceTally (torch) against the numba Tally on the same projections: same lists, counts and histograms."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from hypothesis import given, settings

from dirscope.tally import NonFiniteValues, Tally
from dirscope.tally import device as device_module
from dirscope.tally.device import MAX_FUSED_K, DeviceTally, candidate_capacity, count_bins
from test_tally import streams

EXACT = ("top_values", "top_indices", "bottom_values", "bottom_indices", "zeros", "min", "max", "hist_counts")
EXACT += ("hist_start", "hist_width")
CLOSE = ("mean", "var", "skew", "kurtosis")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton")
# The Triton pass runs compiled on a GPU, else in Triton's interpreter on CPU tensors (see conftest.py).
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def run_both(
    values: np.ndarray,
    indices: np.ndarray,
    k: int,
    bins: int,
    cuts: list[int],
    device: str = "cpu",
    fused: bool = False,
):
    """Feed both tallies the same blocks; ``fused`` asserts that the Triton pass really ran (no fallback)."""
    cpu, dev = Tally(values.shape[0], k, bins), DeviceTally(values.shape[0], k, bins, device, fused=fused)
    for lo, hi in zip([0, *cuts], [*cuts, values.shape[1]], strict=True):
        cpu.update(values[:, lo:hi], indices[lo:hi])
        dev.update(torch.from_numpy(values[:, lo:hi]).to(device), indices[lo:hi])
    assert not (fused and device_module._Fused.failed), "the Triton pass failed and the eager pass ran"
    return cpu, dev


def assert_same(a, b) -> None:
    """Exact fields bit for bit; moments to 1e-10 relative to the data's scale."""
    assert a.count == b.count
    for name in EXACT:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    scale = np.maximum(np.abs(a.min), np.abs(a.max)) + 1e-300
    np.testing.assert_allclose(a.mean / scale, b.mean / scale, rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.sqrt(a.var) / scale, np.sqrt(b.var) / scale, rtol=0, atol=1e-10)
    np.testing.assert_allclose(a.skew, b.skew, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a.kurtosis, b.kurtosis, rtol=1e-6, atol=1e-6)


@settings(max_examples=200, deadline=None)
@given(streams())
def test_matches_numba_tally(stream):
    values, indices, k, cuts, bins = stream
    cpu, dev = run_both(values, indices, k, bins, cuts)
    assert_same(cpu.result(), dev.result())


def tied_values(rng: np.random.Generator, n: int) -> np.ndarray:
    """Integer rows (many ties), a constant row, ReLU rows (exact zeros) and rows far from zero."""
    return np.vstack(
        [
            rng.integers(-2, 3, size=(3, n)),
            np.full((1, n), 5.0),
            np.maximum(rng.normal(size=(2, n)), 0) * 4,
            rng.normal(size=(2, n)) * 1e3 + 1e5,
        ]
    ).astype(np.float32)


@pytest.mark.parametrize("batch", [7, 64, 100, 1000])
@pytest.mark.parametrize("k", [1, 16, 70, 2000])
def test_heavy_ties_and_batch_sizes(batch, k):
    """Integer values (many ties), a constant direction and ReLU zeros; k above the batch and above N."""
    rng = np.random.default_rng(batch * 31 + k)
    n = 1500
    values = tied_values(rng, n)
    indices = np.arange(n) * 2 + 7
    cuts = list(range(batch, n, batch))
    cpu, dev = run_both(values, indices, k, 64, cuts)
    assert_same(cpu.result(), dev.result())


def test_moments_agree_to_1e10():
    rng = np.random.default_rng(5)
    values = (rng.gamma(2.0, size=(4, 30_000)) * 3 + 1e3).astype(np.float32)
    cpu, dev = run_both(values, np.arange(30_000), 8, 64, list(range(1000, 30_000, 1000)))
    a, b = cpu.result(), dev.result()
    for name in CLOSE:
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-10, err_msg=name)


def test_state_dict_is_the_cpu_format_and_resumes():
    rng = np.random.default_rng(6)
    values = rng.normal(size=(5, 4000)).astype(np.float32)
    idx = np.arange(4000)
    cpu, dev = run_both(values[:, :2000], idx[:2000], 12, 32, list(range(300, 2000, 300)))
    state = dev.state_dict()
    assert state.keys() == cpu.state_dict().keys()
    resumed = DeviceTally.from_state_dict(cpu.state_dict())
    for lo in range(2000, 4000, 300):
        cpu.update(values[:, lo : lo + 300], idx[lo : lo + 300])
        resumed.update(torch.from_numpy(values[:, lo : lo + 300]), idx[lo : lo + 300])
    assert_same(cpu.result(), resumed.result())
    assert_same(cpu.result(), resumed.to_tally().result())


def test_state_dicts_are_copies_in_and_out():
    """A snapshot stays as it was taken, and resuming never writes into the caller's (maybe read-only) arrays."""
    rng = np.random.default_rng(8)
    values = rng.normal(size=(3, 600)).astype(np.float32)
    idx = np.arange(600)
    tally = DeviceTally(3, 4, 16)
    tally.update(torch.from_numpy(values[:, :200]), idx[:200])
    snapshot = tally.state_dict()
    taken = {name: array.copy() for name, array in snapshot.items()}
    for array in snapshot.values():
        array.flags.writeable = False
    resumed = DeviceTally.from_state_dict(snapshot)
    tally.update(torch.from_numpy(values[:, 200:400] * 10), idx[200:400])
    resumed.update(torch.from_numpy(values[:, 400:] * 10), idx[400:])
    for name, array in snapshot.items():
        np.testing.assert_array_equal(array, taken[name], err_msg=name)


def test_merge_returns_the_exact_cpu_merge():
    rng = np.random.default_rng(7)
    values = rng.integers(0, 5, size=(3, 900)).astype(np.float32)
    idx = np.arange(900)
    a, b, whole = DeviceTally(3, 10, 16), DeviceTally(3, 10, 16), Tally(3, 10, 16)
    a.update(torch.from_numpy(values[:, :400]), idx[:400])
    b.update(torch.from_numpy(values[:, 400:]), idx[400:])
    whole.update(values, idx)
    assert_same(whole.result(), a.merge(b).result())


def test_nonfinite_directions_are_named_and_state_kept():
    values = np.ones((4, 10), np.float32)
    values[2, 3] = np.nan
    values[3, 0] = np.inf
    tally = DeviceTally(4, 3)
    with pytest.raises(NonFiniteValues) as err:
        tally.update(torch.from_numpy(values), np.arange(10))
    assert err.value.directions.tolist() == [2, 3]
    assert tally.count == 0


def test_rows_out_of_order_are_refused():
    tally = DeviceTally(2, 3)
    tally.update(torch.zeros(2, 4), np.arange(4))
    with pytest.raises(ValueError, match="increasing"):
        tally.update(torch.zeros(2, 2), np.array([3, 9]))


def test_packed_histogram_counts_equal_bincount():
    rng = np.random.default_rng(8)
    x = torch.from_numpy(rng.normal(size=(6, 5000)) * 20)
    scale = torch.full((6,), 0.5, dtype=torch.float64)
    off = torch.tensor([-30, -20, -10, 0, -40, -5])
    got = count_bins(x, scale, off, 37).numpy()
    for c in range(6):
        b = np.floor(x[c].numpy() * 0.5).astype(np.int64) - off[c].item()
        b = b[(b >= 0) & (b < 37)]
        np.testing.assert_array_equal(got[c], np.bincount(b, minlength=37))


def test_bfloat16_blocks_are_tallied_as_float32():
    rng = np.random.default_rng(9)
    values = torch.from_numpy(rng.normal(size=(3, 300)).astype(np.float32)).to(torch.bfloat16)
    cpu, dev = Tally(3, 5), DeviceTally(3, 5)
    cpu.update(values.float().numpy(), np.arange(300))
    dev.update(values, np.arange(300))
    assert_same(cpu.result(), dev.result())


@cuda
@settings(max_examples=40, deadline=None)
@given(streams())
def test_cuda_matches_numba_tally(stream):
    values, indices, k, cuts, bins = stream
    cpu, dev = run_both(values, indices, k, bins, cuts, "cuda")
    assert_same(cpu.result(), dev.result())


@cuda
@pytest.mark.parametrize("fused", [False, True])
def test_cuda_large_blocks_match_cpu(fused):
    rng = np.random.default_rng(10)
    values = np.vstack([rng.normal(size=(60, 70_000)), rng.integers(-3, 4, size=(4, 70_000))]).astype(np.float32)
    idx = np.arange(70_000)
    cpu = Tally(64, 64)
    dev = DeviceTally(64, 64, device="cuda", fused=fused)
    for lo in range(0, 70_000, 35_000):
        cpu.update(values[:, lo : lo + 35_000], idx[lo : lo + 35_000])
        dev.update(torch.from_numpy(values[:, lo : lo + 35_000]).cuda(), idx[lo : lo + 35_000])
    assert_same(cpu.result(), dev.result())


# The Triton pass ------------------------------------------------------------------------------------------


@triton
@settings(max_examples=80, deadline=None)
@given(streams())
def test_triton_pass_matches_numba_tally(stream):
    values, indices, k, cuts, bins = stream
    cpu, dev = run_both(values, indices, k, bins, cuts, TRITON_DEVICE, fused=True)
    assert_same(cpu.result(), dev.result())


@triton
@pytest.mark.parametrize("batch", [10, 100, 1500])
@pytest.mark.parametrize("k", [1, 70, MAX_FUSED_K])
def test_triton_pass_heavy_ties_and_batch_sizes(batch, k):
    """As the eager test: ties, constant and ReLU rows, gapped indices, k above the batch and above N.

    Fewer rows with small batches: the interpreter takes a tenth of a second per block.
    """
    rng = np.random.default_rng(batch * 31 + k)
    n = min(1500, 25 * batch)
    values = tied_values(rng, n)
    cuts = list(range(batch, n, batch))
    for indices in (np.arange(n) * 2 + 7, np.arange(n) + 3):  # rows read from a tensor, and consecutive
        cpu, dev = run_both(values, indices, k, 64, cuts, TRITON_DEVICE, fused=True)
        assert_same(cpu.result(), dev.result())


@triton
@pytest.mark.parametrize(("tile", "step"), [(16, 1), (16, 4), (32, 2)])
def test_triton_pass_reads_tiles_in_steps_and_revisits_only_tiles_with_candidates(monkeypatch, tile, step):
    """Small tiles: blocks of 75 tiles (more than the 64 bits that mark tiles with candidates, so bits are
    shared), steps that end past the block, and sparse candidates anywhere in it."""
    from dirscope.tally import triton_pass

    monkeypatch.setattr(triton_pass, "TILE", tile)
    monkeypatch.setattr(triton_pass, "STEP", step)
    rng = np.random.default_rng(tile * 10 + step)
    values = rng.normal(size=(3, 4_100)).astype(np.float32)
    values[1, 4_099] = 9.0  # a new maximum in the very last column
    values[2, 64 * 16 + 3] = -9.0  # and a new minimum in tile 64, whose bit tile 0 also uses
    for indices in (np.arange(4_100), np.arange(4_100) * 3):
        cpu, dev = run_both(values, indices, 5, 16, [300, 1_500, 2_700], TRITON_DEVICE, fused=True)
        assert_same(cpu.result(), dev.result())


@triton
def test_triton_pass_overflowing_candidates_take_the_general_path(monkeypatch):
    """Rising values beat the k-th value everywhere: more candidates than the kernel keeps, every block."""
    calls = []
    original = DeviceTally._select
    monkeypatch.setattr(
        DeviceTally, "_select", lambda self, *args, **kw: calls.append(1) or original(self, *args, **kw)
    )
    rng = np.random.default_rng(11)
    values = np.vstack([np.arange(600.0), rng.normal(size=600)]).astype(np.float32)
    assert candidate_capacity(4) < 100
    cpu, dev = run_both(values, np.arange(600), 4, 16, list(range(100, 600, 100)), TRITON_DEVICE, fused=True)
    assert_same(cpu.result(), dev.result())
    assert 2 <= len(calls) < 12  # the first block fits the candidate rows; each later one overflows


@triton
def test_large_k_runs_eager(monkeypatch):
    launches = []
    monkeypatch.setattr(DeviceTally, "_update_eager", lambda self, *a: launches.append(1))
    DeviceTally(2, MAX_FUSED_K + 1, device=TRITON_DEVICE, fused=True).update(torch.zeros(2, 3), np.arange(3))
    assert launches == [1]


@triton
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's numpy on NaN
@pytest.mark.parametrize("found_by", ["settle", "next update"])
def test_triton_pass_reports_nonfinite_values_a_block_late_with_the_state_before_them(found_by):
    rng = np.random.default_rng(12)
    good, bad, later = (torch.from_numpy(rng.normal(size=(4, 50)).astype(np.float32)) for _ in range(3))
    bad[1, 7], bad[3, 0] = np.nan, -np.inf
    tally = DeviceTally(4, 5, device=TRITON_DEVICE, fused=True)
    tally.update(good.to(TRITON_DEVICE), np.arange(50))
    before = tally.state_dict()
    tally.update(bad.to(TRITON_DEVICE), np.arange(50, 100))  # launched; its flags are read later
    with pytest.raises(NonFiniteValues) as err:
        if found_by == "settle":
            tally.settle()
        else:
            tally.update(later.to(TRITON_DEVICE), np.arange(100, 150))
    assert err.value.directions.tolist() == [1, 3]
    after = tally.state_dict()
    assert not device_module._Fused.failed
    for name, array in before.items():
        np.testing.assert_array_equal(array, after[name], err_msg=name)


@triton
def test_triton_pass_checks_each_block_after_launching_the_next(monkeypatch):
    """The GPU never idles waiting for a block's flags: they are read once the next pass is queued."""
    events = []
    launch, clean = DeviceTally._launch, DeviceTally._clean
    monkeypatch.setattr(
        DeviceTally, "_launch", lambda self, v, i, *a: events.append(("launch", i[0])) or launch(self, v, i, *a)
    )
    monkeypatch.setattr(DeviceTally, "_clean", lambda self, p: events.append(("check", p.indices[0])) or clean(self, p))
    values = np.random.default_rng(14).uniform(-1, 1, size=(3, 90)).astype(np.float32)
    values[:, :2] = 2, -2  # the first block spans every later one: only its own (first) grids need fixing
    cpu, dev = run_both(values, np.arange(90), 4, 16, [30, 60], TRITON_DEVICE, fused=True)
    first_block_at_once = [("launch", 0), ("check", 0)]  # it always needs fixing: its histograms have no grid
    assert events == [*first_block_at_once, ("launch", 30), ("launch", 60), ("check", 30)]
    assert_same(cpu.result(), dev.result())  # reading the result checks the last block
    assert events[-1] == ("check", 60)


@triton
def test_triton_pass_resumes_a_cpu_state_and_reads_bfloat16():
    rng = np.random.default_rng(13)
    values = torch.from_numpy(rng.normal(size=(5, 4000)).astype(np.float32)).to(torch.bfloat16)
    as_float = values.float().numpy()
    cpu = Tally(5, 12, 32)
    cpu.update(as_float[:, :2000], np.arange(2000))
    resumed = DeviceTally.from_state_dict(cpu.state_dict(), TRITON_DEVICE, fused=True)
    for lo in range(2000, 4000, 300):
        cpu.update(as_float[:, lo : lo + 300], np.arange(lo, min(lo + 300, 4000)))
        resumed.update(values[:, lo : lo + 300].to(TRITON_DEVICE), np.arange(lo, min(lo + 300, 4000)))
    assert not device_module._Fused.failed
    assert_same(cpu.result(), resumed.result())


def test_a_failing_triton_pass_warns_once_and_runs_eager(monkeypatch):
    class Broken:
        launches = 0

        def block_pass(self, *args):
            Broken.launches += 1
            raise RuntimeError("no GPU compiler\nsecond line")

    monkeypatch.setattr(device_module._Fused, "module", Broken())
    monkeypatch.setattr(device_module._Fused, "failed", False)
    rng = np.random.default_rng(14)
    values = rng.normal(size=(3, 400)).astype(np.float32)
    cpu, dev = Tally(3, 6, 16), DeviceTally(3, 6, 16, fused=True)
    with pytest.warns(UserWarning, match=r"unavailable \(no GPU compiler\); the device tally runs unfused"):
        for lo in range(0, 400, 100):
            cpu.update(values[:, lo : lo + 100], np.arange(lo, lo + 100))
            dev.update(torch.from_numpy(values[:, lo : lo + 100]), np.arange(lo, lo + 100))
    assert Broken.launches == 1
    assert_same(cpu.result(), dev.result())
