"""The streaming tally against brute-force float64 computations: top-k, bottom-k, moments, zeros, histograms."""

from __future__ import annotations

import itertools

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from dirscope.tally import NonFiniteValues, Reservoir, Tally


def brute_top(values: np.ndarray, indices: np.ndarray, k: int, descending: bool) -> np.ndarray:
    """Per row, the k rows by value (float64), ties toward the lower index."""
    out = []
    for row in values.astype(np.float64):
        order = np.lexsort((indices, -row if descending else row))[:k]
        out.append(indices[order])
    return np.array(out)


def feed(tally: Tally, values: np.ndarray, indices: np.ndarray, cuts: list[int]) -> None:
    for lo, hi in zip([0, *cuts], [*cuts, values.shape[1]], strict=True):
        tally.update(values[:, lo:hi], indices[lo:hi])


@st.composite
def streams(draw):
    n_dirs = draw(st.integers(1, 6))
    n = draw(st.integers(1, 120))
    k = draw(st.integers(1, 12))
    kind = draw(st.sampled_from(["ties", "floats", "zeros", "constant", "wide", "signed_zeros"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "ties":
        values = rng.integers(-3, 4, size=(n_dirs, n)).astype(np.float32)
    elif kind == "zeros":
        values = np.maximum(rng.normal(size=(n_dirs, n)), 0).astype(np.float32)  # ReLU-like, many exact zeros
    elif kind == "constant":
        values = np.full((n_dirs, n), draw(st.sampled_from([0.0, -2.5, 1e-30, 7e20])), np.float32)
    elif kind == "signed_zeros":  # -0.0 and +0.0 are equal, and the smallest subnormals are not 0
        values = rng.choice(np.array([-0.0, 0.0, -1e-45, 1e-45, -1.0], np.float32), size=(n_dirs, n))
    elif kind == "wide":
        values = (rng.normal(size=(n_dirs, n)) * 10.0 ** rng.integers(-20, 20, size=(n_dirs, n))).astype(np.float32)
    else:
        values = (rng.normal(size=(n_dirs, n)) * 3 + 100).astype(np.float32)
    gaps = rng.integers(1, 4, size=n)  # dataset indices need not be contiguous (excluded rows)
    indices = np.cumsum(gaps).astype(np.int64) + draw(st.integers(0, 50))
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, n - 1)), max_size=6)))) if n > 1 else []
    bins = draw(st.integers(2, 40))
    return values, indices, k, cuts, bins


@settings(max_examples=300, deadline=None)
@given(streams())
def test_matches_brute_force(stream):
    values, indices, k, cuts, bins = stream
    tally = Tally(values.shape[0], k, bins)
    feed(tally, values, indices, cuts)
    r = tally.result()
    kept = min(k, values.shape[1])
    assert r.count == values.shape[1]
    np.testing.assert_array_equal(r.top_indices, brute_top(values, indices, kept, True))
    np.testing.assert_array_equal(r.bottom_indices, brute_top(values, indices, kept, False))
    lookup = {int(i): j for j, i in enumerate(indices)}
    for c in range(values.shape[0]):
        np.testing.assert_array_equal(r.top_values[c], values[c, [lookup[int(i)] for i in r.top_indices[c]]])
    x = values.astype(np.float64)
    np.testing.assert_array_equal(r.zeros, (x == 0).sum(1))
    np.testing.assert_array_equal(r.min, x.min(1))
    np.testing.assert_array_equal(r.max, x.max(1))
    scale = np.abs(x).max(1) + 1e-300
    np.testing.assert_allclose(r.mean / scale, x.mean(1) / scale, atol=1e-12)
    np.testing.assert_allclose(np.sqrt(r.var) / scale, x.std(1) / scale, atol=1e-9)
    assert_histogram_exact(r, x)


@pytest.mark.parametrize("k", [1, 64, 100])
def test_long_blocks_with_ties_across_filter_chunks(k):
    """Blocks far longer than the kernel's filter chunk, with ties and late entries inside every chunk."""
    rng = np.random.default_rng(k)
    n = 3_000
    values = (rng.integers(-6, 7, size=(4, n)) + np.linspace(0, 3, n).round()).astype(np.float32)
    values[1] = values[1, ::-1]  # the extremes come early, so later chunks must be filtered out
    indices = np.arange(n, dtype=np.int64) * 2 + 5
    tally = Tally(4, k)
    feed(tally, values, indices, [1_000, 1_700, 1_763])
    r = tally.result()
    np.testing.assert_array_equal(r.top_indices, brute_top(values, indices, k, True))
    np.testing.assert_array_equal(r.bottom_indices, brute_top(values, indices, k, False))


