"""Seeds derived from the run's seed and a stable name, so adding one random choice never shifts another."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def derive_seed(seed: int, *names: str) -> int:
    """A 63-bit seed from ``seed`` and a path of stable names (e.g. layer, family spec)."""
    key = "/".join([str(int(seed)), *names]).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


def numpy_rng(seed: int, *names: str) -> np.random.Generator:
    """A NumPy generator for one named random choice."""
    return np.random.Generator(np.random.PCG64(derive_seed(seed, *names)))


def torch_generator(seed: int, *names: str) -> torch.Generator:
    """A CPU torch generator for one named random choice (torch is imported only here: readers stay light)."""
    import torch

    return torch.Generator().manual_seed(derive_seed(seed, *names))
