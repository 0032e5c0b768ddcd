"""--engine ray on a local 2-worker cluster: shards merged exactly equal the single-process run, row for row."""

from __future__ import annotations

import itertools
import json
import logging
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import dirscope
from dirscope import rayscan
from dirscope.checkpoint import CHECKPOINT_DIR
from dirscope.cli import main
from dirscope.errors import DirscopeError
from test_engine import TinyConv, tiny_data

N_ROWS = 300
SETTINGS = dict(layers=["1", "4"], directions="basis,random:8,pca:3", k=5, batch_size=16, null_sample=40)
EXACT_STATS = ["layer", "direction", "family", "count", "min", "max", "zeros", "zero_fraction"]
HISTOGRAM = ["hist_start", "hist_width", "hist_counts"]
MOMENTS = ["mean", "std", "var", "skew", "kurtosis"]
SENTINEL = 7.0  # an input value that makes Fragile kill its worker process


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes; tests/ is importable in them, so test classes unpickle there."""
    ray = pytest.importorskip("ray")
    env = {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, runtime_env={"env_vars": env})
    yield ray
    ray.shutdown()


def sequential() -> nn.Module:
    """A spatial conv layer (max-pooled over positions by the engine) and a dense layer."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 4 * 4, 10)
    )


def data(n: int = N_ROWS) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 1, 8, 8)).astype(np.float32)
    x[[37, 201] if n > 201 else [37], 0, 0, 0] = np.nan  # excluded rows in two different shards
    y = rng.integers(-1, 4, size=n)  # -1: unlabelled
    return x, y


def assert_same_result(ray_run, local_run) -> None:
    runs = (ray_run, local_run)
    pd.testing.assert_frame_equal(ray_run.topk, local_run.topk)
    pd.testing.assert_frame_equal(ray_run.null, local_run.null)
    pd.testing.assert_frame_equal(ray_run.stats[EXACT_STATS + HISTOGRAM], local_run.stats[EXACT_STATS + HISTOGRAM])
    pd.testing.assert_frame_equal(ray_run.stats[MOMENTS], local_run.stats[MOMENTS], check_exact=False, rtol=1e-9)
    layers = [
        [{k: v for k, v in layer.items() if k != "directions_file"} for layer in r.manifest["layers"]] for r in runs
    ]
    assert layers[0] == layers[1]
    assert ray_run.manifest["n"] == local_run.manifest["n"]
    assert ray_run.manifest["data"] == local_run.manifest["data"]


def assert_same_dir(a: Path, b: Path) -> None:
    for name in ("topk", "null", "examples", "directions"):
        pd.testing.assert_frame_equal(pd.read_parquet(a / f"{name}.parquet"), pd.read_parquet(b / f"{name}.parquet"))
    stats_a, stats_b = (pd.read_parquet(p / "stats.parquet") for p in (a, b))
    pd.testing.assert_frame_equal(stats_a.drop(columns=MOMENTS), stats_b.drop(columns=MOMENTS))
    pd.testing.assert_frame_equal(stats_a[MOMENTS], stats_b[MOMENTS], check_exact=False, rtol=1e-9)


# tally="device": the workers scan with the torch DeviceTally, as they do with --device cuda
@pytest.mark.parametrize(("limit", "workers", "tally"), [(None, 2, "auto"), (250, 3, "device")])
def test_ray_run_equals_the_local_run(cluster, tmp_path, limit, workers, tally):
    x, y = data()
    settings = {**SETTINGS, "limit": limit, "tally": tally}
    local = dirscope.run(sequential(), data=(x, y), **settings, out=tmp_path / "local", progress=False)
    sharded = dirscope.run(
        sequential(),
        data=(x, y),
        **settings,
        engine="ray",
        ray_workers=workers,
        out=tmp_path / "ray",
        progress=False,
    )
    assert sharded.manifest["engine"] == {"name": "ray", "address": None, "workers": workers, "shards": 4 * workers}
    assert sharded.manifest["layers"][0]["first_excluded_rows"] == [37, 201]
    assert_same_result(sharded, local)
    assert_same_dir(tmp_path / "ray", tmp_path / "local")


def test_ray_run_keeps_each_layers_excluded_labels_and_null_rows(cluster):
    """Excluded rows in every shard, more than the null sample holds: shards merge their exclusions exactly."""
    x, y = data(120)
    bad = sorted({37, *range(3, 120, 5)})
    x[bad, 0, 0, 0] = np.nan
    settings = {**SETTINGS, "directions": "basis,random:4", "null_sample": 15}
    local = dirscope.run(sequential(), data=(x, y), **settings, progress=False)
    sharded = dirscope.run(sequential(), data=(x, y), **settings, engine="ray", ray_workers=2, progress=False)
    assert_same_result(sharded, local)
    labels = y[bad][y[bad] >= 0]
    for layer in sharded.manifest["layers"]:
        assert layer["excluded_null_rows"] == sorted(set(sharded.null["index"]) & set(bad)) != []
        assert layer["excluded_label_counts"] == {str(c): int((labels == c).sum()) for c in np.unique(labels)}


