"""Coherence metrics, glyph attributes, null models and direction statistics against brute force."""

from __future__ import annotations

import itertools
import math
import warnings
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from dirscope.directions import DirectionSet
from dirscope.errors import DirscopeError
from dirscope.figures import tie_note
from dirscope.metrics import (
    GLYPH_ATTRIBUTES,
    METRICS,
    NEAR_ZERO_EPS,
    NotGlyphImages,
    NullCache,
    NullSummary,
    against_null,
    degenerate,
    direction_statistics,
    get_metric,
    glyph_attributes,
    null_summary,
    reference_std,
)
from dirscope.metrics.null import label_count_sets, population_subsets
from dirscope.result import Result
from dirscope.tally import Tally

PURITY, ENTROPY = get_metric("label_purity"), get_metric("label_entropy")
EMBEDDING, ATTRIBUTES = get_metric("embedding_coherence"), get_metric("attribute_coherence")


@st.composite
def pools_and_sets(draw, min_k: int = 1):
    """A pool of P rows and M sets of k distinct positions, from one seed."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    k = draw(st.integers(min_k, 12))
    size = draw(st.integers(k, 40))
    n_sets = draw(st.integers(1, 8))
    sets = np.stack([rng.permutation(size)[:k] for _ in range(n_sets)])
    return rng, size, sets


# ---- registry and sets ----------------------------------------------------------------------------------
def test_registry_names_orientation_and_needs():
    names = ["attribute_coherence", "embedding_coherence", "label_entropy", "label_purity", "wordnet_similarity"]
    assert METRICS.names() == names
    assert [get_metric(n).higher_is_better for n in METRICS.names()] == [True, True, False, True, True]
    assert PURITY.needs == ENTROPY.needs == ("labels",)
    assert EMBEDDING.needs == ("embeddings",)
    assert (ATTRIBUTES.needs, ATTRIBUTES.constants) == (("attributes",), ("attribute_std",))
    wordnet = get_metric("wordnet_similarity")
    assert (wordnet.needs, wordnet.constants, wordnet.null) == (("labels",), ("label_similarity",), "label_counts")
    with pytest.raises(DirscopeError, match="did you mean 'label_purity'"):
        get_metric("label_purty")


def test_bad_sets_and_pools_fail_clearly():
    pool = {"labels": np.array([0, 1, 1, 2])}
    with pytest.raises(ValueError, match="twice"):
        PURITY.score(np.array([[0, 0]]), pool)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        PURITY.score(np.array([[0, 4]]), pool)
    with pytest.raises(ValueError, match="int array"):
        PURITY.score(np.array([0, 1]), pool)
    with pytest.raises(ValueError, match="unknown label"):
        PURITY.score(np.array([[0, 1]]), {"labels": np.array([0, -1])})
    with pytest.raises(DirscopeError, match="needs pool data 'embeddings'"):
        EMBEDDING.score(np.array([[0, 1]]), pool)
    with pytest.raises(DirscopeError, match="k >= 2"):
        EMBEDDING.score(np.array([[0], [1]]), {"embeddings": np.eye(3)})
    assert PURITY.score(np.zeros((0, 3), np.int64), pool).shape == (0,)


def test_unknown_labels_outside_the_sets_are_no_error():
    """A run's pool holds the unknown labels (-1) of partly labelled data; only a set holding one is refused."""
    pool = {"labels": np.array([0, 1, 1, -1, 2])}
    assert PURITY.score(np.array([[1, 2], [0, 4]]), pool).tolist() == [1.0, 0.5]
    assert ENTROPY.score(np.array([[1, 2]]), pool).tolist() == [0.0]
    with pytest.raises(ValueError, match="unknown label"):
        PURITY.score(np.array([[0, 3]]), pool)


