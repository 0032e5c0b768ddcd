"""Checkpoints of an unfinished scan, so a crash or ``kill -9`` loses at most one interval of work.

    <out>/checkpoint/state-NNNNNN.npz   every array of the scan state (tallies, directions, null sample)
    <out>/checkpoint/checkpoint.json    fingerprint, data position and the scalar state; names its state file

Each file is written atomically (temporary file, fsync, rename), the state file first under a new name and
the JSON last, and older state files are removed only after that. So a kill at any moment leaves either the
old checkpoint or the new one complete. The fingerprint says what the state is valid for: a resumed run with
another model, data, directions or settings is refused, naming what differs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_json, write_with
from .errors import DirscopeError

CHECKPOINT_DIR = "checkpoint"
# 2: the null sample keeps the rows of smallest hashed key; 3: the fingerprint holds the model's info (its
# preprocessing), the layer shapes and the data files' identity, which a /2 checkpoint cannot be checked against;
# 4: each layer keeps its excluded rows' label counts and those that may be in the null sample (a /3 lacks them)
CHECKPOINT_FORMAT = "dirscope-checkpoint/4"
CHECKPOINT_INDEX = "checkpoint.json"
# Fingerprint keys as a user knows them, for the one-line refusal. A key below one of these (``model.info.
# preprocess.resize``, ``shapes.conv``) is named by the longest one it starts with, followed by the rest.
_WHAT = {
    "format": "checkpoint format",
    "run_format": "run format",
    "model.spec": "model",
    "model.weights_sha256": "model weights (sha256 of the state_dict)",
    "model.info": "model info",
    "model.info.preprocess": "preprocessing",
    "from_cache": "--from-cache",
    "data.spec": "data",
    "data.size": "data size",
    "data.content": "version of the data files",
    "data.content.files": "version of the data files (by size and mtime)",
    "data.content.sha256": "version of the data files (by sha256)",
    "data.content.md5": "version of the data files (by md5)",
    "layers": "layers",
    "shapes": "layer shape of",
    "layout": "feature axis of layer",
    "feature_axis": "--feature-axis",
    "directions": "--directions",
    "direction_files": "version of the --directions file",
    "seed": "--seed",
    "k": "--k",
    "pool": "--pool",
    "batch_size": "--batch-size",
    "limit": "--limit",
    "bins": "--bins",
    "fit_samples": "--fit-samples",
    "null_sample": "--null-sample",
    "device": "--device",
    "cache": "--cache/--cache-dtype",
    "autocast": "--autocast",
    "tally": "--tally",
}


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``meta`` is the JSON (fingerprint, position, scalar state), ``arrays`` the rest."""

    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def next_index(self) -> int:
        """The dataset index the scan continues from."""
        return int(self.meta["next_index"])

    def check(self, fingerprint: dict[str, Any], folder: Path) -> None:
        """Refuse to continue under other settings than the checkpoint was made with."""
        saved, now = _flatten(self.meta["fingerprint"]), _flatten(fingerprint)
        for key in sorted(saved.keys() | now.keys()):
            if saved.get(key) != now.get(key):
                raise DirscopeError(
                    f"the checkpoint in {folder} was made with another {_what(key)} "
                    f"({_short(saved.get(key))}, now {_short(now.get(key))}); resume with the same settings, "
                    "or pass --overwrite to start over"
                )


def weights_digest(module: Any) -> str:
    """sha256 over every tensor of a module's state_dict (names, dtypes, shapes and bytes)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{list(tensor.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def has_checkpoint(out: Path) -> bool:
    return (out / CHECKPOINT_DIR / CHECKPOINT_INDEX).is_file()


def save_checkpoint(out: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Write a new checkpoint beside the old one, switch to it by rewriting the JSON, then drop the old."""
    folder = out / CHECKPOINT_DIR
    serial = int(json.loads((folder / CHECKPOINT_INDEX).read_text())["serial"]) + 1 if has_checkpoint(out) else 0
    state = f"state-{serial:06d}.npz"
    write_with(folder / state, lambda fh: np.savez(fh, **arrays))
    write_json(folder / CHECKPOINT_INDEX, {"format": CHECKPOINT_FORMAT, "serial": serial, "state_file": state, **meta})
    for old in folder.glob("state-*.npz"):
        if old.name != state:
            old.unlink(missing_ok=True)


def load_checkpoint(out: Path) -> Checkpoint:
    """The checkpoint in ``out``, or a one-line error saying why it cannot be used."""
    folder = out / CHECKPOINT_DIR
    if not has_checkpoint(out):
        raise DirscopeError(f"no checkpoint to resume in {out}; start the run again with --overwrite")
    try:
        meta = json.loads((folder / CHECKPOINT_INDEX).read_text())
        with np.load(folder / meta["state_file"], allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DirscopeError(
            f"the checkpoint in {folder} is unreadable ({type(exc).__name__}: {exc}); pass --overwrite to start over"
        ) from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise DirscopeError(
            f"the checkpoint in {folder} has format {meta.get('format')!r}, not {CHECKPOINT_FORMAT!r}; "
            "pass --overwrite to start over"
        )
    return Checkpoint(meta, arrays)


def remove_checkpoint(out: Path) -> None:
    """Called once the run directory is complete: the checkpoint has nothing left to recover. Its index goes
    first, so that a kill midway leaves no checkpoint rather than an index whose state is gone."""
    (out / CHECKPOINT_DIR / CHECKPOINT_INDEX).unlink(missing_ok=True)
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)


def _what(key: str) -> str:
    """A flattened fingerprint key as a user knows it: its name in _WHAT, or its nearest named parent's."""
    parts = key.split(".")
    for cut in range(len(parts), 0, -1):
        named = _WHAT.get(".".join(parts[:cut]))
        if named is not None:
            return " ".join([named, ".".join(parts[cut:])]).strip()
    return key


def _flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:24] + "..." + text[-12:]
