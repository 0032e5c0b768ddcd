"""The activation cache: what the projection consumes, written once, so new directions need no model.

    <out>/cache/index.json            format, model (spec, weights sha256, info such as its preprocessing),
                                      data (as the manifest records it), pool, dtype, autocast (the scan's:
                                      null or "bf16"), batch size, limit, N, every layer's layout, every chunk
                                      (with ``crc32``: {"rows": ..., "<layer dir>": ...}, the zlib CRC-32
                                      of each of the chunk's files)
    <out>/cache/rows/NNNNNN.npy       int64 [n, 3]: dataset index, label (-1 unknown), batch number
    <out>/cache/<layer>/NNNNNN.npy    the layer's activations for the same n rows (float32 or float16)

Chunks are plain ``.npy`` files (exactly ``np.save``'s bytes), read back with ``np.load(mmap_mode="r")``,
one chunk at a time. Each holds whole batches of about CHUNK_BYTES. A chunk file is written atomically and
then the index is rewritten atomically, so the index only names complete chunks; ``complete`` turns true
when the scan ends.

Integrity: the writer takes each chunk file's CRC-32 from the bytes it writes (not read back from disk),
and the reader checks a chunk's files against it, reading them in 1 MiB blocks, before it memory-maps and
uses them, so a file damaged on disk or by a partial copy is one clear error instead of wrong activations.
While one chunk is used, a background thread checks the next one's files (zlib and file reads release the
GIL), so the check overlaps the projections and its read fills the page cache ahead of the memory map.
The format stays ``dirscope-cache/1``: earlier dirscope versions ignore ``crc32``, and chunks listed without
it (written by them) are read unverified, with a warning.

What is stored per layer (``stored`` in the index): the projection of a spatial layer under max pooling is
max_p <phi_p(x), v>, which pooled activations cannot give, so those layers keep every position, in the layer's
own layout [n, *shape] (``positions``). Mean pooling commutes with the projection, so other layers (and flat
ones) keep the mean over positions [n, D] (``pooled``), P times smaller. A float32 cache reproduces the
model's projections bit for bit; float16 halves the size at about 3 significant digits (values beyond
65504 become inf, and such rows are excluded as non-finite). Rows with NaN/inf activations are stored as
they are, so a run from the cache excludes and counts them as the model run did.

Labels are stored with the rows; images are not: a run from the cache re-reads them from the data spec in
the index (or ``--data``), and goes without example images when the data cannot be read again.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import write_json, write_with
from .data import DataSource, load_data
from .errors import DirscopeError
from .figures import file_stems
from .jsoncheck import Rule, first_problem, is_int, list_of
from .project import positions

CACHE_DIR = "cache"
CACHE_FORMAT = "dirscope-cache/1"
CACHE_DTYPES = ("float32", "float16")
CHUNK_BYTES = 64 * 2**20
_INDEX = "index.json"
_ROWS = "rows"
_CRC_BLOCK = 2**20  # bytes hashed at a time when a chunk is checked

# One batch of activations: dataset indices, labels (or None), activations by layer.
Step = tuple[np.ndarray, np.ndarray | None, dict[str, torch.Tensor]]


def keeps_positions(shape: Sequence[int], axis: int, pool: str) -> bool:
    """Whether a layer's cache must keep every position: a spatial layer under max pooling."""
    return pool == "max" and int(np.prod(shape)) // shape[axis] > 1


def cached_form(act: torch.Tensor, axis: int, pool: str) -> torch.Tensor:
    """What the cache stores of a batch: the activations themselves, or their mean over positions [B, D],
    computed exactly as :func:`dirscope.project.project` computes it."""
    if keeps_positions(act.shape[1:], axis, pool):
        return act
    x = positions(act.float(), axis)
    return x.mean(dim=2) if x.shape[2] > 1 else x[:, :, 0]


