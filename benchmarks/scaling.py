"""What docs/scaling.md measures for --engine ray: a shard's state, its merge, its trip through Ray, JPEG decoding.

    python benchmarks/scaling.py            # prints a markdown table; numbers from this machine

The state is one layer's tally for K directions and top/bottom k (with a 64-bin histogram and moments), as
every shard returns it. Decoding is ImageNet's preprocessing (resize 256, centre crop 224) of a 500 x 375
JPEG at quality 90, about an average ImageNet training image, on one core.
"""

from __future__ import annotations

import io
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from dirscope.data.photos import load_photo
from dirscope.models.preprocess import ImagePreprocess
from dirscope.tally import Reservoir, Tally


def full_tally(n_directions: int, k: int, rows: int, seed: int) -> Tally:
    """A tally that has seen ``rows`` rows, so every list, moment and histogram is filled."""
    rng = np.random.default_rng(seed)
    tally = Tally(n_directions, k)
    for start in range(seed * rows, (seed + 1) * rows, 1024):
        block = np.maximum(rng.normal(size=(n_directions, 1024)), 0).astype(np.float32)
        tally.update(block, np.arange(start, start + 1024))
    return tally


def median_s(fn, rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def state_and_merge(n_directions: int, k: int) -> dict:
    a, b = full_tally(n_directions, k, 4096, 0), full_tally(n_directions, k, 4096, 1)
    state = a.state_dict()
    return {
        "K": n_directions,
        "k": k,
        "state MiB": sum(v.nbytes for v in state.values()) / 2**20,
        "merge s": median_s(lambda: a.merge(Tally.from_state_dict(b.state_dict()))),
    }


def ray_round_trip(n_directions: int, k: int) -> float:
    """Seconds for ray.get of one shard's tally state returned by a task (after the task finished)."""
    import ray

    ray.init(num_cpus=1, include_dashboard=False, logging_level=logging.WARNING)
    try:
        state = full_tally(n_directions, k, 1024, 0).state_dict()
        make = ray.remote(lambda: state)
        times = []
        for _ in range(5):
            ref = make.remote()
            ray.wait([ref])
            start = time.perf_counter()
            ray.get(ref)
            times.append(time.perf_counter() - start)
        return statistics.median(times)
    finally:
        ray.shutdown()


def decode_ms() -> float:
    photo = load_photo("chelsea").resize((500, 375))
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    preprocess = ImagePreprocess()

    def one() -> None:
        preprocess(Image.open(io.BytesIO(data)))

    return 1000 * median_s(lambda: [one() for _ in range(200)]) / 200


def main() -> None:
    import torch

    torch.set_num_threads(1)
    print("| K | k | state MiB | merge s |\n|---|---|---|---|")
    for n_directions in (1024, 4096):
        row = state_and_merge(n_directions, 64)
        print(f"| {row['K']:,} | {row['k']} | {row['state MiB']:.2f} | {row['merge s']:.4f} |")
    reservoir = Reservoir(1000, 0)
    reservoir.update(np.arange(100_000))
    other = Reservoir(1000, 0)
    other.update(np.arange(100_000, 200_000))
    print(f"\nnull sample (1,000 rows) merge: {median_s(lambda: reservoir.merge(other)) * 1e3:.3f} ms")
    print(f"ray.get of one K=4,096, k=64 shard state: {ray_round_trip(4096, 64) * 1e3:.1f} ms")
    print(f"JPEG decode + resize 256 + crop 224, one core: {decode_ms():.2f} ms/image")


if __name__ == "__main__":
    main()
