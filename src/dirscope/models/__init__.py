"""Model sources: a spec string (``mnist-cnn``, ``python:mod:fn``, ``torchscript:PATH``) becomes a LoadedModel."""

from __future__ import annotations

from ..registry import Registry
from .base import LoadedModel

MODELS: Registry[LoadedModel] = Registry("model")

__all__ = ["MODELS", "LoadedModel"]
