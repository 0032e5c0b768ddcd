"""Coherence scores of every direction's top-k and bottom-k sets, each against its null model.

The pool is every row named by the run's top-k lists plus its null sample. Each metric scores all sets
of a layer at once; its null is the same score over random k-subsets of the rows the sets were drawn from,
the layer's rows with finite activations (exact class counts for label metrics, the null sample otherwise,
each less the rows the layer excluded as NaN/inf). Label-free statistics come from the run's tables.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from .errors import DirscopeError
from .metrics import (
    METRICS,
    Metric,
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
from .result import Result
from .seeding import numpy_rng
from .specs import suggest

SIGNS = ("max", "min")
LABEL_FREE = ("kurtosis", "zero_fraction", "near_zero_fraction", "selectivity")
# Orientation of the label-free statistics: which end marks a privileged, unit-like direction.
LABEL_FREE_HIGHER = {"kurtosis": True, "zero_fraction": True, "near_zero_fraction": True, "selectivity": True}
COLUMNS = ["layer", "direction", "family", "sign", "metric", "score", "z", "percentile", "degenerate"]


@dataclass
class Scores:
    """The long scores table and what scoring could not do.

    ``table`` has one row per (layer, direction, sign, metric): ``sign`` is ``max``/``min`` for the top-k/
    bottom-k set, ``all`` for whole-dataset statistics; ``z`` and ``percentile`` place the score in its null
    (NaN where there is none); ``degenerate`` marks sets picked by dataset index rather than by the
    direction (k values all tied, some but not all of its exact zeros, or a constant direction).
    """

    table: pd.DataFrame
    higher_is_better: dict[str, bool]
    kinds: dict[str, str]  # metric -> "coherence" or "basis-statistic"
    references: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


@dataclass
class Pool:
    """Rows the sets draw from: every top-k/bottom-k row plus the null sample, with what metrics read."""

    rows: np.ndarray  # sorted dataset indices
    null_positions: np.ndarray
    data: dict[str, np.ndarray] = field(default_factory=dict)

    def positions(self, indices: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.rows, indices)

    def population(
        self, keys: Sequence[str], constants: Sequence[str] = (), positions: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """The null population's ``keys`` (at ``positions``, default the whole null sample) and ``constants``."""
        at = self.null_positions if positions is None else positions
        out = {key: self.data[key][at] for key in keys}
        out.update({key: self.data[key] for key in constants})
        return out


@dataclass(frozen=True)
class LayerNull:
    """A layer's null population: its sets were drawn from its rows with finite activations only, so the null
    sample less the rows it excluded as NaN/inf, and the label counts less theirs.

    The tags name what was left out ("" for nothing, as in every run without NaN/inf): they key the NullCache,
    so layers share a null exactly when they share its population.
    """

    positions: np.ndarray  # pool positions of the null-sample rows finite at the layer
    counts: dict[int, int] | None
    rows_tag: str = ""
    counts_tag: str = ""


def score_run(
    result: Result,
    *,
    metrics: Sequence[str] | None = None,
    references: Sequence[str] | None = None,
    data: object = None,
    null_draws: int = 2000,
    seed: int | None = None,
    device: str = "cpu",
) -> Scores:
    """Score every set of a run. ``references`` default to the pixel baseline plus, for built-in models,
    an independent reference network; ``data`` overrides the manifest's data spec for reference inputs."""
    from .references import default_references

    seed = int(result.manifest["config"]["seed"] if seed is None else seed)
    wanted = list(metrics) if metrics is not None else METRICS.names()
    check_metric_names(wanted)
    refs = list(references) if references is not None else default_references(result.manifest["model"]["spec"])
    _check_data_spec(data)
    pool = _pool(result)
    notices: list[str] = []
    if metrics is None:  # by default, metrics that need larger sets than the run kept are skipped, not fatal
        wanted = _fitting_k(wanted, int(result.manifest["config"]["k"]), notices)
    scored = _gather_pool_data(result, pool, wanted, refs, data, device, notices, strict=references is not None)
    if metrics is None:  # likewise a null sample smaller than k: the label metrics can still be scored
        scored = _fitting_null(scored, len(result.null), int(result.manifest["config"]["k"]), notices)
    frames, higher, kinds = [], {}, {}
    cache = NullCache()
    nulls = layer_nulls(result, pool)
    for label, metric in scored:
        frames.append(_score_metric(result, pool, label, metric, nulls, null_draws, seed, cache))
        higher[label], kinds[label] = metric.higher_is_better, "coherence"
    stats = [name for name in wanted if name in LABEL_FREE] if metrics is not None else list(LABEL_FREE)
    if stats:
        frames.append(_label_free(result, stats))
        higher.update({s: LABEL_FREE_HIGHER[s] for s in stats})
        kinds.update(dict.fromkeys(stats, "basis-statistic"))
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    return Scores(table[COLUMNS], higher, kinds, [label for label, _ in scored if ":" in label], notices)


