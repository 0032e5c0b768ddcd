"""``file:PATH``: the user's own directions from a .npy of shape [K, D] (or [D] for one direction)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import DirscopeError
from ..specs import Spec, parse_spec_list
from .base import FAMILIES, FamilyBlock, FamilyContext, normalize_rows


def _rows_text(rows: np.ndarray) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:5])
    return shown + (f" (and {len(rows) - 5} more)" if len(rows) > 5 else "")


def load_direction_file(path: Path, *, dim: int, layer: str) -> np.ndarray:
    """Check a [K, D] array before any pass over the data; rows come back scaled to max |x| = 1."""
    name = repr(str(path))
    if not path.is_file():
        raise DirscopeError(f"direction file {name} not found; give the path of a .npy of shape [K, D]")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DirscopeError(
            f"direction file {name} is not a readable .npy ({reason}); write it with numpy.save"
        ) from None
    if not isinstance(array, np.ndarray):
        raise DirscopeError(f"direction file {name} is an .npz archive; save one [K, D] array with numpy.save")
    if array.dtype.kind not in "iuf":
        raise DirscopeError(f"direction file {name} holds {array.dtype} values; give real numbers")
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise DirscopeError(
            f"direction file {name} has shape {list(array.shape)}; give [K, D] or [D] for one direction"
        )
    if array.shape[1] != dim:
        raise DirscopeError(
            f"direction file {name} has dimension {array.shape[1]} but layer {layer!r} has dimension {dim}; "
            f"give rows of length {dim}"
        )
    if len(array) == 0:
        raise DirscopeError(f"direction file {name} has no rows; give at least one direction")
    array = array.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if len(bad):
        raise DirscopeError(f"direction file {name} has NaN or inf in rows {_rows_text(bad)}; fix them")
    scale = np.abs(array).max(axis=1)
    zero = np.flatnonzero(scale == 0.0)
    if len(zero):
        raise DirscopeError(f"direction file {name} has all-zero rows {_rows_text(zero)}; a direction needs a length")
    return array / scale[:, None]  # so the norm neither overflows nor underflows


def _named(path: Path, n: int) -> str:
    """The last ``n`` folders of an absolute ``path`` and its stem, e.g. ``fa/dirs``."""
    return "/".join([*path.parent.parts[1:][-n:], path.stem]) if n else path.stem


def file_label(path: Path, specs: Sequence[Spec]) -> str:
    """``file:STEM``, with as many parent folders as it takes to tell it from other files of that stem.

    Two ``file:`` specs must not merge into one family just because their files share a name; the same
    file given twice stays one family, a repeat like ``pca:4,pca:2``.
    """
    mine = Path(os.path.abspath(path))
    others = {Path(os.path.abspath(Path(s.arg or "").expanduser())) for s in specs if s.name == "file"} - {mine}
    others = {p for p in others if p.stem == mine.stem}
    for n in range(len(mine.parts)):
        if _named(mine, n) not in {_named(p, n) for p in others}:
            return f"file:{_named(mine, n)}"
    return f"file:{mine}"  # only the suffix differs (dirs.npy, dirs.npz)


@FAMILIES.register("file", help="directions from a .npy of shape [K, D] or [D], rows normalised", takes_arg=True)
def build(arg: str | None, *, ctx: FamilyContext) -> FamilyBlock:
    """Rows are normalised, so only each row's direction matters and scores compare across families."""
    path = Path(arg or "").expanduser()
    vectors = load_direction_file(path, dim=ctx.dim, layer=ctx.layer)
    label = file_label(path, ctx.specs)
    return FamilyBlock(normalize_rows(vectors), label=label, info={"path": str(path)})


def file_digests(specs: str) -> dict[str, str | None]:
    """sha256 of each ``file:`` spec's file (None when it cannot be read), so that a checkpoint of a run is
    refused once a directions file it read has changed: resuming would keep the old rows the manifest names."""
    digests: dict[str, str | None] = {}
    for spec in parse_spec_list(specs, "direction family"):
        if spec.name == "file" and spec.arg is not None:
            try:
                digests[spec.arg] = hashlib.sha256(Path(spec.arg).expanduser().read_bytes()).hexdigest()
            except OSError:
                digests[spec.arg] = None
    return digests
