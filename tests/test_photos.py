"""photos: the offline natural-image stand-in, and the hog reference it is scored with."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dirscope.data import load_data
from dirscope.data.photos import PHOTOS, photo_crops
from dirscope.errors import DirscopeError
from dirscope.references import default_references, hog_embeddings


def test_photos_are_seeded_crops_labelled_by_photo(tmp_path, monkeypatch):
    monkeypatch.setenv("DIRSCOPE_HOME", str(tmp_path / "a"))
    source = load_data("photos:2")
    assert source.spec == "photos:2" and source.size == 2 * len(PHOTOS)
    assert source.label_names == sorted(PHOTOS)
    batch = next(source.batches(64))
    assert batch.x.shape == (2 * len(PHOTOS), 3, 128, 128)
    np.testing.assert_array_equal(batch.y, np.repeat(np.arange(len(PHOTOS)), 2))
    monkeypatch.setenv("DIRSCOPE_HOME", str(tmp_path / "b"))
    again = next(load_data("photos:2").batches(64))
    assert np.array_equal(batch.x.numpy(), again.x.numpy())  # made afresh in another home: the same pixels


def test_crops_lie_inside_the_photo_and_flip():
    photo = Image.fromarray(np.arange(40 * 60 * 3, dtype=np.uint32).reshape(40, 60, 3).astype(np.uint8))
    crops = photo_crops(photo, 20, seed=3)
    assert all(c.size == (128, 128) for c in crops)
    assert [np.asarray(c).tobytes() for c in crops] == [np.asarray(c).tobytes() for c in photo_crops(photo, 20, 3)]


@pytest.mark.parametrize("arg", ["0", "x", "-3"])
def test_bad_crop_count_is_one_line(arg):
    with pytest.raises(DirscopeError, match="number of crops per photo"):
        load_data(f"photos:{arg}")


def test_hog_reference_is_skimage_hog_of_a_gray_square():
    from skimage.feature import hog

    rng = np.random.default_rng(0)
    images = {5: rng.integers(0, 256, (90, 70, 3), dtype=np.uint8), 9: rng.integers(0, 256, (64, 64), dtype=np.uint8)}
    got = hog_embeddings(images, np.array([9, 5]))
    square = np.asarray(Image.fromarray(images[5]).convert("L").resize((64, 64)))
    np.testing.assert_allclose(got[1], hog(square, pixels_per_cell=(8, 8), cells_per_block=(2, 2)))
    np.testing.assert_allclose(got[0], hog(images[9], pixels_per_cell=(8, 8), cells_per_block=(2, 2)))
    with pytest.raises(DirscopeError, match="no image for rows"):
        hog_embeddings(images, np.array([1]))


def test_default_references_by_source():
    assert default_references("efficientnet-lite0") == ["pixels", "hog"]
    assert default_references("torchvision:alexnet") == ["pixels", "efficientnet-lite0@_dropout"]
    assert default_references("python:mod:fn") == ["pixels"]
