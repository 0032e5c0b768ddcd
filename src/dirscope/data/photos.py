"""``photos[:N]``: a small natural-image set made offline from the photos scikit-image ships.

No labelled natural-image dataset can be had offline, so this stands in for ImageNet-val in demos and tests:
N seeded random crops (random scale and position, random horizontal flip) of each photo, labelled by the
photo they come from. The crops are written once as PNGs under the data home and read back as an image
folder, so a model's own preprocessing applies exactly as it would to the user's folders.
"""

from __future__ import annotations

import errno
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DirscopeError
from .base import DataSource
from .fetch import data_home
from .folder import FolderSource
from .registry import DATA, Preprocess

PHOTOS = (
    "astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "moon", "retina", "rocket",
)  # fmt: skip
DEFAULT_CROPS = 40
CROP_PX = 128
SCALE = (0.25, 0.75)  # crop side as a share of the photo's shorter side
VERSION = 1  # bump when the recipe changes, so old crops are never mistaken for new ones


@DATA.register(
    "photos",
    help=f"seeded crops of scikit-image's {len(PHOTOS)} photos, labelled by photo; photos:N crops each "
    f"(default {DEFAULT_CROPS}); needs scikit-image",
    takes_arg=None,
)
def build_photos(arg: str | None, *, preprocess: Preprocess | None = None) -> DataSource:
    crops = parse_crops(arg)
    source = FolderSource(photo_folder(crops), preprocess)
    source.spec = f"photos:{crops}" if arg else "photos"
    return source


def parse_crops(arg: str | None) -> int:
    if arg is None:
        return DEFAULT_CROPS
    if not arg.isdigit() or int(arg) < 1:
        raise DirscopeError(f"photos:{arg}: give the number of crops per photo, e.g. photos:{DEFAULT_CROPS}")
    return int(arg)


def photo_folder(crops: int) -> Path:
    """The folder of crops (one subfolder per photo), made on first use; a finished folder is reused."""
    folder = data_home() / f"photos-v{VERSION}-{crops}"
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".photos-", dir=folder.parent))
    try:
        for label, name in enumerate(PHOTOS):
            (staging / name).mkdir()
            for i, crop in enumerate(photo_crops(load_photo(name), crops, seed=label)):
                crop.save(staging / name / f"{i:04d}.png")
        staging.rename(folder)  # atomic: readers see no folder or a complete one
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not folder.is_dir():
            raise
        # another process finished first (Linux says ENOTEMPTY); its crops are identical
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def load_photo(name: str) -> Image.Image:
    """One of scikit-image's bundled photos as an RGB PIL image."""
    try:
        import skimage.data
    except ImportError:
        raise DirscopeError("photos needs scikit-image: pip install 'dirscope[imagenet]'") from None
    pixels = np.asarray(getattr(skimage.data, name)())
    if pixels.dtype != np.uint8:  # a few photos come as bool or float
        pixels = (255 * (pixels.astype(np.float64) / max(float(pixels.max()), 1e-12))).astype(np.uint8)
    return Image.fromarray(pixels).convert("RGB")


def photo_crops(photo: Image.Image, n: int, seed: int) -> list[Image.Image]:
    """n square crops CROP_PX wide: side uniform in SCALE of the shorter side, position uniform, half flipped."""
    rng = np.random.default_rng([VERSION, seed])
    w, h = photo.size
    crops = []
    for _ in range(n):
        side = int(rng.uniform(*SCALE) * min(w, h))
        left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = photo.crop((left, top, left + side, top + side)).resize((CROP_PX, CROP_PX), Image.Resampling.BILINEAR)
        crops.append(crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop)
    return crops