def _pool(result: Result) -> Pool:
    if result.null.empty:
        raise DirscopeError("the run has no null sample (null.parquet is empty); run it again with --null-sample > 0")
    null_rows = result.null["index"].to_numpy(np.int64)
    rows = np.unique(np.concatenate([result.topk["index"].to_numpy(np.int64), null_rows]))
    pool = Pool(rows, np.searchsorted(rows, null_rows))
    labels = pd.concat([result.topk[["index", "label"]], result.null]).drop_duplicates("index").set_index("index")
    pool.data["labels"] = labels["label"].reindex(rows).fillna(-1).to_numpy(np.int64)
    return pool


def _gather_pool_data(
    result: Result,
    pool: Pool,
    wanted: list[str],
    refs: list[str],
    data: object,
    device: str,
    notices: list[str],
    strict: bool,
) -> list[tuple[str, Metric]]:
    """Fill the pool with what the wanted metrics read; returns (label, metric) pairs that can run.

    A default reference that cannot run is skipped with a notice; one the user named (``strict``), or a model
    reference reading the ``data`` the user named, fails: a typo there must not quietly drop a score.
    """
    from .references import HOG, PIXELS, hog_embeddings, model_embeddings, pixel_embeddings

    scored: list[tuple[str, Metric]] = []
    for name in wanted:
        if name in LABEL_FREE:
            continue
        metric = get_metric(name)
        if "label_similarity" in metric.constants:
            scored.extend(_wordnet_scored(result, pool, name, metric, data, device, notices))
        elif "labels" in metric.needs:
            if result.manifest["data"].get("label_counts") is None:
                notices.append(f"{name}: skipped, the data has no labels")
                continue
            scored.append((name, metric))
        elif "embeddings" in metric.needs:
            for ref in refs:
                key = f"embeddings:{ref}"
                try:
                    if ref == PIXELS:
                        pool.data[key] = pixel_embeddings(result.images, pool.rows)
                    elif ref == HOG:
                        pool.data[key] = hog_embeddings(result.images, pool.rows)
                    else:
                        pool.data[key] = model_embeddings(ref, pool.rows, _data_for(result, data), device)
                except DirscopeError as exc:
                    if strict or (data is not None and ref not in (PIXELS, HOG)):  # it read data the user named
                        raise DirscopeError(f"reference {ref!r}: {exc}") from None
                    notices.append(f"{name}:{ref}: skipped, {exc}")
                    continue
                scored.append((f"{name}:{ref}", _renamed(metric, {"embeddings": key})))
        elif "attributes" in metric.needs:
            try:
                attrs = glyph_attributes([result.images[int(r)] for r in pool.rows])
            except (NotGlyphImages, KeyError) as exc:
                reason = "the run has no images (glyph attributes need them)" if isinstance(exc, KeyError) else str(exc)
                notices.append(f"{name}: skipped, {reason}")
                continue
            pool.data["attributes"] = attrs
            pool.data["attribute_std"] = reference_std(attrs[pool.null_positions])
            scored.append((name, metric))
        else:
            notices.append(f"{name}: skipped, dirscope cannot gather {', '.join(metric.needs)} for it")
    return scored


def check_metric_names(names: Sequence[str]) -> None:
    """Unknown metric names fail before any work, listing every name that is accepted."""
    known = [*METRICS.names(), *LABEL_FREE]
    for name in names:
        if name not in known:
            raise DirscopeError(f"unknown metric {name!r}{suggest(name, known)} (known: {', '.join(known)})")


def _fitting_k(names: list[str], k: int, notices: list[str]) -> list[str]:
    """The metrics that can score sets of ``k`` examples; a notice for each of the others."""
    fit = []
    for name in names:
        min_k = 1 if name in LABEL_FREE else get_metric(name).min_k
        if k >= min_k:
            fit.append(name)
        else:
            notices.append(f"{name}: skipped, it needs sets of at least {min_k} examples and the run kept k={k}")
    return fit


def _fitting_null(scored: list[tuple[str, Metric]], size: int, k: int, notices: list[str]) -> list[tuple[str, Metric]]:
    """The metrics whose null can draw k-sets: those drawing from the null sample need ``size >= k``."""
    if size >= k:
        return scored
    for label, metric in scored:
        if metric.null == "pool":
            notices.append(
                f"{label}: skipped, its null draws sets of k={k} from the null sample and the run kept {size} rows; "
                f"run again with --null-sample {k} or more"
            )
    return [(label, metric) for label, metric in scored if metric.null != "pool"]


def _check_data_spec(data: object) -> None:
    """A data spec the user gave names a known source, checked before any scoring (loading comes later)."""
    if isinstance(data, str):
        from .data import DATA

        DATA.entry(data)