def test_result_does_not_depend_on_the_number_of_threads():
    """Directions are split among threads in runs; each run is folded by one thread in row order."""
    rng = np.random.default_rng(3)
    values = rng.normal(size=(7, 900)).astype(np.float32)
    indices = np.arange(900, dtype=np.int64)
    states = []
    before = numba.get_num_threads()
    try:
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            tally = Tally(7, 16)
            feed(tally, values, indices, [100, 613])
            states.append(tally.state_dict())
    finally:
        numba.set_num_threads(before)
    for key, value in states[0].items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(states[-1][key]), err_msg=key)
    r = Tally.from_state_dict(states[0]).result()
    np.testing.assert_array_equal(r.top_indices, brute_top(values, indices, 16, True))
    np.testing.assert_array_equal(r.min, values.min(1))


def assert_histogram_exact(r, x: np.ndarray) -> None:
    n_bins = r.hist_counts.shape[1]
    for c in range(x.shape[0]):
        width = r.hist_width[c]
        assert np.log2(width) == np.round(np.log2(width))  # a power of two
        bins = np.floor(x[c] / width).astype(np.int64) - int(np.round(r.hist_start[c] / width))
        assert bins.min() >= 0 and bins.max() < n_bins
        np.testing.assert_array_equal(np.bincount(bins, minlength=n_bins), r.hist_counts[c])


def test_moments_match_scipy_on_shifted_data():
    """Higher moments stay accurate when the mean is far from zero (a naive sum-of-powers fails here)."""
    rng = np.random.default_rng(1)
    x = (rng.gamma(2.0, size=(3, 20_000)) + 1e4).astype(np.float32)
    tally = Tally(3, 5)
    feed(tally, x, np.arange(x.shape[1]), list(range(777, 20_000, 777)))
    r = tally.result()
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(r.mean, x64.mean(1), rtol=1e-12)
    np.testing.assert_allclose(r.var, x64.var(1), rtol=1e-8)
    np.testing.assert_allclose(r.skew, sps.skew(x64, axis=1), rtol=1e-6)
    np.testing.assert_allclose(r.kurtosis, sps.kurtosis(x64, axis=1, fisher=False), rtol=1e-6)


def test_gaussian_kurtosis_is_three_and_constant_is_nan():
    rng = np.random.default_rng(2)
    x = np.vstack([rng.normal(size=200_000), np.full(200_000, 4.0)]).astype(np.float32)
    tally = Tally(2, 3)
    feed(tally, x, np.arange(x.shape[1]), [50_000, 150_000])
    r = tally.result()
    assert abs(r.kurtosis[0] - 3.0) < 0.05 and abs(r.skew[0]) < 0.05
    assert np.isnan(r.kurtosis[1]) and np.isnan(r.skew[1]) and r.var[1] == 0


@settings(max_examples=150, deadline=None)
@given(streams(), st.integers(0, 10**6))
def test_merge_equals_single_pass(stream, split_seed):
    values, indices, k, _cuts, bins = stream
    n = values.shape[1]
    rng = np.random.default_rng(split_seed)
    in_a = rng.random(n) < 0.5  # interleaved shards, as a data-parallel split would give
    single = Tally(values.shape[0], k, bins)
    single.update(values, indices)
    a, b = Tally(values.shape[0], k, bins), Tally(values.shape[0], k, bins)
    a.update(values[:, in_a], indices[in_a])
    b.update(values[:, ~in_a], indices[~in_a])
    for merged in (a.merge(b).result(), b.merge(a).result()):
        s = single.result()
        np.testing.assert_array_equal(merged.top_indices, s.top_indices)
        np.testing.assert_array_equal(merged.top_values, s.top_values)
        np.testing.assert_array_equal(merged.bottom_indices, s.bottom_indices)
        np.testing.assert_array_equal(merged.zeros, s.zeros)
        assert merged.count == s.count
        assert_histogram_exact(merged, values.astype(np.float64))
        assert_same_histograms(merged, s)
        scale = np.abs(values).max() + 1e-30
        np.testing.assert_allclose(merged.mean / scale, s.mean / scale, atol=1e-9)


def assert_same_histograms(a, b) -> None:
    np.testing.assert_array_equal(a.hist_width, b.hist_width)
    np.testing.assert_array_equal(a.hist_start, b.hist_start)
    np.testing.assert_array_equal(a.hist_counts, b.hist_counts)


@settings(max_examples=300, deadline=None)
@given(streams())
def test_histograms_do_not_depend_on_batching(stream):
    """Grids only widen, so a first block that is one value (say a batch of one row) must not fix a coarse one."""
    values, indices, k, cuts, bins = stream
    single, batched, rows = (Tally(values.shape[0], k, bins) for _ in range(3))
    single.update(values, indices)
    feed(batched, values, indices, cuts)
    feed(rows, values, indices, list(range(1, values.shape[1])))
    assert_same_histograms(batched.result(), single.result())
    assert_same_histograms(rows.result(), single.result())


