"""Resume cost: what checkpoints cost while scanning, and how much time a `kill -9` loses.

The run: mnist-cnn at conv2 (max-pooled over positions) and fc1, directions `basis,random:1024`, k = 64,
over an npz of seeded random 28 x 28 images. (a) The same run in-process with a checkpoint after every
batch: the seconds it spent writing them (its manifest's `checkpoints` record), per checkpoint. (b) The CLI
run in a subprocess with `--checkpoint-every`, killed with SIGKILL at a fraction of an uninterrupted run's
wall time, then resumed with `--resume`:
lost = time until the kill + the resumed run's time - the uninterrupted run's time. It holds the work done
since the last checkpoint (at most one interval) and the resumed process's start-up (imports, model load,
reading the checkpoint); the resumed results equal the uninterrupted run's (tests/test_resume.py).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import dirscope
from dirscope.checkpoint import CHECKPOINT_DIR

LAYERS = ("conv2", "fc1")
DIRECTIONS = "basis,random:1024"
BATCH = 256


def random_images(path: Path, n: int) -> Path:
    """An npz of n seeded random uint8 images shaped like MNIST's."""
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8), y=rng.integers(0, 10, n))
    return path


def _scan(data: Path, out: Path, every: float) -> dict:
    """The run's manifest: its wall time and what its checkpoints cost."""
    result = dirscope.run(
        "mnist-cnn", list(LAYERS), f"npz:{data}", DIRECTIONS, k=64, batch_size=BATCH,
        out=out, overwrite=True, checkpoint_every=every, figures=False, progress=False,
    )  # fmt: skip
    return result.manifest


def checkpoint_cost(n: int = 10_240, rounds: int = 3) -> dict:
    """Seconds per checkpoint, timed inside a run that checkpoints after every batch (the manifest's
    ``checkpoints`` record). A difference of two runs' wall times drowns it in this machine's noise."""
    with tempfile.TemporaryDirectory() as tmp:
        data = random_images(Path(tmp) / "x.npz", n)
        _scan(data, Path(tmp) / "warm", 0)
        runs = [_scan(data, Path(tmp) / "every", 1e-9) for _ in range(rounds)]
    per = statistics.median(m["checkpoints"]["seconds"] / m["checkpoints"]["written"] for m in runs)
    return {
        "rows": n,
        "checkpoints": runs[0]["checkpoints"]["written"],
        "run_s": statistics.median(m["wall_time_s"] for m in runs),
        "per_checkpoint_s": per,
    }


def _cli(data: Path, out: Path, every: float, *extra: str) -> list[str]:
    layers = [arg for name in LAYERS for arg in ("--layer", name)]
    return [
        sys.executable, "-m", "dirscope", "run", "--model", "mnist-cnn", *layers, "--data", f"npz:{data}",
        "--directions", DIRECTIONS, "--k", "64", "--batch-size", str(BATCH), "--no-figures",
        "--checkpoint-every", str(every), "--out", str(out), *extra,
    ]  # fmt: skip


def _timed(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return time.perf_counter() - start


def _killed_at(args: list[str], seconds: float) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=seconds)
        raise RuntimeError("the run finished before the kill; give it more rows")
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return time.perf_counter() - start


def kill_cost(
    n: int = 20_480, every: float = 3.0, fractions: tuple[float, ...] = (0.25, 0.5, 0.75), repeats: int = 3
) -> list[dict]:
    """Time lost to a SIGKILL at each fraction of the uninterrupted wall time (medians over ``repeats`` kills,
    against the median of ``repeats`` uninterrupted runs), with how far the checkpoint had got and its size."""
    with tempfile.TemporaryDirectory() as tmp:
        data = random_images(Path(tmp) / "x.npz", n)
        _timed(_cli(data, Path(tmp) / "warm-up", every))  # cold file and JIT caches would inflate ``whole``
        whole = statistics.median(_timed(_cli(data, Path(tmp) / f"whole-{r}", every)) for r in range(repeats))
        trials = {}
        for f in fractions:
            trials[f] = [
                _kill_and_resume(data, Path(tmp) / f"killed-{f}-{r}", every, f * whole) for r in range(repeats)
            ]
    rows = []
    for fraction, runs in trials.items():
        med = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        rows.append({"rows": n, "every_s": every, "fraction": fraction, "whole_s": whole, **med})
        rows[-1]["lost_s"] = med["killed_s"] + med["resumed_s"] - whole
    return rows


def _kill_and_resume(data: Path, out: Path, every: float, after: float) -> dict:
    killed = _killed_at(_cli(data, out, every), after)
    index = out / CHECKPOINT_DIR / "checkpoint.json"
    saved = json.loads(index.read_text()) if index.exists() else None
    state_mib = (out / CHECKPOINT_DIR / saved["state_file"]).stat().st_size / 2**20 if saved else 0.0
    # killed before its first checkpoint, the run can only start over (still within one interval)
    resumed = _timed(_cli(data, out, every, "--resume" if saved else "--overwrite"))
    return {
        "killed_s": killed,
        "resumed_s": resumed,
        "saved_rows": saved["next_index"] if saved else 0,
        "state_mib": state_mib,
    }
