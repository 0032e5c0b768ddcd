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

import contextlib
import functools
import json
import os
import re
import shutil
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import atomic_path, write_json, write_with
from .checkpoint import CHECKPOINT_DIR, CHECKPOINT_INDEX, has_checkpoint, remove_checkpoint
from .errors import DirscopeError
from .examples import ExampleImages, png_chunks, write_examples
from .figures import file_stems, write_figures
from .result import Result, manifest_problem

try:
    import fcntl
except ImportError:  # no flock (Windows): runs there go unlocked
    fcntl = None

if TYPE_CHECKING:
    from .verdict import Verdict

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
# held (flock) while a process writes the directory; removed on release, and never the user's content
LOCK_FILE = ".dirscope.lock"
# a run directory's own names (first path component): a report is never written over them
RUN_OWN = {*RUN_FILES, "verdict.json", "scores.parquet", "directions", "figures", "checkpoint", "cache", LOCK_FILE}
RUN_OWN |= {REPORT_IMAGES, *REPORT_FILES} - {"report.html"}
T = TypeVar("T")
_LOCKED: set[tuple[Path, int]] = set()  # (run directory, thread) held here: `run --score` locks twice


def prepare_out(out: str | Path, overwrite: bool) -> Path:
    """``check_out``, then with ``overwrite`` remove an unfinished run's checkpoint: for ``Result.save``, whose
    result is whole already (a run calls the two apart, so that a failing command deletes nothing)."""
    path = check_out(out, overwrite)
    if overwrite:
        remove_checkpoint(path)
    return path


