"""``folder:PATH``: a folder of image files, with class subfolders or without, read with PIL alone."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ..errors import DirscopeError
from .arrays import index_chunks, indexed_from, to_tensor
from .base import Batch, DataSource
from .registry import DATA, Preprocess

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
THUMBNAIL_PX = 128
# 16-bit grayscale as PIL opens it ("I": 32-bit ints, read as 16-bit values, as older Pillows open 16-bit PNG).
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


@DATA.register(
    "folder",
    help="image files: class subfolders (labels by sorted name) or images directly in the folder",
    takes_arg=True,
)
def build_folder(arg: str, *, preprocess: Preprocess | None = None) -> DataSource:
    return FolderSource(arg, preprocess)


def walk_files(root: Path) -> Iterator[Path]:
    """Every non-hidden file under ``root``, relative to it, following symlinked folders as ImageFolder does.

    ``Path.rglob`` does not descend into symlinked folders before Python 3.13, and class folders are often
    symlinks. A folder that links back to one of its own ancestors (a cycle) is not entered again.
    """
    ancestors: dict[str, frozenset[str]] = {str(root): frozenset()}
    for folder, dirs, files in os.walk(root, followlinks=True):
        above = ancestors.pop(folder) | {os.path.realpath(folder)}
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        dirs[:] = [d for d in dirs if os.path.realpath(os.path.join(folder, d)) not in above]
        ancestors.update({os.path.join(folder, d): above for d in dirs})
        yield from (Path(os.path.relpath(os.path.join(folder, f), root)) for f in files if not f.startswith("."))


def find_images(root: Path, spec: str) -> list[Path]:
    """Image files under ``root`` (hidden ones left out), relative to it and sorted by that path."""
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DirscopeError(f"{spec}: {root} {what}; give a folder of images")
    found = [rel for rel in walk_files(root) if rel.suffix.lower() in IMAGE_EXTENSIONS and (root / rel).is_file()]
    if not found:
        raise DirscopeError(f"{spec}: no images ({', '.join(IMAGE_EXTENSIONS)}) in {root}; give a folder of images")
    return sorted(found, key=Path.as_posix)


def class_labels(files: list[Path], spec: str) -> tuple[np.ndarray | None, list[str] | None]:
    """Labels from class subfolders (ids by sorted name); None when the images sit directly in the folder."""
    nested = [rel for rel in files if len(rel.parts) > 1]
    if not nested:
        return None, None
    if len(nested) < len(files):
        loose = next(rel for rel in files if len(rel.parts) == 1)
        raise DirscopeError(f"{spec} mixes images ({loose}) with class subfolders; move the loose images into one")
    names = sorted({rel.parts[0] for rel in files})
    ids = {name: i for i, name in enumerate(names)}
    labels = np.array([ids[rel.parts[0]] for rel in files], dtype=np.int64)
    return labels, imagenet_names([printable(name) for name in names])


def printable(name: str) -> str:
    """A file name as text that JSON and Parquet can store: bytes that are not UTF-8 (which Python keeps as
    lone surrogates) are shown as ``\\xe9``, so distinct names stay distinct."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def imagenet_names(folders: list[str]) -> list[str]:
    """Class names for ImageNet's synset-id folders (``n01440764`` -> ``tench``); other names stay as they are.

    The two names ImageNet uses twice (crane, maillot) keep their synset id: ``crane (n02012849)``.
    """
    from ..models.imagenet import imagenet_classes

    classes = imagenet_classes()
    index = classes.index_of_wnid()
    if not all(name in index for name in folders):
        return folders
    names = classes.names
    twice = {n for n in names if names.count(n) > 1}
    return [f"{names[index[w]]} ({w})" if names[index[w]] in twice else names[index[w]] for w in folders]


