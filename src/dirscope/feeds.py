"""Where a scan's activations come from: the model run over a data source, or an activation cache.

Both give the engine the same things: the layers and their shapes, the rows' labels and images, what the
manifest and checkpoints record about the model and data, and ``stream``: batches of (dataset indices,
labels, activations by layer) in increasing index order, cut where an uninterrupted pass cuts them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from .cache import CachedRows, CacheReader, Step
from .capture import Capture, check_unique_layers, hookable, list_layers, resolve_layers
from .checkpoint import weights_digest
from .data import DataSource, load_data
from .errors import DirscopeError
from .models import LoadedModel, load_model
from .project import feature_axis


class Rows(Protocol):
    """What the result needs to know about the rows: a DataSource, or the rows of a cache."""

    spec: str
    label_names: list[str] | None

    @property
    def size(self) -> int | None: ...

    def labels_at(self, indices: np.ndarray) -> np.ndarray | None: ...

    def images_at(self, indices: np.ndarray) -> list[np.ndarray] | None: ...

    def describe(self) -> dict: ...


class Feed(Protocol):
    rows: Rows
    names: list[str]
    shapes: dict[str, tuple[int, ...]]
    axes: dict[str, int]  # each layer's feature axis within its per-example shape
    model: dict[str, Any]  # spec, weights_sha256, and the source's info or the cache path
    label_names: list[str] | None

    def stream(
        self, batch_size: int, *, start: int = 0, indices: np.ndarray | None = None, limit: int | None = None
    ) -> Iterator[Step]: ...


class ModelFeed:
    """Activations from forward passes of the model, with hooks on the requested layers."""

    def __init__(
        self, model: Any, layers: Sequence[str], data: Any, device: str, workers: int = 0, layout: str = "auto"
    ) -> None:
        self.loaded: LoadedModel = load_model(model, device)
        self.rows: DataSource = load_data(data, preprocess=self.loaded.preprocess, workers=workers)
        self.device = device
        self.names = resolve_layers(self.loaded.module, list(layers))
        self.shapes = self._shapes(every=list(layers) == ["all"])
        modules = hookable(self.loaded.module)
        self.axes = {name: feature_axis(shape, layout, modules[name]) for name, shape in self.shapes.items()}
        self.label_names = self.rows.label_names or self.loaded.label_names
        self.model = {"spec": self.loaded.spec, "weights_sha256": weights_digest(self.loaded.module)}
        if self.loaded.info:
            self.model["info"] = self.loaded.info

    def _shapes(self, every: bool = False) -> dict[str, tuple[int, ...]]:
        """One dry forward on the first two examples for every layer's per-example output shape.

        With ``every`` (``--layer all``) the leaves that a forward does not run exactly once with a tensor are
        left out, with a note: an attention block's ``out_proj`` (whose weights the block reads directly) or a
        ReLU module applied twice would otherwise refuse the whole run.
        """
        example = first_inputs(self.rows)
        try:
            infos = {info.name: info for info in list_layers(self.loaded.module, example.to(self.device))}
        except DirscopeError as exc:
            hint = _shape_hint(tuple(example.shape[1:]), self.loaded.input_shape) + token_hint(
                self.loaded.module, example
            )
            raise DirscopeError(f"{exc}{hint}") from None
        if every:
            skipped = [n for n in self.names if infos[n].calls != 1 or infos[n].shape is None]
            self.names = [n for n in self.names if n not in skipped]
            if not self.names:
                raise DirscopeError("--layer all found no leaf layer that runs once per forward; name the layers")
            if skipped:
                print(
                    f"note: --layer all leaves out {len(skipped)} layer{'s' if len(skipped) > 1 else ''} that do "
                    f"not run exactly once per forward ({', '.join(skipped)}); `dirscope layers MODEL` shows why",
                    file=sys.stderr,
                )
        shapes = {}
        for name in self.names:
            info = infos[name]
            if info.shape is None:
                raise DirscopeError(f"layer {name!r} did not produce a tensor in a dry forward; choose another layer")
            if info.calls > 1:
                raise DirscopeError(f"layer {name!r} runs {info.calls} times per forward pass; hook one of its callers")
            if info.dtype is not None and info.dtype.is_complex:
                raise DirscopeError(f"layer {name!r} gives complex values ({info.dtype}); choose a real-valued layer")
            if 0 in info.shape:
                shape = list(info.shape)
                raise DirscopeError(f"layer {name!r} gives empty activations (shape {shape}); choose another")
            shapes[name] = info.shape
        return shapes

    def stream(
        self, batch_size: int, *, start: int = 0, indices: np.ndarray | None = None, limit: int | None = None
    ) -> Iterator[Step]:
        """Rows past ``limit`` are dropped before the forward pass, which stops at the last hooked layer."""
        if indices is not None:
            batches = self.rows.batches(batch_size, indices)
        else:
            batches = self.rows.batches_from(batch_size, start)
        with Capture(self.loaded.module, self.names) as capture:
            for batch in batches:
                x, idx, y = batch.x, batch.indices, batch.y
                if limit is not None and idx[-1] >= limit:
                    keep = idx < limit
                    x, idx, y = x[torch.from_numpy(keep)], idx[keep], None if y is None else y[keep]
                if idx.size:
                    yield idx, y, capture.run(to_device(x, self.device))
                if limit is not None and batch.indices[-1] >= limit - 1:
                    return


def _shape_hint(given: tuple[int, ...], declared: tuple[int, ...] | None) -> str:
    """What to change when the data's per-example shape is not the one the model declares."""
    if declared is None or given == declared:
        return ""
    hint = f"; the model takes {list(declared)} per example"
    if len(declared) == len(given) + 1 and declared[0] == 1 and declared[1:] == given:
        hint += ": add the channel axis to the data (x[:, None] for an array x of shape [N, ...])"
    return hint