def test_cli_end_to_end_with_engine_ray(cluster, tmp_path, monkeypatch, capsys):
    (tmp_path / "raymodel.py").write_text(
        textwrap.dedent("""
            from test_ray import sequential

            def build():
                return sequential()
        """)
    )
    x, y = data()
    np.savez(tmp_path / "data.npz", x=x, y=y.clip(0))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    run = "run --model python:raymodel:build --layer 1 --layer 4 --data npz:data.npz --k 5 --batch-size 16 -q"
    for args in (f"{run} --out local --no-figures", f"{run} --out ray --no-figures --engine ray --ray-workers 2"):
        try:
            main(args.split())
        except SystemExit as exc:
            pytest.fail(f"exit {exc.code}: {capsys.readouterr().err}")
    assert_same_dir(tmp_path / "ray", tmp_path / "local")
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert manifest["engine"]["shards"] == 8


def test_from_cache_on_ray_equals_from_cache_locally(cluster, tmp_path):
    x, y = data(120)
    settings = {**SETTINGS, "directions": "basis,random:4"}
    dirscope.run(sequential(), data=(x, y), **settings, out=tmp_path / "cached", cache=True, progress=False)
    settings.pop("layers")
    local = dirscope.run(from_cache=tmp_path / "cached", **settings, progress=False)
    sharded = dirscope.run(from_cache=tmp_path / "cached", **settings, engine="ray", progress=False)
    assert_same_result(sharded, local)


class Fragile(TinyConv):
    """TinyConv whose forward kills its process on a SENTINEL input: always, or once per ``marker`` file."""

    def __init__(self, mode: str = "healthy", marker: str = "") -> None:
        super().__init__()
        self.mode, self.marker = mode, marker

    def forward(self, x):
        doomed = self.mode == "always" or (self.mode == "once" and not os.path.exists(self.marker))
        if doomed and bool((x == SENTINEL).any()):
            Path(self.marker).touch()
            os._exit(1)
        return super().forward(x)


def fragile_data() -> tuple[np.ndarray, np.ndarray]:
    x, y = tiny_data(200)
    x[150, 0, 0, 0] = SENTINEL
    return x, y


FRAGILE = dict(layers=["relu", "fc"], directions="basis,random:4", k=4, batch_size=10, null_sample=30)


def test_a_dead_worker_is_retried(cluster, tmp_path):
    x, y = fragile_data()
    marker = str(tmp_path / "died-once")
    sharded = dirscope.run(Fragile("once", marker), data=(x, y), **FRAGILE, engine="ray", progress=False)
    assert os.path.exists(marker)
    assert_same_result(sharded, dirscope.run(Fragile(), data=(x, y), **FRAGILE, progress=False))


def test_a_worker_that_keeps_dying_fails_clearly_and_the_checkpoint_resumes(cluster, tmp_path, monkeypatch):
    monkeypatch.setattr(rayscan, "RETRIES", 1)
    x, y = fragile_data()
    out = tmp_path / "run"
    broken = Fragile("always", str(tmp_path / "died"))
    with pytest.raises(DirscopeError, match=r"rows 150-199 failed 2 times .*stays usable with --resume") as err:
        dirscope.run(
            broken, data=(x, y), **FRAGILE, engine="ray", ray_workers=1, out=out, checkpoint_every=1e-9, progress=False
        )
    assert "\n" not in str(err.value)
    saved = json.loads((out / CHECKPOINT_DIR / "checkpoint.json").read_text())
    assert saved["next_index"] == 150  # the shards before the dead one were merged and checkpointed
    resumed = dirscope.run(Fragile(), data=(x, y), **FRAGILE, engine="ray", out=out, resume=True, progress=False)
    assert_same_result(resumed, dirscope.run(Fragile(), data=(x, y), **FRAGILE, progress=False))


def test_unsized_source_is_refused(cluster):
    x, y = data(64)
    batches = ((torch.from_numpy(x[i : i + 16]), torch.from_numpy(y[i : i + 16])) for i in range(0, 64, 16))
    with pytest.raises(DirscopeError, match=r"cuts the data into shards by row, but .* is an iterable of batches"):
        dirscope.run(sequential(), ["4"], batches, "basis", k=2, engine="ray", progress=False)


