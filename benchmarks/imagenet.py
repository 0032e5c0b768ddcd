"""EfficientNet-Lite0 over a JPEG folder: `dirscope run` against the bare forward pass over the same loader.

The folder holds seeded crops of scikit-image's photos, saved as 320 x 320 JPEGs (quality 90), about the
size and decoding cost of ImageNet validation images. Three contenders, alternated over rounds:
decoding alone (the loader's ceiling), the bare forward pass (the model's ceiling), and the full dirscope
run (hooks, projections, tallies, null sample) at the penultimate layer, so both do the whole forward.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from PIL import Image

import dirscope
from benchmarks.engine import medians, overheads, race_rounds
from dirscope.data import load_data
from dirscope.data.photos import PHOTOS, load_photo, photo_crops
from dirscope.models import load_model

SIDE, QUALITY = 320, 90
LAYER = "_dropout"  # penultimate: a dirscope run stops the forward here, so it does (almost) the whole pass


def jpeg_folder(root: Path, per_photo: int) -> Path:
    """per_photo JPEG crops of each photo, in one class folder per photo."""
    for label, name in enumerate(PHOTOS):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, crop in enumerate(photo_crops(load_photo(name), per_photo, seed=label)):
            crop.resize((SIDE, SIDE), Image.Resampling.BILINEAR).save(root / name / f"{i:04d}.jpg", quality=QUALITY)
    return root


def decode_only(folder: Path, preprocess, workers: int, batch: int) -> None:
    for _ in load_data(f"folder:{folder}", preprocess=preprocess, workers=workers).batches(batch):
        pass


def bare_forward(folder: Path, loaded, workers: int, batch: int) -> None:
    with torch.inference_mode():
        for b in load_data(f"folder:{folder}", preprocess=loaded.preprocess, workers=workers).batches(batch):
            loaded.module(b.x)


def dirscope_run(folder: Path, loaded, workers: int, batch: int, directions: str) -> None:
    source = f"folder:{folder}"
    dirscope.run(loaded, [LAYER], source, directions, k=64, batch_size=batch, workers=workers, progress=False)


def compare(
    per_photo: int = 16, workers: int = 1, batch: int = 64, rounds: int = 7, directions: str = "basis,random:1024"
) -> dict:
    """Median seconds and images/s of each contender, and the run's overhead over the bare forward
    (``overheads``)."""
    loaded = load_model("efficientnet-lite0")
    with tempfile.TemporaryDirectory() as tmp:
        folder = jpeg_folder(Path(tmp), per_photo)
        n = per_photo * len(PHOTOS)
        contenders = {
            "decode": lambda: decode_only(folder, loaded.preprocess, workers, batch),
            "forward": lambda: bare_forward(folder, loaded, workers, batch),
            "dirscope": lambda: dirscope_run(folder, loaded, workers, batch, directions),
        }
        times = race_rounds(contenders, rounds)  # warm-up included: kernels, page cache
    med = medians(times)
    return {
        "images": n,
        "workers": workers,
        "batch": batch,
        "directions": directions,
        "rounds": rounds,
        **{f"{name}_s": s for name, s in med.items()},
        **{f"{name}_ips": n / s for name, s in med.items()},
        **overheads(times),
    }
