"""``npz:PATH``: arrays the user saved with ``np.savez(PATH, x=inputs, y=labels, label_names=names)``."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..errors import DirscopeError
from .arrays import ArraySource
from .base import DataSource, files_content
from .registry import DATA, Preprocess

HOW = "save arrays with np.savez(PATH, x=inputs, y=labels)"


@DATA.register(
    "npz",
    help="arrays in an .npz: x [N,...] (uint8 scaled to [0,1], floats as float32, other integers as int64 token ids), "
    "optional y, label_names",
    takes_arg=True,
)
def build_npz(arg: str, *, preprocess: Preprocess | None = None) -> DataSource:
    return load_npz(arg)


def load_npz(path_text: str) -> ArraySource:
    """Key ``x`` holds the inputs; float arrays are fed as they are (only cast to float32).

    The file's identity is taken before it is read, so a rewrite while reading is never mistaken for it.
    """
    path = Path(path_text).expanduser()
    spec = f"npz:{path_text}"
    if not path.is_file():
        raise DirscopeError(f"{spec}: no such file {path}; {HOW}")
    content = files_content(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DirscopeError(f"{spec} is not a readable .npz file ({exc}); {HOW}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise DirscopeError(f"{spec} holds a single .npy array, not an .npz; {HOW}")
    with loaded:
        if "x" not in loaded.files:
            found = ", ".join(loaded.files) or "none"
            raise DirscopeError(f"{spec} has no array 'x' (found: {found}); {HOW}")
        arrays = {key: read_key(loaded, key, spec) for key in ("x", "y", "label_names") if key in loaded.files}
    source = ArraySource(arrays["x"], arrays.get("y"), arrays.get("label_names"), spec=spec)
    source.content = content
    return source


def read_key(npz: np.lib.npyio.NpzFile, key: str, spec: str) -> np.ndarray:
    try:
        return npz[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DirscopeError(f"{spec}: cannot read array {key!r} ({exc}); save plain numeric or string arrays") from None
