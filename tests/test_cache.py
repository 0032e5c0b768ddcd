"""The activation cache: runs from it equal runs from the model, its layout, streaming chunks, checksums,
and broken caches."""

from __future__ import annotations

import io
import json
import re
import zlib
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import dirscope
import dirscope.engine
from dirscope.errors import DirscopeError
from test_cli import TINY_MODEL, run_cli


class Tokens(nn.Module):
    """[B, C, H, W] -> [B, H*W, C]: a token layer, features last."""

    def forward(self, x):
        return x.flatten(2).transpose(1, 2)


class Net(nn.Module):
    """A spatial conv layer, a token layer [T, D] and a dense head, with continuous weights."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 8, 3)
        self.relu = nn.ReLU()
        self.tokens = Tokens()
        self.tok = nn.Linear(8, 6)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        t = self.tok(self.tokens(self.relu(self.conv(x))))
        return self.head(t.mean(dim=1))


LAYERS = ["relu", "tok", "head"]
NEW = "random:16,rotation,pca:3"


def data(n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 2, 7, 7)).astype(np.float32), rng.integers(0, 5, size=n)


def cached_run(tmp_path, pool: str, dtype: str = "float32", **kwargs):
    settings = dict(k=5, pool=pool, batch_size=32, progress=False, figures=False)
    out = tmp_path / f"cached-{pool}-{dtype}"
    dirscope.run(Net().eval(), LAYERS, data(), "basis", **settings, out=str(out), cache=True, cache_dtype=dtype)
    from_cache = dirscope.run(directions=NEW, **settings, from_cache=str(out), out=str(tmp_path / "new"), **kwargs)
    from_model = dirscope.run(Net().eval(), LAYERS, data(), NEW, **settings)
    return out, from_cache, from_model


class Clashing(nn.Module):
    """Layers whose names, made file-safe, clash with the rows folder or with each other."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rows = nn.Linear(98, 5)
        self.add_module("a b", nn.Linear(5, 4))
        self.a_b = nn.Linear(4, 3)

    def forward(self, x):
        return self.a_b(getattr(self, "a b")(self.rows(x.flatten(1))))


def test_layers_named_like_the_rows_folder_or_each_other_get_their_own_folders(tmp_path):
    settings = dict(k=5, batch_size=32, progress=False, figures=False)
    layers = ["rows", "a b", "a_b"]
    dirscope.run(Clashing(), layers, data(), "basis", **settings, out=str(tmp_path / "c"), cache=True)
    index = json.loads((tmp_path / "c" / "cache" / "index.json").read_text())
    assert [layer["dir"] for layer in index["layers"]] == ["rows-2", "a_b", "a_b-2"]
    from_cache = dirscope.run(directions="random:8", **settings, from_cache=str(tmp_path / "c"))
    from_model = dirscope.run(Clashing(), layers, data(), "random:8", **settings)
    pd.testing.assert_frame_equal(from_cache.topk, from_model.topk)
    every = dirscope.run(layers="all", directions="random:8", **settings, from_cache=str(tmp_path / "c"))
    pd.testing.assert_frame_equal(every.topk, from_model.topk)  # `all` of a cache: every layer it holds


def test_layers_whose_names_clash_as_file_names_keep_their_own_run_files(tmp_path):
    """``a b`` and ``a_b`` once shared directions/a_b.npy and every figure, the later layer's overwriting."""
    rng = np.random.default_rng(0)
    x, y = rng.random((120, 1, 14, 7), dtype=np.float32), rng.integers(0, 3, size=120)
    run = dirscope.run(Clashing(), ["a b", "a_b"], (x, y), "basis,random:3", k=4, progress=False, out=str(tmp_path))
    dirscope.score(run, metrics=["label_purity"], null_draws=20, n_boot=10, n_perm=10)
    loaded = dirscope.Result.load(tmp_path)
    for layer in ("a b", "a_b"):
        np.testing.assert_array_equal(loaded.vectors(layer), run.vectors(layer))
    assert [layer["directions_file"] for layer in loaded.manifest["layers"]] == [
        "directions/a_b.npy",
        "directions/a_b-2.npy",
    ]
    figures = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert len(figures) == len(set(run.manifest["figures"] + loaded.verdict.settings["figures"]))
    assert {"a_b-random.png", "a_b-2-random.png", "scores-a_b.png", "scores-a_b-2.png"} <= set(figures)


