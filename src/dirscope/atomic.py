"""The one atomic-write helper: a file is either its old complete self or its new complete self."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import DirscopeError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced, renamed over ``path``, and the
    directory fsynced, so even a power loss leaves the old or the new file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        where = path.parent
        raise DirscopeError(f"cannot write {path}: {exc.strerror}; make {where} writable, or write elsewhere") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600, and a writer may replace the file with its own 0600 one (safetensors does), so
        # give the file the usual permissions only now, just before it takes the place of ``path``
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise DirscopeError(f"cannot write {path}: {exc.strerror or exc}; check free space and permissions") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable: the new directory entry reaches the disk, not only the file's contents."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_with(path: str | os.PathLike[str], writer: Callable[[IO[bytes]], Any]) -> None:
    """Atomically write ``path`` by calling ``writer`` on a binary file handle."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        writer(fh)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    write_with(path, lambda fh: fh.write(data))


def write_text(path: str | os.PathLike[str], text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")