def check_out(
    out: str | Path,
    overwrite: bool,
    resume: bool = False,
    *,
    cache: bool | None = None,
    from_cache: str | Path | None = None,
) -> Path:
    """Check the output directory before any work, deleting no result: refuse a non-empty one unless
    ``overwrite`` (or ``resume``, which needs a checkpoint there), and probe that it is writable, so a long run
    never fails at its end. What a kill left behind goes: a finished run's stale checkpoint, and once every
    check has passed, the temporary files of interrupted writes (see ``remove_partials``).

    When the caller says whether the run writes a cache (``cache``) and where it reads one (``from_cache``),
    a new run that does neither with this directory's ``cache/`` is refused while an earlier run's cache is
    there: a later ``--from-cache`` of this directory would read the earlier run's activations."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise DirscopeError(f"--out {path} is a file; give a directory")
    finished = _drop_stale_checkpoint(path)
    if resume and not has_checkpoint(path):
        if finished or (path / "manifest.json").is_file():
            raise DirscopeError(f"no checkpoint to resume in {path}: the run there is complete; load it, or pass "
                                "--overwrite to run it again")  # fmt: skip
        raise DirscopeError(
            f"no checkpoint to resume in {path} (a run killed before its first checkpoint leaves none); "
            "start it again with --overwrite"
        )
    if not resume and has_checkpoint(path) and not overwrite:
        raise DirscopeError(
            f"{path} holds the checkpoint of an unfinished run; pass --resume to continue it "
            "or --overwrite to start over"
        )
    if path.is_dir() and any(p.name != LOCK_FILE for p in path.iterdir()) and not (overwrite or resume):
        raise DirscopeError(f"output directory {path} is not empty; pass --overwrite or choose another --out")
    if cache is not None and not resume and not cache and _holds_cache(path) and not _reads_cache(path, from_cache):
        raise DirscopeError(
            f"{path / 'cache'} holds the activation cache of an earlier run; move it, or pass --cache to replace it"
        )
    remove_partials(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".dirscope-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DirscopeError(f"cannot write to {path}: {exc.strerror}; choose a writable --out directory") from None
    return path


@contextlib.contextmanager
def lock_out(out: str | Path | None, create: bool = True) -> Iterator[None]:
    """Hold run directory ``out`` exclusively while this process writes it (made first unless ``create`` is
    False), so that a second writer fails at once instead of mixing its files with ours. An advisory ``flock``:
    the kernel drops it however the process ends, so no stale lock ever blocks a later run. Re-entrant within a
    thread. Nothing is locked without ``out``, without ``fcntl``, or when ``out`` is no directory (the
    caller's own check names that); a directory made here that stays empty is removed again."""
    path = None if out is None or fcntl is None else Path(out)
    key = None if path is None else (path.resolve(), threading.get_ident())
    if path is None or not (path.is_dir() or (create and not path.exists())) or key in _LOCKED:
        yield
        return
    made = not path.exists()
    fd = _acquire(path, create)
    _LOCKED.add(key)
    try:
        yield
    finally:
        _LOCKED.discard(key)
        with contextlib.suppress(OSError):
            (path / LOCK_FILE).unlink()  # while held: one that opened it meanwhile sees that (``_acquire``)
            if made:
                path.rmdir()  # only if empty: a command that failed before writing leaves no directory
        os.close(fd)


def writes_run(func: Callable[..., T]) -> Callable[..., T]:
    """Run ``func(run_dir, ...)`` holding ``lock_out(run_dir)``: for the functions that read a finished run and
    write into it (report, study, figures), so that no run replaces it while they work."""

    @functools.wraps(func)
    def locked(run_dir: str | Path, *args: Any, **kwargs: Any) -> T:
        with lock_out(run_dir, create=False):
            return func(run_dir, *args, **kwargs)

    return locked


def _acquire(path: Path, create: bool) -> int:
    """A descriptor holding the flock of ``path``'s lock file, with this process's id in it. A lock taken on a
    file its last holder had just unlinked is dropped and taken again on the file now at the path."""
    lock = path / LOCK_FILE
    while True:
        try:
            if create:
                path.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise DirscopeError(f"cannot write to {path}: {exc.strerror}; choose a writable directory") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = _read_pid(lock)
            hint = " or choose another --out" if create else ""
            raise DirscopeError(f"{path} is in use by another dirscope process ({pid}); wait for it{hint}") from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


def _read_pid(lock: Path) -> str:
    """``pid N`` of the process holding ``lock``, as it wrote it there (it may not have yet)."""
    try:
        text = lock.read_text().strip()
    except OSError:
        text = ""
    return f"pid {text}" if text.isdigit() else "pid unknown"


def run_owning(path: Path) -> Path | None:
    """The run directory of which ``path`` is, or would be, one of the own files (``RUN_OWN``: its manifest,
    tables, scores, directions/, figures/, checkpoint/, cache/, study...), or None."""
    path = path.parent.resolve() / path.name  # a link itself, not what it points to
    for folder in path.parents:
        first = path.relative_to(folder).parts[0]
        if (first in RUN_OWN or first.endswith(".parquet")) and is_run_dir(folder):
            return folder
    return None


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` holds a dirscope run: a finished one (its manifest names the run format) or not."""
    return has_checkpoint(path) or _is_manifest(path)


def _is_manifest(path: Path) -> bool:
    """Whether ``path`` has the manifest of a finished run (one that names the run format)."""
    try:
        manifest = _read_json(path / "manifest.json")
    except RecursionError:
        manifest = None
    return isinstance(manifest, dict) and manifest.get("format") == RUN_FORMAT


def _drop_stale_checkpoint(path: Path) -> bool:
    """Remove the checkpoint of a run that finished (a kill came between its manifest and the checkpoint's
    removal): its manifest is newer than the checkpoint's index, which a live checkpoint always is, since an
    earlier run's manifest stays until the new run writes its own. Returns whether it did."""
    index, manifest = path / CHECKPOINT_DIR / CHECKPOINT_INDEX, path / "manifest.json"
    try:
        newer = manifest.stat().st_mtime_ns >= index.stat().st_mtime_ns
    except OSError:
        return False
    stale = newer and _is_manifest(path)
    if stale:
        remove_checkpoint(path)
    return stale


# atomic_path's temporary files: mkstemp's ".NAME." + 8 random characters + ".tmp"
_PARTIAL = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")


def remove_partials(out: Path) -> None:
    """Delete the temporary files of writes that a kill interrupted, in a run directory and its own folders
    (a cache chunk's may be tens of MiB), and a checkpoint folder they leave empty. Called holding the
    directory's lock, so never a file that another writer is filling."""
    if not out.is_dir():
        return
    found = [p for p in out.glob(".*.tmp") if _PARTIAL.fullmatch(p.name)]
    for name in sorted(RUN_OWN):
        if (out / name).is_dir():
            found += [p for p in (out / name).rglob(".*.tmp") if _PARTIAL.fullmatch(p.name)]
    for partial in found:
        partial.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (out / CHECKPOINT_DIR).rmdir()  # only if empty


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
        if has_checkpoint(path):
            raise DirscopeError(
                f"{path} holds an unfinished run (a checkpoint, no manifest.json yet); finish it with "
                f"`dirscope run ... --resume --out {path}`"
            )
        raise DirscopeError(f"{path} is not a complete dirscope run (no manifest.json); run `dirscope run` first")
    try:
        return _read_run(path)
    except (OSError, ValueError, EOFError, KeyError, TypeError, RecursionError) as exc:
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise DirscopeError(f"run {path} cannot be read ({reason}); run it again") from None


def _read_run(path: Path) -> Result:
    manifest = _read_manifest(path)
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
    result.verdict, result.scores = _read_scores(path)
    return result


def _read_manifest(path: Path) -> dict[str, Any]:
    """The run's manifest, its structure checked once here (see ``manifest_problem``): a hand-edited key of
    the wrong type is one line naming it, never a traceback in whichever command reads it later."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except RecursionError:
        manifest, problem = None, "it is nested too deeply to be a run's manifest"
    else:
        problem = manifest_problem(manifest)
    if isinstance(manifest, dict) and manifest.get("format") != RUN_FORMAT:
        raise DirscopeError(
            f"{path} holds a run of format {manifest.get('format')!r}, not {RUN_FORMAT!r}; run it again"
        )
    if problem is not None:
        raise DirscopeError(f"run {path}: manifest.json: {problem}; run `dirscope run` again")
    return manifest


SCORES_ID = "dirscope.scores_id"  # scores.parquet's schema metadata key; verdict.json has it as settings.scores_id


def scores_id_of(path: Path) -> str | None:
    """The scoring that wrote a scores.parquet (None for files written before scores had ids)."""
    found = (pq.read_schema(path).metadata or {}).get(SCORES_ID.encode())
    return None if found is None else found.decode()


def _read_scores(path: Path) -> tuple[Verdict | None, pd.DataFrame | None]:
    """The verdict and scores of the run's last finished scoring, or (None, None): the run then reads as not
    scored, with a warning when verdict.json is missing, damaged or of another scoring than scores.parquet
    (a `dirscope score` that did not finish). Not an error: `dirscope score` must still load the run to
    score it again. Files written before scores had ids carry none on either side and still pair."""
    from .verdict import Verdict

    verdict_file, scores_file = path / "verdict.json", path / "scores.parquet"
    if not verdict_file.is_file() and not scores_file.is_file():
        return None, None
    if not verdict_file.is_file():
        why = "its scores.parquet has no verdict.json (a `dirscope score` did not finish)"
    elif not scores_file.is_file():
        why = "its verdict.json has no scores.parquet"
    else:
        try:
            saved = json.loads(verdict_file.read_text())
            parts = [saved.get(k) for k in ("comparisons", "conclusions", "notices", "settings")]
            if [type(p) for p in parts] != [list, dict, list, dict]:
                raise ValueError("not a dirscope verdict")
            if parts[3].get("scores_id") == scores_id_of(scores_file):
                return Verdict(*parts), pd.read_parquet(scores_file)
            why = "its verdict.json and scores.parquet are of two scorings (one did not finish)"
        except (OSError, ValueError, AttributeError, RecursionError) as exc:
            why = f"its verdict.json or scores.parquet cannot be read ({' '.join(str(exc).split())[:120]})"
    print(f"warning: run {path} reads as not scored: {why}; run `dirscope score {path}` again", file=sys.stderr)
    return None, None
