"""A run's example images, streamed to ``examples.parquet`` and read back lazily, so they never fill memory.

ImageNet with 2,048 directions, top-64 and bottom-64 names up to 262,144 rows, about 13 GB as decoded
128 px thumbnails. So a run with ``out`` asks its data for the images chunk by chunk (about
``CHUNK_BYTES`` of pixels at a time), encodes them as PNG and appends them to the file in row groups of
``ROW_GROUP`` images; ``ExampleImages`` then decodes an image only when it is looked up, reading its row
group (a few of them stay cached). Older files with one row group read the same way.

The file: ``index`` int64 (sorted, unique dataset rows), ``label`` int64 (null when unknown), ``png`` binary.
"""

from __future__ import annotations

import io
import os
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from .atomic import atomic_path
from .errors import DirscopeError

# with pandas' metadata, so pandas reads the labels back as nullable Int64, as files written from a frame
SCHEMA = pa.Schema.from_pandas(
    pd.DataFrame({"index": pd.array([0], "int64"), "label": pd.array([0], "Int64"), "png": [b""]}), preserve_index=False
)
ROW_GROUP = 64  # images per row group: one lookup reads ~2 MB of 128 px thumbnails, not the whole file
CACHED_GROUPS = 16
CHUNK_BYTES = 64 << 20  # decoded pixels asked of the data source at once
LabelsOf = Callable[[np.ndarray], np.ndarray]
ImagesAt = Callable[[np.ndarray], Sequence[np.ndarray | None] | None]


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a uint8 HxW or HxWx3 image as PNG."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """The uint8 array of a PNG written by ``png_bytes``."""
    try:
        return np.asarray(Image.open(io.BytesIO(data)))
    except (OSError, ValueError) as exc:  # PIL's errors for truncated or mangled bytes
        raise DirscopeError(f"a stored example image is damaged ({exc}); run the scan again") from None


class ExampleImages(Mapping[int, np.ndarray]):
    """Display images by dataset index, decoded on access from an ``examples.parquet`` file.

    The file stays open, so replacing it (a later run into the same directory) does not change what an
    existing mapping reads.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        handle = open(self.path, "rb")  # noqa: SIM115 (kept open for the mapping's life, closed with it)
        weakref.finalize(self, handle.close)
        self._stat = os.fstat(handle.fileno())
        self._file = pq.ParquetFile(handle)
        meta = self._file.metadata
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        self._starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self._index = self._file.read(columns=["index"]).column("index").to_numpy().astype(np.int64)
        if np.any(np.diff(self._index) <= 0):
            raise ValueError(f"{self.path}: example indices are not sorted and unique")
        self._groups: OrderedDict[int, pa.BinaryArray] = OrderedDict()

    def __len__(self) -> int:
        return self._index.size

    def __iter__(self) -> Iterator[int]:
        return iter(self._index.tolist())

    def __contains__(self, key: object) -> bool:
        return self._position(key) is not None

    def __getitem__(self, key: int) -> np.ndarray:
        return decode_png(self.png(key))

    def __reduce__(self) -> tuple[type[ExampleImages], tuple[Path]]:
        return ExampleImages, (self.path,)

    def stored_at(self, path: Path) -> bool:
        """Whether ``path`` is the very file this mapping reads (not a newer one written over it)."""
        try:
            found = os.stat(path)
        except FileNotFoundError:
            return False
        return (found.st_dev, found.st_ino) == (self._stat.st_dev, self._stat.st_ino)

    def png(self, key: int) -> bytes:
        """The stored PNG of one row, undecoded."""
        pos = self._position(key)
        if pos is None:
            raise KeyError(key)
        group = int(np.searchsorted(self._starts, pos, side="right")) - 1
        return self._group(group)[pos - int(self._starts[group])].as_py()

    def png_size(self) -> int:
        """Bytes of all the stored PNGs, from the file's metadata (nothing is read)."""
        meta, column = self._file.metadata, self._file.schema_arrow.get_field_index("png")
        return sum(meta.row_group(g).column(column).total_uncompressed_size for g in range(meta.num_row_groups))

    def png_groups(self) -> Iterator[tuple[np.ndarray, list[bytes]]]:
        """(indices, PNGs) row group by row group, for copying the images without decoding them."""
        for g in range(len(self._starts) - 1):
            lo, hi = self._starts[g], self._starts[g + 1]
            yield self._index[lo:hi], self._read_group(g).to_pylist()

    def _position(self, key: object) -> int | None:
        if not isinstance(key, (int, np.integer)):
            return None
        pos = int(np.searchsorted(self._index, key))
        return pos if pos < self._index.size and self._index[pos] == key else None

    def _group(self, group: int) -> pa.BinaryArray:
        if group in self._groups:
            self._groups.move_to_end(group)
        else:
            self._groups[group] = self._read_group(group)
            if len(self._groups) > CACHED_GROUPS:
                self._groups.popitem(last=False)
        return self._groups[group]

    def _read_group(self, group: int) -> pa.BinaryArray:
        """One row group's PNGs; a damaged group (the footer, checked on opening, can be intact) is one line."""
        try:
            return self._file.read_row_group(group, columns=["png"]).column("png").combine_chunks()
        except (OSError, pa.ArrowException) as exc:
            raise DirscopeError(
                f"{self.path}: row group {group} is damaged ({' '.join(str(exc).split())}); "
                "run the scan again to rewrite it"
            ) from None