@pytest.mark.parametrize("pool", ["max", "mean"])
def test_a_run_from_a_float32_cache_equals_a_run_from_the_model(tmp_path, pool):
    out, from_cache, from_model = cached_run(tmp_path, pool)
    pd.testing.assert_frame_equal(from_cache.topk, from_model.topk)
    pd.testing.assert_frame_equal(from_cache.stats, from_model.stats)
    pd.testing.assert_frame_equal(from_cache.null, from_model.null)
    for layer in LAYERS:
        np.testing.assert_array_equal(from_cache.vectors(layer), from_model.vectors(layer))  # pca fitted alike
    index = json.loads((out / "cache" / "index.json").read_text())
    stored = {layer["name"]: (layer["stored"], layer["row_shape"]) for layer in index["layers"]}
    if pool == "max":  # the projection must be taken per position before pooling
        assert stored == {"relu": ("positions", [8, 5, 5]), "tok": ("positions", [25, 6]), "head": ("pooled", [4])}
    else:  # mean pooling commutes with the projection
        assert stored == {"relu": ("pooled", [8]), "tok": ("pooled", [6]), "head": ("pooled", [4])}
    assert index["complete"] and index["n"] == 300 and index["dtype"] == "float32" and index["pool"] == pool
    assert from_cache.manifest["model"]["spec"] == from_model.manifest["model"]["spec"]
    assert from_cache.manifest["model"]["from_cache"] == str((out / "cache").resolve())
    assert from_cache.manifest["data"]["label_counts"] == from_model.manifest["data"]["label_counts"]


@pytest.mark.parametrize("pool", ["max", "mean"])
def test_a_cache_written_under_bf16_autocast_gives_the_model_runs_results(tmp_path, pool):
    """The fit pass runs under the scan's autocast, so pca learns from the activations that are cached."""
    settings = dict(k=5, pool=pool, batch_size=32, autocast="bf16", progress=False, figures=False)
    out = tmp_path / "c"
    dirscope.run(Net(), LAYERS, data(), "basis", **settings, out=str(out), cache=True)
    assert json.loads((out / "cache" / "index.json").read_text())["autocast"] == "bf16"
    from_cache = dirscope.run(directions=NEW, **settings, from_cache=str(out))
    from_model = dirscope.run(Net(), LAYERS, data(), NEW, **settings)
    for layer in LAYERS:
        np.testing.assert_array_equal(from_cache.vectors(layer), from_model.vectors(layer))
    pd.testing.assert_frame_equal(from_cache.topk, from_model.topk)
    pd.testing.assert_frame_equal(from_cache.stats, from_model.stats)


