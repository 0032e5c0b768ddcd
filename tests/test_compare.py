"""The verdict statistics: calibration under H0 and H1, brute-force references, and the wording."""

from __future__ import annotations

import itertools
import json
import math
import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dirscope import compare
from dirscope.compare import Comparison, cliffs_delta, compare_samples, conclusion, format_row, holm, to_record

ALPHA = 0.05
REPS = 1000  # per null distribution: the rejection rate's standard error is 0.7 points
SIZES = [(10, 10), (10, 40), (25, 25), (60, 15), (200, 50), (100, 200)]
# Each bound fails the plain percentile interval that the expanded one replaced (93.4, 94.1, 91.6, 90.0% here).
MIN_NULL_COVERAGE = {"normal": 0.94, "purity": 0.945, "t3": 0.925, "lognormal": 0.905}


def draw(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """Score-like samples: symmetric, heavy-tailed, skewed, and label purity (k = 9) with many ties."""
    if kind == "normal":
        return rng.normal(size=n)
    if kind == "t3":
        return rng.standard_t(3, size=n)
    if kind == "lognormal":
        return rng.lognormal(0.0, 1.0, size=n)
    return np.clip(rng.binomial(9, 0.35, size=n), 1, 9) / 9


def covers(c: Comparison, value: float) -> bool:
    return c.ci_low <= value <= c.ci_high


# --- calibration --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["normal", "t3", "lognormal", "purity"])
def test_null_rejects_at_alpha_and_ci_covers_zero(kind):
    rejected = covered = 0
    for i in range(REPS):
        rng = np.random.default_rng([1, i])
        n_a, n_b = SIZES[i % len(SIZES)]
        c = compare_samples(draw(kind, rng, n_a), draw(kind, rng, n_b), rng=rng, n_boot=999, n_perm=999)
        rejected += c.p_value <= ALPHA
        covered += covers(c, 0.0)
    # Exact under H0, so at most ALPHA + 3 standard errors; ties make it conservative (about 4% for purity).
    assert 0.025 <= rejected / REPS <= 0.07
    # Expanded percentile intervals: normal 95.2, purity 95.7, t3 93.8, log-normal 92.2% here (skewed scores
    # in groups of 10-15 stay below 95%), hence the per-kind lower bounds.
    assert MIN_NULL_COVERAGE[kind] <= covered / REPS <= 0.97


@pytest.mark.parametrize("kind", ["normal", "lognormal"])
def test_intervals_keep_their_coverage_with_ten_per_group(kind):
    """Where the plain percentile interval covers about 90% (90.6 and 90.1% for these seeds)."""
    covered = 0
    reps = 800
    for i in range(reps):
        rng = np.random.default_rng([5, i])
        c = compare_samples(draw(kind, rng, 10), draw(kind, rng, 10), rng=rng, n_boot=999, n_perm=1)
        covered += covers(c, 0.0)
    assert 0.925 <= covered / reps <= 0.97


def test_mean_ci_covers_the_mean_of_ten_normal_values():
    """94.5% for these seeds; the plain percentile interval gave 90.6%."""
    covered = 0
    reps = 800
    for i in range(reps):
        rng = np.random.default_rng([6, i])
        _, low, high = compare.mean_ci(rng.normal(2.0, 1.0, 10), rng=rng, n_boot=999)
        covered += low <= 2.0 <= high
    assert 0.93 <= covered / reps <= 0.97


def test_power_against_a_shift_of_08_sd():
    rejected = excluded = 0
    reps = 200
    for i in range(reps):
        rng = np.random.default_rng([2, i])
        c = compare_samples(rng.normal(0.8, 1.0, 50), rng.normal(0.0, 1.0, 50), rng=rng, n_boot=999, n_perm=999)
        rejected += c.p_value <= ALPHA
        excluded += c.ci_low > 0
    assert rejected / reps > 0.9 and excluded / reps > 0.9


def test_ci_covers_the_true_difference():
    covered = 0
    reps = 600
    for i in range(reps):
        rng = np.random.default_rng([3, i])
        c = compare_samples(rng.normal(1.0, 1.0, 40), rng.normal(0.3, 2.0, 80), rng=rng, n_perm=1)
        covered += covers(c, 0.7)
    assert 0.92 <= covered / reps <= 0.975


# --- permutation p against exact enumeration ----------------------------------------------------------------------


def welch_t(a: np.ndarray, b: np.ndarray) -> float:
    """|Welch's t|, written out; a zero standard error gives inf (or 0 when the means agree too)."""
    diff = abs(statistics.fmean(a) - statistics.fmean(b))
    error = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    if error < 1e-12:
        return math.inf if diff > 1e-12 else 0.0
    return diff / error


def exact_p(x: np.ndarray, y: np.ndarray) -> float:
    """The exact two-sided permutation p of Welch's statistic over all splits of the pooled sample."""
    pooled = np.concatenate([x, y])
    observed = welch_t(x, y)
    hits = 0
    splits = list(itertools.combinations(range(pooled.size), x.size))
    for chosen in splits:
        mask = np.zeros(pooled.size, bool)
        mask[list(chosen)] = True
        hits += welch_t(pooled[mask], pooled[~mask]) >= observed - 1e-9
    return hits / len(splits)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kind", ["normal", "ties", "shifted", "unequal"])
def test_permutation_p_matches_exact_enumeration(kind, seed):
    rng = np.random.default_rng([4, seed])
    if kind == "ties":
        x, y = rng.integers(0, 3, 5).astype(float), rng.integers(0, 3, 5).astype(float)
    elif kind == "unequal":  # sizes and spreads differ: here the raw difference of means ranks splits otherwise
        x, y = rng.normal(1.0, 3.0, 3), rng.normal(0.0, 0.5, 8)
    else:
        x, y = rng.normal(1.5 if kind == "shifted" else 0.0, 1.0, 5), rng.normal(0.0, 1.0, 5)
    n_perm = 20000
    want = exact_p(x, y)
    got = compare_samples(x, y, rng=rng, n_boot=1, n_perm=n_perm).p_value
    assert abs(got - want) <= 4 * math.sqrt(want * (1 - want) / n_perm) + 2 / n_perm


@pytest.mark.parametrize(("n_a", "sd_a", "n_b", "sd_b"), [(8, 3.0, 32, 1.0), (64, 1.0, 16, 0.2)])
def test_equal_means_with_unequal_sizes_and_spreads_are_rejected_at_about_alpha(n_a, sd_a, n_b, sd_b):
    """The raw difference of means rejected 25% (first case) and 0% (second) of these at 5%."""
    rejected, reps = 0, 400
    for i in range(reps):
        rng = np.random.default_rng([7, i])
        c = compare_samples(rng.normal(0.0, sd_a, n_a), rng.normal(0.0, sd_b, n_b), rng=rng, n_boot=1, n_perm=499)
        rejected += c.p_value <= ALPHA
    assert 0.02 <= rejected / reps <= 0.10


def test_constant_groups_that_differ_give_the_smallest_exact_p():
    """Zero spread in each group: only the observed split and its mirror are as extreme (2 of C(6, 3) = 20)."""
    c = compare_samples(np.full(3, 0.1), np.full(3, 0.7), rng=np.random.default_rng(0), n_boot=10, n_perm=20000)
    assert abs(c.p_value - 0.1) < 0.01


def test_identical_groups_give_p_one_and_zero_interval():
    c = compare_samples(np.full(8, 0.5), np.full(12, 0.5), rng=np.random.default_rng(0), n_boot=50, n_perm=50)
    assert c.effect == 0.0 and c.p_value == 1.0 and c.ci_low == c.ci_high == 0.0 and c.cliffs_delta == 0.0


@pytest.mark.parametrize("shift", [1e6, 1e10])
def test_permutation_p_does_not_change_when_every_score_is_shifted(shift):
    """Ties are judged against the scores' spread: a constant that all share changes no difference of means."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 0.3, 12), rng.normal(0.0, 0.3, 12)
    plain = compare_samples(a, b, rng=np.random.default_rng(1), n_boot=20, n_perm=2000).p_value
    shifted = compare_samples(a + shift, b + shift, rng=np.random.default_rng(1), n_boot=20, n_perm=2000).p_value
    assert plain == shifted < 0.01


# --- Cliff's delta ------------------------------------------------------------------------------------------------


def brute_cliffs(a: list[float], b: list[float]) -> float:
    return float(np.mean([np.sign(x - y) for x in a for y in b]))


samples = st.one_of(
    st.lists(st.integers(-3, 3).map(float), min_size=1, max_size=40),  # many ties
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=40),
)


@settings(max_examples=200, deadline=None)
@given(samples, samples)
def test_cliffs_delta_matches_brute_force(a, b):
    d = cliffs_delta(a, b)
    assert d == pytest.approx(brute_cliffs(a, b), abs=1e-12)
    assert -1.0 <= d <= 1.0
    assert cliffs_delta(b, a) == pytest.approx(-d, abs=1e-12)


def test_cliffs_delta_extremes_and_empty():
    assert cliffs_delta([3, 4], [1, 2]) == 1.0 and cliffs_delta([1, 2], [3, 4]) == -1.0
    assert math.isnan(cliffs_delta([], [1.0]))


# --- Holm ---------------------------------------------------------------------------------------------------------


def brute_holm(p: list[float]) -> list[float]:
    """statsmodels' multipletests(method="holm"), pair by pair: max over p_j <= p_i of (m - rank_j) * p_j."""
    present = [v for v in p if not math.isnan(v)]
    m = len(present)
    out = []
    for pi in p:
        if math.isnan(pi):
            out.append(math.nan)
            continue
        factors = [(m - sum(q < pj for q in present)) * pj for pj in present if pj <= pi]
        out.append(min(1.0, max(factors)))
    return out


def test_holm_hand_computed():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    got = holm([0.01, math.nan, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(got, [0.03, math.nan, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])


p_lists = st.lists(
    st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.01, 0.05, math.nan])),  # ties and NaNs
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(p_lists)
def test_holm_matches_brute_force_and_is_monotone(p):
    got = holm(p)
    np.testing.assert_allclose(got, brute_holm(p), rtol=1e-12)
    raw = np.asarray(p, dtype=float)
    ok = ~np.isnan(raw)
    assert np.array_equal(np.isnan(got), ~ok)
    order = np.argsort(raw[ok], kind="stable")
    assert np.all(np.diff(got[ok][order]) >= 0)
    assert np.all((got[ok] >= raw[ok]) & (got[ok] <= 1.0))


def test_holm_agrees_with_the_step_down_procedure():
    rng = np.random.default_rng(5)
    for _ in range(200):
        p = rng.uniform(0, 0.1, size=rng.integers(1, 15))
        alpha = rng.uniform(0.01, 0.1)
        rejected = set()
        for step, i in enumerate(np.argsort(p)):  # reject while p_(k) <= alpha / (m - k + 1)
            if p[i] > alpha / (p.size - step):
                break
            rejected.add(int(i))
        assert set(np.flatnonzero(holm(p) <= alpha).tolist()) == rejected


def test_holm_empty_and_all_nan():
    assert holm([]).shape == (0,)
    assert np.isnan(holm([math.nan, math.nan])).all()


# --- small samples, NaNs, seeding ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b"), [([], [1.0, 2.0]), ([1.0], [1.0, 2.0, 3.0]), ([math.nan, math.nan], [1.0, 2.0])])
def test_too_few_scores_give_nans_and_a_note(a, b):
    c = compare_samples(a, b, rng=np.random.default_rng(0))
    assert all(math.isnan(v) for v in (c.effect, c.ci_low, c.ci_high, c.p_value, c.cliffs_delta))
    assert "too few scores" in c.note and c.mean_b == pytest.approx(np.mean(b))


def test_nans_are_dropped_and_counted():
    a = [0.9, math.nan, 0.8, 0.7, math.inf]
    c = compare_samples(a, [0.1, 0.2, math.nan], rng=np.random.default_rng(0), n_boot=100, n_perm=100)
    assert (c.n_a, c.n_b) == (3, 2) and c.mean_a == pytest.approx(0.8)
    assert c.note == "dropped 3 NaN/inf scores: 2 from a, 1 from b"


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="1-D"):
        compare_samples(np.zeros((2, 3)), [1.0, 2.0], rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="n_boot"):
        compare_samples([1.0, 2.0], [1.0, 2.0], rng=np.random.default_rng(0), n_boot=0)


