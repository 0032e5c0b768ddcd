"""What every model source returns: an eval-mode module plus what it knows about its inputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from PIL import Image

from ..errors import DirscopeError
from ..registry import Registry


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


MODELS: Registry[LoadedModel] = Registry("model")


def declared_input_shape(module: torch.nn.Module, spec: str) -> tuple[int, ...] | None:
    """The ``dirscope_input_shape`` a module declares, so arbitrary models can be dry-run without data."""
    shape = getattr(module, "dirscope_input_shape", None)
    if shape is None:
        return None
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        dims = ()
    if not dims or min(dims) < 1:
        raise DirscopeError(
            f"model {spec}: dirscope_input_shape must be a tuple of positive ints such as (1, 28, 28), got {shape!r}"
        )
    return dims


def from_module(module: torch.nn.Module, spec: str) -> LoadedModel:
    """Wrap a bare module, reading its declared input shape."""
    return LoadedModel(module=module, spec=spec, input_shape=declared_input_shape(module, spec))