def test_a_cache_of_an_npz_records_the_files_identity_and_resumes(tmp_path, monkeypatch):
    """The data file's identity goes in the cache header; a run from the cache reads it back unchanged, and a
    checkpoint of that run is resumed while the file stays the same."""
    path = tmp_path / "d.npz"
    x, y = data(100)
    np.savez(path, x=x, y=y)
    settings = dict(k=3, batch_size=16, progress=False, figures=False)
    dirscope.run(Net(), LAYERS, f"npz:{path}", "basis", **settings, out=str(tmp_path / "c"), cache=True)
    described = json.loads((tmp_path / "c" / "cache" / "index.json").read_text())["data"]
    stat = path.stat()
    assert described["content"] == {"files": [{"file": "d.npz", "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}]}
    run = dict(directions="random:4,pca:2", **settings, from_cache=str(tmp_path / "c"))
    whole = dirscope.run(**run)
    assert whole.manifest["data"]["content"] == described["content"]
    real, calls = dirscope.engine._Folds.add, []

    def crash_in_the_third_batch(self, idx, y, acts):
        calls.append(idx)
        if len(calls) == 3:
            raise Crash
        return real(self, idx, y, acts)

    monkeypatch.setattr(dirscope.engine._Folds, "add", crash_in_the_third_batch)
    with pytest.raises(Crash):
        dirscope.run(**run, out=str(tmp_path / "r"), checkpoint_every=1e-9)
    monkeypatch.undo()
    resumed = dirscope.run(**run, out=str(tmp_path / "r"), resume=True)
    pd.testing.assert_frame_equal(resumed.topk, whole.topk)


def test_a_layer_given_twice_is_refused_as_from_the_model(cache_dir):
    message = "the same layer is given twice; give each --layer once"
    with pytest.raises(DirscopeError, match=message):
        dirscope.run(directions="random:2", k=2, layers=["relu", "relu"], from_cache=str(cache_dir), progress=False)
    with pytest.raises(DirscopeError, match=message):
        dirscope.run(Net(), ["relu", "relu"], data(60), "random:2", k=2, progress=False)


def test_a_float16_cache_is_half_the_size_and_close(tmp_path):
    out, from_cache, from_model = cached_run(tmp_path, "max", "float16")
    relu = np.load(out / "cache" / "relu" / "000000.npy", mmap_mode="r")
    assert relu.dtype == np.float16 and relu.shape == (300, 8, 5, 5)
    a, b = from_cache.topk, from_model.topk
    scale = np.abs(b["value"]).max()
    np.testing.assert_allclose(a["value"], b["value"], rtol=2e-3, atol=2e-3 * scale)
    assert (a["index"] == b["index"]).mean() > 0.9


def test_the_cache_is_written_and_read_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr("dirscope.cache.CHUNK_BYTES", 40_000)
    out, from_cache, from_model = cached_run(tmp_path, "max")
    index = json.loads((out / "cache" / "index.json").read_text())
    assert len(index["chunks"]) > 3
    assert sum(c["rows"] for c in index["chunks"]) == 300
    first = [c["first_index"] for c in index["chunks"]]
    assert first == sorted(first) and first[0] == 0
    for chunk in index["chunks"]:
        rows = np.load(out / "cache" / "rows" / chunk["file"])
        assert rows.shape == (chunk["rows"], 3) and rows[0, 0] == chunk["first_index"]
    assert_checksums(out / "cache")
    pd.testing.assert_frame_equal(from_cache.topk, from_model.topk)
    pd.testing.assert_frame_equal(from_cache.stats, from_model.stats)


def test_a_cache_of_a_limited_run_fits_and_scans_the_same_rows(tmp_path):
    settings = dict(k=4, batch_size=32, progress=False)
    out = tmp_path / "c"
    dirscope.run(Net(), LAYERS, data(), "basis", **settings, limit=200, out=str(out), cache=True, fit_samples=50)
    from_cache = dirscope.run(directions="pca:3,random:4", **settings, from_cache=str(out), fit_samples=50)
    from_model = dirscope.run(Net(), LAYERS, data(), "pca:3,random:4", **settings, limit=200, fit_samples=50)
    pd.testing.assert_frame_equal(from_cache.topk, from_model.topk)
    assert from_cache.manifest["n"]["relu"] == 200


def test_a_run_from_a_cache_resumes(tmp_path, monkeypatch):
    settings = dict(directions="random:8,pca:2", k=4, batch_size=32, progress=False)
    dirscope.run(Net(), LAYERS, data(), **settings, out=str(tmp_path / "c"), cache=True)
    whole = dirscope.run(**settings, from_cache=str(tmp_path / "c"))
    reads = []
    real = dirscope.cache.CacheReader._as_layer

    def crash_in_the_sixth_batch(self, name, block):
        reads.append(name)
        if len(reads) == (10 + 5) * len(LAYERS) + 1:
            raise Crash
        return real(self, name, block)

    monkeypatch.setattr(dirscope.cache.CacheReader, "_as_layer", crash_in_the_sixth_batch)
    with pytest.raises(Crash):  # the pca fit reads all 300 rows first (10 batches)
        dirscope.run(**settings, from_cache=str(tmp_path / "c"), out=str(tmp_path / "r"), checkpoint_every=1e-9)
    monkeypatch.undo()
    assert json.loads((tmp_path / "r" / "checkpoint" / "checkpoint.json").read_text())["next_index"] == 5 * 32
    resumed = dirscope.run(**settings, from_cache=str(tmp_path / "c"), out=str(tmp_path / "r"), resume=True)
    pd.testing.assert_frame_equal(resumed.topk, whole.topk)
    pd.testing.assert_frame_equal(resumed.stats, whole.stats)


def test_nonfinite_rows_are_cached_and_excluded_alike(tmp_path):
    x, y = data()
    x[[3, 40]] = np.nan
    out = tmp_path / "c"
    model_run = dirscope.run(Net().eval(), ["head"], (x, y), "random:4", k=3, out=str(out), cache=True, progress=False)
    cache_run = dirscope.run(directions="random:4", k=3, from_cache=str(out), progress=False)
    assert cache_run.manifest["layers"][0]["first_excluded_rows"] == [3, 40]
    pd.testing.assert_frame_equal(cache_run.topk, model_run.topk)


class Crash(Exception):
    pass


class CrashingNet(Net):
    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.at:
            raise Crash
        return super().forward(x)


def test_a_resumed_cache_equals_an_uninterrupted_one(tmp_path):
    settings = dict(k=4, batch_size=32, progress=False, figures=False, cache=True)
    with pytest.raises(Crash):
        dirscope.run(
            CrashingNet(5), LAYERS, data(), "basis", **settings, out=str(tmp_path / "r"), checkpoint_every=1e-9
        )
    stale = tmp_path / "r" / "cache" / "relu" / "999999.npy"  # a chunk written after the last checkpoint
    np.save(stale, np.zeros(1))
    dirscope.run(CrashingNet(0), LAYERS, data(), "basis", **settings, out=str(tmp_path / "r"), resume=True)
    dirscope.run(Net(), LAYERS, data(), "basis", **settings, out=str(tmp_path / "w"))
    assert not stale.exists()
    assert_checksums(tmp_path / "r" / "cache")  # chunks from before the crash keep theirs through the checkpoint
    for sub in ["rows", *LAYERS]:
        resumed, whole = (
            np.concatenate([np.load(p) for p in sorted((tmp_path / run / "cache" / sub).glob("*.npy"))])
            for run in ("r", "w")
        )
        np.testing.assert_array_equal(resumed, whole)


@pytest.fixture
def cache_dir(tmp_path):
    out = tmp_path / "c"
    dirscope.run(Net().eval(), LAYERS, data(60), "basis", k=3, out=str(out), cache=True, progress=False)
    return out


def corrupt_empty(cache):
    (cache / "relu" / "000000.npy").write_bytes(b"")  # a partial copy, or a full disk: np.load raises EOFError


def corrupt_truncate(cache):
    path = cache / "relu" / "000000.npy"
    path.write_bytes(path.read_bytes()[:-100])


def corrupt_dtype(cache):
    index = json.loads((cache / "index.json").read_text())
    (cache / "index.json").write_text(json.dumps({**index, "dtype": "float16"}))


def corrupt_incomplete(cache):
    index = json.loads((cache / "index.json").read_text())
    (cache / "index.json").write_text(json.dumps({**index, "complete": False}))


def corrupt_missing(cache):
    (cache / "rows" / "000000.npy").unlink()


def assert_checksums(cache):
    """Every chunk file's CRC-32 in the index equals one computed independently over the file's bytes, and
    the files stay exactly what ``np.save`` writes."""
    index = json.loads((cache / "index.json").read_text())
    subs = {"rows", *(layer["dir"] for layer in index["layers"])}
    for chunk in index["chunks"]:
        assert set(chunk["crc32"]) == subs
        for sub in subs:
            data = (cache / sub / chunk["file"]).read_bytes()
            assert chunk["crc32"][sub] == zlib.crc32(data)
            saved = io.BytesIO()
            np.save(saved, np.load(io.BytesIO(data)))
            assert saved.getvalue() == data


def test_the_index_holds_each_chunk_files_checksum(cache_dir):
    assert_checksums(cache_dir / "cache")


@pytest.mark.parametrize("sub", ["rows", "relu", "head"])
def test_a_flipped_byte_in_a_chunk_is_one_clear_error(cache_dir, sub):
    path = cache_dir / "cache" / sub / "000000.npy"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10  # one bit, in the data after the header: the file still parses
    path.write_bytes(bytes(data))
    with pytest.raises(DirscopeError) as err:
        dirscope.run(directions="random:2", k=2, from_cache=str(cache_dir), progress=False)
    expected = (
        rf"activation cache {re.escape(str(cache_dir / 'cache'))} cannot be used: chunk {sub}/000000\.npy is "
        r"damaged: its CRC-32 is [0-9a-f]{8}, the index says [0-9a-f]{8} \(changed on disk or copied partially\); "
        r"copy that file again from where the cache was written, or write the cache again with --cache"
    )
    assert re.fullmatch(expected, str(err.value)), str(err.value)


def test_a_cache_without_checksums_is_read_unverified_with_a_warning(cache_dir, capsys):
    settings = dict(directions="random:4", k=3, from_cache=str(cache_dir), progress=False)
    verified = dirscope.run(**settings)
    assert "checksums" not in capsys.readouterr().err
    index = json.loads((cache_dir / "cache" / "index.json").read_text())
    chunks = [{key: value for key, value in chunk.items() if key != "crc32"} for chunk in index["chunks"]]
    (cache_dir / "cache" / "index.json").write_text(json.dumps({**index, "chunks": chunks}))  # as written before
    unverified = dirscope.run(**settings)
    err = capsys.readouterr().err
    assert "warning: activation cache" in err and "1 of 1 chunks carry no checksums" in err
    pd.testing.assert_frame_equal(unverified.topk, verified.topk)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (corrupt_truncate, "chunk relu/000000.npy is unreadable"),
        (corrupt_empty, "chunk relu/000000.npy is unreadable"),
        (corrupt_dtype, r"chunk relu/000000.npy holds float32 \[60, 8, 5, 5\], the index says float16"),
        (corrupt_missing, "chunk rows/000000.npy is unreadable"),
    ],
)
def test_a_broken_cache_is_one_clear_error(cache_dir, corrupt, message):
    corrupt(cache_dir / "cache")
    with pytest.raises(DirscopeError, match=f"activation cache .* cannot be used: {message}") as err:
        dirscope.run(directions="random:2", k=2, from_cache=str(cache_dir), progress=False)
    assert "\n" not in str(err.value) and "write it again with --cache" in str(err.value)


def test_an_incomplete_cache_says_one_clear_instruction(cache_dir):
    """The two ways out were once two clauses ("resume that run with --resume; write it again with --cache")."""
    corrupt_incomplete(cache_dir / "cache")
    with pytest.raises(DirscopeError) as err:
        dirscope.run(directions="random:2", k=2, from_cache=str(cache_dir), progress=False)
    assert str(err.value) == (
        f"activation cache {cache_dir / 'cache'} cannot be used: it is incomplete (its run did not finish); "
        "resume the run that writes it (`dirscope run ... --resume`), or write the cache again with --cache"
    )


DROP = object()  # a key removed from the index


def damage(index: Any, where: str, value: Any) -> Any:
    """``index`` with the item at a dotted path (list positions as numbers) set to ``value`` or dropped; the
    whole index replaced when ``where`` is empty."""
    if not where:
        return value
    *path, last = [int(part) if part.isdigit() else part for part in where.split(".")]
    parent = index
    for part in path:
        parent = parent[part]
    if value is DROP:
        del parent[last]
    else:
        parent[last] = value
    return index


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        ("", [1], "it must hold a JSON object"),
        ("", "cache", "it must hold a JSON object"),
        ("layers", DROP, "layers must be a list"),
        ("layers", [], "layers must be a non-empty list"),
        ("layers.1", "tok", r"layers\[1\] must be an object"),
        ("layers.1.dir", DROP, r"layers\[1\]\.dir must be the name of a folder in the cache"),
        ("layers.1.dir", "../tok", r"layers\[1\]\.dir must be the name of a folder in the cache"),
        ("layers.1.dir", "relu", r"layers\[1\]\.dir must be the name of a folder in the cache, unique"),
        ("layers.2.name", "relu", r"layers\[2\]\.name must be a string, unique"),
        ("layers.0.shape", "8x5x5", r"layers\[0\]\.shape must be a non-empty list of positive integers"),
        ("layers.0.feature_axis", 3, r"layers\[0\]\.feature_axis must be an axis of its shape"),
        ("layers.0.stored", "max", r'layers\[0\]\.stored must be "positions" or "pooled"'),
        ("layers.0.row_shape", [8], r"layers\[0\]\.row_shape must be its shape when it stores positions"),
        ("chunks", DROP, "chunks must be a list"),
        ("chunks.0", "000000.npy", r"chunks\[0\] must be an object"),
        ("chunks.0.file", "../rows/000000.npy", r"chunks\[0\]\.file must be the name of a \.npy file"),
        ("chunks.0.rows", "60", r"chunks\[0\]\.rows must be a positive integer"),
        ("chunks.0.crc32", [1, 2], r"chunks\[0\]\.crc32 must be an object of CRC-32s"),
        ("chunks.0.crc32.relu", "00ff00ff", r"chunks\[0\]\.crc32 must be an object of CRC-32s"),
        ("model", "mnist-cnn", "model must be an object"),
        ("model.weights_sha256", DROP, r"model\.weights_sha256 must be a string"),
        ("data.spec", None, r"data\.spec must be a string"),
        ("data.size", DROP, r"data\.size must be an integer or null"),
        ("data.label_names", "0,1,2", r"data\.label_names must be a list of strings or null"),
        ("dtype", "float64", "dtype must be float32 or float16"),
        ("limit", DROP, "limit must be a positive integer or null"),
        ("complete", "yes", "complete must be true or false"),
    ],
)
def test_a_damaged_index_is_one_line_naming_the_key(cache_dir, where, value, message):
    """A hand-edited index that is still JSON was a traceback (AttributeError, KeyError) wherever the damaged key
    was read, or a read outside the cache; its structure is now checked once, where the index is read."""
    path = cache_dir / "cache" / "index.json"
    path.write_text(json.dumps(damage(json.loads(path.read_text()), where, value)))
    with pytest.raises(DirscopeError) as err:
        dirscope.run(directions="random:2", k=2, from_cache=str(cache_dir), progress=False)
    expected = (
        rf"activation cache {re.escape(str(cache_dir / 'cache'))} cannot be used: index\.json: {message}.*; "
        r"write the cache again with `dirscope run \.\.\. --cache`"
    )
    assert re.fullmatch(expected, str(err.value)), str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(layers=["conv"]), r"layer 'conv' is not in the cache .* \(has: relu, tok, head\)"),
        (
            dict(pool="mean", from_cache="OUT"),
            "holds mean-pooled activations of layer 'relu'; --pool max needs every position, so pass --pool mean",
        ),
        (dict(from_cache="nowhere"), "no activation cache in nowhere"),
        (dict(model="mnist-cnn"), "give --model or --from-cache, not both"),
        (dict(cache=True, out="x"), "--cache with --from-cache would only copy the cache"),
    ],
)
def test_mismatched_cache_requests_are_refused(cache_dir, tmp_path, kwargs, message):
    if kwargs.pop("pool", None):  # a cache of mean-pooled activations, read with max pooling
        dirscope.run(Net(), LAYERS, data(60), "basis", k=3, pool="mean", out=str(tmp_path / "m"), cache=True)
        kwargs["from_cache"] = str(tmp_path / "m")
    settings = dict(directions="random:2", k=2, from_cache=str(cache_dir), progress=False)
    with pytest.raises(DirscopeError, match=message):
        dirscope.run(**{**settings, **kwargs})