def find_cache(path: str | Path) -> Path:
    """The cache folder of a run directory, or the cache folder itself."""
    path = Path(path)
    for folder in (path / CACHE_DIR, path):
        if (folder / _INDEX).is_file():
            return folder
    raise DirscopeError(f"no activation cache in {path}; write one with `dirscope run ... --cache --out DIR`")


class CacheWriter:
    """Appends batches of activations to ``<out>/cache`` chunk by chunk, holding at most one chunk in memory."""

    def __init__(
        self, out: Path, header: dict[str, Any], layers: list[dict[str, Any]], chunks: list | None = None
    ) -> None:
        self.folder = out / CACHE_DIR
        self.header, self.layers = header, layers
        self.dtype = np.dtype(header["dtype"])
        self.chunks: list[dict[str, Any]] = list(chunks or [])
        self._rows: list[np.ndarray] = []
        self._acts: dict[str, list[np.ndarray]] = {layer["name"]: [] for layer in layers}
        self._bytes = 0
        self._batches = sum(int(c["batches"]) for c in self.chunks)
        self._drop_unlisted()
        self._write_index(complete=False)

    def _drop_unlisted(self) -> None:
        """Remove chunks an earlier, interrupted writer left beyond the ones this writer continues from."""
        listed = {c["file"] for c in self.chunks}
        for sub in [_ROWS] + [layer["dir"] for layer in self.layers]:
            for path in (self.folder / sub).glob("*.npy") if (self.folder / sub).is_dir() else []:
                if path.name not in listed:
                    path.unlink()

    def add(self, idx: np.ndarray, y: np.ndarray | None, acts: dict[str, torch.Tensor]) -> None:
        """Buffer one batch; write a chunk once the buffer holds CHUNK_BYTES."""
        labels = np.full(idx.size, -1, np.int64) if y is None else y
        self._rows.append(np.stack([idx, labels, np.full(idx.size, self._batches, np.int64)], axis=1))
        self._batches += 1
        for layer in self.layers:
            form = cached_form(acts[layer["name"]], layer["feature_axis"], self.header["pool"])
            block = form.detach().to("cpu", torch.float32).numpy().astype(self.dtype)
            self._acts[layer["name"]].append(block)
            self._bytes += block.nbytes
        if self._bytes >= CHUNK_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write the buffered batches as one chunk (called before every checkpoint, so they agree)."""
        if not self._rows:
            return
        name = f"{len(self.chunks):06d}.npy"
        rows = np.concatenate(self._rows)
        crc = {_ROWS: save_npy(self.folder / _ROWS / name, rows)}
        for layer in self.layers:
            crc[layer["dir"]] = save_npy(self.folder / layer["dir"] / name, np.concatenate(self._acts[layer["name"]]))
            self._acts[layer["name"]] = []
        batches = int(rows[-1, 2] - rows[0, 2] + 1)
        first = int(rows[0, 0])
        self.chunks.append({"file": name, "rows": len(rows), "first_index": first, "batches": batches, "crc32": crc})
        self._rows, self._bytes = [], 0
        self._write_index(complete=False)

    def finish(self) -> None:
        self.flush()
        self._write_index(complete=True)

    def _write_index(self, complete: bool) -> None:
        n = sum(int(c["rows"]) for c in self.chunks)
        index = {"format": CACHE_FORMAT, "complete": complete, **self.header, "n": n}
        write_json(self.folder / _INDEX, {**index, "layers": self.layers, "chunks": self.chunks})


def save_npy(path: Path, array: np.ndarray) -> int:
    """Atomically write ``array`` as ``np.save`` does and return the CRC-32 of the file's bytes, taken from
    the header and the array's memory as they are written, so no second pass over the disk is needed. The
    header is format 1.0, which ``np.save`` also picks for any array whose header fits in 64 KiB."""
    array = np.ascontiguousarray(array)
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, np.lib.format.header_data_from_array_1_0(array))
    body = memoryview(array).cast("B")
    write_with(path, lambda fh: (fh.write(head.getvalue()), fh.write(body)))
    return zlib.crc32(body, zlib.crc32(head.getvalue()))


def file_crc32(path: Path) -> int:
    """The CRC-32 of a file's bytes, read through one small buffer so that checking holds no chunk in memory."""
    crc, buffer = 0, memoryview(bytearray(_CRC_BLOCK))
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buffer):
            crc = zlib.crc32(buffer[:n], crc)
    return crc