def test_degenerate():
    values = np.array([[0.0, 0.0, 0.0], [3.0, 3.0, 2.0], [np.nan, np.nan, np.nan], [-1.5, -1.5, -1.5]])
    assert degenerate(values).tolist() == [True, False, False, True]
    assert degenerate(np.array([[0.0], [1.0]])).tolist() == [False, False]  # one value shows no tie
    # with each direction's zero count: zeros in a set while the direction has more were picked by index
    padded = np.array([[0.7, 0.0, 0.0], [0.7, 0.2, 0.0], [0.7, 0.2, 0.1], [0.0, 0.0, 0.0], [0.0, -1.0, -2.0]])
    zeros = np.array([5, 1, 9, 3, 1])
    assert degenerate(padded, zeros=zeros).tolist() == [True, False, False, True, False]
    notes = [tie_note(row, z) for row, z in zip(padded, zeros, strict=True)]  # the figures' row titles agree
    assert notes == ["2 of its 5 zeros, by index", None, None, "all tied: order by index", None]
    assert degenerate(np.array([[0.0], [0.0]]), zeros=np.array([4, 1])).tolist() == [True, False]


def test_a_nearly_dead_units_padded_top_set_is_degenerate():
    """Unit 0 fires on rows 10 and 20 only: its top-4 is those two and rows 0 and 1, picked by index."""
    import torch

    import dirscope

    x = np.random.default_rng(0).normal(size=(60, 3)).astype(np.float32)
    x[:, 0] = -1.0
    x[[10, 20], 0] = [2.0, 1.0]
    y = np.arange(60) % 3
    run = dirscope.run(torch.nn.Sequential(torch.nn.ReLU()), ["0"], (x, y), "basis", k=4, progress=False)
    assert run.examples("0", 0)["index"].tolist() == [10, 20, 0, 1]
    dirscope.score(run, metrics=["label_purity"], null_draws=50, n_boot=10, n_perm=10)
    top = run.scores[(run.scores.sign == "max")].set_index("direction")["degenerate"]
    assert top.tolist() == [True, False, False]