def cli_error(args: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(args.split())
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


RUN = "run --model mnist-cnn --layer fc1 --data npz:nowhere.npz --out unused -q"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("--engine ray --ray-address 127.0.0.1:1", "no Ray cluster answers at 127.0.0.1:1"),
        ("--engine ray --ray-address nonsense", "is not HOST:PORT, ray://HOST:PORT or auto"),
        ("--engine ray --ray-workers 0", "--ray-workers must be at least 1"),
        ("--ray-workers 2", "go with --engine ray"),
        ("--engine ray --cache", "run it without --engine ray"),
    ],
)
def test_bad_ray_options_are_one_line(tmp_path, monkeypatch, capsys, extra, message):
    pytest.importorskip("ray")
    monkeypatch.chdir(tmp_path)
    assert message in cli_error(f"{RUN} {extra}", capsys)


def test_missing_ray_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    err = cli_error(f"{RUN} --engine ray", capsys)
    assert "pip install 'dirscope[ray]'" in err


@pytest.mark.parametrize(
    ("start", "stop", "batch", "count", "shards"),
    [
        (0, 100, 10, 4, [(0, 20), (20, 50), (50, 70), (70, 100)]),
        (0, 95, 10, 20, [(i * 10, min(i * 10 + 10, 95)) for i in range(10)]),
        (33, 100, 10, 2, [(33, 70), (70, 100)]),  # a resumed start off a batch boundary stays where it is
        (100, 100, 10, 4, []),
        # a resumed start off a batch boundary with no boundary before stop: one shard, not none
        (581, 600, 64, 8, [(581, 600)]),
        (100, 120, 64, 8, [(100, 120)]),
        (33, 40, 10, 4, [(33, 40)]),
        (33, 41, 10, 4, [(33, 40), (40, 41)]),
        (0, 5, 10, 4, [(0, 5)]),
        (7, 100, 10, 0, [(7, 100)]),  # even when asked for no shards, the rows are covered
    ],
)
def test_shards_are_contiguous_and_cut_at_batch_boundaries(start, stop, batch, count, shards):
    got = rayscan.cut_shards(start, stop, batch, count)
    assert got == shards
    assert_cover(got, start, stop, range(0, stop + batch, batch))
    assert len(got) <= max(count, 1)


def assert_cover(shards: list[tuple[int, int]], start: int, stop: int, allowed) -> None:
    """Shards cover [start, stop) exactly, in order, each non-empty, and cut only at allowed points."""
    if stop <= start:
        assert shards == []
        return
    assert shards[0][0] == start and shards[-1][1] == stop
    assert all(a < b for a, b in shards)
    assert all(prev[1] == nxt[0] for prev, nxt in itertools.pairwise(shards))
    assert {a for a, _ in shards[1:]} <= set(allowed)


def test_random_shards_cover_the_rows_and_cut_only_at_given_starts():
    rng = np.random.default_rng(1)
    for _ in range(500):
        start, stop = sorted(int(v) for v in rng.integers(0, 400, size=2))
        batch, count = int(rng.integers(1, 70)), int(rng.integers(0, 20))
        assert_cover(rayscan.cut_shards(start, stop, batch, count), start, stop, range(0, stop + batch, batch))
        starts = np.unique(rng.integers(0, 400, size=int(rng.integers(0, 30))))
        shards = rayscan.cut_shards(start, stop, batch, count, starts)
        assert_cover(shards, start, stop, starts)
        inside = ((starts > start) & (starts < stop)).sum()
        assert len(shards) == (0 if stop <= start else min(max(count, 1), inside + 1))


def cached_feed(tmp_path: Path, write_batch: int, n: int = 120):
    """A cache of ``n`` rows written at batch size ``write_batch``, opened as a from-cache run's feed."""
    from dirscope.feeds import CacheFeed

    x, y = data(n)
    settings = {**SETTINGS, "directions": "basis,random:4", "batch_size": write_batch}
    dirscope.run(sequential(), data=(x, y), **settings, out=tmp_path / "cached", cache=True, progress=False)
    return CacheFeed(tmp_path / "cached", None, None, "max")


