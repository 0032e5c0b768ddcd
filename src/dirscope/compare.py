"""Are one family's coherence scores higher than another's? Effect, bootstrap CI, permutation p, Holm, words.

Each direction of a layer gets a score per metric; a family (``basis`` = units, ``random``, ``rotation``...)
is a sample of such scores. ``compare_samples`` turns two samples into a :class:`Comparison`; ``holm``
adjusts the p-values of all comparisons that are judged together; ``conclusion`` says what they add up to
in one line, as TCAV tests concept vectors against random ones. Pure NumPy, no I/O.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

CONFIDENCE = 0.95
"""Level of the bootstrap interval; fixed so that every table and conclusion reads "95% CI".

Intervals are Hesterberg's *expanded* percentile bootstrap ("What teachers should know about the bootstrap",
The American Statistician 69(4), 2015). The plain percentile interval is too narrow for small groups (it
uses the plug-in variance and normal quantiles): about 91% coverage at n = 10. So its tails move from 2.5%
to the alpha'/2 at which a normal quantile, widened by the plug-in variance ratio, equals Student's t
quantile (Welch-Satterthwaite degrees of freedom for a difference of two means). It keeps the percentile
interval's robustness to ties and skew; a bootstrap-t interval can be infinite on tied scores.
"""

_CHUNK_ELEMENTS = 1 << 22  # resampling works in blocks of at most this many values (32 MiB of float64)
_TIE_RTOL = 1e-9  # permuted differences this close (relative to the data's scale) to the observed one are ties


@dataclass(frozen=True)
class Comparison:
    """Sample ``a`` against sample ``b`` for one metric.

    ``effect`` is ``mean_a - mean_b`` in the metric's own units, never flipped: ``higher_is_better`` only
    decides whether a positive effect reads as "more coherent". ``ci_low``/``ci_high`` bound the effect
    (expanded percentile bootstrap, 95%: see CONFIDENCE), ``p_value`` is a two-sided permutation test of the
    difference of means (studentized: see ``_permutation_p``), and ``cliffs_delta`` = P(a > b) - P(a < b) is a
    scale-free effect size in [-1, 1]. Anything that cannot be computed is NaN, and ``note`` says why (it also
    reports dropped NaN/inf scores).
    """

    effect: float
    ci_low: float
    ci_high: float
    p_value: float
    cliffs_delta: float
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    higher_is_better: bool = True
    note: str = ""


def compare_samples(
    a: ArrayLike,
    b: ArrayLike,
    *,
    rng: np.random.Generator,
    n_boot: int = 2000,
    n_perm: int = 10000,
    higher_is_better: bool = True,
) -> Comparison:
    """Compare two 1-D score samples; non-finite scores are dropped and counted in ``note``.

    Fewer than two finite scores in either sample gives NaNs and a note rather than an error, so one
    degenerate family never stops a whole verdict. The bootstrap draws come from ``rng`` before the
    permutations, so a seeded generator gives an identical result.
    """
    if n_boot < 1 or n_perm < 1:
        raise ValueError(f"n_boot and n_perm must be >= 1, got {n_boot} and {n_perm}")
    x, dropped_a = _finite(a, "a")
    y, dropped_b = _finite(b, "b")
    notes = []
    if dropped_a or dropped_b:
        notes.append(f"dropped {dropped_a + dropped_b} NaN/inf scores: {dropped_a} from a, {dropped_b} from b")
    mean_a, mean_b = _mean(x), _mean(y)
    if x.size < 2 or y.size < 2:
        notes.append(f"too few scores to compare (n_a={x.size}, n_b={y.size}; need at least 2 each)")
        nan = math.nan
        return Comparison(nan, nan, nan, nan, nan, x.size, y.size, mean_a, mean_b, higher_is_better, "; ".join(notes))
    ci_low, ci_high = _bootstrap_ci(x, y, n_boot, rng)
    return Comparison(
        effect=mean_a - mean_b,
        ci_low=ci_low,
        ci_high=ci_high,
        p_value=_permutation_p(x, y, n_perm, rng),
        cliffs_delta=cliffs_delta(x, y),
        n_a=x.size,
        n_b=y.size,
        mean_a=mean_a,
        mean_b=mean_b,
        higher_is_better=higher_is_better,
        note="; ".join(notes),
    )


def _finite(values: ArrayLike, name: str) -> tuple[np.ndarray, int]:
    """The finite float64 values of a 1-D sample, and how many were dropped."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"sample {name} must be 1-D, got shape {arr.shape}")
    keep = np.isfinite(arr)
    return arr[keep], int(arr.size - keep.sum())


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else math.nan


