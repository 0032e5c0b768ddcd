"""Model sources: a spec string (``mnist-cnn``, ``python:mod:fn``, ``torchscript:PATH``) becomes a LoadedModel."""

from __future__ import annotations

import torch

from ..errors import DirscopeError
from .base import MODELS, LoadedModel, from_module
from .builtin import BUILTINS
from .nets import MnistCNN, MnistMLP
from .sources import load_python, load_torchscript


def load_model(obj: str | torch.nn.Module | LoadedModel, device: str | torch.device = "cpu") -> LoadedModel:
    """Turn a spec string, a module or a LoadedModel into an eval-mode LoadedModel on ``device``."""
    if isinstance(obj, str):
        loaded = MODELS.build(obj)
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
    return loaded


__all__ = ["BUILTINS", "MODELS", "LoadedModel", "MnistCNN", "MnistMLP", "load_model", "load_python", "load_torchscript"]
