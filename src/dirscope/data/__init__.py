"""Data sources: a spec string (``mnist``, ``npz:PATH``, ``folder:PATH``...) or a Python object becomes a DataSource."""

from __future__ import annotations

from ..registry import Registry
from .base import Batch, DataSource, to_display_image

DATA: Registry[DataSource] = Registry("data source")

__all__ = ["DATA", "Batch", "DataSource", "to_display_image"]
