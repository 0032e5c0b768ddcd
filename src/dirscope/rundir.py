"""The run directory: the one contract between computing and reading. Every file is written atomically.

    manifest.json          what ran: model, data, layers, direction specs, seed, pooling, N, versions, time
    directions/<layer>.npy float32 [K, D]; row i is direction i of that layer
    directions.parquet     layer, direction, family, member, unit (-1 if not a unit), spec
    topk.parquet           layer, direction, family, sign, rank, index, value, label, label_name
    stats.parquet          per layer and direction: count, mean, std, var, skew, kurtosis, min, max,
                           zeros, zero_fraction, hist_start, hist_width, hist_counts
    null.parquet           index, label: a seeded uniform sample of the scanned rows (the null population)
    examples.parquet       index, label, png: the display image of every row in topk.parquet and null.parquet,
                           sorted by index, in row groups of 64 (see examples.py)
    figures/*.png          Szegedy-style grids
    checkpoint/            only while a run is unfinished: its scan state, for --resume (see checkpoint.py)
    cache/                 with --cache: every layer's activations, for --from-cache (see cache.py)

manifest.json is written last, so a directory with a manifest is complete.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import atomic_path, write_json, write_with
from .checkpoint import has_checkpoint, remove_checkpoint
from .errors import DirscopeError
from .examples import ExampleImages, png_chunks, write_examples
from .figures import safe_name, write_figures
from .result import Result

RUN_FILES = (
    "manifest.json",
    "topk.parquet",
    "stats.parquet",
    "directions.parquet",
    "null.parquet",
    "examples.parquet",
)
RUN_DIRS = ("directions", "figures")
RUN_FORMAT = "dirscope-run/1"


def prepare_out(out: str | Path, overwrite: bool, resume: bool = False) -> Path:
    """Check the output directory before any work: refuse a non-empty one unless ``overwrite`` (or ``resume``,
    which needs a checkpoint there), and probe that it is writable, so a long run never fails at its end."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise DirscopeError(f"--out {path} is a file; give a directory")
    if resume and not has_checkpoint(path):
        state = "the run there is complete" if (path / "manifest.json").is_file() else "run without --resume to start"
        raise DirscopeError(f"no checkpoint to resume in {path}; {state}")
    if not resume and has_checkpoint(path) and not overwrite:
        raise DirscopeError(
            f"{path} holds the checkpoint of an unfinished run; pass --resume to continue it "
            "or --overwrite to start over"
        )
    if path.is_dir() and any(path.iterdir()) and not (overwrite or resume):
        raise DirscopeError(f"output directory {path} is not empty; pass --overwrite or choose another --out")
    if overwrite:
        remove_checkpoint(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".dirscope-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DirscopeError(f"cannot write to {path}: {exc.strerror}; choose a writable --out directory") from None
    return path


def _remove_stale(out: Path, keep: set[Path]) -> None:
    """After an overwrite, drop what an earlier run wrote and this one did not; never other user files."""
    for name in RUN_DIRS:
        for path in (out / name).glob("*") if (out / name).is_dir() else []:
            if path not in keep and path.suffix in (".npy", ".png"):
                path.unlink()


def unpublish(out: Path) -> None:
    """Remove an earlier run's manifest (and its scores, which no longer apply) before the first file of a
    new one lands, so that a directory with a manifest is always complete."""
    for stale in ("manifest.json", "verdict.json", "scores.parquet"):
        (out / stale).unlink(missing_ok=True)


def write_run(result: Result, out: Path, figures: bool = True) -> None:
    """Write every file of the run directory. An earlier manifest is removed first and the new one is
    written last, so the directory counts as complete only when all of it is."""
    unpublish(out)
    layer_files = {}
    for layer in result.layers:
        name = f"directions/{safe_name(layer)}.npy"
        vectors = result.vectors(layer).astype(np.float32)
        write_with(out / name, lambda fh, v=vectors: np.save(fh, v))
        layer_files[layer] = name
    _write_parquet(out / "directions.parquet", result.directions)
    _write_parquet(out / "topk.parquet", result.topk)
    _write_parquet(out / "stats.parquet", result.stats)
    _write_parquet(out / "null.parquet", result.null)
    _write_examples(result, out / "examples.parquet")
    figure_files = write_figures(result, out / "figures") if figures else []
    _remove_stale(out, {out / f for f in layer_files.values()} | set(figure_files))
    manifest = dict(result.manifest)
    for layer in manifest["layers"]:
        layer["directions_file"] = layer_files[layer["name"]]
    manifest["figures"] = [str(p.relative_to(out)) for p in figure_files]
    write_json(out / "manifest.json", manifest)
    result.manifest, result.path = manifest, out


def _write_parquet(path: Path, frame: pd.DataFrame) -> None:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _write_examples(result: Result, path: Path) -> None:
    """The examples file, unless the result's images are read from this very file (a run writes it first)."""
    if isinstance(result.images, ExampleImages) and result.images.stored_at(path):
        return
    rows = pd.concat([result.topk[["index", "label"]], result.null]).drop_duplicates("index")
    known = rows.set_index("index")["label"].fillna(-1).astype("int64")
    write_examples(path, png_chunks(result.images), lambda i: known.reindex(i, fill_value=-1).to_numpy())


def _example_images(path: Path) -> ExampleImages:
    try:
        return ExampleImages(path)
    except (OSError, ValueError) as exc:  # pyarrow's errors on a damaged file are ValueErrors
        raise DirscopeError(f"cannot read {path}: {exc}; run `dirscope run` again") from None


def read_run(path: Path) -> Result:
    """Load a run directory, saying exactly what is missing when it is incomplete."""
    if not (path / "manifest.json").is_file():
        raise DirscopeError(f"{path} is not a complete dirscope run (no manifest.json); run `dirscope run` first")
    manifest = json.loads((path / "manifest.json").read_text())
    if manifest.get("format") != RUN_FORMAT:
        raise DirscopeError(
            f"{path} holds a run of format {manifest.get('format')!r}, not {RUN_FORMAT!r}; run it again"
        )
    missing = [n for n in RUN_FILES[1:] if not (path / n).is_file()]
    if missing:
        raise DirscopeError(f"run {path} is incomplete: missing {', '.join(missing)}; run it again")
    vectors = {
        layer["name"]: np.load(path / layer["directions_file"], allow_pickle=False) for layer in manifest["layers"]
    }
    result = Result(
        manifest=manifest,
        topk=pd.read_parquet(path / "topk.parquet"),
        stats=pd.read_parquet(path / "stats.parquet"),
        directions=pd.read_parquet(path / "directions.parquet"),
        vectors=vectors,
        images=_example_images(path / "examples.parquet"),
        null=pd.read_parquet(path / "null.parquet"),
        path=path,
    )
    if (path / "verdict.json").is_file() and (path / "scores.parquet").is_file():
        from .verdict import Verdict

        saved = json.loads((path / "verdict.json").read_text())
        result.verdict = Verdict(saved["comparisons"], saved["conclusions"], saved["notices"], saved["settings"])
        result.scores = pd.read_parquet(path / "scores.parquet")
    return result
