"""Example images: peak memory of gathering a run's example images, streamed to disk or held in memory.

A run names up to K x 2k example rows per layer (2,048 directions, top-64 and bottom-64: 262,144), each
shown as a thumbnail of up to 128 x 128 RGB (48 KiB decoded). Each case runs `collect_images` (what the
engine calls) in a fresh process on n synthetic 128 px thumbnails, then looks up 100 of them as the
figures do: `stream` writes them as PNG to `examples.parquet` chunk by chunk and reads them back lazily (a
run with `out`), `memory` holds every decoded image (a run without `out`, and every run before streaming).
"""

from __future__ import annotations

from benchmarks.engine import fresh_process

SIDES = 128
CASES = (2_000, 8_000, 32_000)

_SCRIPT = """
import sys, tempfile, time
from pathlib import Path
import numpy as np
from dirscope.examples import collect_images
from benchmarks.engine import peak_kib
n, mode, side = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ramp = np.arange(side, dtype=np.int64)
def images_at(rows):  # smooth RGB thumbnails, different per row, so PNG encoding stays quick
    return [((ramp[:, None, None] + 2 * ramp[None, :, None] + np.array([0, 85, 170]) + r) % 256).astype(np.uint8)
            for r in rows]
base = peak_kib()
start = time.perf_counter()
with tempfile.TemporaryDirectory() as tmp:
    images = collect_images(np.arange(n), None, images_at, Path(tmp) if mode == "stream" else None)
    looked = [images[int(i)] for i in np.random.default_rng(0).integers(0, n, 100)]
    assert all(img.shape == (side, side, 3) for img in looked)
    print(peak_kib() - base, time.perf_counter() - start)
"""


def peak_mib(n: int, mode: str) -> tuple[float, float]:
    """(peak RSS growth in MiB, seconds) of one fresh process gathering n thumbnails in ``mode``."""
    kib, seconds = fresh_process(_SCRIPT, n, mode, SIDES).split()
    return int(kib) / 1024, float(seconds)


def compare(cases: tuple[int, ...] = CASES) -> list[dict]:
    rows = []
    for n in cases:
        stream_mib, stream_s = peak_mib(n, "stream")
        memory_mib, memory_s = peak_mib(n, "memory")
        decoded = n * SIDES * SIDES * 3 / 2**20
        rows.append(
            {
                "n": n,
                "decoded_mib": decoded,
                "stream_mib": stream_mib,
                "stream_s": stream_s,
                "memory_mib": memory_mib,
                "memory_s": memory_s,
            }
        )
    return rows


if __name__ == "__main__":
    for row in compare():
        print(row)
