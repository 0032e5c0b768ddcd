"""``dirscope study``: a blinded rating session (study.html) and the statistics of its answers.

The page shows only the top-k grids of a seeded, shuffled mix of directions under opaque item ids; which
item is which (layer, direction, family) lives in the key, study.json, next to it in the run directory.
Answers come back as answers.json files, one per person, and are scored against the key:

    answers.json       {"format": "dirscope-study-answers", "version": 1, "study": ID, "rater": TOKEN,
                        "name": TEXT, "answers": [{"item": ID, "rating": 1..5, "guess": FAMILY | null}]}
    study-scores.json  mean rating per family with bootstrap CI, Mann-Whitney U between families (Holm),
                       guess accuracy against chance (Clopper-Pearson CI), Spearman against the run's scores

Statistics take each item's mean rating over the people who rated it as one observation: the directions,
not the people, are the sample the families are compared on.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ..atomic import write_json, write_text
from ..compare import CONFIDENCE, cliffs_delta, holm, mean_ci
from ..errors import DirscopeError
from ..result import Result
from ..rundir import read_run, writes_run
from ..scoring import picked_by_row
from ..seeding import numpy_rng
from .page import image_sources, json_number, render_page

KEY_FORMAT = "dirscope-study/1"
ANSWERS_FORMAT = "dirscope-study-answers"
ANSWERS_VERSION = 1
SCORES_FORMAT = "dirscope-study-scores/1"
RATINGS = range(1, 6)
QUESTION = "How much do these images share one clear property?"
SCALE_ENDS = ("1: nothing in common", "5: one clear shared property")
DEFAULT_FAMILIES = ("basis", "random")
# Splits of the items a rank test enumerates; beyond that it draws this many (seeded).
RANK_PERMUTATIONS = 9999


@dataclass
class Study:
    """A written study: its id, the key (as in study.json) and the files."""

    id: str
    key: dict[str, Any]
    page: Path
    key_path: Path
    notices: list[str] = field(default_factory=list)


@writes_run
def make_study(
    run_dir: str | Path,
    *,
    families: Sequence[str] = DEFAULT_FAMILIES,
    per_family: int = 10,
    layers: Sequence[str] | None = None,
    seed: int | None = None,
    guess: bool = True,
) -> Study:
    """Write study.html and its key study.json into a run directory.

    Per layer, every family gets the same number of directions (``per_family``, or fewer when a family has
    fewer), drawn with a seed derived from ``seed`` (default: the run's), then all items are shuffled.
    The same options give the same study id, so regenerating the page never orphans answers.
    """
    run_dir = Path(run_dir)
    result = read_run(run_dir)
    families = list(dict.fromkeys(families))
    if len(families) < 2:
        raise DirscopeError(f"a study compares at least two families, got {', '.join(families) or 'none'}")
    if per_family < 1:
        raise DirscopeError(f"--per-family must be at least 1, got {per_family}")
    if not result.images:
        raise DirscopeError("this run has no example images (the data is not image-like), so it cannot be rated")
    seed = int(result.manifest["config"]["seed"] if seed is None else seed)
    layers = list(dict.fromkeys(layers)) if layers else result.layers  # a repeat would draw the same items twice
    ratable, left_out = _ratable(result, layers, families)
    items = _draw_items(result, layers, families, per_family, seed, ratable)
    if not items:
        raise DirscopeError(
            f"no layer has a ratable grid in every family of {', '.join(families)}: their top-k sets are picked by "
            "dataset row (dead or constant directions); choose other --layers or --families"
        )
    key: dict[str, Any] = {
        "format": KEY_FORMAT,
        "run": _run_identity(result.manifest),
        "families": families,
        "layers": layers,
        "per_family": per_family,
        "seed": seed,
        "guess": guess,
        "items": items,
        **({"left_out": left_out} if left_out else {}),
    }
    study_id = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    key = {"format": KEY_FORMAT, "study": study_id, "version": ANSWERS_VERSION, **key}
    page_items = [
        {"id": it["id"], "cells": [int(i) for i in result.examples(it["layer"], it["direction"], "max")["index"]]}
        for it in items
    ]
    needed = sorted({i for item in page_items for i in item["cells"]})
    data = {
        "study": study_id,
        "version": ANSWERS_VERSION,
        "format": ANSWERS_FORMAT,
        "question": QUESTION,
        "ends": list(SCALE_ENDS),
        "guess": _guess_question(families) if guess else None,
        "items": page_items,
        "images": {str(i): src for i, src in image_sources(result.images, needed).items()},
    }
    page, key_path = run_dir / "study.html", run_dir / "study.json"
    write_json(key_path, key)
    write_text(page, render_page("study", "dirscope study", data))
    notices = [
        f"{layer}: left out {n} {_family_word(family)} grid{'s' if n > 1 else ''} picked by dataset row, not by the "
        "direction (all values tied, or padded with its exact zeros), as scoring leaves them out"
        for layer, counts in left_out.items()
        for family, n in counts.items()
    ]
    return Study(study_id, key, page, key_path, notices)


def _run_identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a study key records of its run; ``run_id`` only where the run has one (older runs keep their
    study ids)."""
    run = {"model": manifest["model"]["spec"], "data": manifest["data"].get("spec"), "created": manifest.get("created")}
    return {**run, "run_id": manifest["run_id"]} if manifest.get("run_id") else run


def _check_run(run_dir: Path, key: dict[str, Any]) -> None:
    """Refuse a study key made of another run than the one now in ``run_dir`` (an overwritten one)."""
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
        now = _run_identity(manifest)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise DirscopeError(f"{run_dir} holds no complete run to score the study against; run it again") from None
    made = key.get("run") if isinstance(key.get("run"), dict) else {}
    fields = ("run_id",) if "run_id" in made else ("model", "data", "created")  # keys of older versions
    same = all(made.get(f) == now.get(f) for f in fields)
    if not same:
        raise DirscopeError(
            f"{run_dir / 'study.json'} was made for another run (created {made.get('created')}), not the run now in "
            f"{run_dir} (created {now.get('created')}); make the study again with `dirscope study {run_dir}`"
        )


def _ratable(
    result: Result, layers: list[str], families: list[str]
) -> tuple[dict[tuple[str, str], np.ndarray], dict[str, dict[str, int]]]:
    """Per (layer, family) the directions whose top-k grid the direction chose, and how many were left out.

    A dead unit's grid is the first k rows of the data, the same for every such unit and found only among
    units: shown, identical grids would tell raters which items are units, and rate nothing about a direction.
    """
    ratable, left_out = {}, {}
    for layer in layers:
        present = result.families(layer)  # also checks that the layer exists
        missing = [f for f in families if f not in present]
        if missing:
            raise DirscopeError(
                f"layer {layer!r} has no family {missing[0]!r}; it has {', '.join(present)} (choose with --families)"
            )
        for family in families:
            rows = result.rows_of(layer, family)
            keep = ~_top_picked_by_row(result, layer, rows)
            ratable[layer, family] = rows[keep]
            if not keep.all():
                left_out.setdefault(layer, {})[family] = int((~keep).sum())
    return ratable, left_out


def _top_picked_by_row(result: Result, layer: str, directions: np.ndarray) -> np.ndarray:
    """bool per direction: scoring's ``picked_by_row`` of its top-k set."""
    top = result.topk[(result.topk["layer"] == layer) & (result.topk["sign"] == "max")]
    values = top.sort_values(["direction", "rank"]).groupby("direction")["value"].apply(list)
    return picked_by_row(result, layer, directions, np.array([values[d] for d in directions], np.float64))


def _draw_items(
    result: Result,
    layers: list[str],
    families: list[str],
    per_family: int,
    seed: int,
    ratable: dict[tuple[str, str], np.ndarray],
) -> list[dict[str, Any]]:
    items = []
    for layer in layers:
        n = min(per_family, *(len(ratable[layer, f]) for f in families))
        for family in families:
            chosen = numpy_rng(seed, "study", layer, family).choice(ratable[layer, family], n, replace=False)
            items += [{"layer": layer, "direction": int(d), "family": family} for d in sorted(chosen.tolist())]
    order = numpy_rng(seed, "study", "order").permutation(len(items))
    salt = f"{seed}/{result.manifest.get('created', '')}"
    if result.manifest.get("run_id"):  # a random secret, never in the page: seed and timestamp alone are guessable
        salt += f"/{result.manifest['run_id']}"
    return [{"id": _item_id(salt, items[i]), **items[i]} for i in order]


def _item_id(salt: str, item: dict[str, Any]) -> str:
    """An opaque id: nothing in it tells a person the item's family or direction."""
    text = f"{salt}/{item['layer']}/{item['direction']}"
    return "i" + hashlib.sha256(text.encode()).hexdigest()[:10]


def _guess_question(families: list[str]) -> dict[str, Any]:
    names = [_family_word(f) for f in families]
    question = f"Is this {' or '.join('a ' + n for n in names)}?"
    return {"question": question, "options": [[f, n] for f, n in zip(families, names, strict=True)]}


def _family_word(family: str) -> str:
    return {"basis": "unit"}.get(family, f"{family} direction")


# ---- scoring --------------------------------------------------------------------------------------------


def read_key(run_dir: Path) -> dict[str, Any]:
    """The study key of a run directory, or a clear error when there is none."""
    path = run_dir / "study.json"
    if not path.is_file():
        raise DirscopeError(f"{run_dir} has no study.json; run `dirscope study {run_dir}` first")
    try:
        key = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        reason = "it is nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise DirscopeError(f"cannot read {path}: {reason}; run `dirscope study {run_dir}` again") from None
    if not isinstance(key, dict) or key.get("format") != KEY_FORMAT or not _key_is_whole(key):
        raise DirscopeError(f"{path} is not a dirscope study key; run `dirscope study {run_dir}` again")
    return key


def _key_is_whole(key: dict[str, Any]) -> bool:
    """Whether a study key has the types scoring reads (a hand-edited one may not)."""
    items, families = key.get("items"), key.get("families")
    return (
        isinstance(key.get("study"), str)
        and isinstance(key.get("seed"), int)
        and isinstance(families, list)
        and all(isinstance(f, str) for f in families)
        and isinstance(items, list)
        and all(
            isinstance(it, dict)
            and all(isinstance(it.get(f), str) for f in ("id", "layer", "family"))
            and isinstance(it.get("direction"), int)
            for it in items
        )
    )


def read_answers(path: Path, key: dict[str, Any]) -> pd.DataFrame:
    """One person's answers as rows (rater, item, rating, guess), each checked against the key."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DirscopeError(f"cannot read answers file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise DirscopeError(f"answers file {path} is not UTF-8 text; use the file that study.html exports") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise DirscopeError(
            f"answers file {path} is not valid JSON ({exc}); it may be truncated: export it again from study.html"
        ) from None
    except RecursionError:
        raise DirscopeError(f"answers file {path} is nested too deeply; use the file that study.html exports") from None
    if not isinstance(doc, dict) or doc.get("format") != ANSWERS_FORMAT:
        raise DirscopeError(f"{path} is not a dirscope answers file; use the file that study.html exports")
    if doc.get("version") != ANSWERS_VERSION:
        raise DirscopeError(f"{path} has answers format version {doc.get('version')!r}; expected {ANSWERS_VERSION}")
    if doc.get("study") != key["study"]:
        raise DirscopeError(
            f"{path} holds answers for study {doc.get('study')!r}, but this run's study.json is study "
            f"{key['study']!r}; score it against the run directory whose study.html produced it"
        )
    answers = doc.get("answers")
    if not isinstance(answers, list):
        raise DirscopeError(f"{path}: answers must be a list of {{item, rating, guess}}; export again from study.html")
    if not answers:
        raise DirscopeError(f"{path} has no answers; rate some images in study.html and export again")
    families = {it["id"]: it["family"] for it in key["items"]}
    rows, seen = [], set()
    if not isinstance(doc.get("rater") or "", str):
        raise DirscopeError(f"{path}: rater is {doc['rater']!r}; it must be a string (the token study.html gives)")
    rater = str(doc.get("rater") or path.resolve())  # a hand-written file without one: its path, not its name
    for n, answer in enumerate(answers, 1):
        if not isinstance(answer, dict):
            raise DirscopeError(f"{path}: answer {n} is {answer!r}, not an object with item, rating and guess")
        item = answer.get("item")
        if not isinstance(item, str) or item not in families:  # an id is a string: a list is not even hashable
            raise DirscopeError(f"{path}: answer {n} names item {item!r}, which is not part of study {key['study']}")
        if item in seen:
            raise DirscopeError(f"{path}: item {item} is answered twice")
        seen.add(item)
        rating = answer.get("rating")
        if isinstance(rating, bool) or not isinstance(rating, int) or rating not in RATINGS:
            raise DirscopeError(f"{path}: item {item} has rating {rating!r}; ratings must be whole numbers from 1 to 5")
        guess = answer.get("guess")
        if guess is not None and (not key.get("guess") or guess not in key["families"]):
            allowed = ", ".join(key["families"]) if key.get("guess") else "none (this study asks no guess)"
            raise DirscopeError(f"{path}: item {item} has guess {guess!r}; allowed: {allowed}")
        rows.append({"rater": rater, "item": item, "rating": rating, "guess": guess, "family": families[item]})
    return pd.DataFrame(rows)


@writes_run
def score_study(
    run_dir: str | Path, answer_files: Sequence[str | Path], *, n_boot: int = 2000, seed: int | None = None
) -> dict[str, Any]:
    """Merge the answer files of a study, compute its statistics and write study-scores.json."""
    run_dir = Path(run_dir)
    key = read_key(run_dir)
    _check_run(run_dir, key)
    if not answer_files:
        raise DirscopeError("give at least one answers file exported from study.html")
    if n_boot < 1:
        raise DirscopeError(f"--n-boot must be at least 1, got {n_boot}")
    frames, origin = [], {}
    for path in map(Path, answer_files):
        frame = read_answers(path, key)
        rater = frame["rater"].iloc[0]
        if rater in origin:
            raise DirscopeError(
                f"{path} and {origin[rater]} are answers of the same person (rater {rater}); give each once"
            )
        origin[rater] = path
        frames.append(frame)
    answers = pd.concat(frames, ignore_index=True)
    seed = int(key["seed"] if seed is None else seed)
    items = pd.DataFrame(key["items"]).set_index("id")
    per_item = answers.groupby("item", sort=False)["rating"].agg(["mean", "size"])
    per_item = per_item.join(items[["layer", "direction", "family"]])
    scores = {
        "format": SCORES_FORMAT,
        "study": key["study"],
        "raters": list(origin),
        "files": [str(p) for p in origin.values()],
        "n_ratings": len(answers),
        "n_items_rated": len(per_item),
        "n_items": len(items),
        "families": _family_means(per_item, key["families"], seed, n_boot),
        "rank_tests": rank_tests(per_item, key["families"], seed),
        "guesses": guess_accuracy(answers, items["family"]) if key.get("guess") else None,
        "agreement": _agreement(per_item, run_dir),
        "settings": {"seed": seed, "n_boot": n_boot, "confidence": CONFIDENCE, "unit": "mean rating of an item"},
    }
    write_json(run_dir / "study-scores.json", scores)
    return scores


def _family_means(per_item: pd.DataFrame, families: list[str], seed: int, n_boot: int) -> dict[str, Any]:
    out = {}
    for family in families:
        part = per_item[per_item["family"] == family]
        mean, low, high = mean_ci(part["mean"].to_numpy(), rng=numpy_rng(seed, "study-mean", family), n_boot=n_boot)
        out[family] = {
            "mean": json_number(mean, None),
            "ci_low": json_number(low, None),
            "ci_high": json_number(high, None),
            "n_items": len(part),
            "n_ratings": int(part["size"].sum()),
        }
    return out


def rank_tests(per_item: pd.DataFrame, families: list[str], seed: int = 0) -> list[dict[str, Any]]:
    """Two-sided Mann-Whitney U of item mean ratings for every pair of families, Holm-adjusted together."""
    tests = []
    for a, b in itertools.combinations(families, 2):
        x = per_item.loc[per_item["family"] == a, "mean"].to_numpy(np.float64)
        y = per_item.loc[per_item["family"] == b, "mean"].to_numpy(np.float64)
        if x.size and y.size:
            u = float(stats.mannwhitneyu(x, y, alternative="two-sided").statistic)
            p = rank_permutation_p(x, y, numpy_rng(seed, "study-rank", a, b))
        else:
            u, p = math.nan, math.nan
        tests.append(
            {
                "family_a": a,
                "family_b": b,
                "u": json_number(u, None),
                "p_value": json_number(p, None),
                "cliffs_delta": json_number(cliffs_delta(x, y), None),
                "n_a": int(x.size),
                "n_b": int(y.size),
            }
        )
    adjusted = holm(np.array([math.nan if t["p_value"] is None else t["p_value"] for t in tests]))
    for test, p_holm in zip(tests, adjusted, strict=True):
        test["p_holm"] = json_number(p_holm, None)
    return tests


def rank_permutation_p(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> float:
    """Two-sided permutation p of U over the pooled mid-ranks: exact (every split) up to RANK_PERMUTATIONS
    splits, else (b + 1) / (m + 1) of that many seeded ones. Mean ratings tie often, and scipy's exact and
    normal p-values assume no ties (at 4 vs 4 items one gave 0.032 where the exact p is 0.057)."""
    doubled = (2 * stats.rankdata(np.r_[x, y])).astype(np.int64)  # mid-ranks are halves: exact as integers
    n, total = x.size, doubled.size
    centre = n * (total + 1)  # twice the expected rank sum of x; |2R - centre| = 2|U - n_x n_y / 2|
    observed = abs(int(doubled[:n].sum()) - centre)
    if math.comb(total, n) <= RANK_PERMUTATIONS:
        splits = np.array(list(itertools.combinations(range(total), n)), dtype=np.int64).reshape(-1, n)
        return float(np.mean(np.abs(doubled[splits].sum(axis=1) - centre) >= observed))
    hits = 0
    for start in range(0, RANK_PERMUTATIONS, 1000):  # bounded memory for thousands of items
        shuffled = rng.permuted(np.tile(doubled, (min(1000, RANK_PERMUTATIONS - start), 1)), axis=1)
        hits += int(np.sum(np.abs(shuffled[:, :n].sum(axis=1) - centre) >= observed))
    return (hits + 1) / (RANK_PERMUTATIONS + 1)


def guess_accuracy(answers: pd.DataFrame, families: pd.Series) -> dict[str, Any] | None:
    """Share of correct guesses, its Clopper-Pearson 95% CI and a two-sided binomial test against chance.

    ``families`` is the family of every item of the study. Chance is the accuracy of always naming the
    most frequent of them: 1/F when the families are balanced, and never flattering when they are not.
    """
    guessed = answers[answers["guess"].notna()]
    if guessed.empty:
        return None
    n = len(guessed)
    correct = int((guessed["guess"] == guessed["family"]).sum())
    chance = float(families.value_counts().max() / len(families))
    test = stats.binomtest(correct, n, chance, alternative="two-sided")
    ci = test.proportion_ci(confidence_level=CONFIDENCE, method="exact")
    return {
        "n": n,
        "correct": correct,
        "accuracy": json_number(correct / n, None),
        "chance": json_number(chance, None),
        "ci_low": json_number(ci.low, None),
        "ci_high": json_number(ci.high, None),
        "p_value": json_number(test.pvalue, None),
    }


def _agreement(per_item: pd.DataFrame, run_dir: Path) -> dict[str, Any]:
    """Spearman correlation of item mean ratings with each automatic score of the same direction."""
    path = run_dir / "scores.parquet"
    if not path.is_file():
        return {"computed": False, "note": f"not computed: no scores.parquet; run `dirscope score {run_dir}`"}
    table = pd.read_parquet(path)
    table = table[table["sign"].isin(["max", "all"])]
    rows = []
    for (metric, sign), part in table.groupby(["metric", "sign"], sort=False):
        score = part.set_index(["layer", "direction"])["score"]
        joined = pd.Series(list(zip(per_item["layer"], per_item["direction"], strict=True))).map(score)
        rows.append(
            {"metric": str(metric), "sign": str(sign), **spearman(per_item["mean"].to_numpy(), joined.to_numpy())}
        )
    return {"computed": True, "note": "", "metrics": rows}


def spearman(ratings: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """Spearman's rho and its p over the pairs where both are finite; None when fewer than 3 or constant."""
    x, y = np.asarray(ratings, np.float64), np.asarray(scores, np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    n = int(keep.sum())
    if n < 3 or np.ptp(x[keep]) == 0 or np.ptp(y[keep]) == 0:
        return {"rho": None, "p_value": None, "n": n}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = stats.spearmanr(x[keep], y[keep])
    return {"rho": json_number(result.statistic, None), "p_value": json_number(result.pvalue, None), "n": n}


def summary_lines(scores: dict[str, Any]) -> list[str]:
    """The printed result of ``dirscope study score``."""
    lines = [
        f"study {scores['study']}: {len(scores['raters'])} rater(s), {scores['n_ratings']} ratings of "
        f"{scores['n_items_rated']} of {scores['n_items']} items",
        "mean rating (1-5) per family, 95% bootstrap CI over items:",
    ]
    for family, m in scores["families"].items():
        lines.append(
            f"  {family:<12} {_num(m['mean'])} [{_num(m['ci_low'])}, {_num(m['ci_high'])}]"
            f"  ({m['n_items']} items, {m['n_ratings']} ratings)"
        )
    for t in scores["rank_tests"]:
        lines.append(
            f"rank test (Mann-Whitney U, item means): {t['family_a']} vs {t['family_b']}: U = {_num(t['u'], 1)}, "
            f"p = {_num(t['p_value'], 3)}, p_holm = {_num(t['p_holm'], 3)}, Cliff's delta {_num(t['cliffs_delta'])}"
        )
    g = scores["guesses"]
    if g is None:
        lines.append("guesses: none given")
    else:
        lines.append(
            f"guesses: {g['correct']} of {g['n']} correct ({_pct(g['accuracy'])}), chance {_pct(g['chance'])}, "
            f"95% CI [{_pct(g['ci_low'])}, {_pct(g['ci_high'])}], binomial p = {_num(g['p_value'], 3)}"
        )
    agreement = scores["agreement"]
    if not agreement["computed"]:
        lines.append(f"agreement with automatic scores: {agreement['note']}")
    else:
        lines.append("agreement with automatic scores (Spearman rho over items):")
        for row in agreement["metrics"]:
            where = "" if row["sign"] == "all" else f" ({'top-k' if row['sign'] == 'max' else row['sign']})"
            lines.append(
                f"  {row['metric']}{where}: rho = {_num(row['rho'])}, p = {_num(row['p_value'], 3)}, n = {row['n']}"
            )
    return lines


def _num(value: float | None, places: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{places}f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"
