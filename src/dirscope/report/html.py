"""``dirscope report``: one report.html per run directory.

The page holds the run's tables as one JSON block (example images once each, as base64 PNG straight from
examples.parquet; in a folder beside the page when there are too many) and builds the direction cards of the
visible page only, so a run with 10,000 directions opens as fast as one with ten.

Example values, statistics and scores go into the JSON exactly (float32 values in the fewest digits that read
back to the same float32, at most 9), because the page tests ties and sorts on them; it rounds only for display.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..atomic import write_text
from ..errors import DirscopeError
from ..figures import FIGURE_ROWS, pick_directions, title_of
from ..result import Result
from ..rundir import read_run, run_owning, writes_run
from .page import image_sources, is_page, json_number, remove_image_folder, render_page, write_image_folder

STAT_COLUMNS = ("mean", "std", "skew", "kurtosis", "min", "max", "zero_fraction")
EMBED_BYTES = 64 << 20  # example PNGs a report embeds; more would make a page browsers open slowly, or not at all
_SIGN_NAMES = {"max": "top-k", "min": "bottom-k"}


@writes_run
def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of a run directory (default ``RUN_DIR/report.html``) and return its path.

    Example images are embedded up to ``EMBED_BYTES`` of PNG; beyond that (ImageNet-sized runs hold up to
    K x 2k thumbnails) they go to a folder beside the report, ``<name>_images/``, which travels with it.
    """
    run_dir = Path(run_dir)
    result = read_run(run_dir)
    target = Path(out) if out is not None else run_dir / "report.html"
    if out is not None:
        _check_target(target)
    own_images = result.images.png_size() > EMBED_BYTES
    folder = target.with_name(f"{target.stem}_images")
    sources = write_image_folder(result.images, folder) if own_images else image_sources(result.images)
    data = report_data(result, sources, _plots(result, run_dir))
    spec = result.manifest["model"]["spec"]
    write_text(target, render_page("report", f"dirscope report: {spec}", data, own_images))
    if not own_images:
        remove_image_folder(folder)  # an earlier report's of the same name, which this page no longer uses
    return target


def _check_target(target: Path) -> None:
    """Refuse to write the report over anything but a report: a run's own file (its manifest, tables, scores...)
    or a user's file would be lost to the HTML."""
    if target.is_dir():
        raise DirscopeError(f"--out {target} is a directory; give the report's file name, e.g. {target}/report.html")
    run = run_owning(target)
    if run is not None:
        raise DirscopeError(
            f"--out {target} is a file of the run in {run}; write the report elsewhere, e.g. {run}/report.html"
        )
    if target.exists() and not is_page(target, "report"):
        raise DirscopeError(f"--out {target} exists and is not a dirscope report; move it or choose another --out")


def report_data(result: Result, images: dict[int, str], plots: list[dict[str, str]]) -> dict[str, Any]:
    """Everything the report shows, as plain JSON types; ``images`` maps example rows to image sources."""
    layers = result.layers
    meta = result.directions.assign(_layer=result.directions["layer"].map({n: i for i, n in enumerate(layers)}))
    meta = meta.sort_values(["_layer", "direction"]).reset_index(drop=True)
    keys = list(zip(meta["layer"], meta["direction"].astype(int), strict=True))
    families = list(dict.fromkeys(meta["family"]))
    sets = _example_sets(result.topk, layers)
    stats = result.stats.set_index(["layer", "direction"]).reindex(keys)
    metrics, scores, zs = _score_matrix(result.scores, keys)
    rows = meta.to_dict("records")
    stat_rows = stats.reset_index(drop=True).to_dict("records")
    dirs = []
    for i, ((layer, direction), row, st) in enumerate(zip(keys, rows, stat_rows, strict=True)):
        dirs.append(
            {
                "l": int(row["_layer"]),
                "d": direction,
                "f": families.index(row["family"]),
                "t": title_of(str(row["family"]), int(row["unit"]), int(row["member"])),
                "top": sets.get((layer, direction, "max"), []),
                "bot": sets.get((layer, direction, "min"), []),
                "h": _histogram(st),
                "s": [json_number(st[c], None) for c in STAT_COLUMNS],  # exact: the page sorts on them
                "z0": int(st["zeros"]),  # exact zeros: a set holding only some of them was padded by row
                "c": bool(st["min"] == st["max"]),  # constant: even a top-1 is picked by row
                "m": [json_number(v, None) for v in scores[i]],
                "z": [json_number(v, None) for v in zs[i]],  # exact: rounded once, where shown
            }
        )
    return {
        "summary": _summary(result),
        "layers": [_layer_info(result, layer) for layer in result.manifest["layers"]],
        "families": families,
        "k": int(result.manifest["config"]["k"]),
        "stats": list(STAT_COLUMNS),
        "metrics": metrics,
        "verdict": _verdict(result),
        "plots": plots,
        "sides": {
            layer: {f: pick_directions(result, layer, f, FIGURE_ROWS) for f in result.families(layer)}
            for layer in layers
        },
        "dirs": dirs,
        "images": {str(i): src for i, src in images.items()},
    }