def _data_for(result: Result, data: object) -> object:
    """The data a reference model or the run's model reads for the pool rows: ``data``, else the run's own
    spec, checked to be the data the run scanned (see ``_same_data``). A spec stays a spec, so that each
    model loads it with its own preprocessing; a Python object is wrapped once."""
    if data is None:
        spec = result.manifest["data"].get("spec", "")
        if not spec or spec.startswith("<"):
            raise DirscopeError("the run's data was a Python object; pass data= to score with a reference model")
        data = spec
    source = _same_data(result, data)
    return data if isinstance(data, str) else source


def _same_data(result: Result, data: object) -> object:
    """``data`` as a DataSource (loaded without preprocessing: size and files do not depend on it), refused
    when its size or its files differ from what the run recorded: its row i is not the run's row i, so it
    would fail on a missing row or, worse, give embeddings of other images without a word."""
    from .data import load_data

    source = load_data(data)
    recorded = result.manifest["data"]
    run_spec = recorded.get("spec")
    given = f"the run's data {run_spec!r}" if isinstance(data, str) and data == run_spec else f"data {source.spec!r}"
    fix = "pass --data (data= in Python) with the data the run scanned"
    if None not in (source.size, recorded.get("size")) and source.size != recorded["size"]:
        raise DirscopeError(f"{given} has {source.size} examples but the run scanned {recorded['size']}; {fix}")
    if recorded.get("content") is not None and source.describe().get("content") != recorded["content"]:
        raise DirscopeError(
            f"{given} is not the version of {run_spec!r} the run scanned (its files' name, size, modification "
            f"time or digest differ), so its rows would not be the run's; {fix} (a copy made with `cp -p`, "
            "under the same file name, keeps its identity)"
        )
    return source


def _renamed(metric: Metric, keys: dict[str, str], null: str | None = None) -> Metric:
    """The same metric reading pool key ``keys[old]`` for each ``old`` (e.g. one embedding per reference)."""
    score_sets = metric.score_sets

    def score(sets: np.ndarray, pool: dict[str, np.ndarray]) -> np.ndarray:
        return score_sets(sets, {**pool, **{old: pool[new] for old, new in keys.items()}})

    return replace(
        metric,
        needs=tuple(keys.get(n, n) for n in metric.needs),
        constants=tuple(keys.get(c, c) for c in metric.constants),
        score_sets=score,
        null=null or metric.null,
    )


def _wordnet_scored(
    result: Result, pool: Pool, name: str, metric: Metric, data: object, device: str, notices: list[str]
) -> list[tuple[str, Metric]]:
    """WordNet similarity on the true labels when they name synsets, else on the run model's predictions."""
    from .metrics.wordnet import label_similarity

    data_info = result.manifest["data"]
    if data_info.get("label_counts") is None:
        why = "the data has no labels"
    else:
        try:
            pool.data["label_similarity"] = label_similarity(data_info.get("label_names") or [])
            return [(name, metric)]
        except DirscopeError as exc:
            why = str(exc)
    try:
        predicted, similarity = _predicted_classes(result, pool, data, device)
    except DirscopeError as exc:
        notices.append(f"{name}: skipped, {why}, and there are no model predictions to use ({exc})")
        return []
    pool.data["labels:predicted"], pool.data["label_similarity:predicted"] = predicted, similarity
    notices.append(f"{name}: scored on the model's own top-1 predictions, as {name}:predicted ({why})")
    keys = {"labels": "labels:predicted", "label_similarity": "label_similarity:predicted"}
    return [(f"{name}:predicted", _renamed(metric, keys, null="pool"))]


def _predicted_classes(result: Result, pool: Pool, data: object, device: str) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 ImageNet classes of the pool rows, renumbered over the classes that occur, with their
    WordNet similarity matrix (only those classes: a full 1,000-class matrix takes seconds)."""
    from .metrics.wordnet import label_similarity
    from .models import imagenet_classes
    from .predictions import run_model, top1_predictions

    loaded = run_model(result.manifest["model"], device)
    classes = top1_predictions(loaded, pool.rows, _data_for(result, data), device)
    present, compact = np.unique(classes, return_inverse=True)
    wnids = imagenet_classes().wnids
    return compact.astype(np.int64), label_similarity([wnids[c] for c in present])


def _label_counts(result: Result) -> dict[int, int] | None:
    counts = result.manifest["data"].get("label_counts")
    return {int(k): int(v) for k, v in counts.items()} if counts else None


def layer_nulls(result: Result, pool: Pool) -> dict[str, LayerNull]:
    """Each layer's null population, from its manifest entry (runs made before these keys: nothing left out)."""
    counts = _label_counts(result)
    nulls = {}
    for layer in result.manifest["layers"]:
        rows = np.asarray(layer.get("excluded_null_rows") or [], np.int64)
        less = {int(c): int(n) for c, n in (layer.get("excluded_label_counts") or {}).items()}
        null = LayerNull(pool.null_positions, counts)
        if rows.size:
            keep = ~np.isin(pool.rows[pool.null_positions], rows)
            null = replace(null, positions=pool.null_positions[keep], rows_tag=f"/excluding:{_digest(rows.tolist())}")
        if less and counts is not None:
            finite = {c: n - less.get(c, 0) for c, n in counts.items()}
            null = replace(null, counts=finite, counts_tag=f"/excluding:{_digest(sorted(less.items()))}")
        nulls[layer["name"]] = null
    return nulls


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:16]


