"""Data sources: a spec (``mnist``, ``npz:PATH``, ``folder:PATH``...) or a Python object, as a DataSource.

Fetching lives in :mod:`dirscope.data.fetch` (``fetch``, ``data_home``, ``FETCHABLE``), not re-exported
here, where the function ``fetch`` would shadow its module.
"""

from __future__ import annotations

from . import builtin, folder, npz, photos  # noqa: F401  (importing a family registers its sources)
from .arrays import ArraySource
from .base import Batch, DataSource, to_display_image
from .python import IterableSource, TorchDatasetSource, load_data
from .registry import DATA, Preprocess

__all__ = [
    "DATA",
    "ArraySource",
    "Batch",
    "DataSource",
    "IterableSource",
    "Preprocess",
    "TorchDatasetSource",
    "load_data",
    "to_display_image",
]
