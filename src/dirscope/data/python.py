"""Python objects as data, for the API: arrays, torch Datasets and iterables of batches."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, RandomSampler

from ..errors import DirscopeError
from .arrays import ArraySource, index_chunks, indexed_from, input_array, integer_labels, to_tensor
from .base import Batch, DataSource, to_display_image, to_display_images
from .folder import check_workers
from .registry import DATA, Preprocess

ARRAY_TYPES = (np.ndarray, torch.Tensor)
ACCEPTED = (
    "a spec string (e.g. 'mnist', 'npz:PATH', 'folder:PATH'), a DataSource, an array or tensor [N,...], "
    "a tuple (x, y), a torch Dataset, or an iterable of batches"
)
ITERABLE_DATASET_BATCH = 256
REPLAY_BYTES = 512 * 2**20  # what a one-shot iterator may hold back for the next pass


def load_data(obj: object, preprocess: Preprocess | None = None, workers: int = 0) -> DataSource:
    """Turn what the caller has into a DataSource; ``preprocess`` and ``workers`` (decoding processes)
    only matter for image folders."""
    workers = check_workers(workers)
    if isinstance(obj, str):
        source = DATA.build(obj, preprocess=preprocess)
        if workers and hasattr(source, "workers"):
            source.workers = workers
        return source
    if isinstance(obj, DataSource):
        return obj
    if isinstance(obj, ARRAY_TYPES):
        return ArraySource(obj, spec=f"<{type(obj).__name__} {list(obj.shape)}>")
    if is_xy_pair(obj):
        return ArraySource(obj[0], obj[1], spec=f"<(x, y) {list(obj[0].shape)}>")
    if isinstance(obj, IterableDataset):
        loader = DataLoader(obj, batch_size=ITERABLE_DATASET_BATCH, collate_fn=collate_items)
        return IterableSource(loader, spec=f"<IterableDataset {type(obj).__name__}>")
    if isinstance(obj, Dataset) or is_map_style(obj):
        return TorchDatasetSource(obj)
    if isinstance(obj, Iterable) and not isinstance(obj, (str, bytes, Mapping)):
        return IterableSource(obj)
    raise DirscopeError(f"cannot use a {type(obj).__name__} as data; give {ACCEPTED}")


def is_xy_pair(obj: object) -> bool:
    """(x, y) of arrays, or of x and a list of its integer labels (not a tuple of two batches)."""
    if not (isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], ARRAY_TYPES)):
        return False
    return isinstance(obj[1], ARRAY_TYPES) or integer_labels(obj[1], len(obj[0])) is not None


def is_map_style(obj: object) -> bool:
    """Anything indexable with a length, except the containers that mean something else here."""
    kind = type(obj)
    containers = (list, tuple, str, bytes, Mapping)
    return hasattr(kind, "__getitem__") and hasattr(kind, "__len__") and not isinstance(obj, containers)


def item_label(value: object) -> int | None:
    """An integer label, or None for anything else (a mask, a caption...)."""
    if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    return None


def split_item(item: object) -> tuple[object, int | None]:
    """A dataset item is an input, or a tuple/list whose first element is the input and second the label."""
    if isinstance(item, (tuple, list)):
        if not item:
            raise DirscopeError("a dataset item is an empty tuple; items must be x or (x, label)")
        return item[0], item_label(item[1]) if len(item) > 1 else None
    return item, None


def collate_items(items: Sequence[object]) -> tuple[torch.Tensor, np.ndarray | None]:
    """Stack dataset items into model inputs (uint8 scaled to [0,1], integers as int64 token ids) and labels (-1
    where unknown)."""
    xs, ys = zip(*(split_item(item) for item in items), strict=True)
    try:
        x = torch.stack([torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v) for v in xs])
    except (TypeError, RuntimeError, ValueError) as exc:
        raise DirscopeError(
            f"dataset items cannot be stacked into a batch ({exc}); give tensors of one shape"
        ) from None
    labels = None if all(v is None for v in ys) else np.array([-1 if v is None else v for v in ys], dtype=np.int64)
    return to_tensor(input_array(x, "dataset items")), labels


class TorchDatasetSource(DataSource):
    """A map-style dataset (``__getitem__`` and ``__len__``), read in index order through a DataLoader."""

    def __init__(self, dataset: Any, spec: str | None = None) -> None:
        self.dataset = dataset
        self.spec = spec or f"<Dataset {type(dataset).__name__}>"
        try:
            self._size = len(dataset)
        except TypeError:
            raise DirscopeError(f"{self.spec} has no length; give a Dataset with __len__ or an iterable") from None
        if self._size == 0:
            raise DirscopeError(f"{self.spec} is empty; give a dataset with at least one example")
        self.has_labels = split_item(dataset[0])[1] is not None
        classes = getattr(dataset, "classes", None)
        self.label_names = [str(c) for c in classes] if isinstance(classes, (list, tuple)) and self.has_labels else None

    @property
    def size(self) -> int:
        return self._size

    def batches(self, batch_size: int, indices: Sequence[int] | None = None) -> Iterator[Batch]:
        chunks = list(index_chunks(self._size, batch_size, indices))
        order = np.concatenate(chunks).tolist() if chunks else []
        loader = DataLoader(self.dataset, batch_size=batch_size, sampler=order, collate_fn=collate_items)
        for rows, (x, y) in zip(chunks, loader, strict=True):
            yield Batch(x, rows, y)

    def batches_from(self, batch_size: int, start: int) -> Iterator[Batch]:
        return indexed_from(self, batch_size, start)

    def _items(self, indices: np.ndarray) -> list[tuple[object, int | None]]:
        return [split_item(self.dataset[int(i)]) for i in np.asarray(indices)]

    def labels_at(self, indices: np.ndarray) -> np.ndarray | None:
        if not self.has_labels:
            return None
        return np.array([-1 if y is None else y for _, y in self._items(indices)], dtype=np.int64)

    def images_at(self, indices: np.ndarray) -> list[np.ndarray] | None:
        images = [to_display_image(collate_items([x])[0][0]) for x, _ in self._items(indices)]
        return None if any(img is None for img in images) else images  # type: ignore[return-value]


def split_batch(batch: object, spec: str) -> tuple[torch.Tensor, np.ndarray | None]:
    """A batch is x [B,...] or a tuple/list (x, y); y counts as labels only when it is B integers."""
    if isinstance(batch, ARRAY_TYPES):
        x, y = batch, None
    elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], ARRAY_TYPES):
        x, y = batch[0], batch[1] if len(batch) > 1 else None
    else:
        raise DirscopeError(f"{spec}: a batch is a {type(batch).__name__}; each batch must be x [B,...] or (x, y)")
    x_tensor = to_tensor(input_array(x, f"{spec}: batch x"))
    return x_tensor, integer_labels(y, len(x_tensor))


def known_rows(obj: object, spec: str) -> int | None:
    """The number of rows, when the object knows it without being consumed."""
    if isinstance(obj, (list, tuple)):
        return sum(len(split_batch(batch, spec)[0]) for batch in obj)
    if isinstance(obj, DataLoader) and obj.batch_size is not None and not obj.drop_last:
        try:
            return len(obj.sampler)  # type: ignore[arg-type]
        except TypeError:
            return None
    return None


def item_nbytes(item: object) -> int:
    parts = item if isinstance(item, (tuple, list)) else (item,)
    return sum(int(getattr(part, "nbytes", 0)) for part in parts)


class Replay:
    """A one-shot iterator read more than once (a dry forward, a fitting pass, the scan) while it is small.

    The items pulled so far are kept, up to REPLAY_BYTES in all, and every pass starts with them.
    Once more than that has been pulled, the iterator is used up after the pass that pulled it.
    """

    def __init__(self, iterator: Iterator, spec: str) -> None:
        self.iterator = iterator
        self.spec = spec
        self.pending: list[object] = []
        self.used_up = False

    def items(self) -> Iterator[object]:
        if self.used_up:
            raise DirscopeError(f"{self.spec} is a one-shot iterator, already used; pass a list or a DataLoader")
        pulled, self.pending = self.pending, []
        held = sum(map(item_nbytes, pulled))
        try:
            yield from pulled
            for item in self.iterator:
                held += item_nbytes(item)
                if held <= REPLAY_BYTES:
                    pulled.append(item)
                else:
                    pulled.clear()
                yield item
        finally:
            self.used_up = held > REPLAY_BYTES
            self.pending = [] if self.used_up else pulled


class IterableSource(DataSource):
    """An iterable of batches; indices count rows in the order they come.

    A one-shot iterator (``iter(obj) is obj``) allows one pass once it is large (see :class:`Replay`):
    its labels are recorded as they stream and it has no images. A re-iterable one (a list, a DataLoader) is read
    again to look rows up, so it must give the same rows in the same order every time.
    """

    def __init__(self, iterable: Iterable, spec: str | None = None) -> None:
        self.iterable = iterable
        self.spec = spec or f"<{type(iterable).__name__} of batches>"
        if isinstance(iterable, DataLoader) and isinstance(iterable.sampler, RandomSampler):
            raise DirscopeError(f"{self.spec} shuffles; give a DataLoader with shuffle=False so indices stay fixed")
        # A DataLoader is re-iterable; asking it for an iterator could start its worker processes.
        self.one_shot = not isinstance(iterable, DataLoader) and iter(iterable) is iterable
        self._replay = Replay(iterable, self.spec) if self.one_shot else None  # type: ignore[arg-type]
        self._size = known_rows(iterable, self.spec)
        if self._size == 0:
            raise DirscopeError(f"{self.spec} is empty; give at least one batch with examples")
        self._labels: list[np.ndarray] = []  # one-shot only: labels of the latest pass, -1 unknown

    @property
    def size(self) -> int | None:
        return self._size

    def batches(self, batch_size: int, indices: Sequence[int] | None = None) -> Iterator[Batch]:
        """The iterable's own batches (split to at most ``batch_size`` rows), keeping only ``indices``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        wanted = None if indices is None else np.asarray(indices, dtype=np.int64)
        if wanted is not None and len(wanted) and (wanted[0] < 0 or np.any(np.diff(wanted) <= 0)):
            raise ValueError("indices must be sorted, unique and non-negative")
        start = 0
        self._labels = []
        with contextlib.closing(self._items()) as items:
            for item in items:
                x, y = split_batch(item, self.spec)
                if self.one_shot:
                    self._labels.append(y if y is not None else np.full(len(x), -1, dtype=np.int64))
                yield from self._slices(x, y, start, wanted, batch_size)
                start += len(x)
                if not self.one_shot and wanted is not None and (len(wanted) == 0 or start > wanted[-1]):
                    return
        if start == 0:
            raise DirscopeError(f"{self.spec} yielded no examples; give at least one batch")
        self._size = start

    def _items(self) -> Iterator[object]:
        yield from self.iterable if self._replay is None else self._replay.items()

    @staticmethod
    def _slices(
        x: torch.Tensor, y: np.ndarray | None, start: int, wanted: np.ndarray | None, batch_size: int
    ) -> Iterator[Batch]:
        if wanted is None:
            pos = np.arange(len(x), dtype=np.int64)
        else:
            lo, hi = np.searchsorted(wanted, [start, start + len(x)])
            pos = wanted[lo:hi] - start
        for i in range(0, len(pos), batch_size):
            p = pos[i : i + batch_size]
            yield Batch(x[torch.from_numpy(p)], p + start, None if y is None else y[p])

    def _lookup(self, indices: np.ndarray) -> tuple[list[Batch], np.ndarray, np.ndarray]:
        """Re-read rows given in any order: their batches, the sorted unique rows and the inverse map."""
        rows, inverse = np.unique(np.asarray(indices, dtype=np.int64), return_inverse=True)
        found = list(self.batches(max(len(rows), 1), rows))
        return found, rows, inverse

    def labels_at(self, indices: np.ndarray) -> np.ndarray | None:
        if self.one_shot:
            known = np.concatenate(self._labels) if self._labels else np.empty(0, dtype=np.int64)
            if not (known >= 0).any():
                return None
            idx = np.asarray(indices, dtype=np.int64)
            return np.where(idx < len(known), known[np.minimum(idx, len(known) - 1)], -1)
        found, rows, inverse = self._lookup(indices)
        if all(b.y is None for b in found):
            return None
        labels = np.full(len(rows), -1, dtype=np.int64)
        for b in found:
            if b.y is not None:
                labels[np.searchsorted(rows, b.indices)] = b.y
        return labels[inverse]

    def images_at(self, indices: np.ndarray) -> list[np.ndarray] | None:
        if self.one_shot:
            return None
        found, rows, inverse = self._lookup(indices)
        by_row = {}
        for b in found:
            shown = to_display_images(b.x.detach().cpu().float().numpy())
            if shown is None:
                return None
            by_row.update(zip(b.indices.tolist(), shown, strict=True))
        images = [by_row.get(int(rows[j])) for j in inverse]
        return None if any(img is None for img in images) else images  # type: ignore[return-value]

    def describe(self) -> dict:
        return {**super().describe(), "one_shot": self.one_shot}