@pytest.mark.parametrize(("write_batch", "read_batch", "start"), [(16, 10, 0), (10, 16, 0), (7, 64, 29), (16, 10, 21)])
def test_shards_of_a_cache_start_where_the_local_read_starts_a_batch(tmp_path, write_batch, read_batch, start):
    """Each shard, read on its own, yields exactly the batches of the local read of the cache."""
    feed, stop = cached_feed(tmp_path, write_batch), 120
    local = [idx.tolist() for idx, _, _ in feed.stream(read_batch, start=start, limit=stop)]
    starts = rayscan.batch_starts(feed, read_batch, start, stop)
    assert starts.tolist() == [batch[0] for batch in local]
    shards = rayscan.cut_shards(start, stop, read_batch, 8, starts)
    assert len(shards) == 8
    assert_cover(shards, start, stop, starts)
    sharded = [idx.tolist() for a, b in shards for idx, _, _ in feed.stream(read_batch, start=a, limit=b)]
    assert sharded == local
    # cut at multiples of the reading batch size instead, some shard would split a cached batch
    naive = rayscan.cut_shards(start, stop, read_batch, 8)
    if write_batch % read_batch:
        assert [idx.tolist() for a, b in naive for idx, _, _ in feed.stream(read_batch, start=a, limit=b)] != local


def test_from_cache_on_ray_at_another_batch_size_equals_from_cache_locally(cluster, tmp_path):
    cached_feed(tmp_path, write_batch=16)
    settings = {**SETTINGS, "directions": "basis,random:4,pca:3", "batch_size": 10}
    settings.pop("layers")
    local = dirscope.run(from_cache=tmp_path / "cached", **settings, progress=False)
    sharded = dirscope.run(from_cache=tmp_path / "cached", **settings, engine="ray", ray_workers=2, progress=False)
    assert sharded.manifest["engine"]["shards"] == 8
    assert_same_result(sharded, local)


def test_ray_resume_of_a_from_cache_run_off_the_batch_size_scans_the_last_rows(cluster, tmp_path, monkeypatch):
    """A local from-cache run's checkpoint sits on the cache's batch cuts (here 7s), not on multiples of 64."""
    from dirscope import engine

    cached_feed(tmp_path, write_batch=7)
    settings = {**SETTINGS, "directions": "basis,random:4", "batch_size": 64}
    settings.pop("layers")
    out = tmp_path / "resumed"
    calls, add = [], engine._Folds.add

    def interrupt(self, idx, y, acts):
        calls.append(int(idx[-1]))
        if len(calls) > 15:  # 15 cached batches of 7: rows 0-104 are scanned, next_index is 105
            raise KeyboardInterrupt
        return add(self, idx, y, acts)

    monkeypatch.setattr(engine._Folds, "add", interrupt)
    with pytest.raises(KeyboardInterrupt):
        dirscope.run(from_cache=tmp_path / "cached", **settings, out=out, checkpoint_every=1e-9, progress=False)
    monkeypatch.setattr(engine._Folds, "add", add)
    assert json.loads((out / CHECKPOINT_DIR / "checkpoint.json").read_text())["next_index"] == 105
    resumed = dirscope.run(
        from_cache=tmp_path / "cached", **settings, out=out, resume=True, engine="ray", ray_workers=2, progress=False
    )
    assert resumed.manifest["engine"]["shards"] == 3  # rows 105-119 in the cached batches at 105, 112 and 119
    assert_same_result(resumed, dirscope.run(from_cache=tmp_path / "cached", **settings, progress=False))


class SlowFirstShard:
    """A stand-in for Ray whose first shard finishes last: every later shard must wait for it to merge."""

    def __init__(self) -> None:
        self.fetched = 0
        self.merged: list[int] = []
        self.most_held = 0

    def remote(self, _task, start: int, stop: int) -> tuple[int, int]:
        return (start, stop)

    def wait(self, refs: list, num_returns: int) -> tuple[list, list]:
        later = [r for r in refs if r[0] != 0]
        ready = max(later) if later else refs[0]
        return [ready], [r for r in refs if r != ready]

    def get(self, ref: tuple[int, int]) -> tuple[int, int]:
        self.fetched += 1
        self.most_held = max(self.most_held, self.fetched - len(self.merged))
        return ref


def test_shards_waiting_for_an_earlier_one_are_bounded_merge_in_order_and_checkpoint_at_the_end(monkeypatch):
    from dirscope.engine import _Progress

    fake = SlowFirstShard()
    monkeypatch.setattr(rayscan, "absorb", lambda _plans, _log, shard: fake.merged.append(shard[0]))
    shards = [(i * 10, i * 10 + 10) for i in range(12)]
    saved = []

    class Saver:
        """Due at every fifth merge."""

        asked = 0

        def due(self):
            self.asked += 1
            return self.asked % 5 == 0

        def save(self, _plans, _log, next_index, _writer):
            saved.append(next_index)

    progress = _Progress(start=0, total=120, bar=False, saver=Saver(), writer=None)
    rayscan._run_shards(fake, fake, None, shards, 2, [], None, progress)
    assert fake.merged == [start for start, _ in shards]
    assert saved == [50, 100, 120]  # when due, and after the last merge, due or not
    assert fake.most_held <= 2 * 2 - 1  # without the bound, all 11 later shards would wait in memory
