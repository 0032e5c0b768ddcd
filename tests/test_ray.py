"""--engine ray on a local 2-worker cluster: shards merged exactly equal the single-process run, row for row."""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
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


def always_dying() -> Fragile:
    """The CLI's python: model for a run whose shard at the sentinel kills its worker every time."""
    return Fragile("always", os.path.join(os.getcwd(), "died"))


def test_a_worker_that_keeps_dying_on_a_cluster_of_its_own_stops_with_one_line(tmp_path):
    """The driver's output is the one line, with the tries made: no raylet messages, no Ray warnings."""
    pytest.importorskip("ray")
    x, y = fragile_data()
    np.savez(tmp_path / "data.npz", x=x, y=y)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_LOG_TO_DRIVER")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    cli = "import sys; from dirscope import rayscan, cli; rayscan.RETRIES = 1; cli.main(sys.argv[1:])"
    args = (
        "run --model python:test_ray:always_dying --layer relu --layer fc --data npz:data.npz --directions basis "
        "--k 4 --batch-size 10 --out run --no-figures -q --engine ray --ray-address local --ray-workers 1"
    )
    proc = subprocess.run(
        [sys.executable, "-c", cli, *args.split()], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("error: the Ray task for rows 150-199 failed 2 times (WorkerCrashedError: ")
    assert proc.stderr.count("\n") == 1, proc.stderr


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
        ("--engine ray --ray-address nonsense", "--ray-address 'nonsense' is not HOST:PORT, ray://HOST:PORT, auto or"),
        ("--engine ray --ray-workers 0", "--ray-workers must be at least 1"),
        ("--ray-workers 2", "go with --engine ray"),
        ("--engine ray --cache", "run it without --engine ray"),
    ],
)
def test_bad_ray_options_are_one_line(tmp_path, monkeypatch, capsys, extra, message):
    pytest.importorskip("ray")
    monkeypatch.chdir(tmp_path)
    assert message in cli_error(f"{RUN} {extra}", capsys)


@pytest.fixture
def no_ray_yet(monkeypatch):
    """This process has no Ray connection (the module's cluster may be up) and finds nothing to attach to."""
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    for name in ("RAY_ADDRESS", "RAY_LOG_TO_DRIVER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_TMPDIR", "/nonexistent-ray-tmp")  # no `ray start` record
    return ray


def refuse(tried: list):
    """socket.create_connection where nothing listens, without a real connect."""

    def connect(address, timeout):
        tried.append(address)
        raise ConnectionRefusedError(111, "Connection refused")

    return connect


def test_ray_address_from_the_environment_is_checked_quickly_and_named(no_ray_yet, tmp_path, monkeypatch, capsys):
    """RAY_ADDRESS is where Ray connects without --ray-address: checked like an explicit address (it hung)."""
    tried = []
    monkeypatch.setattr(rayscan.socket, "create_connection", refuse(tried))
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    monkeypatch.chdir(tmp_path)
    err = cli_error(f"{RUN} --engine ray", capsys)
    assert "no Ray cluster answers at 127.0.0.1:9 (from RAY_ADDRESS) (Connection refused); " in err
    assert "unset RAY_ADDRESS or give --ray-address local" in err
    assert tried == [("127.0.0.1", 9)]


def test_a_recorded_ray_start_cluster_is_checked_quickly_and_named(no_ray_yet, tmp_path, monkeypatch, capsys):
    record = tmp_path / "ray" / "ray_current_cluster"
    record.parent.mkdir()
    record.write_text("10.1.2.3:6379")
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    tried = []
    monkeypatch.setattr(rayscan.socket, "create_connection", refuse(tried))
    monkeypatch.chdir(tmp_path)
    err = cli_error(f"{RUN} --engine ray", capsys)
    assert f"no Ray cluster answers at 10.1.2.3:6379 (from the `ray start` cluster recorded in {record})" in err
    assert tried == [("10.1.2.3", 6379)]


@pytest.mark.parametrize(
    ("address", "env", "recorded", "target", "source"),
    [
        (None, None, None, None, ""),  # a new local cluster
        (None, "10.0.0.1:6379", "10.0.0.2:6379", "10.0.0.1:6379", "RAY_ADDRESS"),
        ("auto", "10.0.0.1:6379", None, "10.0.0.1:6379", "RAY_ADDRESS"),  # as ray.init(address="auto") does
        (None, None, "10.0.0.2:6379", "10.0.0.2:6379", "the `ray start` cluster recorded in /r/ray_current_cluster"),
        ("auto", None, None, "auto", "--ray-address"),  # Ray looks for one itself, or says none runs
        ("ray://head:10001", "10.0.0.1:6379", "10.0.0.2:6379", "ray://head:10001", "--ray-address"),
        ("local", "10.0.0.1:6379", "10.0.0.2:6379", "local", "--ray-address"),  # a new local cluster all the same
        (None, "local", None, "local", "RAY_ADDRESS"),
    ],
)
def test_the_cluster_used_is_the_one_ray_init_would_use(
    no_ray_yet, monkeypatch, address, env, recorded, target, source
):
    if env is not None:
        monkeypatch.setenv("RAY_ADDRESS", env)
    monkeypatch.setattr(rayscan, "_started_cluster", lambda: recorded and (recorded, "/r/ray_current_cluster"))
    found = rayscan.ray_target(address)
    assert (found.address, found.source) == (target, source)


