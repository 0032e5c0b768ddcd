"""What every data source offers the engine: ordered batches, labels and display images by dataset index."""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass
class Batch:
    """Rows ``indices`` (increasing dataset indices) of the inputs ``x``, with labels where known."""

    x: torch.Tensor
    indices: np.ndarray  # int64 [B]
    y: np.ndarray | None = None  # int64 [B], -1 where unknown


class DataSource(ABC):
    """A dataset in a fixed order. Index i always means the same example, so results can be looked up later.

    Subclasses set ``spec`` (how to build it again), ``label_names`` (or None) and implement the
    abstract methods. ``size`` is None only for one-shot iterables whose length is unknown up front.
    Sources read from a few files set ``content`` (see :func:`files_content`; built-in data verified against
    pinned digests gives those digests), so that a checkpoint or a cache can tell a rewritten file from the one
    it was made from.
    """

    spec: str = "<python object>"
    label_names: list[str] | None = None
    content: dict[str, Any] | None = None

    @property
    @abstractmethod
    def size(self) -> int | None:
        """Number of examples, or None when unknown before a full pass."""

    @abstractmethod
    def batches(self, batch_size: int, indices: Sequence[int] | None = None) -> Iterator[Batch]:
        """Yield batches in dataset order; ``indices`` (sorted) restricts the pass to a subset."""

    def batches_from(self, batch_size: int, start: int) -> Iterator[Batch]:
        """The batches of ``batches(batch_size)`` from dataset index ``start`` on, so a resumed scan sees the
        same batches as an uninterrupted one. ``start`` follows the last row of a batch already seen.

        This default skips by consuming, which suits any source; indexed sources override it to seek.
        """
        for batch in self.batches(batch_size):
            if batch.indices[-1] >= start:
                yield batch

    def labels_at(self, indices: np.ndarray) -> np.ndarray | None:
        """Integer labels (-1 unknown) of the given rows, or None when the source has no labels."""
        return None

    def images_at(self, indices: np.ndarray) -> list[np.ndarray] | None:
        """Display images (uint8, HxW or HxWx3) of the given rows, or None when not viewable."""
        return None

    def describe(self) -> dict:
        """What the manifest records about this source (``content`` only where the source knows it)."""
        described = {"spec": self.spec, "size": self.size, "label_names": self.label_names}
        return described if self.content is None else {**described, "content": self.content}


def files_content(*paths: Path) -> dict[str, Any]:
    """A cheap identity of data files: name, size and modification time of each, read without the bytes.

    A rewritten file of the same size still gets another mtime; a checkpoint from it is then refused.
    """
    files = []
    for path in paths:
        stat = path.stat()
        files.append({"file": path.name, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return {"files": files}


def to_display_image(x: np.ndarray | torch.Tensor) -> np.ndarray | None:
    """Turn one model input into a uint8 image for figures, or None if it is not image-shaped.

    [H,W], [1,H,W] and [3,H,W] (or channels-last [H,W,3]) are images. Values in [0,1] are scaled
    by 255; other ranges are min-max scaled per image, because normalised inputs have no fixed range.
    """
    a = x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    images = to_display_images(a[None])
    return None if images is None else images[0]


def to_display_images(stack: np.ndarray, overwrite: bool = False) -> list[np.ndarray] | None:
    """``to_display_image`` of every row of ``stack`` [n, ...] at once: thousands of examples end a run.

    ``overwrite=True`` lets a float32 ``stack`` serve as the scratch space, saving a copy.
    """
    if np.issubdtype(stack.dtype, np.integer) and stack.dtype != np.uint8:
        return None  # token ids, not pixels
    img = stack if stack.dtype == np.uint8 else _scaled_to_uint8(stack, overwrite)
    if img.ndim == 4 and img.shape[1] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.ascontiguousarray(np.moveaxis(img, 1, -1))  # one transposing copy; each row is then contiguous
    if img.ndim == 4 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 3 or (img.ndim == 4 and img.shape[-1] == 3):
        return [np.ascontiguousarray(one) for one in img]
    return None


def _scaled_to_uint8(stack: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """Per image: [0,1] times 255, any other range min-max stretched to [0,255], constant images zero.

    The same float32 operations, in the same order, as for one image: (a - lo) / (hi - lo) * 255. Done in
    place on one float32 copy (or on ``stack`` itself when ``overwrite``); images with NaN or inf (rare) take
    the slower NaN-aware path: the range is that of the finite pixels, +inf pixels show 255, NaN and -inf 0.
    """
    a = np.asarray(stack, dtype=np.float32) if overwrite else np.array(stack, dtype=np.float32)  # written in place
    flat = a.reshape(len(a), -1)
    all_finite = bool(np.isfinite(flat).all())
    lo = np.empty(len(a), np.float32)
    hi = np.empty(len(a), np.float32)
    posinf = None
    if all_finite:
        flat.min(axis=1, out=lo), flat.max(axis=1, out=hi)
    else:
        posinf = np.isposinf(a)
        a[~np.isfinite(a)] = np.nan  # out of the range; NaN arithmetic warns of nothing, inf - inf does
        flat = a.reshape(len(a), -1)  # again: a view of ``a`` only where ``a`` is contiguous
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN images: scaled to zeros below
            lo[:], hi[:] = np.nanmin(flat, axis=1), np.nanmax(flat, axis=1)
    unit, spread = (lo >= 0.0) & (hi <= 1.0), hi > lo
    shift = np.where(unit, np.float32(0.0), lo)
    span = np.where(unit | ~spread, 1.0, hi.astype(np.float64) - lo).astype(np.float32)
    gain = np.where(unit | spread, np.float32(255.0), np.float32(0.0))  # constant images become zeros
    shape = (len(a),) + (1,) * (a.ndim - 1)
    a -= shift.reshape(shape)
    a /= span.reshape(shape)
    a *= gain.reshape(shape)
    np.round(a, out=a)
    if posinf is not None:
        np.nan_to_num(a, copy=False)
        a[posinf] = 255.0
    np.clip(a, 0, 255, out=a)
    return a.astype(np.uint8)