def write_examples(path: Path, chunks: Iterable[tuple[np.ndarray, Sequence[bytes]]], labels: LabelsOf) -> None:
    """Write (indices, PNGs) chunks, given in increasing index order, atomically; ``labels`` maps indices to
    their labels (-1 for unknown)."""
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, SCHEMA) as writer:
        for indices, pngs in chunks:
            for lo in range(0, len(indices), ROW_GROUP):
                part = slice(lo, lo + ROW_GROUP)
                label = np.asarray(labels(indices[part]), dtype=np.int64)
                columns = [pa.array(indices[part], pa.int64()), pa.array(label, pa.int64(), mask=label < 0)]
                writer.write_table(pa.Table.from_arrays([*columns, pa.array(pngs[part], pa.binary())], schema=SCHEMA))


def image_chunks(indices: np.ndarray, images_at: ImagesAt) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """(rows, images) of sorted ``indices``, asking ``images_at`` for about ``CHUNK_BYTES`` of pixels at a
    time. Rows without an image are left out; a source without images (``None``) ends the stream."""
    step, start = ROW_GROUP, 0
    while start < len(indices):
        rows = indices[start : start + step]
        images = images_at(rows)
        if images is None:
            return
        kept = [i for i, img in enumerate(images) if img is not None]
        yield rows[kept], [images[i] for i in kept]
        start += len(rows)
        if kept:  # the next chunk sized by these images' bytes
            per_image = sum(images[i].nbytes for i in kept) // len(kept)
            step = max(ROW_GROUP, CHUNK_BYTES // max(1, per_image))


def png_chunks(images: Mapping[int, np.ndarray]) -> Iterator[tuple[np.ndarray, list[bytes]]]:
    """(indices, PNGs) of any mapping of images in index order: a file's stored groups, else encoded."""
    if isinstance(images, ExampleImages):
        yield from images.png_groups()
        return
    keys = np.array(sorted(images), dtype=np.int64)
    for lo in range(0, keys.size, ROW_GROUP):
        part = keys[lo : lo + ROW_GROUP]
        yield part, [png_bytes(images[int(i)]) for i in part]


def collect_images(
    indices: np.ndarray, labels: np.ndarray | None, images_at: ImagesAt, out: Path | None
) -> Mapping[int, np.ndarray]:
    """The display images of sorted rows ``indices``: streamed into ``out/examples.parquet`` and read from
    there lazily, or held in memory when there is no run directory."""
    chunks = image_chunks(indices, images_at)
    if out is None:
        return {int(i): img for rows, images in chunks for i, img in zip(rows, images, strict=True)}

    def label_of(rows: np.ndarray) -> np.ndarray:
        return np.full(rows.size, -1) if labels is None else np.asarray(labels)[np.searchsorted(indices, rows)]

    pngs = ((rows, [png_bytes(img) for img in images]) for rows, images in chunks)
    write_examples(out / "examples.parquet", pngs, label_of)
    return ExampleImages(out / "examples.parquet")