def test_state_dict_resumes_bit_for_bit():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, 5000)).astype(np.float32)
    idx = np.arange(5000)
    full = Tally(8, 16)
    feed(full, x, idx, list(range(500, 5000, 500)))
    first = Tally(8, 16)
    feed(first, x[:, :2500], idx[:2500], list(range(500, 2500, 500)))
    resumed = Tally.from_state_dict({k: v.copy() for k, v in first.state_dict().items()})
    feed(resumed, x[:, 2500:], idx[2500:], list(range(500, 2500, 500)))
    a, b = full.result(), resumed.result()
    for field in (
        "top_values",
        "top_indices",
        "bottom_values",
        "bottom_indices",
        "mean",
        "var",
        "skew",
        "kurtosis",
        "zeros",
        "hist_counts",
        "hist_start",
    ):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def test_rejects_out_of_order_rows_and_bad_shapes():
    tally = Tally(2, 3)
    tally.update(np.zeros((2, 3), np.float32), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="increasing"):
        tally.update(np.zeros((2, 1), np.float32), np.array([2]))
    with pytest.raises(ValueError, match="expected values"):
        tally.update(np.zeros((3, 1), np.float32), np.array([5]))


def test_non_finite_projections_are_reported():
    tally = Tally(3, 2)
    x = np.ones((3, 4), np.float32)
    x[1, 2] = np.inf
    with pytest.raises(NonFiniteValues) as info:
        tally.update(x, np.arange(4))
    assert info.value.directions.tolist() == [1]


def test_a_tally_part_updated_by_non_finite_values_refuses_any_use():
    tally, other = Tally(3, 2), Tally(3, 2)
    x = np.ones((3, 4), np.float32)
    x[1, 2] = np.nan
    with pytest.raises(NonFiniteValues):
        tally.update(x, np.arange(4))
    for use in (
        lambda: tally.update(np.ones((3, 2), np.float32), np.arange(4, 6)),
        tally.result,
        tally.state_dict,
        lambda: tally.merge(other),
        lambda: other.merge(tally),
    ):
        with pytest.raises(ValueError, match=r"part-updated .* \(directions \[1\]\); continue from a state saved"):
            use()


def test_memory_does_not_grow_with_rows():
    tally = Tally(4, 5, bins=8)
    before = sum(v.nbytes for v in tally.state_dict().values())
    rng = np.random.default_rng(4)
    for start in range(0, 100_000, 10_000):
        tally.update(rng.normal(size=(4, 10_000)).astype(np.float32), np.arange(start, start + 10_000))
    assert sum(v.nbytes for v in tally.state_dict().values()) == before


def test_reservoir_is_uniform_and_seeded():
    """Every row of a stream is kept with probability size/N, whatever the block sizes."""
    hits = np.zeros(100)
    for seed in range(2000):
        res = Reservoir(10, seed)
        for start, stop in ((0, 7), (7, 40), (40, 41), (41, 100)):
            res.update(np.arange(start, stop))
        rows = res.result()
        assert len(set(rows)) == 10
        hits[rows] += 1
    freq = hits / 2000
    assert abs(freq.mean() - 0.1) < 1e-12
    assert np.abs(freq - 0.1).max() < 0.035  # about 5 standard errors of a binomial(2000, 0.1) share
    first, second = Reservoir(10, 1), Reservoir(10, 1)
    first.update(np.arange(100))
    second.update(np.arange(100))
    np.testing.assert_array_equal(first.result(), second.result())
    assert not np.array_equal(first.result(), Reservoir(10, 2).merge(Reservoir(10, 2)).result())


@given(cuts=st.lists(st.integers(1, 499), max_size=6), size=st.integers(0, 40), seed=st.integers(0, 2**63 - 1))
@settings(max_examples=60, deadline=None)
def test_reservoir_sample_depends_only_on_seed_and_rows(cuts, size, seed):
    """Blocks, shards merged in any order, and a state_dict round trip all keep the rows of one pass."""
    rows = np.arange(0, 1000, 2)  # gaps, as with excluded rows
    whole = Reservoir(size, seed)
    whole.update(rows)
    bounds = [0, *sorted(set(cuts)), len(rows)]
    shards = []
    for a, b in itertools.pairwise(bounds):
        shard = Reservoir(size, seed)
        shard.update(rows[a:b])
        shards.append(Reservoir.from_state_dict(shard.state_dict()))
    merged = shards[-1]
    for shard in shards[-2::-1]:
        merged = shard.merge(merged)
    np.testing.assert_array_equal(merged.result(), whole.result())
    assert merged.seen == whole.seen == len(rows)
    assert len(whole.result()) == min(size, len(rows))
    with pytest.raises(ValueError, match="same size and seed"):
        whole.merge(Reservoir(size + 1, seed))
