"""The IDX format of (Fashion-)MNIST: a big-endian header, then uint8 values."""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np

from ..errors import DirscopeError

IMAGES_MAGIC = 0x00000803  # uint8, 3 dimensions: header 16 bytes
LABELS_MAGIC = 0x00000801  # uint8, 1 dimension: header 8 bytes


def read_gz(path: Path) -> bytes:
    """The decompressed content of a .gz file, with a one-line error when it is unreadable."""
    try:
        with gzip.open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise DirscopeError(f"{path} not found") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DirscopeError(f"{path} is not a readable .gz file ({exc}); delete it and fetch it again") from None


def parse_idx(raw: bytes, magic: int, what: str) -> np.ndarray:
    """Check the header's magic number and the size it promises, and return the uint8 array."""
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
        raise DirscopeError(f"{what} is not an IDX file with magic {magic:#010x} (found {found}); fetch it again")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DirscopeError(f"{what} has {len(raw)} bytes, its header {shape} needs {expected}; fetch it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_idx_pair(images: Path, labels: Path, sha256: dict[str, str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N,H,W] and labels int64 [N] from two IDX .gz files.

    ``sha256`` maps a file name to the pinned digest of its decompressed content, so a
    recompressed copy (e.g. Debian's) still verifies.
    """
    arrays = []
    for path, magic in ((images, IMAGES_MAGIC), (labels, LABELS_MAGIC)):
        raw = read_gz(path)
        if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256[path.name]:
            raise DirscopeError(f"{path} does not match its pinned checksum; delete it and fetch it again")
        arrays.append(parse_idx(raw, magic, str(path)))
    x, y = arrays
    if len(x) != len(y):
        raise DirscopeError(f"{images} has {len(x)} images but {labels} has {len(y)} labels; fetch both again")
    return x, y.astype(np.int64)