def _summary(result: Result) -> list[list[str]]:
    """The manifest in short, as (field, text) rows."""
    m = result.manifest
    data, config = m["data"], m["config"]
    names = data.get("label_names") or []
    rows = [
        ["model", str(m["model"]["spec"])],
        ["data", f"{data.get('spec')}: {data.get('size')} examples" + (f", {len(names)} classes" if names else "")],
        ["directions", str(config["directions"])],
        ["k", str(config["k"])],
        ["pooling", str(config["pool"])],
        ["seed", str(config["seed"])],
        ["created", str(m.get("created", ""))],
        ["versions", ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())],
    ]
    if names:
        rows.insert(2, ["classes", ", ".join(map(str, names))])
    return rows


def _layer_info(result: Result, layer: dict[str, Any]) -> dict[str, Any]:
    name = layer["name"]
    return {
        "name": name,
        "shape": [int(s) for s in layer.get("shape", [])],
        "dim": int(layer["dim"]),
        "n": int(result.manifest["n"][name]),
        "families": result.families(name),
    }


def _example_sets(topk: pd.DataFrame, layers: list[str]) -> dict[tuple[str, int, str], list[list[Any]]]:
    """(layer, direction, sign) -> [[row index, value, label text], ...] most extreme first, in one sort."""
    t = topk.sort_values(["layer", "direction", "sign", "rank"], kind="stable")
    names = t["label_name"].astype(object).where(t["label_name"].notna(), None)
    labels = t["label"].astype(object).where(t["label"].notna(), None)
    text = [n if n is not None else (None if lab is None else str(lab)) for n, lab in zip(names, labels, strict=True)]
    group = list(zip(t["layer"], t["direction"].astype(int), t["sign"], strict=True))
    cells = zip(t["index"].astype(int), _exact_values(t["value"]), text, strict=True)
    sets: dict[tuple[str, int, str], list[list[Any]]] = {}
    for key, (index, value, label) in zip(group, cells, strict=True):
        sets.setdefault(key, []).append([index, value, label])
    return sets


def _exact_values(values: pd.Series) -> list[float | None]:
    """Each value exactly as stored, so the page's "all tied" test agrees with the figures' (equal values stay
    equal, distinct ones distinct): a float32 in the fewest digits that read back to it (numpy's shortest repr,
    at most 9 significant digits), anything else as a float64 (at most 17). NaN and inf become None."""
    if values.dtype == np.float32:
        return [json_number(float(str(v)), None) for v in values.to_numpy()]
    return [json_number(v, None) for v in values.to_numpy(np.float64, na_value=np.nan)]


def _histogram(stat: dict[str, Any]) -> list[Any] | None:
    """[start, width, counts] with the empty bins at both ends cut off."""
    counts = stat.get("hist_counts")
    if counts is None or not isinstance(counts, (list, np.ndarray)) or len(counts) == 0:
        return None
    counts = np.asarray(counts, dtype=np.int64)
    used = np.flatnonzero(counts)
    if used.size == 0:
        return None
    first, last = int(used[0]), int(used[-1])
    width = float(stat["hist_width"])
    return [float(stat["hist_start"]) + first * width, width, counts[first : last + 1].tolist()]


def _score_matrix(
    scores: pd.DataFrame | None, keys: list[tuple[str, int]]
) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Score columns (metric and set) and the [directions, columns] matrices of scores and z-scores."""
    if scores is None or scores.empty:
        empty = np.zeros((len(keys), 0))
        return [], empty, empty
    columns = list(dict.fromkeys(zip(scores["metric"], scores["sign"], strict=True)))
    wide = scores.pivot_table(
        index=["layer", "direction"], columns=["metric", "sign"], values=["score", "z"], aggfunc="first", dropna=False
    )
    index = pd.MultiIndex.from_tuples(keys)
    score = wide["score"].reindex(index=index, columns=pd.MultiIndex.from_tuples(columns)).to_numpy(np.float64)
    z = wide["z"].reindex(index=index, columns=pd.MultiIndex.from_tuples(columns)).to_numpy(np.float64)
    metrics = [
        {"metric": metric, "set": sign, "label": f"{metric} ({_SIGN_NAMES[sign]})" if sign in _SIGN_NAMES else metric}
        for metric, sign in columns
    ]
    return metrics, score, z


def _verdict(result: Result) -> dict[str, Any] | None:
    if result.verdict is None:
        return None
    fields = (
        "layer",
        "metric",
        "sign",
        "family_a",
        "family_b",
        "mean_a",
        "mean_b",
        "effect",
        "ci_low",
        "ci_high",
        "p_value",
        "p_holm",
        "n_a",
        "n_b",
        "note",
    )
    records = [{f: r.get(f) for f in fields} for r in result.verdict.records]
    # [layer, text] pairs, not an object: browsers put integer-like keys ("2", "10") first, out of layer order
    conclusions = [[layer, text] for layer, text in result.verdict.conclusions.items()]
    return {"conclusions": conclusions, "notices": result.verdict.notices, "comparisons": records}


def _plots(result: Result, run_dir: Path) -> list[dict[str, str]]:
    """The run's figures and verdict plots that exist on disk, as base64 PNG; figures drawn later (with
    `dirscope figures`) follow those the run and the verdict list."""
    names = list(result.manifest.get("figures", []))
    if result.verdict is not None:
        names += result.verdict.settings.get("figures", [])
    names += sorted(path.relative_to(run_dir).as_posix() for path in (run_dir / "figures").glob("*.png"))
    plots = []
    for name in dict.fromkeys(names):
        path = run_dir / name
        if path.is_file() and path.suffix == ".png" and path.resolve().is_relative_to(run_dir.resolve()):
            plots.append({"name": str(name), "png": base64.b64encode(path.read_bytes()).decode("ascii")})
    return plots