def test_cache_needs_an_output_directory():
    with pytest.raises(DirscopeError, match="--cache needs --out"):
        dirscope.run(Net(), ["head"], data(60), "basis", k=2, cache=True)
    with pytest.raises(DirscopeError, match="unknown --cache-dtype 'float64'"):
        dirscope.run(Net(), ["head"], data(60), "basis", k=2, cache=True, cache_dtype="float64", out="x")
    with pytest.raises(DirscopeError, match="--cache-dtype float16 needs --cache"):  # was silently ignored
        dirscope.run(Net(), ["head"], data(60), "basis", k=2, cache_dtype="float16")


def test_cli_run_from_cache_rereads_images_from_the_data_spec(tmp_path, monkeypatch, capsys):
    (tmp_path / "tinymodel.py").write_text(TINY_MODEL)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.integers(0, 256, size=(50, 1, 8, 8)).astype(np.uint8))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    common = "--directions basis --k 3 --batch-size 16 -q --no-figures"
    code, _, err = run_cli(
        f"run --model python:tinymodel:build --layer features --layer head --data npz:data.npz {common} --cache "
        "--cache-dtype float16 --out a",
        capsys,
    )
    assert code == 0, err
    code, out, err = run_cli(f"run --from-cache a {common.replace('basis', 'random:5')} --out b", capsys)
    assert code == 0, err
    assert "features: D=4, 50 examples" in out
    examples = pd.read_parquet(tmp_path / "b" / "examples.parquet")
    assert len(examples) > 0 and examples["png"].map(len).min() > 0
    code, _, err = run_cli("run --from-cache a --layer features --data npz:data.npz --out c -q", capsys)
    assert code == 0, err
    np.savez(tmp_path / "data.npz", x=rng.integers(0, 256, size=(50, 1, 8, 8)).astype(np.uint8))  # same size
    code, _, err = run_cli(f"run --from-cache a {common} --out e", capsys)
    assert code == 2 and "is not the version the cache was written from" in err and err.count("\n") == 1
    code, _, err = run_cli("run --layer head --data npz:data.npz --out d", capsys)
    assert code == 2 and err.startswith("error: give a model (--model) or an activation cache (--from-cache")
    code, out, _ = run_cli("run --help", capsys)
    assert "--from-cache RUN_OR_CACHE_DIR" in out and "--checkpoint-every SECONDS" in out