def _blocks(total: int, width: int) -> Iterator[int]:
    """Row counts that cover ``total`` rows of ``width`` values without exceeding the memory budget."""
    step = max(1, _CHUNK_ELEMENTS // width)
    for start in range(0, total, step):
        yield min(step, total - start)


def _bootstrap_means(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_boot`` resamples of ``x`` with replacement."""
    return np.concatenate(
        [x[rng.integers(0, x.size, size=(rows, x.size))].mean(axis=1) for rows in _blocks(n_boot, x.size)]
    )


def mean_ci(values: ArrayLike, *, rng: np.random.Generator, n_boot: int = 2000) -> tuple[float, float, float]:
    """Mean of the finite values with its expanded percentile bootstrap 95% CI (NaNs when fewer than 2 values)."""
    x, _ = _finite(values, "values")
    if x.size < 2:
        return _mean(x), math.nan, math.nan
    tail = _expanded_tail([x])
    low, high = np.quantile(_bootstrap_means(x, n_boot, rng), [tail, 1.0 - tail])
    return _mean(x), float(low), float(high)


def _bootstrap_ci(x: np.ndarray, y: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    """Expanded percentile bootstrap interval of mean(x) - mean(y), resampling each group on its own.

    Groups are resampled separately because the families are independent samples of directions.
    """
    diffs = _bootstrap_means(x, n_boot, rng) - _bootstrap_means(y, n_boot, rng)
    tail = _expanded_tail([x, y])
    low, high = np.quantile(diffs, [tail, 1.0 - tail])
    return float(low), float(high)


def _expanded_tail(samples: list[np.ndarray]) -> float:
    """The bootstrap quantile (lower tail) that gives a 95% interval for the mean, or sum of +/- means, of
    ``samples``: Phi(-r * t), with r the ratio of the unbiased to the plug-in standard error and t Student's
    quantile at the Welch-Satterthwaite degrees of freedom (n - 1 for one sample). Constant samples, whose
    bootstrap distribution is one point, keep the nominal tail."""
    tail = (1.0 - CONFIDENCE) / 2.0
    n = np.array([s.size for s in samples], dtype=np.float64)
    unbiased = np.array([s.var(ddof=1) for s in samples]) / n
    if unbiased.sum() == 0.0:
        return tail
    plug_in = unbiased * (n - 1.0) / n
    df = unbiased.sum() ** 2 / np.sum(unbiased**2 / (n - 1.0))
    ratio = math.sqrt(unbiased.sum() / plug_in.sum())
    return float(stats.norm.cdf(-ratio * stats.t.ppf(1.0 - tail, df)))


ALPHA = 0.05  # a difference counts when its Holm-adjusted p is at most this (and its CI excludes 0)


def _permutation_p(x: np.ndarray, y: np.ndarray, n_perm: int, rng: np.random.Generator) -> float:
    """Two-sided Monte Carlo permutation p of Welch's statistic, the difference of means over its standard error:
    (1 + #{|perm| >= |obs|}) / (1 + n_perm).

    The raw difference would test only that the families are exchangeable. Units and random directions differ
    in number and spread, and then its p is wrong for the difference of means: at equal means, 8 scores of sd 3
    against 32 of sd 1 were "significant" at 5% a quarter of the time. The studentized statistic keeps the test
    exact under exchangeability and valid for the means when the spreads differ (Janssen 1997; Chung and
    Romano 2013). Counting the observed split once keeps p > 0 for any ``n_perm``; permuted statistics within a
    relative 1e-9 of the observed one count as ties, since the same split summed in another order can differ in
    the last bits.
    """
    pooled = np.concatenate([x, y])
    pooled = pooled - pooled.mean()  # a constant that all scores share changes no statistic
    floor = _TIE_RTOL * math.sqrt(float(np.mean(pooled**2)))  # rounding-level differences and errors are none

    def welch(rows: np.ndarray) -> np.ndarray:
        a, b = rows[:, : x.size], rows[:, x.size :]
        diff = a.mean(axis=1) - b.mean(axis=1)
        error = np.sqrt(a.var(axis=1, ddof=1) / x.size + b.var(axis=1, ddof=1) / y.size)
        diff = np.where(np.abs(diff) > floor, np.abs(diff), 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):  # constant groups: an infinite statistic, or none
            return np.where(error > floor, diff / error, np.where(diff > 0.0, np.inf, 0.0))

    observed = float(welch(pooled[None, :])[0])
    tolerance = _TIE_RTOL * max(observed, 1.0) if math.isfinite(observed) else 0.0
    hits = 0
    for rows in _blocks(n_perm, pooled.size):
        shuffled = np.tile(pooled, (rows, 1))
        rng.permuted(shuffled, axis=1, out=shuffled)
        hits += int(np.count_nonzero(welch(shuffled) >= observed - tolerance))
    return (1 + hits) / (1 + n_perm)


def cliffs_delta(a: ArrayLike, b: ArrayLike) -> float:
    """Cliff's delta, P(a > b) - P(a < b) over all pairs, exactly in O((n + m) log m) by binary search."""
    x = np.asarray(a, dtype=np.float64)
    y = np.sort(np.asarray(b, dtype=np.float64))
    if x.size == 0 or y.size == 0:
        return math.nan
    below = np.searchsorted(y, x, side="left").sum()  # pairs with b < a
    above = (y.size - np.searchsorted(y, x, side="right")).sum()  # pairs with b > a
    return float((below - above) / (x.size * y.size))


def holm(p_values: ArrayLike) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values, as statsmodels' ``multipletests(method="holm")``.

    The i-th smallest of m p-values is multiplied by m - i + 1; a running maximum keeps the adjusted values
    in the order of the raw ones, and they are capped at 1. NaNs stay NaN and do not count toward m, so a
    comparison that could not be made does not weaken the others.
    """
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    present = np.flatnonzero(~np.isnan(p))
    order = present[np.argsort(p[present], kind="stable")]
    factors = np.arange(order.size, 0, -1)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(p[order] * factors))
    return adjusted


RECORD_FIELDS = (
    "layer", "metric", "sign", "family_a", "family_b", "effect", "ci_low", "ci_high", "p_value", "p_holm",
    "n_a", "n_b", "cliffs_delta", "mean_a", "mean_b", "higher_is_better", "note",
)  # fmt: skip


def to_record(
    layer: str,
    metric: str,
    sign: str,
    family_a: str,
    family_b: str,
    comparison: Comparison,
    p_holm: float,
) -> dict[str, Any]:
    """One row of ``verdict.json``: plain JSON types, with NaN written as null."""
    c = comparison
    return {
        "layer": layer,
        "metric": metric,
        "sign": sign,
        "family_a": family_a,
        "family_b": family_b,
        "effect": _json_float(c.effect),
        "ci_low": _json_float(c.ci_low),
        "ci_high": _json_float(c.ci_high),
        "p_value": _json_float(c.p_value),
        "p_holm": _json_float(p_holm),
        "n_a": int(c.n_a),
        "n_b": int(c.n_b),
        "cliffs_delta": _json_float(c.cliffs_delta),
        "mean_a": _json_float(c.mean_a),
        "mean_b": _json_float(c.mean_b),
        "higher_is_better": bool(c.higher_is_better),
        "note": c.note,
    }


def _json_float(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def format_row(comparison: Comparison, metric: str, family_a: str, family_b: str) -> str:
    """A table line such as ``label purity: units 0.81 vs random 0.62, difference +0.19 [95% CI ...], p < 0.001``."""
    c = comparison
    places = _places(c.effect, c.ci_low, c.ci_high)
    line = (
        f"{metric.replace('_', ' ')}: {_family_short(family_a)} {_number(c.mean_a, places)} vs "
        f"{_family_short(family_b)} {_number(c.mean_b, places)}, difference {_number(c.effect, places, signed=True)} "
        f"{_ci_text(c.ci_low, c.ci_high, places)}, p {_p_text(c.p_value)}"
    )
    return f"{line}; {c.note}" if c.note else line


def conclusion(records: Iterable[Mapping[str, Any]], alpha: float = ALPHA) -> str:
    """One plain-language line for one layer, from its ``to_record`` rows (so it also reads ``verdict.json``).

    A metric counts as a difference only when its Holm-adjusted p is at most ``alpha`` AND its 95% CI
    excludes 0: the permutation test and the interval answer slightly different questions, and a claim
    should survive both (the interval stays 95% whatever ``alpha``). Each metric is oriented by its
    ``higher_is_better``. Family pairs are concluded separately and joined with "; "; metrics that point both
    ways make a pair "mixed"; pairs with no difference in the same metrics share one clause.
    """
    rows = list(records)
    if not rows:
        return "no comparisons"
    pairs: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        pairs[row["family_a"], row["family_b"]].append(row)
    several_signs = len({row.get("sign") for row in rows}) > 1
    clauses: list[str] = []
    quiet: dict[tuple[str, tuple[str, ...]], list[Mapping[str, Any]]] = defaultdict(list)
    for pair in pairs.values():
        if any(_verdict(row, alpha) for row in pair):
            clauses.append(_pair_conclusion(pair, alpha, several_signs))
        else:  # pairs with nothing to report and the same metrics share one clause (e.g. a rotation sweep)
            quiet[pair[0]["family_a"], tuple(_metric_name(row, several_signs) for row in pair)].extend(pair)
    for (family_a, _), group in quiet.items():
        others = list(dict.fromkeys(row["family_b"] for row in group))
        tested = any(not math.isnan(_float(row.get("p_holm"))) for row in group)
        what = "no detectable difference between" if tested else "no test possible between"  # nothing was compared
        clauses.append(f"{what} {_family_long(family_a)} and {_families_long(others)} ({_quiet(group, several_signs)})")
    return "; ".join(clauses)


def _pair_conclusion(rows: list[Mapping[str, Any]], alpha: float, several_signs: bool) -> str:
    """The clause for one pair of families with at least one difference: more, less or mixed."""
    a, b = _family_long(rows[0]["family_a"]), _family_long(rows[0]["family_b"])
    by_verdict: dict[int, list[str]] = {1: [], -1: [], 0: []}
    for row in rows:
        by_verdict[_verdict(row, alpha)].append(_evidence(row, several_signs))
    better, worse, neither = (by_verdict[k] for k in (1, -1, 0))
    if better and worse:
        return f"mixed: {a} more coherent than {b} by {'; '.join(better)}, but less by {'; '.join(worse)}"
    word = "more" if better else "less"
    clause = f"{a} {word} coherent than {b} ({'; '.join(better or worse)})"
    if neither:
        quiet = [row for row in rows if _verdict(row, alpha) == 0]
        clause += f", no detectable difference by {_quiet(quiet, several_signs)}"
    return clause


def _quiet(rows: list[Mapping[str, Any]], several_signs: bool) -> str:
    """The metrics without a detectable difference, in short: their names and the smallest Holm p; those that
    could not be compared are named apart with the reason, so a p never seems to speak for them."""
    tested = [row for row in rows if not math.isnan(_float(row.get("p_holm")))]
    untested = [row for row in rows if math.isnan(_float(row.get("p_holm")))]
    parts = []
    if tested:
        names = ", ".join(dict.fromkeys(_metric_name(row, several_signs) for row in tested))
        parts.append(f"{names}: smallest p_holm {_p_text(min(_float(row.get('p_holm')) for row in tested))}")
    if untested:
        names = ", ".join(dict.fromkeys(_metric_name(row, several_signs) for row in untested))
        parts.append(f"{names}: n/a, {untested[0].get('note') or 'not computed'}")
    return "; ".join(parts)


def differs(row: Mapping[str, Any], alpha: float = ALPHA) -> bool:
    """Whether a comparison counts as a difference (Holm p <= alpha and a CI that excludes 0)."""
    return _verdict(row, alpha) != 0


def _verdict(row: Mapping[str, Any], alpha: float) -> int:
    """+1 if family a is significantly more coherent, -1 if less, 0 otherwise (including missing values)."""
    p, low, high = (_float(row.get(k)) for k in ("p_holm", "ci_low", "ci_high"))
    if not p <= alpha:  # also false for NaN
        return 0
    direction = 1 if low > 0 else -1 if high < 0 else 0
    return direction if row.get("higher_is_better", True) else -direction


def _evidence(row: Mapping[str, Any], several_signs: bool) -> str:
    """``label_purity +0.19 [95% CI +0.15, +0.23], p_holm < 0.001``, or the note when nothing was computed."""
    name = _metric_name(row, several_signs)
    effect, low, high = (_float(row.get(k)) for k in ("effect", "ci_low", "ci_high"))
    if math.isnan(effect):
        return f"{name} n/a ({row.get('note') or 'not computed'})"
    places = _places(effect, low, high)
    ci = _ci_text(low, high, places)
    return f"{name} {_number(effect, places, signed=True)} {ci}, p_holm {_p_text(_float(row.get('p_holm')))}"


def _metric_name(row: Mapping[str, Any], several_signs: bool) -> str:
    return f"{row['metric']} ({row.get('sign')})" if several_signs else str(row["metric"])


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def _family_short(family: str) -> str:
    return "units" if family == "basis" else family


def _family_long(family: str) -> str:
    return "units" if family == "basis" else f"{family} directions"


def _families_long(families: list[str]) -> str:
    """``random, rotation or pca directions``; units by that name, not as "basis directions"."""
    named = [f for f in families if f != "basis"]
    if not named:
        return "units"
    text = named[0] if len(named) == 1 else ", ".join(named[:-1]) + f" or {named[-1]}"
    return f"{'units or ' if 'basis' in families else ''}{text} directions"


def _places(effect: float, low: float, high: float) -> int:
    """Decimal places that resolve the CI: two, or more when its half-width is below 0.01."""
    scale = (high - low) / 2.0 if math.isfinite(high - low) and high > low else abs(effect)
    if not math.isfinite(scale) or scale == 0.0:
        return 2
    return min(6, max(2, math.ceil(-math.log10(scale))))


def _number(value: float, places: int, signed: bool = False) -> str:
    """A number to ``places`` decimals; an exact 0 gets no sign, which would read as "excludes 0" in a CI."""
    if not math.isfinite(value):
        return "n/a"
    return f"{value:+.{places}f}" if signed and value != 0.0 else f"{abs(value) if value == 0.0 else value:.{places}f}"


def _ci_text(low: float, high: float, places: int) -> str:
    return f"[95% CI {_number(low, places, signed=True)}, {_number(high, places, signed=True)}]"


def _p_text(p: float) -> str:
    """``< 0.001`` or ``= 0.012``: three decimals, the resolution a permutation p deserves; four next to
    ALPHA, where three would print 0.050 both for a difference that counts and for one that does not."""
    if math.isnan(p):
        return "= n/a"
    if p < 0.001:
        return "< 0.001"
    return f"= {p:.4f}" if round(p, 3) == ALPHA else f"= {p:.3f}"
