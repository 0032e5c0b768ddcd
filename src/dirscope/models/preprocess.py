"""Image preprocessing without torchvision: resize, centre crop, to tensor, normalise.

It follows torchvision's documented rules (``Resize(int)`` scales the shorter side and truncates the longer
one; ``CenterCrop`` rounds the offsets and pads with black when the image is smaller), so a model's usual
transforms can be stated as data, recorded in the manifest, overridden from the command line, and pickled
into DataLoader workers.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from PIL import Image

from ..errors import DirscopeError

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
MODES = ("L", "RGB")  # what __call__ turns into 1 or 3 channels


@dataclass(frozen=True)
class ImagePreprocess:
    """PIL image -> float tensor [C, H, W].

    ``resize``: an int scales the shorter side to it (aspect kept); ``(h, w)`` resizes to exactly that;
    None keeps the size. ``crop``: the side of a centred square crop, or None. ``mean``/``std`` normalise
    each channel of the [0, 1] image.
    """

    resize: int | tuple[int, int] | None = 256
    crop: int | None = 224
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    mode: str = "RGB"

    def __post_init__(self) -> None:
        """Refuse values that would otherwise fail (or give non-finite inputs) only on every image later."""
        if self.interpolation not in INTERPOLATIONS:
            raise DirscopeError(f"unknown interpolation {self.interpolation!r}; use one of {', '.join(INTERPOLATIONS)}")
        if self.mode not in MODES:
            raise DirscopeError(f"preprocess mode must be L (gray) or RGB, got {self.mode!r}")
        _check_sizes(self.resize, self.crop)
        channels = 1 if self.mode == "L" else 3
        if len(self.mean) != channels or len(self.std) != channels:
            raise DirscopeError(f"preprocess mode {self.mode} needs {channels} mean and std values")
        if not all(math.isfinite(v) for v in self.mean):
            raise DirscopeError(f"preprocess mean must be finite numbers, got {'/'.join(map(str, self.mean))}")
        if not all(math.isfinite(v) and v > 0 for v in self.std):
            raise DirscopeError(f"preprocess std must be finite and positive, got {'/'.join(map(str, self.std))}")

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert(self.mode)
        if self.resize is not None:
            image = image.resize(resized_size(image.size, self.resize), INTERPOLATIONS[self.interpolation])
        if self.crop is not None:
            image = center_crop(image, self.crop)
        x = np.asarray(image, dtype=np.float32) / 255.0
        x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        return torch.from_numpy(np.ascontiguousarray((x - mean) / std))

    @property
    def output_shape(self) -> tuple[int, int, int] | None:
        """[C, H, W] when it does not depend on the image (a crop or an exact resize), else None."""
        channels = 1 if self.mode == "L" else 3
        if self.crop is not None:
            return (channels, self.crop, self.crop)
        if isinstance(self.resize, tuple):
            return (channels, *self.resize)
        return None

    def describe(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def override(self, text: str) -> ImagePreprocess:
        """This preprocessing with some fields replaced, from ``resize=256,crop=224,mean=a/b/c,...``."""
        changes: dict[str, object] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = (s.strip() for s in item.partition("="))
            if not sep or key not in _PARSERS:
                raise DirscopeError(
                    f"bad --preprocess item {item!r}; use KEY=VALUE with KEY in {', '.join(_PARSERS)}, "
                    "e.g. resize=256,crop=224,mean=0.485/0.456/0.406"
                )
            try:
                changes[key] = _PARSERS[key](value)
            except ValueError:
                raise DirscopeError(f"bad --preprocess value {item!r}") from None
        return replace(self, **changes)


def _check_sizes(resize: object, crop: object) -> None:
    """resize: None, a size or (height, width); crop: None or a size; every size a whole number >= 1."""
    sizes = resize if isinstance(resize, tuple) and len(resize) == 2 else (resize,)
    if resize is not None and not all(_is_size(v) for v in sizes):
        shown = "/".join(map(str, resize)) if isinstance(resize, tuple) else resize
        raise DirscopeError(f"preprocess resize must be none, a size N or H/W, each a whole number >= 1; got {shown}")
    if crop is not None and not _is_size(crop):
        raise DirscopeError(f"preprocess crop must be none or a whole number >= 1, got {crop}")


def _is_size(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def resized_size(size: tuple[int, int], resize: int | tuple[int, int]) -> tuple[int, int]:
    """PIL (width, height) after ``resize``; an int scales the shorter side, truncating the longer."""
    if isinstance(resize, tuple):
        return (resize[1], resize[0])
    w, h = size
    if w <= h:
        return (resize, int(resize * h / w))
    return (int(resize * w / h), resize)


def center_crop(image: Image.Image, side: int) -> Image.Image:
    """A centred side x side crop; a smaller image is first padded with black on every short side."""
    w, h = image.size
    if w < side or h < side:
        padded = Image.new(image.mode, (max(w, side), max(h, side)))
        padded.paste(image, (max(side - w, 0) // 2, max(side - h, 0) // 2))
        image, (w, h) = padded, padded.size
    left, top = round((w - side) / 2.0), round((h - side) / 2.0)  # round half to even, as torchvision
    return image.crop((left, top, left + side, top + side))


def _size(value: str) -> int | tuple[int, int] | None:
    if value.lower() == "none":
        return None
    parts = [int(p) for p in value.replace("x", "/").split("/")]
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return (parts[0], parts[1])
    raise ValueError(value)


def _floats(value: str) -> tuple[float, ...]:
    return tuple(float(p) for p in value.split("/"))


def _crop(value: str) -> int | None:
    return None if value.lower() == "none" else int(value)


_PARSERS = {
    "resize": _size,
    "crop": _crop,
    "mean": _floats,
    "std": _floats,
    "interpolation": str,
    "mode": str,
}