def test_same_seed_same_comparison():
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=30), rng.normal(0.3, 1.0, 45)
    first = compare_samples(a, b, rng=np.random.default_rng(123))
    assert compare_samples(a, b, rng=np.random.default_rng(123)) == first
    assert compare_samples(a, b, rng=np.random.default_rng(124)) != first


def test_working_in_blocks_changes_nothing(monkeypatch):
    rng = np.random.default_rng(10)
    a, b = rng.normal(size=300), rng.normal(size=500)
    whole = compare_samples(a, b, rng=np.random.default_rng(1))
    monkeypatch.setattr(compare, "_CHUNK_ELEMENTS", 1000)  # many blocks; NumPy draws the same stream per row
    assert compare_samples(a, b, rng=np.random.default_rng(1)) == whole


def test_effect_is_not_flipped_when_lower_is_better():
    c = compare_samples([1.0, 2.0, 3.0], [0.0, 0.5, 1.0], rng=np.random.default_rng(0), higher_is_better=False)
    assert c.effect == pytest.approx(1.5) and not c.higher_is_better


# --- records and words --------------------------------------------------------------------------------------------


def comparison(effect, low, high, p=0.0004, higher_is_better=True, note=""):
    return Comparison(effect, low, high, p, 0.5, 50, 50, 0.62 + effect, 0.62, higher_is_better, note)