@pytest.fixture
def chunked_cache(tmp_path, monkeypatch):
    monkeypatch.setattr("dirscope.cache.CHUNK_BYTES", 40_000)
    out = tmp_path / "chunked"
    dirscope.run(Net().eval(), LAYERS, data(), "basis", k=3, batch_size=32, out=str(out), cache=True, progress=False)
    return out


def test_later_chunks_are_checked_in_the_background_and_a_stopped_read_leaves_no_check_behind(
    chunked_cache, monkeypatch
):
    import threading

    from dirscope import cache as cache_module

    checked = []
    plain = cache_module.file_crc32

    def recording(path):
        checked.append((path.parent.name, path.name, threading.current_thread().name))
        return plain(path)

    monkeypatch.setattr(cache_module, "file_crc32", recording)
    reader = cache_module.CacheReader(chunked_cache)
    assert len(reader.index["chunks"]) > 3
    first_rows = reader.index["chunks"][0]["rows"]
    assert sum(len(idx) for idx, _, _ in reader.stream(["relu"], 32, limit=first_rows)) == first_rows
    assert {name for _, name, _ in checked} == {"000000.npy"} and not reader._pending  # no check of chunk 1
    checked.clear()
    assert sum(len(idx) for idx, _, _ in reader.stream(["relu"], 32)) == 300
    later = {(sub, name) for sub, name, thread in checked if thread.startswith("dirscope-crc")}
    files = [c["file"] for c in reader.index["chunks"]]
    assert later == {(sub, name) for name in files[1:] for sub in ("rows", "relu")}  # "head" is not read
    assert not reader._pending


