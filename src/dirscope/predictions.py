"""The run's own model as a labeller: top-1 ImageNet predictions for rows whose data carry no usable labels.

``wordnet_similarity`` needs WordNet synsets. An unlabelled image folder has none, so the ImageNet classifier
that was scanned names the classes itself; scores made this way are recorded as ``wordnet_similarity:
predicted`` so that nobody mistakes them for scores against true labels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .checkpoint import weights_digest
from .data import DataSource, load_data
from .errors import DirscopeError
from .models import ImagePreprocess, LoadedModel, imagenet_classes, load_model

CLASSIFIER_SOURCES = ("efficientnet-lite0", "torchvision", "timm")


def run_model(model: dict[str, Any], device: str = "cpu") -> LoadedModel:
    """Rebuild a run's ImageNet classifier from its manifest entry, checked against the recorded weights."""
    spec = str(model.get("spec", ""))
    if spec.split(":")[0] not in CLASSIFIER_SOURCES:
        raise DirscopeError(f"the run's model {spec!r} is not an ImageNet classifier dirscope can rebuild")
    info = model.get("info", {})
    loaded = load_model(spec, device, weights=info.get("weights"))
    if "preprocess" in info:
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in info["preprocess"].items()}
        loaded.preprocess = ImagePreprocess(**fields)
    if model.get("weights_sha256") and weights_digest(loaded.module) != model["weights_sha256"]:
        raise DirscopeError(f"the weights of {spec!r} changed since the run; cannot predict with the same model")
    return loaded


def top1_predictions(
    loaded: LoadedModel, rows: np.ndarray, data: object, device: str = "cpu", batch_size: int = 64
) -> np.ndarray:
    """int64 [P]: the model's top-1 ImageNet class of each dataset row, in the order of ``rows``."""
    if len(loaded.label_names or []) != len(imagenet_classes().wnids):
        raise DirscopeError(f"model {loaded.spec!r} does not name the 1,000 ImageNet classes")
    source = data if isinstance(data, DataSource) else load_data(data, preprocess=loaded.preprocess)
    order = np.sort(rows)
    found, chunks = [], []
    with torch.inference_mode():
        for batch in source.batches(batch_size, order):
            logits = loaded.module(batch.x.to(device))
            chunks.append(logits.argmax(dim=1).cpu().numpy())
            found.append(batch.indices)
    if not chunks or len(np.concatenate(found)) != len(rows):
        raise DirscopeError("the data no longer gives every row the predictions need; is it the same data?")
    by_row = dict(zip(np.concatenate(found).tolist(), np.concatenate(chunks).tolist(), strict=True))
    return np.array([by_row[int(r)] for r in rows], dtype=np.int64)
