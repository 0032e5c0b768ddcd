"""Reference embeddings for ``embedding_coherence``: an independent network's view of the examples.

A reference is ``pixels`` (the display images, a weak baseline), ``hog`` (histograms of oriented
gradients, a classical descriptor that no network learned), or ``SPEC@LAYER`` for any model spec and layer
(e.g. ``mnist-mlp@fc2``). The built-in networks are each other's default references: trained separately,
with a different seed and architecture, so their agreement is not the scanned model's own. ImageNet models
get EfficientNet-Lite0's penultimate features; Lite0 itself, with no second natural-image network
available offline, gets ``hog``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import torch
from PIL import Image

from .capture import Capture, resolve_layers
from .data import DataSource, load_data
from .errors import DirscopeError
from .models import load_model
from .project import feature_axis, positions

PIXELS = "pixels"
HOG = "hog"
LITE0_FEATURES = "efficientnet-lite0@_dropout"
# For each model source: an independent reference (other architecture, trained separately).
DEFAULT_REFERENCES = {
    "mnist-cnn": "mnist-mlp@fc2",
    "mnist-mlp": "mnist-cnn@fc1",
    "fashion-cnn": "fashion-mlp@fc2",
    "fashion-mlp": "fashion-cnn@fc1",
    "efficientnet-lite0": HOG,
    "torchvision": LITE0_FEATURES,
    "timm": LITE0_FEATURES,
}
PIXEL_SIDE = 32  # images of differing sizes are resized to this square for the pixel baseline
HOG_SIDE = 64


def default_references(model_spec: str) -> list[str]:
    """The pixel baseline plus the model source's independent reference, where it has one."""
    other = DEFAULT_REFERENCES.get(model_spec.split(":")[0])
    return [PIXELS] + ([other] if other else [])


def hog_embeddings(images: Mapping[int, np.ndarray], rows: np.ndarray) -> np.ndarray:
    """HOG descriptors [P, F] of the display images, each as a 64 x 64 grayscale square."""
    from skimage.feature import hog

    _check_images(images, rows, "hog")
    squares = (Image.fromarray(images[int(r)]).convert("L").resize((HOG_SIDE, HOG_SIDE)) for r in rows)
    return _stacked((hog(np.asarray(sq), pixels_per_cell=(8, 8), cells_per_block=(2, 2)) for sq in squares), len(rows))


def pixel_embeddings(images: Mapping[int, np.ndarray], rows: np.ndarray) -> np.ndarray:
    """Flattened display images [P, F] in [0, 1]: as they are when all share one shape of at most 32 x 32
    pixels, else each resized to a 32 x 32 RGB square, so a pool of 10^5 photos stays a few GB."""
    _check_images(images, rows, "pixel")
    shapes = set()

    def own_pixels() -> Iterator[np.ndarray]:
        for r in rows:
            img = images[int(r)]
            shapes.add(img.shape)
            if len(shapes) > 1 or img.shape[0] * img.shape[1] > PIXEL_SIDE**2:
                raise _NeedsSquares
            yield img.reshape(-1) / 255.0

    try:
        return _stacked(own_pixels(), len(rows), np.float32)
    except _NeedsSquares:
        return _stacked((_square(images[int(r)]).reshape(-1) / 255.0 for r in rows), len(rows), np.float32)


class _NeedsSquares(Exception):
    """The images differ in shape or are large: the pixel baseline resizes them all."""


def _check_images(images: Mapping[int, np.ndarray], rows: np.ndarray, reference: str) -> None:
    missing = [int(r) for r in rows if int(r) not in images]
    if missing and not images:
        raise DirscopeError(
            f"the run has no example images (its data is not image-like); the {reference} reference needs them"
        )
    if missing:
        raise DirscopeError(f"the run has no image for rows {missing[:5]}; the {reference} reference needs image data")


def _stacked(vectors: Iterator[np.ndarray], n: int, dtype: np.dtype | type | None = None) -> np.ndarray:
    """Rows into one preallocated [n, F] array: no list of n arrays beside it (images are decoded one by one)."""
    out = None
    for j, vec in enumerate(vectors):
        if out is None:
            out = np.empty((n, vec.size), dtype or vec.dtype)
        out[j] = vec
    return out if out is not None else np.zeros((0, 0), dtype or np.float64)


def _square(image: np.ndarray) -> np.ndarray:
    rgb = Image.fromarray(image).convert("RGB")
    return np.asarray(rgb.resize((PIXEL_SIDE, PIXEL_SIDE), Image.Resampling.BILINEAR))


def model_embeddings(
    reference: str, rows: np.ndarray, data: object, device: str = "cpu", batch_size: int = 256
) -> np.ndarray:
    """Activations [P, D] of a reference ``SPEC@LAYER`` for dataset ``rows`` (mean over positions)."""
    spec, _, layer = reference.rpartition("@") if "@" in reference else (reference, "", "")
    loaded = load_model(spec, device)
    if not layer:
        builtin = {v.split("@")[0]: v.split("@")[1] for v in DEFAULT_REFERENCES.values() if "@" in v}
        layer = builtin.get(spec, "")
        if not layer:
            raise DirscopeError(f"give the reference layer as {spec}@LAYER (see `dirscope layers {spec}`)")
    resolve_layers(loaded.module, [layer])
    source = data if isinstance(data, DataSource) else load_data(data, preprocess=loaded.preprocess)
    chunks = []
    with Capture(loaded.module, [layer]) as capture, torch.inference_mode():
        for batch in source.batches(batch_size, np.sort(rows)):
            act = capture.run(batch.x.to(device))[layer].float()
            chunks.append(positions(act, feature_axis(tuple(act.shape[1:]))).mean(dim=2).cpu().numpy())
    out = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
    if len(out) != len(rows):
        raise DirscopeError(f"the data gave {len(out)} of the {len(rows)} rows the reference needs; is it the same?")
    return out[np.argsort(np.argsort(rows))]
