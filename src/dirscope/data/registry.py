"""The data-source registry, in its own module so each source family can register itself on import."""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image

from ..registry import Registry
from .base import DataSource

DATA: Registry[DataSource] = Registry("data source")

# What a model may bring for image files: a PIL image in, one model input out.
Preprocess = Callable[[Image.Image], torch.Tensor]
