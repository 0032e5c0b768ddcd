"""Example images streamed to examples.parquet and read back lazily: exact round trips, bounded reads, runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from torch import nn

import dirscope
from dirscope import examples
from dirscope.errors import DirscopeError
from dirscope.examples import ExampleImages, image_chunks, png_bytes, png_chunks, write_examples
from dirscope.result import Result


def random_images(n: int, seed: int = 0) -> dict[int, np.ndarray]:
    """Images of several shapes, grey and colour, at sparse increasing indices."""
    rng = np.random.default_rng(seed)
    shapes = [(5, 7), (9, 4, 3), (3, 3)]
    return {3 * i + 1: rng.integers(0, 256, size=shapes[i % 3], dtype=np.uint8) for i in range(n)}


def write(path, images: dict[int, np.ndarray], labels: dict[int, int] | None = None) -> ExampleImages:
    labels = labels or {}
    write_examples(path, png_chunks(images), lambda rows: np.array([labels.get(int(i), -1) for i in rows]))
    return ExampleImages(path)


def test_round_trip_over_several_row_groups(tmp_path):
    images = random_images(150)
    labels = {i: i % 5 for i in list(images)[::2]}
    lazy = write(tmp_path / "examples.parquet", images, labels)
    assert pq.ParquetFile(tmp_path / "examples.parquet").metadata.num_row_groups == 3  # 64 + 64 + 22
    assert len(lazy) == 150 and list(lazy) == sorted(images)
    for i in reversed(list(images)):  # out of order: groups are read back as needed
        np.testing.assert_array_equal(lazy[i], images[i])
    table = pd.read_parquet(tmp_path / "examples.parquet")
    assert table["label"].dtype == "Int64"
    assert table["label"].isna().sum() == 75 and dict(table.dropna()[["index", "label"]].values) == labels
    assert 2 not in lazy and "4" not in lazy and 4 in lazy and np.int64(4) in lazy
    with pytest.raises(KeyError):
        lazy[2]
    assert lazy.get(2) is None


def test_a_lookup_reads_one_row_group_and_the_cache_is_bounded(tmp_path, monkeypatch):
    images = random_images(64 * 5)
    lazy = write(tmp_path / "examples.parquet", images)
    monkeypatch.setattr(examples, "CACHED_GROUPS", 2)
    reads = []
    real = lazy._file.read_row_group
    monkeypatch.setattr(lazy._file, "read_row_group", lambda g, **kw: reads.append(g) or real(g, **kw))
    keys = sorted(images)
    for j in (0, 1, 63, 64, 0, 200, 319):
        np.testing.assert_array_equal(lazy[keys[j]], images[keys[j]])
    assert reads == [0, 1, 3, 4]  # group 0 again from the cache; 0 evicted once 3 came in
    assert len(lazy._groups) == 2
    lazy[keys[0]]
    assert reads[-1] == 0


def test_a_mapping_keeps_reading_the_file_it_opened(tmp_path):
    path = tmp_path / "examples.parquet"
    old_images, new_images = random_images(10, seed=1), random_images(4, seed=2)
    old = write(path, old_images)
    assert old.stored_at(path)
    new = write(path, new_images)  # atomically replaced, as a later run into the same directory does
    assert not old.stored_at(path) and new.stored_at(path) and not new.stored_at(tmp_path / "gone.parquet")
    key = sorted(old_images)[-1]
    np.testing.assert_array_equal(old[key], old_images[key])
    assert len(new) == 4


def test_copying_a_file_keeps_its_png_bytes(tmp_path):
    images = random_images(70)
    lazy = write(tmp_path / "a.parquet", images)
    copy = write(tmp_path / "b.parquet", lazy)  # ExampleImages: stored groups, never decoded
    assert [copy.png(i) for i in copy] == [png_bytes(images[i]) for i in sorted(images)]


def test_a_file_with_one_row_group_reads_alike(tmp_path):
    images = random_images(100)
    keys = sorted(images)
    frame = pd.DataFrame(
        {"index": keys, "label": pd.array([None] * 100, "Int64"), "png": [png_bytes(images[i]) for i in keys]}
    )
    frame.to_parquet(tmp_path / "old.parquet", index=False)
    lazy = ExampleImages(tmp_path / "old.parquet")
    np.testing.assert_array_equal(lazy[keys[77]], images[keys[77]])


def test_unsorted_indices_are_refused(tmp_path):
    pd.DataFrame({"index": [3, 1], "label": [0, 0], "png": [b"", b""]}).to_parquet(tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="not sorted"):
        ExampleImages(tmp_path / "x.parquet")


def test_image_chunks_grow_to_the_byte_budget_and_skip_missing_images(monkeypatch):
    monkeypatch.setattr(examples, "CHUNK_BYTES", 100 * 64)  # 64-byte images: 100 a chunk after the first
    asked = []

    def images_at(rows):
        asked.append(len(rows))
        return [None if i % 10 == 0 or i < 64 else np.full((8, 8), i % 256, np.uint8) for i in rows]

    rows = np.arange(564, dtype=np.int64)
    got = list(image_chunks(rows, images_at))
    assert asked == [64, 64, 100, 100, 100, 100, 36]  # a chunk without images leaves the size as it was
    kept = np.concatenate([r for r, _ in got])
    np.testing.assert_array_equal(kept, rows[(rows % 10 != 0) & (rows >= 64)])
    assert all(img[0, 0] == i % 256 for r, imgs in got for i, img in zip(r, imgs, strict=True))
    assert list(image_chunks(rows, lambda r: None)) == []


class Flat(nn.Module):
    def forward(self, x):
        return x.flatten(1)


def test_a_run_streams_its_examples_and_reads_them_lazily(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.random((400, 1, 4, 4)).astype(np.float32)
    y = rng.integers(0, 3, 400)
    monkeypatch.setattr(examples, "CHUNK_BYTES", 16 * 100)  # 4x4 images: chunks of 100 rows
    kw = dict(layers=["0"], data=(x, y), directions="basis,random:4", k=3, null_sample=150, progress=False)
    model = nn.Sequential(Flat())
    in_memory = dirscope.run(model, **kw)
    on_disk = dirscope.run(model, **kw, out=tmp_path / "run")
    assert isinstance(on_disk.images, ExampleImages) and isinstance(in_memory.images, dict)
    assert list(on_disk.images) == sorted(in_memory.images) and len(in_memory.images) > 150
    for i, img in in_memory.images.items():
        np.testing.assert_array_equal(on_disk.images[i], img)
    table = pd.read_parquet(tmp_path / "run" / "examples.parquet")
    np.testing.assert_array_equal(table["label"].to_numpy(), y[table["index"].to_numpy()])
    assert pq.ParquetFile(tmp_path / "run" / "examples.parquet").metadata.num_row_groups > 2
    loaded = Result.load(tmp_path / "run")
    saved = loaded.save(tmp_path / "copy")
    assert saved == tmp_path / "copy"
    pd.testing.assert_frame_equal(pd.read_parquet(saved / "examples.parquet"), table)
    in_memory.save(tmp_path / "from-memory")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "from-memory" / "examples.parquet"), table)


def test_an_overwriting_run_unpublishes_the_old_one_before_writing_examples(tmp_path, monkeypatch):
    x = np.random.default_rng(0).random((30, 1, 4, 4)).astype(np.float32)
    kw = dict(layers=["0"], data=x, directions="basis", k=2, progress=False, out=tmp_path)
    dirscope.run(nn.Sequential(Flat()), **kw)
    assert (tmp_path / "manifest.json").is_file()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("dirscope.rundir.write_run", crash)  # the run dies after its examples, before its tables
    with pytest.raises(KeyboardInterrupt):
        dirscope.run(nn.Sequential(Flat()), **kw, overwrite=True, checkpoint_every=0)
    assert (tmp_path / "examples.parquet").is_file()
    assert not (tmp_path / "manifest.json").exists()  # new examples beside old tables: not a complete run


def test_a_damaged_examples_file_is_a_one_line_error(tmp_path):
    x = np.random.default_rng(0).random((20, 1, 4, 4)).astype(np.float32)
    dirscope.run(nn.Sequential(Flat()), ["0"], x, "basis", k=2, out=tmp_path, progress=False)
    (tmp_path / "examples.parquet").write_bytes(b"not parquet")
    with pytest.raises(DirscopeError, match=r"cannot read .*examples.parquet.*run `dirscope run` again"):
        Result.load(tmp_path)


def test_a_damaged_row_group_or_image_is_a_one_line_error_when_read(tmp_path):
    """The footer (read on opening) can be intact while a row group's pages or a PNG are not."""
    images = random_images(150)
    path = tmp_path / "examples.parquet"
    write(path, images)
    column = pq.ParquetFile(path).metadata.row_group(1).column(2)
    data = bytearray(path.read_bytes())
    for at in range(column.data_page_offset, column.data_page_offset + 64):
        data[at] ^= 0x5A
    path.write_bytes(bytes(data))
    lazy = ExampleImages(path)
    np.testing.assert_array_equal(lazy[1], images[1])  # row group 0 reads as before
    damaged = r"examples.parquet: row group 1 is damaged \(.*\); run the scan again"
    with pytest.raises(DirscopeError, match=damaged) as info:
        lazy[3 * 64 + 1]
    assert "\n" not in str(info.value)
    with pytest.raises(DirscopeError, match="row group 1 is damaged"):
        list(lazy.png_groups())
    with pytest.raises(DirscopeError, match="a stored example image is damaged"):
        examples.decode_png(png_bytes(images[1])[:40])
