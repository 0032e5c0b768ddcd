"""What every model source returns: an eval-mode module plus what it knows about its inputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from PIL import Image


@dataclass
class LoadedModel:
    """A model ready for capture.

    ``input_shape`` is the per-example input shape (e.g. ``(1, 28, 28)``) when the source knows it,
    so ``dirscope layers`` can run a dry forward without data. ``preprocess`` turns a PIL image into
    that input, for image-folder data. ``info`` is recorded in the run manifest.
    """

    module: torch.nn.Module
    spec: str
    input_shape: tuple[int, ...] | None = None
    preprocess: Callable[[Image.Image], torch.Tensor] | None = None
    label_names: list[str] | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.module.eval()
