"""Model sources: a spec string (``mnist-cnn``, ``python:mod:fn``, ``torchscript:PATH``) becomes a LoadedModel."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import torch

from ..errors import DirscopeError
from .base import MODELS, LoadedModel, from_module
from .builtin import BUILTINS
from .imagenet import ImageNetClasses, imagenet_classes
from .nets import MnistCNN, MnistMLP
from .preprocess import ImagePreprocess
from .sources import load_python, load_torchscript


def load_model(
    obj: str | torch.nn.Module | LoadedModel,
    device: str | torch.device = "cpu",
    weights: str | None = None,
    preprocess: str | None = None,
) -> LoadedModel:
    """Turn a spec string, a module or a LoadedModel into an eval-mode LoadedModel on ``device``.

    ``weights`` is a checkpoint for sources that take one (``torchvision:``, ``timm:``, ``efficientnet-lite0``);
    ``preprocess`` overrides fields of the source's image preprocessing, e.g. ``resize=256,crop=224``.
    """
    if isinstance(obj, str):
        loaded = _build(obj, weights)
    elif weights is not None:
        raise DirscopeError("--weights (weights=) goes with a model spec string, not with a model object")
    elif isinstance(obj, LoadedModel):
        loaded = obj
    elif isinstance(obj, torch.nn.Module):
        loaded = from_module(obj, f"<python object: {type(obj).__name__}>")
    else:
        raise DirscopeError(
            f"cannot use a {type(obj).__name__} as a model; pass a spec string, a torch.nn.Module or a LoadedModel"
        )
    try:
        loaded.module.to(device)
    except (RuntimeError, AssertionError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DirscopeError(f"cannot move the model to device {device!r} ({first}); use --device cpu") from None
    loaded.module.eval()
    if preprocess is not None:
        _override_preprocess(loaded, preprocess)
    return loaded


@contextlib.contextmanager
def using_model(
    obj: Any, device: str | torch.device = "cpu", weights: str | None = None, preprocess: str | None = None
) -> Iterator[Any]:
    """``obj`` as it is, or loaded with ``weights``/``preprocess`` when either is given; on exit the
    train/eval mode of every submodule of a caller's module is what it was, though the scan ran in eval."""
    module = obj.module if isinstance(obj, LoadedModel) else obj if isinstance(obj, torch.nn.Module) else None
    modes = [(m, m.training) for m in module.modules()] if module is not None else []
    try:
        yield obj if weights is None and preprocess is None else load_model(obj, device, weights, preprocess)
    finally:
        for sub, training in modes:
            sub.training = training


def _build(spec: str, weights: str | None) -> LoadedModel:
    if weights is None:
        return MODELS.build(spec)
    entry = MODELS.entry(spec)
    if "weights" not in inspect.signature(entry.build).parameters:
        raise DirscopeError(f"model {spec!r} takes no --weights (weights=); its spec may name one")
    return MODELS.build(spec, weights=weights)


def _override_preprocess(loaded: LoadedModel, text: str) -> None:
    if not isinstance(loaded.preprocess, ImagePreprocess):
        raise DirscopeError(f"model {loaded.spec!r} has no configurable image preprocessing to override")
    loaded.preprocess = loaded.preprocess.override(text)
    loaded.input_shape = loaded.preprocess.output_shape or loaded.input_shape
    loaded.info["preprocess"] = loaded.preprocess.describe()


__all__ = [
    "BUILTINS",
    "MODELS",
    "ImageNetClasses",
    "ImagePreprocess",
    "LoadedModel",
    "MnistCNN",
    "MnistMLP",
    "imagenet_classes",
    "load_model",
    "load_python",
    "load_torchscript",
]