def open_cache(
    out: Path, header: dict[str, Any], layers: list[dict[str, Any]], chunks: list | None = None
) -> CacheWriter:
    """A cache writer for ``out``: continuing after ``chunks`` (from a checkpoint), or replacing any earlier
    cache there when ``chunks`` is None."""
    if chunks is None:
        shutil.rmtree(out / CACHE_DIR, ignore_errors=True)
    dirs = file_stems([layer["name"] for layer in layers], reserved=[_ROWS, _INDEX])
    return CacheWriter(out, header, [{**layer, "dir": dirs[layer["name"]]} for layer in layers], chunks)


def cache_layout(name: str, shape: tuple[int, ...], axis: int, pool: str) -> dict[str, Any]:
    """How one layer is stored: its own shape and feature axis, and whether positions are kept."""
    kept = keeps_positions(shape, axis, pool)
    return {
        "name": name,
        "shape": list(shape),
        "feature_axis": axis,
        "stored": "positions" if kept else "pooled",
        "row_shape": list(shape) if kept else [shape[axis]],
    }


def index_problem(index: Any) -> str | None:
    """What makes a cache's index unusable, as "KEY must be ...", or None when every key that the reader and
    :class:`CachedRows` read has its type. Checked once where the index is read, as a run's manifest is (see
    :func:`dirscope.result.manifest_problem`), so a hand-damaged index is one line there rather than a
    traceback in whichever step reads the damaged key. Keys nothing reads (``n``, ``pool``, ``batch_size``,
    a chunk's ``first_index`` and ``batches``) are not checked, and ``crc32`` stays optional (older caches)."""
    if not isinstance(index, dict):
        return "it must hold a JSON object"
    for key, kind, what in [("model", dict, "an object"), ("data", dict, "an object"), ("layers", list, "a list")]:
        if not isinstance(index.get(key), kind):
            return f"{key} must be {what}"
    model, data, layers = index["model"], index["data"], index["layers"]
    names = data.get("label_names")
    rules: list[Rule] = [
        ("complete", isinstance(index.get("complete"), bool), "true or false"),
        ("model.spec", isinstance(model.get("spec"), str), "a string"),
        ("model.weights_sha256", isinstance(model.get("weights_sha256"), str), "a string"),
        ("model.info", isinstance(model.get("info"), (dict, type(None))), "an object or null"),
        ("data.spec", isinstance(data.get("spec"), str), "a string"),
        ("data.size", _held_int(data, "size", 0), "an integer or null"),
        ("data.label_names", names is None or list_of(names, str), "a list of strings or null"),
        ("data.content", isinstance(data.get("content"), (dict, type(None))), "an object or null"),
        ("dtype", index.get("dtype") in CACHE_DTYPES, " or ".join(CACHE_DTYPES)),
        ("limit", _held_int(index, "limit", 1), "a positive integer or null"),
        ("layers", bool(layers), "a non-empty list"),
    ]
    seen: dict[str, set[str]] = {"name": set(), "dir": set(), "file": set()}
    for i, layer in enumerate(layers):
        rules += _layer_rules(f"layers[{i}]", layer, seen)
    chunks = index.get("chunks")
    rules.append(("chunks", isinstance(chunks, list), "a list"))
    for i, chunk in enumerate(chunks if isinstance(chunks, list) else []):
        rules += _chunk_rules(f"chunks[{i}]", chunk, seen)
    return first_problem(rules)