def _score_metric(
    result: Result,
    pool: Pool,
    label: str,
    metric: Metric,
    nulls: dict[str, LayerNull],
    draws: int,
    seed: int,
    cache: NullCache,
) -> pd.DataFrame:
    frames = []
    for (layer, sign), group in result.topk.groupby(["layer", "sign"], sort=False):
        group = group.sort_values(["direction", "rank"])
        directions = group["direction"].to_numpy()[:: _k_of(group)]
        k = _k_of(group)
        sets = pool.positions(group["index"].to_numpy(np.int64)).reshape(-1, k)
        values = group["value"].to_numpy().reshape(-1, k)
        scores = _masked_scores(metric, sets, pool)
        null = _null(metric, label, k, pool, nulls[str(layer)], draws, seed, cache)
        z, pct = against_null(scores, null)
        frames.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "direction": directions,
                    "family": group["family"].to_numpy()[::k],
                    "sign": sign,
                    "metric": label,
                    "score": scores,
                    "z": z,
                    "percentile": pct,
                    "degenerate": picked_by_row(result, str(layer), directions, values),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def picked_by_row(result: Result, layer: str, directions: np.ndarray, values: np.ndarray) -> np.ndarray:
    """bool [M]: the sets (``values`` [M, k] of ``directions``) that the dataset index picked, not the direction:
    ``metrics.degenerate`` given each direction's zeros, or a constant direction. Scoring leaves them out, and
    the study does not show them."""
    return degenerate(values, _zeros(result, layer, directions)) | _constant(result, layer, directions)


def _zeros(result: Result, layer: str, directions: np.ndarray) -> np.ndarray:
    """Each direction's exact zeros over the data, from the run's stats."""
    stats = result.stats[result.stats["layer"] == layer].set_index("direction")["zeros"]
    return stats.reindex(directions).to_numpy(np.int64)


def _constant(result: Result, layer: str, directions: np.ndarray) -> np.ndarray:
    """Directions with one value over the data (min == max): their sets are picked by index, which a tie
    within the set cannot show at k = 1."""
    stats = result.stats[result.stats["layer"] == layer].set_index("direction")
    return (stats["min"] == stats["max"]).reindex(directions, fill_value=False).to_numpy(bool)


def _k_of(group: pd.DataFrame) -> int:
    return int(group["rank"].max()) + 1


def _masked_scores(metric: Metric, sets: np.ndarray, pool: Pool) -> np.ndarray:
    """Scores, NaN for sets holding a row the metric cannot read (an unlabelled example)."""
    usable = np.ones(len(sets), bool)
    if "labels" in metric.needs:
        usable = (pool.data["labels"][sets] >= 0).all(axis=1)
    out = np.full(len(sets), np.nan)
    if usable.any():
        out[usable] = metric.score(sets[usable], pool.data)
    return out


def _null(
    metric: Metric,
    label: str,
    k: int,
    pool: Pool,
    layer: LayerNull,
    draws: int,
    seed: int,
    cache: NullCache,
) -> NullSummary:
    """The null of ``metric`` at ``k`` over the layer's finite rows (see LayerNull)."""
    by_pool = metric.null == "pool"
    population = pool.population(metric.needs if by_pool else (), metric.constants, layer.positions)
    return null_summary(
        metric,
        k,
        numpy_rng(seed, "null", label, str(k)),
        population=population,
        label_counts=layer.counts,
        draws=draws,
        cache=cache,
        fingerprint=f"{label}/{k}{layer.rows_tag if by_pool else layer.counts_tag}",
    )


def _label_free(result: Result, names: Sequence[str]) -> pd.DataFrame:
    per_direction = direction_statistics(result.stats, result.topk)
    frames = []
    for name in names:
        frames.append(
            pd.DataFrame(
                {
                    "layer": per_direction["layer"],
                    "direction": per_direction["direction"],
                    "family": per_direction["family"],
                    "sign": "max" if name == "selectivity" else "all",
                    "metric": name,
                    "score": per_direction[name].to_numpy(np.float64),
                    "z": np.nan,
                    "percentile": np.nan,
                    "degenerate": ~np.isfinite(per_direction[name].to_numpy(np.float64)),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)
