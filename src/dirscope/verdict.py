"""The verdict: per layer and metric, units against every other family, with CIs, p-values and Holm.

verdict.json holds one record per comparison (keys ``layer, metric, sign, family_a, family_b, effect,
ci_low, ci_high, p_value, p_holm, n_a, n_b`` and more, see the README) and a plain-language conclusion
per layer, drawn from the coherence metrics of the top-k sets.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .compare import RECORD_FIELDS, compare_samples, conclusion, differs, format_row, holm, to_record
from .errors import DirscopeError
from .scoring import Scores
from .seeding import numpy_rng
from .specs import split_list

ALPHA = 0.05
VERDICT_FORMAT = "dirscope-verdict/1"


@dataclass
class Verdict:
    """Every comparison (``records``, as in verdict.json) and one conclusion per layer."""

    records: list[dict[str, Any]]
    conclusions: dict[str, str]
    notices: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": VERDICT_FORMAT,
            "settings": self.settings,
            "notices": self.notices,
            "conclusions": self.conclusions,
            "comparisons": self.records,
        }

    def table(self) -> pd.DataFrame:
        """One row per comparison; with none (e.g. a basis-only run) still the columns, so code can select them."""
        return pd.DataFrame(self.records) if self.records else pd.DataFrame(columns=list(TABLE_COLUMNS))


# A comparison's record (compare.to_record) and what judge adds to it.
TABLE_COLUMNS = (*RECORD_FIELDS, "kind", "excluded_a", "excluded_b", "row")


def family_pair(text: str, families: Collection[str], what: str = "--compare") -> tuple[str, str]:
    """``A:B`` split at the colon that leaves a family of the run on both sides (names such as
    ``rotation:0.5`` hold colons themselves); with none, at the first colon, for scoring to name the unknown."""
    splits = [(text[:i], text[i + 1 :]) for i, char in enumerate(text) if char == ":"]
    known = [(a, b) for a, b in splits if a in families and b in families]
    if len(known) > 1:
        raise DirscopeError(f"{what} {text}: splits into two families in more than one way")
    if known:
        return known[0]
    if not splits or not all(splits[0]):
        raise DirscopeError(f"{what} takes two families as A:B, got {text!r}")
    return splits[0]


def parse_pairs(compare: object, families: Collection[str]) -> list[tuple[str, str]]:
    """The API's ``compare``: a list of (A, B) pairs and/or ``A:B`` strings, or one string of ``A:B`` joined by
    commas. Anything else is one line, not an unpacking error deep in ``judge``."""
    usage = "give a list of (A, B) pairs or 'A:B' strings, e.g. compare=[('random', 'basis')] or 'random:basis'"
    if compare is None:
        return []
    if isinstance(compare, str):
        return [family_pair(text, families, "compare") for text in split_list(compare, "compare", "random:basis")]
    if not isinstance(compare, Iterable):
        raise DirscopeError(f"compare={compare!r} is not a list of pairs; {usage}")
    pairs = []
    for item in compare:
        if isinstance(item, str) and ":" in item:
            pairs.append(family_pair(item, families, "compare"))
        elif isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(f, str) for f in item):
            pairs.append((item[0], item[1]))
        else:
            raise DirscopeError(f"compare={compare!r}: {item!r} is not a pair of families; {usage}")
    return pairs


def family_pairs(families: Sequence[str], extra: Iterable[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """Units against every other family present, then the pairs a user names (both must be present)."""
    pairs = [("basis", f) for f in families if f != "basis"] if "basis" in families else []
    for a, b in extra:
        missing = [f for f in (a, b) if f not in families]
        if missing:
            raise DirscopeError(
                f"--compare {a}:{b}: no family {missing[0]!r} in this run (have: {', '.join(families)})"
            )
        if a == b:
            raise DirscopeError(f"--compare {a}:{b} compares a family with itself; name two families")
        if (a, b) not in pairs and (b, a) not in pairs:  # B:A is the same test, counted once by Holm
            pairs.append((a, b))
    return pairs


def judge(
    scores: Scores,
    *,
    pairs: Iterable[tuple[str, str]] = (),
    seed: int = 0,
    n_boot: int = 2000,
    n_perm: int = 10000,
    alpha: float = ALPHA,
) -> Verdict:
    """Compare families on every metric at every layer; Holm-adjust across all comparisons of the run."""
    table = scores.table
    pairs = list(pairs)
    records, p_values = [], []
    for (layer, metric, sign), group in table.groupby(["layer", "metric", "sign"], sort=False):
        usable = group[~group["degenerate"]]
        families = list(dict.fromkeys(group["family"]))
        for a, b in family_pairs(families, pairs):
            comp = compare_samples(
                usable.loc[usable.family == a, "score"].to_numpy(),
                usable.loc[usable.family == b, "score"].to_numpy(),
                rng=numpy_rng(seed, "compare", str(layer), metric, sign, a, b),
                n_boot=n_boot,
                n_perm=n_perm,
                higher_is_better=scores.higher_is_better[metric],
            )
            excluded = {f: int((group.family == f).sum() - (usable.family == f).sum()) for f in (a, b)}
            records.append((layer, metric, sign, a, b, comp, excluded))
            p_values.append(comp.p_value)
    adjusted = holm(np.asarray(p_values, dtype=np.float64)) if p_values else np.zeros(0)
    out = []
    for (layer, metric, sign, a, b, comp, excluded), p_holm in zip(records, adjusted, strict=True):
        rec = to_record(str(layer), metric, sign, a, b, comp, float(p_holm))
        rec.update(
            kind=scores.kinds[metric],
            excluded_a=excluded[a],
            excluded_b=excluded[b],
            row=format_row(comp, metric, a, b),
        )
        out.append(rec)
    conclusions = {
        str(layer): _layer_conclusion([r for r in out if r["layer"] == str(layer)], rows, scores.kinds, alpha)
        for layer, rows in table.groupby("layer", sort=False)
    }
    settings = {
        "seed": seed,
        "n_boot": n_boot,
        "n_perm": n_perm,
        "alpha": alpha,
        "references": scores.references,
        "holm_family": "all comparisons of the run (layers, metrics, signs, family pairs)",
    }
    return Verdict(out, conclusions, list(scores.notices), settings)


def _layer_conclusion(records: list[dict[str, Any]], rows: pd.DataFrame, kinds: dict[str, str], alpha: float) -> str:
    """Drawn from the coherence of the top-k sets, the sets Szegedy et al. looked at, and of the bottom-k sets
    too where one of those differs (Holm's correction covers both); without any, it says why rather than that
    none could be computed: one family leaves nothing to compare, and label-free statistics are compared but
    not concluded on."""
    coherence = [r for r in records if r["kind"] == "coherence" and r["sign"] == "max"]
    bottom = [r for r in records if r["kind"] == "coherence" and r["sign"] == "min"]
    if coherence and any(differs(r, alpha) for r in bottom):  # held back, it would contradict verdict.json
        return f"top-k sets: {conclusion(coherence, alpha)}; bottom-k sets: {conclusion(bottom, alpha)}"
    if coherence:
        return conclusion(coherence, alpha)
    families = list(dict.fromkeys(rows["family"]))
    if len(families) == 1:
        return f"nothing to compare: {families[0]} is the layer's only family (add another, e.g. random:64)"
    if not records:
        return f"nothing to compare: no basis family to compare {', '.join(families)} with; name the pairs as A:B"
    metrics = list(dict.fromkeys(rows["metric"]))
    if not any(kinds[m] == "coherence" for m in metrics):
        return f"no coherence metric was scored; only label-free statistics were compared ({', '.join(metrics)})"
    return "no coherence metric could be computed"


def summary_lines(verdict: Verdict, sign: str = "max") -> list[str]:
    """The printed report: per layer, a table line per comparison of the top-k sets (and of the bottom-k sets
    that differ, which the conclusion then names), then the conclusion."""
    lines = []
    alpha = float(verdict.settings.get("alpha", ALPHA))
    for layer, text in verdict.conclusions.items():
        lines.append(f"{layer}:")
        for rec in verdict.records:
            if rec["layer"] == layer and rec["sign"] in (sign, "all"):
                lines.append(f"  {rec['row']}")
            elif rec["layer"] == layer and rec["kind"] == "coherence" and differs(rec, alpha):
                lines.append(f"  {'bottom' if rec['sign'] == 'min' else 'top'}-k {rec['row']}")
        lines.append(f"  => {text}")
    lines += [f"note: {n}" for n in verdict.notices]
    return lines