def record(metric, c, p_holm, family_b="random", sign="max"):
    return to_record("fc1", metric, sign, "basis", family_b, c, p_holm)


def test_record_keys_and_json_safety():
    nan = math.nan
    row = record("label_purity", Comparison(nan, nan, nan, nan, nan, 1, 0, 0.5, nan, True, "too few"), nan)
    assert list(row) == [
        *["layer", "metric", "sign", "family_a", "family_b", "effect", "ci_low", "ci_high", "p_value", "p_holm"],
        *["n_a", "n_b", "cliffs_delta", "mean_a", "mean_b", "higher_is_better", "note"],
    ]
    assert json.loads(json.dumps(row, allow_nan=False))["effect"] is None and row["mean_a"] == 0.5


def test_format_row():
    c = comparison(0.19, 0.15, 0.23)
    assert format_row(c, "label_purity", "basis", "random") == (
        "label purity: units 0.81 vs random 0.62, difference +0.19 [95% CI +0.15, +0.23], p < 0.001"
    )
    narrow = Comparison(-0.0042, -0.0061, -0.0023, 0.012, -0.1, 40, 60, 0.5, 0.5042, True, "")
    assert format_row(narrow, "kurtosis", "basis", "rotation:0.5").endswith(
        "difference -0.004 [95% CI -0.006, -0.002], p = 0.012"
    )
    at_zero = Comparison(0.5, 0.0, 1.0, 0.2, 0.5, 8, 8, 0.5, 0.0, True, "")  # an all-zero family: CI from 0
    assert "[95% CI 0.00, +1.00]" in format_row(at_zero, "zero_fraction", "basis", "random")