class FakeInit:
    """ray.init's arguments, and what it raises."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error, self.kwargs = error, None

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs) -> None:
        self.kwargs = kwargs
        if self.error is not None:
            raise self.error


def test_ray_is_connected_as_ray_init_does_quietly_and_the_manifest_names_where(no_ray_yet, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    fake = FakeInit()
    assert rayscan._connect(fake, None) == (True, "10.0.0.1:6379")
    assert fake.kwargs["address"] is None  # Ray finds it too, and logs in to a `ray start` cluster it found
    assert fake.kwargs["log_to_driver"] is False and fake.kwargs["logging_level"] == logging.ERROR
    monkeypatch.delenv("RAY_ADDRESS")
    assert rayscan._connect(fake, None) == (True, None)  # a new local cluster
    assert rayscan._connect(fake, "local") == (True, None)
    monkeypatch.setenv("RAY_LOG_TO_DRIVER", "1")  # Ray's own switch turns its messages back on
    rayscan._connect(fake, None)
    assert fake.kwargs["log_to_driver"] is True and fake.kwargs["logging_level"] == logging.WARNING


def test_a_failed_connection_names_the_address_and_its_source(no_ray_yet, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    error = ConnectionError("Could not connect\nto the GCS")
    with pytest.raises(
        DirscopeError, match=r"^cannot connect to Ray at 10.0.0.1:6379 \(from RAY_ADDRESS\) \(Could not connect\)$"
    ):
        rayscan._connect(FakeInit(error), None)


def test_a_sigterm_while_connecting_stops_the_run_instead_of_becoming_an_error(no_ray_yet):
    """Ray's SIGTERM handler raises SystemExit(15): it used to read 'cannot connect to Ray at ... (15)'."""
    with pytest.raises(SystemExit) as exit_:
        rayscan._connect(FakeInit(SystemExit(15)), None)
    assert exit_.value.code == 15


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


class DyingShards(SlowFirstShard):
    """A stand-in for Ray whose shard at row ``start`` fails with the given errors, one per try, then works."""

    def __init__(self, start: int, errors: list[Exception]) -> None:
        super().__init__()
        self.exceptions = pytest.importorskip("ray").exceptions
        self.start, self.errors, self.tries = start, errors, 0

    def remote(self, _task, start: int, stop: int) -> tuple[int, int]:
        self.tries += start == self.start
        return (start, stop)

    def wait(self, refs: list, num_returns: int) -> tuple[list, list]:
        return [refs[0]], refs[1:]

    def get(self, ref: tuple[int, int]) -> tuple[int, int]:
        if ref[0] == self.start and self.errors:
            raise self.errors.pop(0)
        return super().get(ref)

    def cancel(self, ref: tuple[int, int], force: bool) -> None:
        pass


def run_dying(monkeypatch, fake: DyingShards) -> None:
    from dirscope.engine import _Progress

    monkeypatch.setattr(rayscan, "absorb", lambda _plans, _log, shard: fake.merged.append(shard[0]))
    shards = [(i * 10, i * 10 + 10) for i in range(6)]
    rayscan._run_shards(fake, fake, None, shards, 2, [], None, _Progress(0, 60, False, None, None))


def test_a_shard_whose_worker_died_is_rerun_and_merged_in_order(monkeypatch):
    exceptions = pytest.importorskip("ray").exceptions
    fake = DyingShards(20, [exceptions.WorkerCrashedError(), exceptions.NodeDiedError("node gone")])
    run_dying(monkeypatch, fake)
    assert fake.tries == 3
    assert fake.merged == [0, 10, 20, 30, 40, 50]


def test_a_shard_that_keeps_dying_fails_with_the_tries_made(monkeypatch):
    exceptions = pytest.importorskip("ray").exceptions
    fake = DyingShards(20, [exceptions.WorkerCrashedError() for _ in range(9)])
    with pytest.raises(DirscopeError, match=r"rows 20-29 failed 4 times \(WorkerCrashedError: The worker died"):
        run_dying(monkeypatch, fake)
    assert fake.tries == rayscan.RETRIES + 1 == 4


def test_a_failure_ray_would_not_rerun_is_not_counted_as_retried(monkeypatch):
    """A dead local raylet runs nothing more: one try, and the message says so (it said 4)."""
    exceptions = pytest.importorskip("ray").exceptions
    fake = DyingShards(20, [exceptions.LocalRayletDiedError()])
    with pytest.raises(DirscopeError) as err:
        run_dying(monkeypatch, fake)
    assert "rows 20-29 failed on its first try (LocalRayletDiedError: The task's local raylet died." in str(err.value)
    assert fake.tries == 1