def takes_token_ids(module: torch.nn.Module) -> bool:
    """Whether the model's first leaf module is an embedding, so that its inputs are token ids, not floats."""
    for _, sub in module.named_modules():
        if not any(True for _ in sub.children()):
            return isinstance(sub, (torch.nn.Embedding, torch.nn.EmbeddingBag))
    return False


def token_hint(module: torch.nn.Module, example: torch.Tensor) -> str:
    """What to change when float inputs reach a model that starts with an embedding: most likely token ids
    stored as uint8, which are read as pixels and scaled to [0, 1]."""
    if not example.is_floating_point() or not takes_token_ids(module):
        return ""
    return (
        "; the model starts with an embedding, which takes token ids: store them as an integer array other than "
        "uint8 (uint8 is read as pixels and scaled to [0, 1]), e.g. x.astype(np.int64)"
    )


class CacheFeed:
    """Activations read back from an activation cache, with no model."""

    def __init__(self, path: Any, layers: Sequence[str] | None, data: Any, pool: str, layout: str = "auto") -> None:
        self.reader = CacheReader(path)
        self.names = list(layers) if layers and list(layers) != ["all"] else self.reader.names
        check_unique_layers(self.names)
        self.reader.check(self.names, pool)
        self.shapes = {name: self.reader.shape(name) for name in self.names}
        self.axes = {name: self.reader.layers[name]["feature_axis"] for name in self.names}
        for name, axis in self.axes.items():
            if layout != "auto" and axis != feature_axis(self.shapes[name], layout):
                raise DirscopeError(
                    f"the cache holds layer {name!r} with its features on axis {axis} of {list(self.shapes[name])}, "
                    f"not --feature-axis {layout}; run the model again with --cache to store it that way"
                )
        self.rows = CachedRows(self.reader, data)
        self.label_names = self.rows.label_names
        self.model = {**self.reader.index["model"], "from_cache": str(self.reader.folder.resolve())}

    def stream(
        self, batch_size: int, *, start: int = 0, indices: np.ndarray | None = None, limit: int | None = None
    ) -> Iterator[Step]:
        return self.reader.stream(self.names, batch_size, start=start, indices=indices, limit=limit)


def to_device(x: torch.Tensor, device: str) -> torch.Tensor:
    """A batch on ``device``; to a GPU from pinned memory, so the copy is asynchronous."""
    if torch.device(device).type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def first_inputs(source: DataSource) -> torch.Tensor:
    """The first (up to) two model inputs of a source, for dry forwards."""
    for batch in source.batches(2):
        return batch.x
    raise DirscopeError(f"data {source.spec!r} yielded no examples; check the dataset")