def test_a_damaged_chunk_checked_in_the_background_is_the_same_clear_error(chunked_cache):
    index = json.loads((chunked_cache / "cache" / "index.json").read_text())
    name = index["chunks"][2]["file"]
    path = chunked_cache / "cache" / "relu" / name
    data_bytes = bytearray(path.read_bytes())
    data_bytes[-5] ^= 0x01
    path.write_bytes(bytes(data_bytes))
    with pytest.raises(DirscopeError, match=rf"chunk relu/{name} is damaged: its CRC-32 is"):
        dirscope.run(directions="random:2", k=2, from_cache=str(chunked_cache), progress=False)


def test_a_layer_name_too_long_for_a_file_name_gets_a_cut_hashed_stem(tmp_path):
    """torch allows a 300-character module name; a file name ends at 255 bytes, so the run (and its cache)
    once scanned everything and then failed to write, on every resume too."""
    long = "L" * 300
    model = nn.Sequential(nn.Flatten())
    model.add_module(long, nn.Linear(98, 4))
    run = dirscope.run(model, [long], data(60), "basis", k=2, progress=False, out=str(tmp_path / "r"), cache=True)
    (stem,) = {path.stem for path in (tmp_path / "r" / "directions").iterdir()}
    assert len(stem) == 96 and stem.startswith("L" * 79 + "-")
    np.testing.assert_array_equal(dirscope.load(tmp_path / "r").vectors(long), run.vectors(long))
    again = dirscope.run(directions="basis", k=2, progress=False, from_cache=str(tmp_path / "r"))
    pd.testing.assert_frame_equal(again.topk, run.topk)