def to_eight_bit(img: Image.Image) -> Image.Image:
    """A 16-bit grayscale image as mode L, scaled by the full 16-bit range: round(v / 257), so 65535 -> 255.

    PIL's own ``convert`` clips every value above 255, which turns a 16-bit image almost binary. Values of a
    mode I image outside [0, 65535] are clipped. Any other image comes back as it is.
    """
    if img.mode not in SIXTEEN_BIT_MODES:
        return img
    values = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
    return Image.fromarray(((values + 128) // 257).astype(np.uint8), mode="L")


def is_gray(mode: str) -> bool:
    return mode == "L" or mode in SIXTEEN_BIT_MODES


def reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")


class FolderSource(DataSource):
    """Image files in sorted relative-path order; that order is the dataset index.

    Without a model ``preprocess`` an image becomes float [C,H,W] in [0,1]: one channel when every
    image is grayscale (mode L, or 16-bit scaled to 8 bits by ``to_eight_bit``), else RGB for all.
    Unreadable files are skipped, never fatal: their indices are absent from the batches and listed in
    ``skipped``.
    """

    def __init__(self, path: str | Path, preprocess: Preprocess | None = None, workers: int = 0) -> None:
        self.spec = f"folder:{path}"
        self.root = Path(path).expanduser()
        self.preprocess = preprocess
        self.workers = check_workers(workers)
        self.files = find_images(self.root, self.spec)
        self.labels, self.label_names = class_labels(self.files, self.spec)
        self.skipped: list[tuple[str, str]] = []
        self._bad: set[int] = set()
        headers = self._read_headers()
        self.mode = "L" if all(is_gray(mode) for _, mode in headers.values()) else "RGB"
        if preprocess is None:
            self._check_one_size(headers)

    def _read_headers(self) -> dict[int, tuple[tuple[int, int], str]]:
        """Size and mode of every readable file (PIL reads only the header here)."""
        headers = {}
        for i, rel in enumerate(self.files):
            try:
                with Image.open(self.root / rel) as img:
                    headers[i] = (img.size, img.mode)
            except Exception as exc:  # PIL raises many types on bad files; any of them means "skip"
                self._skip(i, exc)
        if not headers:
            rel, why = self.skipped[0]
            raise DirscopeError(f"{self.spec}: none of its {len(self.files)} images can be read ({rel}: {why})")
        return headers

    def _check_one_size(self, headers: dict[int, tuple[tuple[int, int], str]]) -> None:
        first = {}
        for i, (size, _) in headers.items():
            first.setdefault(size, self.files[i])
        if len(first) > 1:
            (a, sa), (b, sb) = [(rel, f"{w}x{h}") for (w, h), rel in first.items()][:2]
            raise DirscopeError(
                f"{self.spec} has images of different sizes ({a} is {sa}, {b} is {sb}); "
                "resize them to one size, or use a model that brings its own preprocessing"
            )

    def _skip(self, i: int, exc: Exception) -> None:
        self._bad.add(i)
        self.skipped.append((printable(self.files[i].as_posix()), reason(exc)))

    def _open_for_thumbnail(self, i: int) -> Image.Image | None:
        """The image at index ``i`` decoded for a thumbnail, or None (recorded in ``skipped``) when it
        cannot be read."""
        if i in self._bad:
            return None
        try:
            return self._read(i, at_least=THUMBNAIL_PX)
        except Exception as exc:  # truncated or corrupt data often shows only when decoding
            self._skip(i, exc)
            return None

    def _read(self, i: int, at_least: int | None = None) -> Image.Image:
        """The decoded image; with ``at_least``, a JPEG decodes at 1/2, 1/4 or 1/8 scale when both sides stay
        at least that long (libjpeg scales in the DCT: twice as fast for ImageNet-sized thumbnails). A 16-bit
        grayscale image comes back as 8-bit L (``to_eight_bit``)."""
        with Image.open(self.root / self.files[i]) as img:
            if at_least is not None:
                img.draft(None, (at_least, at_least))
            img.load()
            return to_eight_bit(img.copy())

    def _input(self, img: Image.Image) -> torch.Tensor | np.ndarray:
        img = img.convert(self.mode)
        if self.preprocess is not None:
            return self.preprocess(img)
        a = np.asarray(img, dtype=np.uint8)
        return a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0)

    def _stack(self, inputs: list[torch.Tensor | np.ndarray], rows: np.ndarray) -> torch.Tensor:
        if self.preprocess is None:
            return to_tensor(np.stack(inputs))
        shapes = {tuple(t.shape) for t in inputs}
        if len(shapes) > 1:
            raise DirscopeError(
                f"{self.spec}: the model's preprocessing gave inputs of different shapes {sorted(shapes)} "
                f"(indices {rows[0]}..{rows[-1]}); use a preprocessing that resizes to one size"
            )
        return torch.stack([torch.as_tensor(t, dtype=torch.float32) for t in inputs])

    @property
    def size(self) -> int:
        """Number of files, unreadable ones included, so every file keeps its index."""
        return len(self.files)

    def batches(self, batch_size: int, indices: Sequence[int] | None = None) -> Iterator[Batch]:
        """Batches in index order; with ``workers`` > 0, DataLoader processes decode them ahead of the model."""
        chunks = index_chunks(self.size, batch_size, indices)
        decoded = self._decode_in_workers(chunks) if self.workers else (self._decode(rows) for rows in chunks)
        for items in decoded:
            kept, inputs = [], []
            for i, value in items:
                if isinstance(value, Exception):
                    self._skip(i, value)
                elif value is not None:
                    kept.append(i)
                    inputs.append(value)
            if kept:
                idx = np.array(kept, dtype=np.int64)
                yield Batch(self._stack(inputs, idx), idx, None if self.labels is None else self.labels[idx])

    def _decode(self, rows: np.ndarray) -> list[tuple[int, object]]:
        """(index, model input) per row; None for a file known bad, the exception for a newly failed one."""
        out: list[tuple[int, object]] = []
        for i in (int(r) for r in rows):
            if i in self._bad:
                out.append((i, None))
                continue
            try:
                out.append((i, self._input(self._read(i))))
            except Exception as exc:  # truncated or corrupt data often shows only when decoding
                out.append((i, exc))
        return out

    def _decode_in_workers(self, chunks: Iterator[np.ndarray]) -> Iterator[list[tuple[int, object]]]:
        """The same items as ``_decode``, from ``workers`` processes, in order (DataLoader keeps it)."""
        loader = DataLoader(
            _Chunks(self),
            batch_size=None,
            sampler=list(chunks),
            num_workers=self.workers,
            collate_fn=_as_is,
            prefetch_factor=4,
        )
        yield from loader

    def batches_from(self, batch_size: int, start: int) -> Iterator[Batch]:
        return indexed_from(self, batch_size, start)

    def labels_at(self, indices: np.ndarray) -> np.ndarray | None:
        return None if self.labels is None else self.labels[np.asarray(indices, dtype=np.int64)]

    def images_at(self, indices: np.ndarray) -> list[np.ndarray] | None:
        """The original images as uint8, shrunk to at most 128 px on the longer side."""
        images = []
        for i in np.asarray(indices, dtype=np.int64):
            img = self._open_for_thumbnail(int(i))
            if img is None:
                raise DirscopeError(f"{self.spec}: cannot read {self.files[int(i)]} any more; restore it or rerun")
            img = img.convert("L" if img.mode == "L" else "RGB")
            img.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            images.append(np.asarray(img, dtype=np.uint8))
        return images

    def describe(self) -> dict:
        return {
            **super().describe(),
            "path": printable(str(self.root.resolve())),
            "skipped": [list(item) for item in self.skipped],
        }


class _Chunks(torch.utils.data.Dataset):
    """Decodes one chunk of rows per item, so a worker process handles a whole batch at a time."""

    def __init__(self, source: FolderSource) -> None:
        self.source = source

    def __getitem__(self, rows: np.ndarray) -> list[tuple[int, object]]:
        return self.source._decode(rows)


def _as_is(items: list[tuple[int, object]]) -> list[tuple[int, object]]:
    return items  # DataLoader's default would turn numpy inputs into tensors


def check_workers(workers: int) -> int:
    if not isinstance(workers, int) or workers < 0:
        raise DirscopeError(f"--workers must be a whole number >= 0, got {workers!r}")
    return workers
