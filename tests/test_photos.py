"""photos: the offline natural-image stand-in, and the hog reference it is scored with."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from dirscope.data import load_data, photos
from dirscope.data.photos import PHOTOS, photo_crops
from dirscope.errors import DirscopeError
from dirscope.references import default_references, hog_embeddings, pixel_embeddings


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


def test_a_folder_finished_by_another_process_meanwhile_is_used(tmp_path, monkeypatch):
    """Renaming onto a finished folder fails with ENOTEMPTY on Linux: the other process's crops are used."""
    monkeypatch.setenv("DIRSCOPE_HOME", str(tmp_path))
    made = photos.photo_folder(1)
    shutil.rmtree(made.with_name("elsewhere"), ignore_errors=True)
    made.rename(made.with_name("elsewhere"))
    real_crops = photos.photo_crops

    def crops_while_another_process_finishes(*args, **kwargs):
        if not made.exists():
            shutil.copytree(made.with_name("elsewhere"), made)
        return real_crops(*args, **kwargs)

    monkeypatch.setattr(photos, "photo_crops", crops_while_another_process_finishes)
    assert photos.photo_folder(1) == made
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["elsewhere", made.name])  # no staging left


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


def test_pixel_reference_keeps_small_equal_images_and_squares_the_rest():
    rng = np.random.default_rng(1)
    digits = {i: rng.integers(0, 256, (28, 28), dtype=np.uint8) for i in (2, 4, 7)}
    got = pixel_embeddings(digits, np.array([7, 2]))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.stack([digits[7].ravel(), digits[2].ravel()]).astype(np.float32) / 255)

    def squares(images, rows):
        sq = [
            np.asarray(Image.fromarray(images[r]).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR))
            for r in rows
        ]
        return np.stack([s.ravel() for s in sq]).astype(np.float32) / 255

    mixed = {**digits, 9: rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)}  # the odd shape comes last
    np.testing.assert_array_equal(pixel_embeddings(mixed, np.array([2, 4, 9])), squares(mixed, [2, 4, 9]))
    large = {i: rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for i in (1, 3)}  # equal, but over 32 x 32
    np.testing.assert_array_equal(pixel_embeddings(large, np.array([3, 1])), squares(large, [3, 1]))
    with pytest.raises(DirscopeError, match="pixel reference needs image data"):
        pixel_embeddings(large, np.array([2]))


def test_default_references_by_source():
    assert default_references("efficientnet-lite0") == ["pixels", "hog"]
    assert default_references("torchvision:alexnet") == ["pixels", "efficientnet-lite0@_dropout"]
    assert default_references("python:mod:fn") == ["pixels"]