def test_conclusion_more_less_none_mixed():
    more = record("label_purity", comparison(0.19, 0.15, 0.23), 0.0004)
    assert conclusion([more]) == (
        "units more coherent than random directions (label_purity +0.19 [95% CI +0.15, +0.23], p_holm < 0.001)"
    )
    less = record("label_purity", comparison(-0.19, -0.23, -0.15), 0.0004)
    assert conclusion([less]).startswith("units less coherent than random directions")
    # lower-is-better metrics are oriented: a lower score is the more coherent one
    entropy = record("entropy", comparison(-0.3, -0.4, -0.2, higher_is_better=False), 0.002)
    assert conclusion([entropy]).startswith("units more coherent")
    null = record("kurtosis", comparison(0.01, -0.03, 0.05, p=0.6), 0.62)
    assert conclusion([null]) == (
        "no detectable difference between units and random directions (kurtosis: smallest p_holm = 0.620)"
    )
    assert conclusion([more, null]).endswith(", no detectable difference by kurtosis: smallest p_holm = 0.620")
    assert conclusion([more, less]).startswith("mixed: units more coherent than random directions by label_purity")


def test_a_p_next_to_alpha_shows_the_side_it_falls_on():
    assert compare._p_text(0.0496) == "= 0.0496" and compare._p_text(0.0504) == "= 0.0504"
    assert compare._p_text(0.0449) == "= 0.045" and compare._p_text(0.12) == "= 0.120"


