"""Six shape attributes of digit- and glyph-like grayscale images, measured with plain numpy and scipy.

They capture what labels miss in Szegedy-style captions ("diagonal straight stroke", "lower round
stroke"). Ink is bright on a dark background (the MNIST convention); invert dark-on-light glyphs first.
A pixel is *ink* when its value is >= ``INK_THRESHOLD``; the attributes are, per image:

- ``slant``: horizontal shift per unit of height, cov(x, y) / var(y) of the intensity-weighted pixel
  positions with y pointing up; > 0 for a stroke leaning right like "/", < 0 like "\\", 0 if var(y) = 0.
- ``thickness``: 2 x the mean Euclidean distance transform over ink pixels (outside the image counts as
  background): 2 for a one-pixel line, about w/2 + 1 for a long bar w pixels wide; a monotone proxy.
- ``width``, ``height``: the ink bounding box in pixels (0 without ink).
- ``ink``: sum of intensities / 255 (the area of a fully white shape), threshold-free.
- ``holes``: connected background regions of at least ``MIN_HOLE_AREA`` pixels that do not touch the
  image border, with 4-connected background (the dual of 8-connected ink), so a loop closed only through
  a diagonal step still counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ..errors import DirscopeError

GLYPH_ATTRIBUTES = ("slant", "thickness", "width", "height", "ink", "holes")
INK_THRESHOLD = 64  # a quarter of full intensity: closes more anti-aliased MNIST loops than 128
MIN_HOLE_AREA = 2  # pixels; single-pixel pinholes inside thick strokes are noise, not holes
_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


class NotGlyphImages(DirscopeError):
    """The images are not grayscale 2-D uint8 glyphs (e.g. RGB photos): glyph attributes do not apply."""


def glyph_attributes(images: Sequence[np.ndarray]) -> np.ndarray:
    """float64 [N, 6], columns in ``GLYPH_ATTRIBUTES`` order, for uint8 HxW images (sizes may differ)."""
    rows = [_attributes(_checked(i, image)) for i, image in enumerate(images)]
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(GLYPH_ATTRIBUTES))


def _checked(position: int, image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2:
        raise NotGlyphImages(
            f"glyph attributes need grayscale 2-D images, but image {position} has shape {image.shape}; "
            "skip attribute_coherence for colour data"
        )
    if image.dtype != np.uint8:
        raise NotGlyphImages(f"glyph attributes need uint8 images (0-255), got {image.dtype}; convert them first")
    return image


def _attributes(image: np.ndarray) -> tuple[float, ...]:
    ink = image >= INK_THRESHOLD
    rows, cols = np.nonzero(ink)
    width = cols.max() - cols.min() + 1 if cols.size else 0
    height = rows.max() - rows.min() + 1 if rows.size else 0
    return (
        slant(image),
        thickness(ink),
        float(width),
        float(height),
        float(image.sum(dtype=np.int64)) / 255.0,
        float(holes(ink)),
    )


def slant(image: np.ndarray) -> float:
    """cov(x, y) / var(y) of intensity-weighted pixel positions, y up: the shear that would deskew it."""
    weights = image.astype(np.float64)
    mass = weights.sum()
    if mass == 0:
        return 0.0
    rows, cols = np.indices(image.shape, dtype=np.float64)
    up = -rows
    dy = up - (weights * up).sum() / mass
    dx = cols - (weights * cols).sum() / mass
    var_y = (weights * dy * dy).sum() / mass
    return float((weights * dx * dy).sum() / mass / var_y) if var_y > 0 else 0.0


def thickness(ink: np.ndarray) -> float:
    """2 x mean distance from an ink pixel to the nearest background pixel (0 without ink)."""
    if not ink.any():
        return 0.0
    distance = ndimage.distance_transform_edt(np.pad(ink, 1))[1:-1, 1:-1]
    return float(2.0 * distance[ink].mean())


def holes(ink: np.ndarray) -> int:
    """Background regions (4-connected) of >= ``MIN_HOLE_AREA`` pixels enclosed by ink.

    Padding with background joins every border-touching region into one, the region of the corner pixel.
    """
    regions, _ = ndimage.label(np.pad(~ink, 1, constant_values=True), structure=_FOUR_CONNECTED)
    areas = np.bincount(regions.ravel())
    areas[[0, regions[0, 0]]] = 0  # ink, and the outside
    return int((areas >= MIN_HOLE_AREA).sum())
