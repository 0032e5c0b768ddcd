"""In-memory arrays as a data source, plus the input and label checks every source shares."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ..errors import DirscopeError
from .base import Batch, DataSource, to_display_images

ACCEPTED_DTYPES = (
    "uint8 (scaled to [0,1]), float16/float32/float64 (fed to the model as float32), or other integers "
    "(token ids, fed as int64)"
)
# Bytes of example images converted at once: numpy works per call, not per image, and a chunk this small
# reuses the allocator's memory instead of faulting in fresh pages for every copy.
_DISPLAY_CHUNK_BYTES = 8 << 20


def input_array(a: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
    """Model inputs [N, ...] as uint8 (kept compact, scaled per batch), float32 or int64, else a one-line error.

    Floats are fed as they are, only cast to float32: normalisation is the model's business. Any other integer
    array is token ids for a model that starts with an embedding (a text corpus), fed as int64 and never drawn.
    """
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu()
        a = a.float().numpy() if a.is_floating_point() else a.numpy()
    if not isinstance(a, np.ndarray):
        raise DirscopeError(f"{what} must be a numpy array or torch tensor, got {type(a).__name__}")
    if a.ndim == 0:
        raise DirscopeError(f"{what} must have a leading dimension of examples [N, ...], got a scalar")
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.floating):
        return a.astype(np.float32, copy=False)
    if np.issubdtype(a.dtype, np.integer):
        if a.dtype == np.uint64 and a.size and int(a.max()) > np.iinfo(np.int64).max:
            raise DirscopeError(f"{what} holds token ids beyond int64; token ids must fit torch.long")
        return a.astype(np.int64, copy=False)
    raise DirscopeError(f"{what} has dtype {a.dtype}; accepted dtypes: {ACCEPTED_DTYPES}")


def to_tensor(rows: np.ndarray) -> torch.Tensor:
    """A batch for the model: float32 from uint8 or float32 rows, int64 (token ids) from int64 rows."""
    t = torch.from_numpy(np.ascontiguousarray(rows))
    return t.float().div_(255.0) if rows.dtype == np.uint8 else t


def integer_labels(y: object, n: int) -> np.ndarray | None:
    """``y`` as int64 labels if it is a 1-D integer array (or list, tuple) of length ``n``, else None."""
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    elif isinstance(y, (list, tuple)):  # e.g. batches (x, [0, 1, 2, 3]) from a plain Python generator
        y = _sequence_array(y)
    if not isinstance(y, np.ndarray) or y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        return None
    return y.astype(np.int64)


def _sequence_array(y: list | tuple) -> np.ndarray | None:
    """A list or tuple as an array, or None when it is ragged or holds things numpy cannot stack."""
    try:
        return np.asarray(y)
    except (ValueError, TypeError):
        return None


def check_labels(y: object, n: int, what: str) -> np.ndarray:
    """Like :func:`integer_labels`, but a one-line error when ``y`` does not fit."""
    labels = integer_labels(y, n)
    if labels is None:
        shape = getattr(y, "shape", None)
        dtype = getattr(y, "dtype", type(y).__name__)
        raise DirscopeError(f"{what} must be integer labels of shape ({n},), one per example; got {shape} {dtype}")
    if len(labels) and labels.min() < -1:  # -1 marks an unknown label; anything lower would silently be one too
        raise DirscopeError(
            f"{what} has label {int(labels.min())}; labels must be class indices 0, 1, ... (-1 for unknown)"
        )
    return labels


def check_label_names(names: Sequence[str] | np.ndarray | None, y: np.ndarray | None, what: str) -> list[str] | None:
    """Label names as a list of strings that covers every label in ``y``."""
    if names is None:
        return None
    # Bytes (np.array([b"cat"]), h5py's strings) are decoded: str() would give "b'cat'".
    names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in np.asarray(names).reshape(-1)]
    if y is not None and len(y) and int(y.max()) >= len(names):
        raise DirscopeError(f"{what}: label {int(y.max())} has no name ({len(names)} label_names given)")
    return names


def index_chunks(size: int, batch_size: int, indices: Sequence[int] | np.ndarray | None) -> Iterator[np.ndarray]:
    """Dataset indices in increasing order, ``batch_size`` at a time."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rows = np.arange(size, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    if len(rows) and (rows[0] < 0 or rows[-1] >= size or np.any(np.diff(rows) <= 0)):
        raise ValueError(f"indices must be sorted, unique and in [0, {size})")
    for start in range(0, len(rows), batch_size):
        yield rows[start : start + batch_size]


def indexed_from(source: DataSource, batch_size: int, start: int) -> Iterator[Batch]:
    """``batches_from`` for sources that batch with :func:`index_chunks`: seek to the next chunk boundary.

    Rounding up to a multiple of ``batch_size`` keeps the chunks of an uninterrupted pass even when the
    last rows of the previous chunk were skipped (unreadable files).
    """
    first = -(-start // batch_size) * batch_size
    if first >= source.size:
        return iter(())
    return source.batches(batch_size, np.arange(first, source.size, dtype=np.int64))


class ArraySource(DataSource):
    """A dataset held in memory: inputs ``x`` [N, ...], optional integer labels and display images.

    ``display`` (aligned with ``x``, defaults to ``x``) is what figures show, e.g. uint8 [N,H,W]
    originals when ``x`` is a transformed version of them.
    """

    def __init__(
        self,
        x: np.ndarray | torch.Tensor,
        y: np.ndarray | torch.Tensor | None = None,
        label_names: Sequence[str] | np.ndarray | None = None,
        spec: str = "<array>",
        display: np.ndarray | None = None,
    ) -> None:
        self.spec = spec
        self.x = input_array(x, f"{spec}: x")
        if len(self.x) == 0:
            raise DirscopeError(f"{spec} is empty (x has 0 rows); give at least one example")
        self.y = None if y is None else check_labels(y, len(self.x), f"{spec}: y")
        self.label_names = check_label_names(label_names, self.y, spec)
        if display is not None and len(display) != len(self.x):
            raise ValueError(f"display has {len(display)} rows but x has {len(self.x)}")
        self.display = self.x if display is None else display

    @property
    def size(self) -> int:
        return len(self.x)

    def batches(self, batch_size: int, indices: Sequence[int] | None = None) -> Iterator[Batch]:
        for rows in index_chunks(self.size, batch_size, indices):
            yield Batch(to_tensor(self.x[rows]), rows, None if self.y is None else self.y[rows])

    def batches_from(self, batch_size: int, start: int) -> Iterator[Batch]:
        return indexed_from(self, batch_size, start)

    def labels_at(self, indices: np.ndarray) -> np.ndarray | None:
        return None if self.y is None else self.y[np.asarray(indices, dtype=np.int64)]

    def images_at(self, indices: np.ndarray) -> list[np.ndarray] | None:
        rows = np.asarray(indices, dtype=np.int64)
        step = max(1, _DISPLAY_CHUNK_BYTES // max(1, self.display[:1].nbytes))
        images: list[np.ndarray] = []
        for start in range(0, rows.size, step):
            chunk = to_display_images(np.asarray(self.display[rows[start : start + step]]), overwrite=True)
            if chunk is None:
                return None
            images += chunk
        return images

    def describe(self) -> dict:
        return {**super().describe(), "input_shape": list(self.x.shape[1:])}