def _layer_rules(where: str, layer: Any, seen: dict[str, set[str]]) -> list[Rule]:
    """The rules of one index layer; its name and folder go into ``seen``, which a later layer must not repeat."""
    if not isinstance(layer, dict):
        return [(where, False, "an object")]
    name, folder, shape, axis, stored = (layer.get(k) for k in ("name", "dir", "shape", "feature_axis", "stored"))
    shaped = isinstance(shape, list) and bool(shape) and all(is_int(n, 1) for n in shape)
    axis_ok = shaped and is_int(axis, 0) and axis < len(shape)
    row = layer.get("row_shape")
    exact = isinstance(row, list) and all(is_int(n, 1) for n in row)  # 128.0 == 128, but reshape refuses it
    row_ok = axis_ok and exact and row == (shape if stored == "positions" else [shape[axis]])
    return [
        (f"{where}.name", isinstance(name, str) and bool(name) and _fresh(name, seen["name"]), "a string, unique"),
        (
            f"{where}.dir",
            _file_name(folder) and folder not in (_ROWS, _INDEX) and _fresh(folder, seen["dir"]),
            f"the name of a folder in the cache, unique and not {_ROWS!r}",
        ),
        (f"{where}.shape", shaped, "a non-empty list of positive integers"),
        (f"{where}.feature_axis", axis_ok, "an axis of its shape (an integer from 0)"),
        (f"{where}.stored", stored in ("positions", "pooled"), '"positions" or "pooled"'),
        (f"{where}.row_shape", row_ok, "its shape when it stores positions, else [its number of features]"),
    ]


def _chunk_rules(where: str, chunk: Any, seen: dict[str, set[str]]) -> list[Rule]:
    """The rules of one index chunk; its file name goes into ``seen``, which a later chunk must not repeat."""
    if not isinstance(chunk, dict):
        return [(where, False, "an object")]
    file, crc = chunk.get("file"), chunk.get("crc32", {})
    named = _file_name(file) and file.endswith(".npy") and _fresh(file, seen["file"])
    return [
        (f"{where}.file", named, "the name of a .npy file, unique"),
        (f"{where}.rows", is_int(chunk.get("rows"), 1), "a positive integer"),
        (
            f"{where}.crc32",
            isinstance(crc, dict) and all(is_int(v, 0) and v < 2**32 for v in crc.values()),
            "an object of CRC-32s (integers) by folder, or absent",
        ),
    ]


def _held_int(record: dict[str, Any], key: str, least: int) -> bool:
    """Whether ``record`` holds ``key`` (the reader reads it unguarded) as an integer of at least ``least`` or null."""
    return key in record and (record[key] is None or is_int(record[key], least))


def _file_name(value: Any) -> bool:
    """A plain file name, so that the reader stays inside the cache folder."""
    return isinstance(value, str) and value not in ("", ".", "..") and "\0" not in value and Path(value).name == value


def _fresh(value: str, seen: set[str]) -> bool:
    """Whether ``value`` was not seen before; it is seen from now on."""
    fresh = value not in seen
    seen.add(value)
    return fresh


