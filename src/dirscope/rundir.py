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

manifest.json is written last, so a directory with a manifest is complete. A new run into a directory first
removes the earlier run's outputs there (see ``unpublish``): the files its manifest names, its score figures,
and the report and study made of it; never a file the earlier run did not write.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import atomic_path, write_json, write_with
from .checkpoint import has_checkpoint, remove_checkpoint
from .errors import DirscopeError
from .examples import ExampleImages, png_chunks, write_examples
from .figures import file_stems, write_figures
from .result import Result

RUN_FILES = (
    "manifest.json",
    "topk.parquet",
    "stats.parquet",
    "directions.parquet",
    "null.parquet",
    "examples.parquet",
)
RUN_FORMAT = "dirscope-run/1"
# what `dirscope report` and `dirscope study` write into a run directory; they describe the run they were made of
REPORT_FILES = ("report.html", "study.html", "study.json", "study-scores.json")
REPORT_IMAGES = "report_images"
SCORE_FIGURES = ("sweep.png", "profile.png")  # with scores-<layer>.png and <layer>-{most,least}-coherent.png
_WHICH = ("most", "least")


def prepare_out(
    out: str | Path,
    overwrite: bool,
    resume: bool = False,
    *,
    cache: bool | None = None,
    from_cache: str | Path | None = None,
) -> Path:
    """Check the output directory before any work: refuse a non-empty one unless ``overwrite`` (or ``resume``,
    which needs a checkpoint there), and probe that it is writable, so a long run never fails at its end.

    When the caller says whether the run writes a cache (``cache``) and where it reads one (``from_cache``),
    a new run that does neither with this directory's ``cache/`` is refused while an earlier run's cache is
    there: a later ``--from-cache`` of this directory would read the earlier run's activations."""
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
    if cache is not None and not resume and not cache and _holds_cache(path) and not _reads_cache(path, from_cache):
        raise DirscopeError(
            f"{path / 'cache'} holds the activation cache of an earlier run; move it, or pass --cache to replace it"
        )
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


def _holds_cache(out: Path) -> bool:
    from .cache import CACHE_DIR

    return (out / CACHE_DIR / "index.json").is_file()


def _reads_cache(out: Path, from_cache: str | Path | None) -> bool:
    """Whether ``from_cache`` (a run directory or a cache folder) is this directory's cache."""
    from .cache import CACHE_DIR

    if from_cache is None:
        return False
    return Path(from_cache).resolve() in (out.resolve(), (out / CACHE_DIR).resolve())


def unpublish(out: Path) -> None:
    """Remove an earlier run's manifest before the first file of a new one lands, so that a directory with
    a manifest is always complete, and with it everything made of that run: its scores, the directions and
    figures its manifest (and verdict) name, its score figures, and its report and study. Files it did not
    write (a user's own in figures/ or directions/) stay."""
    manifest = _read_json(out / "manifest.json")
    scored = (out / "verdict.json").is_file() or (out / "scores.parquet").is_file()
    own = _run_files(out, manifest, _read_json(out / "verdict.json"), scored) if manifest is not None else []
    published = (out / "manifest.json").is_file()
    for stale in ("manifest.json", "verdict.json", "scores.parquet"):
        (out / stale).unlink(missing_ok=True)
    for path in own:
        if path.is_file():
            path.unlink()
    if published:  # made of the run whose manifest this was, even when that manifest is unreadable
        for name in REPORT_FILES:
            (out / name).unlink(missing_ok=True)
        images = out / REPORT_IMAGES
        if images.is_dir() and all(p.is_file() and p.suffix == ".png" and p.stem.isdigit() for p in images.iterdir()):
            shutil.rmtree(images)  # only a folder the report wrote (ROW.png files), never a user's


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _run_files(out: Path, manifest: Any, verdict: Any, scored: bool) -> list[Path]:
    """The directions and figure files an earlier run wrote, as its manifest and verdict name them, and its
    score figures' names; only plain names inside directions/ and figures/."""
    if not isinstance(manifest, dict):
        return []
    layers = [layer for layer in manifest.get("layers") or [] if isinstance(layer, dict)]
    names = [("directions", layer.get("directions_file"), ".npy") for layer in layers]
    figures = list(manifest.get("figures") or [])
    if isinstance(verdict, dict) and isinstance(verdict.get("settings"), dict):
        figures += list(verdict["settings"].get("figures") or [])
    if scored:
        for safe in file_stems([layer["name"] for layer in layers if isinstance(layer.get("name"), str)]).values():
            figures += [f"figures/{n}" for n in (f"scores-{safe}.png", *(f"{safe}-{w}-coherent.png" for w in _WHICH))]
        figures += [f"figures/{n}" for n in SCORE_FIGURES]
    names += [("figures", name, ".png") for name in figures]
    files = []
    for folder, name, suffix in names:
        parts = Path(name).parts if isinstance(name, str) else ()
        if len(parts) == 2 and parts[0] == folder and parts[1] not in (".", "..") and parts[1].endswith(suffix):
            files.append(out / folder / parts[1])
    return files


def write_run(result: Result, out: Path, figures: bool = True) -> None:
    """Write every file of the run directory. An earlier manifest is removed first and the new one is
    written last, so the directory counts as complete only when all of it is."""
    unpublish(out)
    layer_files, stems = {}, file_stems(result.layers)
    for layer in result.layers:
        name = f"directions/{stems[layer]}.npy"
        vectors = result.vectors(layer).astype(np.float32)
        write_with(out / name, lambda fh, v=vectors: np.save(fh, v))
        layer_files[layer] = name
    _write_parquet(out / "directions.parquet", result.directions)
    _write_parquet(out / "topk.parquet", result.topk)
    _write_parquet(out / "stats.parquet", result.stats)
    _write_parquet(out / "null.parquet", result.null)
    _write_examples(result, out / "examples.parquet")
    figure_files = write_figures(result, out / "figures") if figures else []
    manifest = dict(result.manifest)
    manifest.setdefault("run_id", uuid.uuid4().hex)  # what a study made of this run is checked against
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
    """Load a run directory, saying exactly what is missing when it is incomplete, and in one line what
    cannot be read when a file is damaged (truncated, emptied, edited by hand)."""
    if not (path / "manifest.json").is_file():
        raise DirscopeError(f"{path} is not a complete dirscope run (no manifest.json); run `dirscope run` first")
    try:
        return _read_run(path)
    except (OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise DirscopeError(f"run {path} cannot be read ({reason}); run it again") from None


def _read_run(path: Path) -> Result:
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
