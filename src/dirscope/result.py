"""The in-memory form of a run directory: tables of top-k rows, statistics and directions, plus example images."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .errors import DirscopeError
from .examples import ExampleImages
from .jsoncheck import Rule, first_problem, is_int, list_of

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .directions import DirectionSet
    from .tally import TallyResult

SIGNS = ("max", "min")


class Result:
    """What a run found. Tables are pandas DataFrames whose columns are the run directory's format.

    ``topk``: layer, direction, family, sign, rank, index, value, label, label_name.
    ``stats``: one row per layer and direction with count, mean, std, var, skew, kurtosis, min, max,
    zeros, zero_fraction and an exact histogram (hist_start, hist_width, hist_counts).
    ``directions``: layer, direction, family, member, unit, spec; ``vectors(layer)`` gives the [K, D] matrix.
    ``null``: index, label of a seeded uniform sample of the scanned rows, the population scores compare with.
    ``images``: display images by dataset index, for every row in ``topk`` and ``null`` (when image-like);
    read lazily from the run directory's ``examples.parquet`` when the result has one.
    """

    def __init__(
        self,
        manifest: dict[str, Any],
        topk: pd.DataFrame,
        stats: pd.DataFrame,
        directions: pd.DataFrame,
        vectors: Mapping[str, np.ndarray],
        images: Mapping[int, np.ndarray] | None = None,
        null: pd.DataFrame | None = None,
        path: Path | None = None,
    ) -> None:
        self.manifest = manifest
        self.topk = topk
        self.stats = stats
        self.directions = directions
        self._vectors = dict(vectors)
        self.images = images if isinstance(images, ExampleImages) else dict(images or {})
        self.verdict = None  # set by score(): a dirscope.verdict.Verdict
        self.scores: pd.DataFrame | None = None
        self.null = (
            null if null is not None else pd.DataFrame({"index": pd.array([], "int64"), "label": pd.array([], "Int64")})
        )
        self.path = path

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def from_tallies(
        cls,
        manifest: dict[str, Any],
        directions: Mapping[str, DirectionSet],
        tallies: Mapping[str, TallyResult],
        indices: np.ndarray,
        labels: np.ndarray | None,
        label_names: Sequence[str] | None,
        images: Mapping[int, np.ndarray] | None,
        null_rows: np.ndarray | None = None,
    ) -> Result:
        """Assemble the tables from finished tallies; labels are given for ``indices``, images by index."""
        lookup = (indices, labels) if labels is not None else None
        topk = pd.concat(
            [_topk_table(layer, directions[layer], t, lookup, label_names) for layer, t in tallies.items()],
            ignore_index=True,
        )
        stats = pd.concat(
            [_stats_table(layer, directions[layer], t) for layer, t in tallies.items()], ignore_index=True
        )
        meta = pd.DataFrame(
            [{"layer": layer, **rec} for layer, d in directions.items() for rec in d.to_records()]
        ).astype({"direction": "int64", "member": "int64", "unit": "int64"})
        vectors = {layer: d.vectors for layer, d in directions.items()}
        rows = np.asarray(null_rows if null_rows is not None else [], np.int64)
        null = pd.DataFrame({"index": rows, "label": _labels_of(rows, lookup)})
        return cls(manifest, topk, stats, meta, vectors, images, null)

    @classmethod
    def load(cls, path: str | Path) -> Result:
        """Read a run directory written by ``dirscope run`` or ``Result.save``."""
        from .rundir import read_run

        return read_run(Path(path))

    def save(self, path: str | Path, overwrite: bool = False, figures: bool = True) -> Path:
        """Write this result as a run directory, with its scores, verdict and their plots once it is scored."""
        from .rundir import lock_out, prepare_out, write_run

        with lock_out(path):
            out = prepare_out(path, overwrite)
            write_run(self, out, figures=figures)
            if self.verdict is not None and self.scores is not None:
                from .assess import write_scoring

                write_scoring(self, plots=figures)
        return out

    # ---- queries ------------------------------------------------------------------------------------
    @property
    def layers(self) -> list[str]:
        return [layer["name"] for layer in self.manifest["layers"]]

    def families(self, layer: str) -> list[str]:
        self._check_layer(layer)
        return list(dict.fromkeys(self.directions.loc[self.directions.layer == layer, "family"]))

    def vectors(self, layer: str) -> np.ndarray:
        """Direction matrix [K, D] of a layer; row i is direction i."""
        self._check_layer(layer)
        return self._vectors[layer]

    def examples(self, layer: str, direction: int, sign: str = "max") -> pd.DataFrame:
        """The top (``max``) or bottom (``min``) examples of one direction, most extreme first."""
        self._check_layer(layer)
        if sign not in SIGNS:
            raise DirscopeError(f"sign must be 'max' or 'min', got {sign!r}")
        rows = self.topk[(self.topk.layer == layer) & (self.topk.direction == direction) & (self.topk.sign == sign)]
        if rows.empty:
            raise DirscopeError(f"layer {layer!r} has no direction {direction}")
        return rows.sort_values("rank").reset_index(drop=True)

    def rows_of(self, layer: str, family: str) -> np.ndarray:
        """Direction ids of one family at a layer; an unknown layer or family is an error, not an empty set."""
        if family not in self.families(layer):
            raise DirscopeError(f"layer {layer!r} has no family {family!r}; it has {', '.join(self.families(layer))}")
        meta = self.directions
        return meta.loc[(meta.layer == layer) & (meta.family == family), "direction"].to_numpy()

    def _check_layer(self, layer: str) -> None:
        if layer not in self.layers:
            raise DirscopeError(f"this run has no layer {layer!r}; it has {', '.join(self.layers)}")

    def score(self, **options: Any):
        """Scores against null models and the family comparisons; see ``dirscope.assess.assess``."""
        from .assess import assess

        return assess(self, **options)

    # ---- pictures -----------------------------------------------------------------------------------
    def figure(
        self,
        layer: str,
        family: str | None = None,
        directions: Sequence[int] | None = None,
        n: int = 8,
        sign: str = "max",
    ) -> Figure:
        """A Szegedy-style grid: one row per direction, its top (or bottom) examples left to right.

        ``family`` (default: the layer's first) gives a seeded sample of ``n`` of its directions, or with
        ``directions`` those ids, which must be the family's (without ``family``: the family they belong to).
        """
        from .figures import family_figure

        return family_figure(self, layer, family=family, directions=directions, n=n, sign=sign)

    def _repr_html_(self) -> str:
        from .figures import side_by_side_figure, to_png

        parts = [
            f"<p><b>dirscope run</b>: model <code>{html.escape(self.manifest['model']['spec'])}</code>, "
            f"data <code>{html.escape(str(self.manifest['data'].get('spec')))}</code>, "
            f"k={self.manifest['config']['k']}</p>"
        ]
        for layer in self.layers:
            parts.append(f"<p><b>{html.escape(layer)}</b></p>")
            if self.images:
                png = base64.b64encode(to_png(side_by_side_figure(self, layer, n=4))).decode()
                parts.append(f"<img src='data:image/png;base64,{png}' style='max-width:100%'/>")
            if self.verdict is not None:
                parts.append(f"<p>verdict: {html.escape(self.verdict.conclusions.get(layer, ''))}</p>")
        parts.append(
            self.stats.groupby(["layer", "family"], sort=False)[["kurtosis", "zero_fraction"]]
            .mean()
            .to_html(float_format="%.3f")
        )
        return "\n".join(parts)

    def __repr__(self) -> str:
        counts = self.directions.groupby("layer", sort=False).size().to_dict()
        where = f" at {self.path}" if self.path else ""
        return f"<dirscope Result{where}: layers {counts}, k={self.manifest['config']['k']}>"


def _topk_table(
    layer: str,
    dirs: DirectionSet,
    t: TallyResult,
    lookup: tuple[np.ndarray, np.ndarray] | None,
    label_names: Sequence[str] | None,
) -> pd.DataFrame:
    n_dirs, kept = t.top_indices.shape
    frames = []
    for sign, values, indices in (
        ("max", t.top_values, t.top_indices),
        ("min", t.bottom_values, t.bottom_indices),
    ):
        flat_idx = indices.ravel()
        labels = _labels_of(flat_idx, lookup)
        frames.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "direction": np.repeat(np.arange(n_dirs, dtype=np.int64), kept),
                    "family": np.repeat(np.asarray(dirs.family, dtype=object), kept),
                    "sign": sign,
                    "rank": np.tile(np.arange(kept, dtype=np.int64), n_dirs),
                    "index": flat_idx.astype(np.int64),
                    "value": values.ravel().astype(np.float32),
                    "label": labels,
                    "label_name": _names(labels, label_names),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _labels_of(rows: np.ndarray, lookup: tuple[np.ndarray, np.ndarray] | None) -> pd.arrays.IntegerArray:
    """Labels of dataset rows from (sorted indices, their labels); -1 and absent labels become NA."""
    if lookup is None:
        return pd.arrays.IntegerArray(np.zeros(rows.size, np.int64), np.ones(rows.size, np.bool_))  # all NA
    indices, labels = lookup
    found = np.asarray(labels, dtype=np.int64)[np.searchsorted(indices, rows)]
    return pd.arrays.IntegerArray(found, found < 0)


def _names(labels: pd.api.extensions.ExtensionArray, label_names: Sequence[str] | None) -> pd.Series:
    if not label_names:
        return pd.Series(np.full(len(labels), None, dtype=object), dtype="string")
    codes = np.asarray(labels.to_numpy(dtype=np.int64, na_value=-1))
    known = (codes >= 0) & (codes < len(label_names))
    names = np.asarray(label_names, dtype=object)[np.where(known, codes, 0)]
    return pd.Series(np.where(known, names, None), dtype="string")  # one vectorised lookup: K*2k rows


def _stats_table(layer: str, dirs: DirectionSet, t: TallyResult) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "layer": layer,
            "direction": np.arange(len(dirs), dtype=np.int64),
            "family": np.asarray(dirs.family, dtype=object),
            "count": np.int64(t.count),
            "mean": t.mean,
            "std": np.sqrt(t.var),
            "var": t.var,
            "skew": t.skew,
            "kurtosis": t.kurtosis,
            "min": t.min,
            "max": t.max,
            "zeros": t.zeros,
            "zero_fraction": t.zeros / t.count,
            "hist_start": t.hist_start,
            "hist_width": t.hist_width,
            "hist_counts": list(t.hist_counts),
        }
    )


def manifest_problem(manifest: Any) -> str | None:
    """What makes a run's manifest unusable, as "KEY must be ...", or None when every key that dirscope reads
    has its type. Checked once where a run is read, so a hand-edited manifest is one line there rather than a
    traceback in whichever command reads the damaged key."""
    if not isinstance(manifest, dict):
        return "it must hold a JSON object"
    for key in ("model", "data", "config"):
        if not isinstance(manifest.get(key), dict):
            return f"{key} must be an object"
    model, data, config = manifest["model"], manifest["data"], manifest["config"]
    rules: list[Rule] = [
        ("model.spec", isinstance(model.get("spec"), str), "a string"),
        ("data.spec", isinstance(data.get("spec", ""), str), "a string"),
        ("data.size", data.get("size") is None or is_int(data["size"], 0), "an integer or null"),
        ("data.label_names", list_of(_or_empty(data.get("label_names")), str), "a list of strings or null"),
        ("data.label_counts", _counts(data.get("label_counts")), "an object of integer counts by class or null"),
        ("data.content", isinstance(data.get("content"), (dict, type(None))), "an object or null"),
        ("config.seed", is_int(config.get("seed")), "an integer"),
        ("config.k", is_int(config.get("k"), 1), "a positive integer"),
        ("layers", isinstance(manifest.get("layers"), list) and bool(manifest["layers"]), "a non-empty list"),
        ("n", isinstance(manifest.get("n"), dict), "an object"),
        ("figures", list_of(manifest.get("figures", []), str), "a list of strings"),
        ("versions", isinstance(manifest.get("versions", {}), dict), "an object"),
        ("run_id", isinstance(manifest.get("run_id", ""), str), "a string"),
        ("created", isinstance(manifest.get("created", ""), str), "a string"),
    ]
    names: set[str] = set()
    for i, layer in enumerate(manifest["layers"] if isinstance(manifest.get("layers"), list) else []):
        rules += _layer_rules(f"layers[{i}]", layer, names)
        if isinstance(layer, dict) and isinstance(layer.get("name"), str):
            name = layer["name"]
            rules.append((f"n.{name}", is_int(manifest.get("n", {}).get(name), 0), "an integer (examples scanned)"))
    return first_problem(rules)


def _layer_rules(where: str, layer: Any, names: set[str]) -> list[Rule]:
    """The rules of one manifest layer; its name is added to ``names``, which a later layer must not repeat."""
    if not isinstance(layer, dict):
        return [(where, False, "an object")]
    name, file = layer.get("name"), layer.get("directions_file")
    fresh = isinstance(name, str) and name not in names
    if isinstance(name, str):
        names.add(name)
    inside = isinstance(file, str) and len(Path(file).parts) == 2 and file == f"directions/{Path(file).name}"
    return [
        (f"{where}.name", isinstance(name, str) and bool(name) and fresh, "a non-empty string, unique"),
        (f"{where}.directions_file", inside and file.endswith(".npy"), "a file in directions/ (directions/NAME.npy)"),
        (f"{where}.dim", is_int(layer.get("dim"), 1), "a positive integer"),
        (f"{where}.shape", list_of(layer.get("shape", []), int), "a list of integers"),
        (f"{where}.excluded_null_rows", list_of(_or_empty(layer.get("excluded_null_rows")), int), "a list or null"),
        (f"{where}.excluded_label_counts", _counts(layer.get("excluded_label_counts")), "an object or null"),
    ]


def _or_empty(value: Any) -> Any:
    return [] if value is None else value


def _counts(value: Any) -> bool:
    """None, or {"CLASS": COUNT} with integer class keys and counts, as the engine writes label counts."""
    return value is None or (
        isinstance(value, dict) and all(k.lstrip("-").isdigit() and is_int(v, 0) for k, v in value.items())
    )