# ---- label metrics --------------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(pools_and_sets(), st.integers(1, 6))
def test_label_metrics_match_brute_force(case, n_classes):
    rng, size, sets = case
    labels = rng.integers(0, n_classes, size) * 7  # sparse class ids
    pool = {"labels": labels}
    k = sets.shape[1]
    for row, purity, entropy in zip(sets, PURITY.score(sets, pool), ENTROPY.score(sets, pool), strict=True):
        counts = np.array(list(Counter(labels[row].tolist()).values()))
        assert purity == pytest.approx(counts.max() / k, abs=1e-12)
        assert entropy == pytest.approx(-sum(c / k * math.log(c / k) for c in counts), abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(pools_and_sets(min_k=2), st.integers(2, 9))
def test_label_metrics_give_sets_with_the_same_label_counts_the_same_float(case, n_classes):
    """A set, the same set in another order and the set with its classes renamed must tie exactly: the null's
    percentile and Cliff's delta compare scores with ==, and entropy (4, 2, 1, 1, 1) once gave two floats."""
    rng, size, sets = case
    labels = rng.integers(0, n_classes, size)
    shuffled = rng.permuted(sets, axis=1)
    renamed = {"labels": (n_classes - 1 - labels) * 3}
    similarity = rng.random((n_classes, n_classes))
    similarity = (similarity + similarity.T) / 2
    wordnet = get_metric("wordnet_similarity")
    for metric in (PURITY, ENTROPY):
        plain = metric.score(sets, {"labels": labels})
        np.testing.assert_array_equal(metric.score(shuffled, {"labels": labels}), plain)
        np.testing.assert_array_equal(metric.score(sets, renamed), plain)
    with_similarity = {"labels": labels, "label_similarity": similarity}
    np.testing.assert_array_equal(wordnet.score(shuffled, with_similarity), wordnet.score(sets, with_similarity))


def test_label_entropy_of_one_count_multiset_is_one_float():
    labels = [[0, 0, 0, 0, 1, 1, 2, 3, 4], [4, 4, 4, 4, 3, 3, 2, 1, 0], [2, 2, 2, 2, 0, 0, 1, 3, 4]]
    sets = np.arange(27).reshape(3, 9)  # set i holds the rows with labels[i]
    assert len(set(ENTROPY.score(sets, {"labels": np.concatenate(labels)}).tolist())) == 1


def test_label_edge_cases():
    pool = {"labels": np.array([4, 4, 4, 0, 1, 2, 3])}
    sets = np.array([[0, 1, 2], [3, 4, 5]])
    assert PURITY.score(sets, pool).tolist() == pytest.approx([1.0, 1 / 3])
    assert ENTROPY.score(sets, pool).tolist() == pytest.approx([0.0, math.log(3)])
    single = np.array([[0], [5]])  # k = 1: a single example is trivially pure
    assert PURITY.score(single, pool).tolist() == [1.0, 1.0]
    assert ENTROPY.score(single, pool).tolist() == [0.0, 0.0]


# ---- embedding coherence --------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(pools_and_sets(min_k=2), st.integers(1, 6), st.booleans())
def test_embedding_coherence_is_mean_pairwise_cosine(case, dim, with_zeros):
    rng, size, sets = case
    vectors = rng.normal(size=(size, dim)) * rng.uniform(0.01, 100, size=(size, 1))
    if with_zeros:
        vectors[rng.random(size) < 0.3] = 0.0
    scores = EMBEDDING.score(sets, {"embeddings": vectors.astype(np.float32)})
    v = vectors.astype(np.float32).astype(np.float64)
    for row, got in zip(sets, scores, strict=True):
        pairs = []
        for i, j in itertools.combinations(row, 2):
            norm = np.linalg.norm(v[i]) * np.linalg.norm(v[j])
            pairs.append(v[i] @ v[j] / norm if norm > 0 else 0.0)  # a zero vector has similarity 0
        assert got == pytest.approx(np.mean(pairs), abs=1e-9)


def test_embedding_coherence_extremes():
    pool = {"embeddings": np.array([[1.0, 0], [2.0, 0], [3.0, 0], [0, 1.0], [-1.0, 0]])}
    assert EMBEDDING.score(np.array([[0, 1, 2], [0, 3, 4]]), pool).tolist() == pytest.approx([1.0, -1 / 3])


# ---- attribute coherence --------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(pools_and_sets(min_k=2))
def test_attribute_coherence_matches_brute_force(case):
    rng, size, sets = case
    attributes = rng.normal(size=(size, 4)) * [1.0, 5.0, 0.0, 0.1] + [0, 0, 3.0, 0]  # column 2 is constant
    scale = reference_std(attributes)
    scores = ATTRIBUTES.score(sets, {"attributes": attributes, "attribute_std": scale})
    for row, got in zip(sets, scores, strict=True):
        ratios = [np.std(attributes[row, a], ddof=1) / scale[a] for a in (0, 1, 3)]
        assert got == pytest.approx(1 - np.mean(ratios), abs=1e-9)


def test_attribute_coherence_identical_set_and_constant_population():
    attributes = np.array([[1.0, 5], [1.0, 5], [2.0, 5], [4.0, 5]])
    pool = {"attributes": attributes, "attribute_std": reference_std(attributes)}
    assert ATTRIBUTES.score(np.array([[0, 1]]), pool).tolist() == [1.0]
    constant = {"attributes": attributes[:, 1:], "attribute_std": np.zeros(1)}
    assert np.isnan(ATTRIBUTES.score(np.array([[0, 1]]), constant)).all()
    with pytest.raises(ValueError, match="one std per attribute"):
        ATTRIBUTES.score(np.array([[0, 1]]), {"attributes": attributes, "attribute_std": np.ones(3)})


# ---- glyph attributes -----------------------------------------------------------------------------------
def canvas() -> np.ndarray:
    return np.zeros((28, 28), np.uint8)


def attrs(image: np.ndarray) -> dict[str, float]:
    return dict(zip(GLYPH_ATTRIBUTES, glyph_attributes([image])[0], strict=True))


def ring(image: np.ndarray, top: int, left: int, size: int, wall: int = 2) -> np.ndarray:
    image[top : top + size, left : left + size] = 255
    image[top + wall : top + size - wall, left + wall : left + size - wall] = 0
    return image


def test_filled_rectangle():
    image = canvas()
    image[5:15, 8:14] = 200
    a = attrs(image)
    assert (a["width"], a["height"], a["holes"]) == (6, 10, 0)
    assert a["ink"] == pytest.approx(60 * 200 / 255)
    assert a["slant"] == pytest.approx(0.0, abs=1e-12)
    image[16, 20] = 40  # below INK_THRESHOLD: ink mass only, not the box
    assert attrs(image)["ink"] == pytest.approx((60 * 200 + 40) / 255)
    assert attrs(image)["width"] == 6


def test_holes():
    assert attrs(ring(canvas(), 4, 4, 12))["holes"] == 1
    eight = ring(ring(canvas(), 2, 8, 12), 12, 8, 12)  # two rings sharing a bar
    assert attrs(eight)["holes"] == 2
    open_u = ring(canvas(), 4, 4, 12)
    open_u[4:6, 8:12] = 0
    assert attrs(open_u)["holes"] == 0
    assert attrs(ring(canvas(), 0, 0, 28))["holes"] == 1  # ink on the border still encloses a hole
    diamond = canvas()  # one-pixel loop closed only by diagonal steps: a hole for 4-connected background
    for i in range(5):
        for r, c in ((10 + i, 14 + i), (10 + i, 14 - i), (18 - i, 14 + i), (18 - i, 14 - i)):
            diamond[r, c] = 255
    assert attrs(diamond)["holes"] == 1
    pinhole = canvas()
    pinhole[5:15, 5:15] = 255
    pinhole[9, 9] = 0  # a single-pixel gap in a thick blob is noise
    assert attrs(pinhole)["holes"] == 0
    pinhole[9, 10] = 0
    assert attrs(pinhole)["holes"] == 1


def test_slant_sign_and_thickness_order():
    right, left, upright = canvas(), canvas(), canvas()
    for row in range(4, 24):
        shift = (24 - row) // 2  # higher rows further right: "/"
        right[row, 6 + shift : 9 + shift] = 255
        left[row, 19 - shift : 22 - shift] = 255
        upright[row, 12:15] = 255
    assert attrs(right)["slant"] > 0.3 > -0.3 > attrs(left)["slant"]
    assert attrs(right)["slant"] == pytest.approx(-attrs(left)["slant"])
    assert attrs(upright)["slant"] == pytest.approx(0.0, abs=1e-12)
    thin, thick = canvas(), canvas()
    thin[4:24, 13:15] = 255
    thick[4:24, 11:17] = 255
    assert attrs(thick)["thickness"] > attrs(thin)["thickness"]
    line = canvas()
    line[4:24, 13] = 255
    assert attrs(line)["thickness"] == pytest.approx(2.0)


def test_blank_and_non_glyph_images():
    assert attrs(canvas()) == dict.fromkeys(GLYPH_ATTRIBUTES, 0.0)
    assert glyph_attributes([]).shape == (0, 6)
    assert glyph_attributes([canvas(), np.zeros((10, 12), np.uint8)]).shape == (2, 6)  # sizes may differ
    with pytest.raises(NotGlyphImages, match=r"grayscale 2-D.*image 1"):
        glyph_attributes([canvas(), np.zeros((28, 28, 3), np.uint8)])
    with pytest.raises(DirscopeError, match="uint8"):
        glyph_attributes([canvas().astype(np.float32)])


# ---- null models ----------------------------------------------------------------------------------------
COUNTS = {0: 5, 1: 3, 2: 7}


def exact_purity_mean(counts: dict[int, int], k: int) -> float:
    """E[purity] of a uniform k-subset, by enumerating multivariate hypergeometric outcomes."""
    sizes = list(counts.values())
    total = 0.0
    for drawn in itertools.product(*(range(min(n, k) + 1) for n in sizes)):
        if sum(drawn) == k:
            weight = math.prod(math.comb(n, c) for n, c in zip(sizes, drawn, strict=True))
            total += weight * max(drawn) / k
    return total / math.comb(sum(sizes), k)


def test_label_null_mean_is_exact_expectation():
    expected = exact_purity_mean(COUNTS, 4)
    draws = 200_000
    from_counts = null_summary(PURITY, 4, np.random.default_rng(1), label_counts=COUNTS, draws=draws)
    labels = np.repeat(list(COUNTS), list(COUNTS.values()))
    sets = population_subsets(4, draws, np.random.default_rng(2), len(labels))
    from_subsets = PURITY.score(sets, {"labels": labels})
    for mean, std in ((from_counts.mean, from_counts.std), (from_subsets.mean(), from_subsets.std())):
        assert abs(mean - expected) < 5 * std / math.sqrt(draws)


def test_label_null_sets_have_the_drawn_counts():
    sets, pool = label_count_sets(6, 50, np.random.default_rng(0), {3: 2, 9: 10})
    assert sets.shape == (50, 6)
    per_draw = pool["labels"][sets]
    assert ((per_draw == 3).sum(axis=1) <= 2).all()
    with pytest.raises(DirscopeError, match="fewer than k=13"):
        label_count_sets(13, 5, np.random.default_rng(0), {3: 2, 9: 10})


def test_population_subsets_are_uniform():
    sets = population_subsets(3, 30_000, np.random.default_rng(0), 10)
    assert (np.sort(sets, axis=1)[:, 1:] > np.sort(sets, axis=1)[:, :-1]).all()
    hits = np.bincount(sets.ravel(), minlength=10)
    assert sps.chisquare(hits).pvalue > 1e-3
    triples = Counter(map(tuple, np.sort(sets, axis=1).tolist()))
    assert len(triples) == math.comb(10, 3)
    assert sps.chisquare(list(triples.values())).pvalue > 1e-3


def test_random_sets_are_calibrated_against_their_null():
    rng = np.random.default_rng(5)
    pool = {"embeddings": rng.normal(size=(300, 4)) + np.array([1.0, 0, 0, 0])}
    null = null_summary(EMBEDDING, 6, np.random.default_rng(6), population=pool, draws=20_000)
    fresh = population_subsets(6, 4000, np.random.default_rng(7), 300)
    z, percentile = against_null(EMBEDDING.score(fresh, pool), null)
    assert abs(z.mean()) < 0.06 and abs(z.std() - 1) < 0.05
    assert sps.kstest(percentile, "uniform").pvalue > 1e-3


def test_pure_label_set_gets_a_large_z():
    counts = dict.fromkeys(range(10), 1000)
    null = null_summary("label_purity", 10, np.random.default_rng(0), label_counts=counts, draws=20_000)
    fresh, pool = label_count_sets(10, 4000, np.random.default_rng(1), counts)
    z, percentile = against_null(PURITY.score(fresh, pool), null)
    assert abs(z.mean()) < 0.06 and abs(z.std() - 1) < 0.05
    assert abs(percentile.mean() - 0.5) < 0.02  # mid-ranks keep ties centred
    z_pure, p_pure = against_null(np.array([1.0]), null)
    assert z_pure[0] > 5 and p_pure[0] == 1.0
    entropy_null = null_summary("label_entropy", 10, np.random.default_rng(0), label_counts=counts)
    assert against_null(np.array([0.0]), entropy_null)[0][0] < -5


def test_against_null_ties_zero_std_and_nan():
    null = NullSummary(mean=1.0, std=0.5, draws=np.array([0.0, 1.0, 1.0, 2.0]))
    z, percentile = against_null(np.array([1.0, 3.0, -1.0, np.nan]), null)
    np.testing.assert_allclose(z, [0.0, 4.0, -4.0, np.nan])
    np.testing.assert_allclose(percentile, [0.5, 1.0, 0.0, np.nan])
    flat = NullSummary(mean=1.0, std=0.0, draws=np.ones(5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        z, percentile = against_null(np.array([1.0, 2.0]), flat)
    assert np.isnan(z).all() and percentile.tolist() == [0.5, 1.0]


def test_null_cache_shares_one_summary_per_key():
    cache = NullCache()
    pool = {"embeddings": np.random.default_rng(0).normal(size=(50, 3))}
    first = null_summary(EMBEDDING, 4, np.random.default_rng(1), population=pool, draws=100, cache=cache)
    copy = {"embeddings": pool["embeddings"].copy()}  # same content: same fingerprint
    again = null_summary(EMBEDDING, 4, np.random.default_rng(9), population=copy, draws=100, cache=cache)
    assert again is first
    other_k = null_summary(EMBEDDING, 5, np.random.default_rng(1), population=pool, draws=100, cache=cache)
    assert other_k is not first and len(cache) == 2
    named = null_summary(PURITY, 4, np.random.default_rng(1), label_counts=COUNTS, cache=cache, fingerprint="mnist")
    later = null_summary(PURITY, 4, np.random.default_rng(2), label_counts={0: 9}, cache=cache, fingerprint="mnist")
    assert later is named  # a caller-given fingerprint is the key, whatever the counts
    fresh = null_summary(EMBEDDING, 4, np.random.default_rng(1), population=pool, draws=100)
    np.testing.assert_array_equal(fresh.draws, first.draws)  # seeded: a recomputation is identical


def test_a_label_count_null_keys_its_cache_on_its_constants_too():
    wordnet, cache = get_metric("wordnet_similarity"), NullCache()
    unrelated, alike = {"label_similarity": np.eye(3)}, {"label_similarity": np.ones((3, 3))}
    counts = {0: 20, 1: 20, 2: 20}
    a = null_summary(wordnet, 6, np.random.default_rng(0), population=unrelated, label_counts=counts, cache=cache)
    b = null_summary(wordnet, 6, np.random.default_rng(0), population=alike, label_counts=counts, cache=cache)
    assert len(cache) == 2 and a.mean < 1.0 and b.mean == 1.0


def test_null_needs_its_source():
    with pytest.raises(DirscopeError, match="label_counts"):
        null_summary(PURITY, 3, np.random.default_rng(0), population={"labels": np.zeros(9, np.int64)})
    with pytest.raises(DirscopeError, match="population"):
        null_summary(EMBEDDING, 3, np.random.default_rng(0), label_counts=COUNTS)
    with pytest.raises(DirscopeError, match="fewer than k=3"):
        null_summary(EMBEDDING, 3, np.random.default_rng(0), population={"embeddings": np.eye(2)})


# ---- direction statistics -------------------------------------------------------------------------------
def projections(rng: np.random.Generator, n: int) -> np.ndarray:
    """Directions of known kinds: Gaussian, ReLU-like, dead, constant, tied integers, heavy-tailed."""
    return np.stack(
        [
            rng.normal(size=n) * 2 + 1,
            np.maximum(rng.normal(size=n), 0),
            np.zeros(n),
            np.full(n, 2.5),
            rng.integers(-3, 4, size=n).astype(float),
            rng.standard_t(2, size=n) * 1e-3,
        ]
    ).astype(np.float32)


def tables(values: np.ndarray, k: int, bins: int) -> Result:
    """stats and topk tables from a Tally fed in uneven blocks, as a run builds them."""
    n_dirs, n = values.shape
    tally = Tally(n_dirs, k, bins)
    for lo, hi in ((0, 7), (7, n // 2), (n // 2, n)):
        tally.update(values[:, lo:hi], np.arange(lo, hi))
    dirs = DirectionSet(
        vectors=np.eye(n_dirs, dtype=np.float32),
        family=["basis"] * 3 + ["random"] * (n_dirs - 3),
        member=np.arange(n_dirs),
        unit=np.arange(n_dirs),
        specs=["basis"] * n_dirs,
    )
    return Result.from_tallies({}, {"fc": dirs}, {"fc": tally.result()}, np.arange(n), None, None, None)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 80), st.integers(1, 9))
def test_direction_statistics_match_brute_force(seed, bins, k):
    values = projections(np.random.default_rng(seed), 300)
    result = tables(values, k, bins)
    stats = pa.Table.from_pandas(result.stats).to_pandas()  # as read back from parquet
    got = direction_statistics(stats, result.topk)
    v = values.astype(np.float64)
    assert got[["layer", "direction"]].values.tolist() == [["fc", i] for i in range(len(v))]
    mean, std = v.mean(axis=1), v.std(axis=1)
    varies = std > 0
    kurtosis = np.full(len(v), np.nan)
    kurtosis[varies] = sps.kurtosis(v[varies], axis=1, fisher=False)
    top = -np.sort(-v, axis=1)[:, :k].mean(axis=1)
    selectivity = np.full(len(v), np.nan)
    selectivity[varies] = (top - mean)[varies] / std[varies]
    np.testing.assert_allclose(got["kurtosis"], kurtosis, rtol=1e-6)
    np.testing.assert_allclose(got["selectivity"], selectivity, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(got["zero_fraction"], (v == 0).mean(axis=1))
    width = stats["hist_width"].to_numpy()[:, None]
    band = NEAR_ZERO_EPS * np.abs(v).max(axis=1, keepdims=True)
    lo = np.floor(v / width) * width
    near = ((v == 0) | ((lo >= -band) & (lo + width <= band))).mean(axis=1)
    np.testing.assert_array_equal(got["near_zero_fraction"], near)
    assert (got["zero_fraction"] <= got["near_zero_fraction"]).all()
    assert (got["near_zero_fraction"] <= (np.abs(v) <= band).mean(axis=1)).all()


def test_direction_statistics_known_values():
    values = projections(np.random.default_rng(0), 400)
    result = tables(values, 5, 64)
    got = direction_statistics(result.stats, result.topk).set_index("direction")
    assert got.loc[2, "zero_fraction"] == got.loc[2, "near_zero_fraction"] == 1.0  # dead unit
    assert np.isnan(got.loc[[2, 3], "selectivity"]).all()
    assert got.loc[0, "kurtosis"] == pytest.approx(3, abs=0.6)
    assert got.loc[5, "kurtosis"] > 6  # heavy tails
    assert got.loc[1, "near_zero_fraction"] > got.loc[1, "zero_fraction"] > 0.4
    top2 = direction_statistics(result.stats, result.topk, k=2)["selectivity"]
    assert (top2[[0, 1, 5]] >= got["selectivity"][[0, 1, 5]].to_numpy()).all()
    assert got["family"].tolist() == ["basis"] * 3 + ["random"] * 3


def test_direction_statistics_checks_its_tables():
    result = tables(projections(np.random.default_rng(0), 50), 3, 8)
    with pytest.raises(DirscopeError, match="lacks hist_counts"):
        direction_statistics(result.stats.drop(columns="hist_counts"), result.topk)
    with pytest.raises(DirscopeError, match="k >= 1"):
        direction_statistics(result.stats, result.topk, k=0)
    with pytest.raises(DirscopeError, match="eps"):
        direction_statistics(result.stats, result.topk, eps=2.0)
    empty = direction_statistics(result.stats.iloc[:0], result.topk)
    assert empty.empty and "near_zero_fraction" in empty


def test_metrics_stay_free_of_torch():
    import subprocess
    import sys

    code = "import sys, dirscope.metrics; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