def test_conclusion_needs_both_holm_and_interval():
    small_p_wide_ci = record("label_purity", comparison(0.1, -0.01, 0.2), 0.01)
    excluded_ci_large_p = record("label_purity", comparison(0.1, 0.01, 0.2), 0.2)
    for row in (small_p_wide_ci, excluded_ci_large_p):
        assert conclusion([row]).startswith("no detectable difference")


def test_conclusion_pairs_signs_missing_values_and_json_round_trip():
    nan = math.nan
    rows = [
        record("label_purity", comparison(0.19, 0.15, 0.23), 0.0004, sign="max"),
        record("label_purity", comparison(0.02, -0.01, 0.05), 0.4, sign="min"),
        record(
            "label_purity",
            Comparison(nan, nan, nan, nan, nan, 64, 1, 0.7, 0.6, True, "too few scores"),
            nan,
            family_b="pca",
        ),
    ]
    text = conclusion(json.loads(json.dumps(rows, allow_nan=False)))
    assert text == (
        "units more coherent than random directions (label_purity (max) +0.19 [95% CI +0.15, +0.23], p_holm < 0.001)"
        ", no detectable difference by label_purity (min): smallest p_holm = 0.400; "
        "no test possible between units and pca directions (label_purity (max): n/a, too few scores)"
    )
    assert conclusion([]) == "no comparisons"


def test_a_quiet_clause_names_the_metrics_it_could_not_compare_apart():
    """Every set degenerate (token-level layers under max pooling) read "no detectable difference"; and a metric
    without a result stood beside the others' smallest p as if that p spoke for it."""
    untested = Comparison(math.nan, math.nan, math.nan, math.nan, math.nan, 0, 0, math.nan, math.nan, True, "too few")
    rows = [record("kurtosis", comparison(0.1, -0.2, 0.4), 0.62), record("label_purity", untested, math.nan)]
    assert conclusion(rows) == (
        "no detectable difference between units and random directions "
        "(kurtosis: smallest p_holm = 0.620; label_purity: n/a, too few)"
    )


def test_conclusion_groups_pairs_without_difference():
    def row(family_b: str, metric: str) -> dict:
        return {
            "family_a": "basis",
            "family_b": family_b,
            "metric": metric,
            "effect": 0.01,
            "ci_low": -0.1,
            "ci_high": 0.1,
            "p_holm": 0.8,
            "higher_is_better": True,
        }

    rows = [row(b, m) for b in ("rotation:0.5", "rotation:1", "random") for m in ("label_purity", "kurtosis")]
    assert conclusion(rows) == (
        "no detectable difference between units and rotation:0.5, rotation:1 or random directions "
        "(label_purity, kurtosis: smallest p_holm = 0.800)"
    )
    assert conclusion(rows[-2:]).startswith("no detectable difference between units and random directions (")


def test_a_quiet_clause_names_units_among_several_families_as_units():
    """--compare pca:random and pca:basis once read "between pca directions and random or basis directions"."""
    rows = [
        {"family_a": "pca", "family_b": b, "metric": "label_purity", "ci_low": -0.1, "ci_high": 0.1, "p_holm": 0.8}
        for b in ("random", "basis")
    ]
    assert conclusion(rows) == (
        "no detectable difference between pca directions and units or random directions "
        "(label_purity: smallest p_holm = 0.800)"
    )