class CacheReader:
    """A complete cache read back streaming: the engine's source of activations when there is no model."""

    def __init__(self, path: str | Path) -> None:
        self.folder = find_cache(path)
        try:
            self.index = json.loads((self.folder / _INDEX).read_text())
        except (OSError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deeply
            raise self._broken(f"its index is unreadable ({exc})") from None
        if isinstance(self.index, dict) and self.index.get("format") != CACHE_FORMAT:
            raise self._broken(f"its format is {self.index.get('format')!r}, not {CACHE_FORMAT!r}")
        problem = index_problem(self.index)
        if problem is not None:
            raise self._broken(f"{_INDEX}: {problem}", "write the cache again with `dirscope run ... --cache`")
        if not self.index["complete"]:
            raise self._broken(
                "it is incomplete (its run did not finish)",
                "resume the run that writes it (`dirscope run ... --resume`), or write the cache again with --cache",
            )
        self.layers = {layer["name"]: layer for layer in self.index["layers"]}
        self._verified: set[tuple[str, str]] = set()  # files already checked: a fit pass and the scan read twice
        self._pending: dict[tuple[str, str], Future[int]] = {}  # CRC-32s being taken in the background
        for chunk in self.index["chunks"]:  # headers only (memory-mapped): shapes and sizes, not yet checksums
            self._map(_ROWS, chunk, [3], "int64")
            for layer in self.layers.values():
                self._map(layer["dir"], chunk, layer["row_shape"], self.index["dtype"])
        self._warn_unverified()

    def _broken(self, why: str, fix: str = "write it again with --cache") -> DirscopeError:
        return DirscopeError(f"activation cache {self.folder} cannot be used: {why}; {fix}")

    def _warn_unverified(self) -> None:
        """Say once that chunks written before checksums existed are read without a check."""
        subs = [_ROWS] + [layer["dir"] for layer in self.layers.values()]
        bare = sum(1 for c in self.index["chunks"] if any(sub not in c.get("crc32", {}) for sub in subs))
        if bare:
            print(
                f"warning: activation cache {self.folder}: {bare} of {len(self.index['chunks'])} chunks carry no "
                "checksums (written by an earlier dirscope) and are read unverified; write it again with --cache "
                "to have them checked",
                file=sys.stderr,
            )

    @property
    def names(self) -> list[str]:
        return list(self.layers)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.layers[name]["shape"])

    def check(self, names: Sequence[str], pool: str) -> None:
        """Refuse layers the cache lacks, and max pooling of a spatial layer cached only as means."""
        for name in names:
            if name not in self.layers:
                raise DirscopeError(f"layer {name!r} is not in the cache {self.folder} (has: {', '.join(self.layers)})")
            layer = self.layers[name]
            if keeps_positions(layer["shape"], layer["feature_axis"], pool) and layer["stored"] != "positions":
                raise DirscopeError(
                    f"the cache holds mean-pooled activations of layer {name!r}; --pool max needs every position, "
                    "so pass --pool mean, or write the cache again with --pool max"
                )

    def _file(self, sub: str, chunk: dict[str, Any]) -> Path:
        return self.folder / sub / chunk["file"]

    def _map(self, sub: str, chunk: dict[str, Any], shape: list[int], dtype: str) -> np.ndarray:
        """A chunk memory-mapped, to check its header and size when the cache is opened without reading it."""
        try:
            array = np.load(self._file(sub, chunk), mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:  # EOFError: an empty file (a partial copy, a full disk)
            raise self._broken(f"chunk {sub}/{chunk['file']} is unreadable ({exc})") from None
        return self._check(sub, chunk, array, shape, dtype)

    def _check(self, sub: str, chunk: dict[str, Any], array: np.ndarray, shape: list[int], dtype: str) -> np.ndarray:
        """The chunk's array, if it has the shape and dtype the index gives it."""
        if array.shape != (chunk["rows"], *shape) or array.dtype != np.dtype(dtype):
            raise self._broken(
                f"chunk {sub}/{chunk['file']} holds {array.dtype} {list(array.shape)}, the index says "
                f"{dtype} {[chunk['rows'], *shape]}"
            )
        return array

    def _load(self, sub: str, chunk: dict[str, Any], shape: list[int], dtype: str) -> np.ndarray:
        """A chunk checked against its CRC-32 (the first time this reader uses it), then memory-mapped for use.

        The check reads every byte once, in blocks; the memory map then serves the pages that read just put
        in the page cache, so the disk is still read once and no chunk is held in memory. Reading the chunk
        whole into a fresh buffer instead measured slower (the page faults of a new 64 MiB buffer per chunk)."""
        self._verify(sub, chunk)
        return self._map(sub, chunk, shape, dtype)

    def _verify(self, sub: str, chunk: dict[str, Any]) -> None:
        """Compare a chunk file's CRC-32 (taken in the background by ``_check_ahead``, else now) with the index."""
        expected = chunk.get("crc32", {}).get(sub)
        key = (sub, chunk["file"])
        if expected is None or key in self._verified:
            return
        pending = self._pending.pop(key, None)
        try:
            actual = pending.result() if pending is not None else file_crc32(self._file(sub, chunk))
        except OSError as exc:
            raise self._broken(f"chunk {sub}/{chunk['file']} is unreadable ({exc})") from None
        if actual != expected:
            raise self._broken(
                f"chunk {sub}/{chunk['file']} is damaged: its CRC-32 is {actual:08x}, the index says "
                f"{expected:08x} (changed on disk or copied partially)",
                "copy that file again from where the cache was written, or write the cache again with --cache",
            )
        self._verified.add(key)

    def _check_ahead(self, pool: ThreadPoolExecutor, chunk: dict[str, Any], names: Sequence[str]) -> None:
        """Start taking the CRC-32s of a chunk's files (rows and ``names``) that are still unchecked."""
        for sub in [_ROWS] + [self.layers[name]["dir"] for name in names]:
            key = (sub, chunk["file"])
            if sub in chunk.get("crc32", {}) and key not in self._verified and key not in self._pending:
                self._pending[key] = pool.submit(file_crc32, self._file(sub, chunk))

    def _rows_of(self, chunk: dict[str, Any]) -> np.ndarray:
        return self._load(_ROWS, chunk, [3], "int64")

    def _acts_of(self, layer: dict[str, Any], chunk: dict[str, Any]) -> np.ndarray:
        return self._load(layer["dir"], chunk, layer["row_shape"], self.index["dtype"])

    def stream(
        self,
        names: Sequence[str],
        batch_size: int,
        *,
        start: int = 0,
        indices: np.ndarray | None = None,
        limit: int | None = None,
    ) -> Iterator[Step]:
        """Batches of cached rows with index >= ``start`` (and < ``limit``, and in ``indices`` if given),
        cut where the writing run's batches were cut and at most ``batch_size`` long."""
        stop = limit if limit is not None else np.iinfo(np.int64).max
        chunks = self.index["chunks"]
        pool = ThreadPoolExecutor(1, thread_name_prefix="dirscope-crc")
        try:
            for i, chunk in enumerate(chunks):
                rows = np.asarray(self._rows_of(chunk))
                if rows[-1, 0] < start:
                    continue
                if i + 1 < len(chunks) and rows[-1, 0] < stop - 1:
                    self._check_ahead(pool, chunks[i + 1], names)
                keep = (rows[:, 0] >= start) & (rows[:, 0] < stop)
                if indices is not None:
                    keep &= np.isin(rows[:, 0], indices)
                yield from self._chunk_steps(chunk, names, rows, np.flatnonzero(keep), batch_size)
                if rows[-1, 0] >= stop - 1:
                    return
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            self._pending.clear()  # checks cut short by an early stop are taken again when next needed

    def batch_starts(self, batch_size: int, *, start: int = 0, limit: int | None = None) -> np.ndarray:
        """The dataset index of the first row of every batch ``stream(names, batch_size, start=start,
        limit=limit)`` yields, from the rows alone: where a pass over a later part of the rows may begin and
        still see the same batches (``--engine ray`` cuts its shards there)."""
        stop = limit if limit is not None else np.iinfo(np.int64).max
        firsts: list[int] = []
        for chunk in self.index["chunks"]:
            rows = np.asarray(self._rows_of(chunk))
            kept = np.flatnonzero((rows[:, 0] >= start) & (rows[:, 0] < stop))
            firsts += [int(rows[pos[0], 0]) for pos in _batch_positions(kept, rows[:, 2], batch_size)]
        return np.array(firsts, dtype=np.int64)

    def _chunk_steps(
        self, chunk: dict[str, Any], names: Sequence[str], rows: np.ndarray, kept: np.ndarray, batch_size: int
    ) -> Iterator[Step]:
        """The batches of one chunk's kept rows. Its activations are checked and mapped only if a row is kept,
        and unmapped when the chunk is done, so one chunk at a time is read."""
        if kept.size == 0:
            return
        arrays = {name: self._acts_of(self.layers[name], chunk) for name in names}
        for pos in _batch_positions(kept, rows[:, 2], batch_size):
            acts = {name: self._as_layer(name, array[pos]) for name, array in arrays.items()}
            yield rows[pos, 0], rows[pos, 1], acts

    def _as_layer(self, name: str, block: np.ndarray) -> torch.Tensor:
        """A block of cached rows shaped so that :func:`dirscope.project.project` reads it with the layer's axis."""
        layer = self.layers[name]
        tensor = torch.from_numpy(np.ascontiguousarray(block))
        if layer["stored"] == "positions":
            return tensor
        view = [1] * len(layer["shape"])
        view[layer["feature_axis"]] = layer["row_shape"][0]
        return tensor.reshape(len(block), *view)

    def labels(self) -> tuple[np.ndarray, np.ndarray]:
        """Dataset indices and labels of every cached row (small: two integers per row)."""
        rows = [np.asarray(self._rows_of(chunk)) for chunk in self.index["chunks"]]
        table = np.concatenate(rows) if rows else np.zeros((0, 3), np.int64)
        return table[:, 0], table[:, 1]


def _batch_positions(kept: np.ndarray, batch: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Positions of kept rows grouped by their original batch, each group cut to ``batch_size``."""
    if kept.size == 0:
        return
    cuts = np.flatnonzero(np.diff(batch[kept])) + 1
    for group in np.split(kept, cuts):
        for i in range(0, len(group), batch_size):
            yield group[i : i + batch_size]


class CachedRows:
    """Labels and images of a cached run's rows for the result: labels from the cache, images re-read
    from the data when it can be read again (same size and, where the data records it, same file version)."""

    def __init__(self, reader: CacheReader, data: Any = None) -> None:
        described, limit = reader.index["data"], reader.index["limit"]
        self.describe_record = described
        self.spec = described["spec"]
        # the rows the writing run could see, so a run from the cache samples its fitting rows alike
        self.size = described["size"] if limit is None or described["size"] is None else min(described["size"], limit)
        self.label_names = described.get("label_names")
        self._indices, self._labels = reader.labels()
        self._images = self._image_source(data if data is not None else self.spec)

    def _image_source(self, data: Any) -> DataSource | None:
        if isinstance(data, str) and data.startswith("<"):
            return None  # a Python object in the writing run: nothing to re-read
        try:
            source = load_data(data)
        except DirscopeError as exc:
            print(f"warning: no example images: cannot read data {data!r} again ({exc}); pass --data", file=sys.stderr)
            return None
        if source.size != self.describe_record["size"]:
            raise DirscopeError(
                f"data {source.spec!r} has {source.size} examples but the cache was written from "
                f"{self.describe_record['size']}; "
                "give the data the cache was written from"
            )
        recorded = self.describe_record.get("content")
        if recorded is not None and source.describe().get("content") != recorded:
            raise DirscopeError(
                f"data {source.spec!r} is not the version the cache was written from (its files' name, size, "
                "modification time or digest differ), so its images would not be the cached rows'; give that "
                "data (a copy made with `cp -p`, under the same file name, keeps its identity)"
            )
        return source

    def describe(self) -> dict[str, Any]:
        return dict(self.describe_record)

    def labels_at(self, indices: np.ndarray) -> np.ndarray | None:
        if not (self._labels >= 0).any():
            return None
        pos = np.searchsorted(self._indices, indices)
        return self._labels[np.minimum(pos, len(self._labels) - 1)]

    def images_at(self, indices: np.ndarray) -> list[np.ndarray] | None:
        return None if self._images is None else self._images.images_at(indices)
