"""Checkpoints and --resume: a killed run, resumed, equals an uninterrupted one; mismatched checkpoints are refused."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import dirscope
import dirscope.engine
from dirscope.checkpoint import CHECKPOINT_DIR, save_checkpoint
from dirscope.cli import main
from dirscope.data import load_data
from dirscope.errors import DirscopeError
from dirscope.models import LoadedModel
from test_engine import TinyConv, tiny_data

SLOW_MODEL = textwrap.dedent("""
    import os
    import time

    import torch
    from torch import nn

    FORWARDS = []

    class Slow(nn.Module):
        def forward(self, x):
            FORWARDS.append(len(x))
            time.sleep(float(os.environ.get("SLOW_SECONDS", "0")))
            return x

    def build():
        torch.manual_seed(0)
        net = nn.Sequential()
        net.add_module("slow", Slow())
        net.add_module("conv", nn.Conv2d(1, 6, 3, padding=1))
        net.add_module("relu", nn.ReLU())
        net.add_module("flat", nn.Flatten())
        net.add_module("fc", nn.Linear(6 * 8 * 8, 10))
        net.dirscope_input_shape = (1, 8, 8)
        return net
""")
RUN = (
    "run --model python:slowmodel:build --layer relu --layer fc --data npz:data.npz "
    "--directions basis,random:8,pca:3 --k 5 --batch-size 10 --null-sample 30 -q --no-figures"
)
N_ROWS = 400


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "slowmodel.py").write_text(SLOW_MODEL)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(N_ROWS, 1, 8, 8)).astype(np.uint8)
    np.savez(tmp_path / "data.npz", x=x, y=rng.integers(0, 4, size=N_ROWS))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def cli(args: str) -> None:
    try:
        main(args.split())
    except SystemExit as exc:
        assert exc.code == 0, exc.code


def assert_same_run(a, b) -> None:
    for name in ("topk", "stats", "null", "examples", "directions"):
        pd.testing.assert_frame_equal(pd.read_parquet(a / f"{name}.parquet"), pd.read_parquet(b / f"{name}.parquet"))
    for layer in ("relu", "fc"):
        assert (a / "directions" / f"{layer}.npy").read_bytes() == (b / "directions" / f"{layer}.npy").read_bytes()
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    for key in ("n", "layers", "config", "model"):
        assert ma[key] == mb[key], key
    assert ma["data"] == mb["data"]


def test_kill_9_then_resume_equals_an_uninterrupted_run(project):
    env = {**os.environ, "SLOW_SECONDS": "0.05", "PYTHONPATH": str(project)}
    args = [sys.executable, "-m", "dirscope", *RUN.split(), "--checkpoint-every", "0.2", "--out", "killed"]
    proc = subprocess.Popen(args, cwd=project, env=env, stderr=subprocess.PIPE)
    index = project / "killed" / CHECKPOINT_DIR / "checkpoint.json"
    deadline = time.monotonic() + 120
    while not index.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    assert not (project / "killed" / "manifest.json").exists()
    saved = json.loads(index.read_text())
    assert 0 < saved["next_index"] < N_ROWS

    import slowmodel

    slowmodel.FORWARDS.clear()
    cli(f"{RUN} --out killed --resume")
    # one dry forward, then only the rows after the checkpoint: no refit of pca, no rescan
    assert sum(slowmodel.FORWARDS[1:]) <= N_ROWS - saved["next_index"]
    assert not (project / "killed" / CHECKPOINT_DIR).exists()
    cli(f"{RUN} --out whole --checkpoint-every 0")
    assert_same_run(project / "killed", project / "whole")


class Crash(Exception):
    """Stands for a crash in the middle of a scan."""


class CrashAfter(TinyConv):
    """TinyConv that raises on its ``n``-th forward (counting the dry forward and any fitting pass)."""

    def __init__(self, n: int | None) -> None:
        super().__init__()
        self.n, self.calls = n, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.n:
            raise Crash
        return super().forward(x)


def crashed_run(tmp_path, crash_at: int, **kwargs):
    """Run until the crash (checkpointing after every batch), then resume; return the resumed result."""
    out = str(tmp_path / "run")
    with pytest.raises(Crash):
        dirscope.run(CrashAfter(crash_at), **kwargs, out=out, checkpoint_every=1e-9, progress=False)
    assert (tmp_path / "run" / CHECKPOINT_DIR / "checkpoint.json").exists()
    return dirscope.run(CrashAfter(None), **kwargs, out=out, resume=True, progress=False)


# Forwards before the scan: 1 dry forward and 15 batches fitting pca; the scan has 15 batches. Lag 1: each
# batch folded after the next one's forward, as on a GPU (so a checkpoint must first fold the one waiting).
@pytest.mark.parametrize(("pool", "crash_at", "lag"), [("max", 18, 0), ("max", 25, 0), ("mean", 22, 0), ("max", 25, 1)])
def test_resume_after_a_crash_gives_identical_results(tmp_path, monkeypatch, pool, crash_at, lag):
    monkeypatch.setattr("dirscope.engine._fold_lag", lambda _device: lag)
    x, y = tiny_data(120)
    x[17, 0, 0, 0] = np.nan  # a row excluded and counted, before any crash
    settings = dict(layers=["relu", "fc"], directions="basis,random:4,pca:2", k=4, pool=pool, batch_size=8)
    settings.update(null_sample=20)
    resumed = crashed_run(tmp_path, crash_at, data=(x, y), **settings)
    whole = dirscope.run(CrashAfter(None), data=(x, y), **settings, out=str(tmp_path / "whole"), progress=False)
    pd.testing.assert_frame_equal(resumed.topk, whole.topk)
    pd.testing.assert_frame_equal(resumed.stats, whole.stats)
    pd.testing.assert_frame_equal(resumed.null, whole.null)
    for layer in ("relu", "fc"):
        np.testing.assert_array_equal(resumed.vectors(layer), whole.vectors(layer))
    assert resumed.manifest["layers"] == whole.manifest["layers"]
    assert resumed.manifest["data"]["label_counts"] == whole.manifest["data"]["label_counts"]


def test_resume_keeps_each_layers_excluded_labels_and_null_rows(tmp_path, monkeypatch):
    """More excluded rows than the null sample holds, some in it: the resumed run's exclusions are exact."""
    monkeypatch.setattr("dirscope.engine._fold_lag", lambda _device: 1)
    x, y = tiny_data(120)
    bad = list(range(5, 120, 4))
    x[bad, 0, 0, 0] = np.nan
    settings = dict(layers=["relu", "fc"], directions="basis,random:4", k=4, batch_size=8, null_sample=20)
    resumed = crashed_run(tmp_path, 9, data=(x, y), **settings)  # crashes in the 8th of 15 batches
    whole = dirscope.run(CrashAfter(None), data=(x, y), **settings, out=str(tmp_path / "whole"), progress=False)
    assert resumed.manifest["layers"] == whole.manifest["layers"]
    labels = {str(c): int(n) for c, n in enumerate(np.bincount(y[bad]))}
    for layer in resumed.manifest["layers"]:
        assert layer["excluded_null_rows"] == sorted(set(resumed.null["index"]) & set(bad)) != []
        assert layer["excluded_label_counts"] == labels


def test_a_checkpoint_of_an_older_format_is_refused_in_one_line(tmp_path):
    x, y = tiny_data(80)
    settings = dict(layers=["fc"], directions="basis", k=4, batch_size=8, out=str(tmp_path), progress=False)
    with pytest.raises(Crash):
        dirscope.run(CrashAfter(5), data=(x, y), **settings, checkpoint_every=1e-9)
    index = tmp_path / CHECKPOINT_DIR / "checkpoint.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), "format": "dirscope-checkpoint/3"}))
    with pytest.raises(DirscopeError, match=r"has format 'dirscope-checkpoint/3', not 'dirscope-checkpoint/4'") as err:
        dirscope.run(CrashAfter(None), data=(x, y), **settings, resume=True)
    assert "\n" not in str(err.value)


def test_resume_of_an_iterable_skips_by_consuming(tmp_path):
    x, y = tiny_data(90)
    batches = [(torch.from_numpy(x[i : i + 15]), torch.from_numpy(y[i : i + 15])) for i in range(0, 90, 15)]
    settings = dict(layers=["fc"], directions="random:6", k=3, batch_size=10)
    resumed = crashed_run(tmp_path, 6, data=batches, **settings)
    whole = dirscope.run(CrashAfter(None), data=batches, **settings, progress=False)
    pd.testing.assert_frame_equal(resumed.topk, whole.topk)
    pd.testing.assert_frame_equal(resumed.stats, whole.stats)


def test_indexed_sources_seek_to_the_next_batch_boundary():
    x, _ = tiny_data(50)
    source = load_data(x)
    got = [b.indices.tolist() for b in source.batches_from(20, 20)]
    assert got == [list(range(20, 40)), list(range(40, 50))]
    rounded = [b.indices[0] for b in source.batches_from(20, 33)]  # rows 33..39 were skipped files
    assert rounded == [40]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(seed=1), "another --seed"),
        (dict(k=5), "another --k"),
        (dict(directions="basis,random:5"), "another --directions"),
        (dict(pool="mean"), "another --pool"),
        (dict(batch_size=9), "another --batch-size"),
        (dict(feature_axis="first"), "another --feature-axis"),
        (dict(layers=["fc"]), "another layers"),
        (dict(data="short"), "another data size"),
        (dict(model="retrained"), r"another model weights \(sha256"),
    ],
)
def test_a_checkpoint_made_otherwise_is_refused(tmp_path, change, message):
    x, y = tiny_data(80)
    settings = dict(layers=["relu", "fc"], directions="basis,random:4", k=4, batch_size=8)
    with pytest.raises(Crash):
        dirscope.run(CrashAfter(5), data=(x, y), **settings, out=str(tmp_path), checkpoint_every=1e-9, progress=False)
    model, data = CrashAfter(None), (x, y)
    if change.pop("model", None):
        with torch.no_grad():
            model.fc.weight.add_(1.0)
    if change.pop("data", None):
        data = (x[:70], y[:70])
    settings.update(change)
    with pytest.raises(DirscopeError, match=message) as err:
        dirscope.run(model, data=data, **settings, out=str(tmp_path), resume=True, progress=False)
    assert "\n" not in str(err.value) and "--overwrite to start over" in str(err.value)


class Pooled(nn.Module):
    """Conv, upsampling by ``scale`` (no weights), then a pooled head: the weights do not depend on ``scale``,
    the shape of layer ``up`` does."""

    def __init__(self, scale: int = 1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.up = nn.Upsample(scale_factor=scale)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        return self.fc(self.pool(self.up(self.conv(x))).flatten(1))


def crash_after(monkeypatch, batches: int) -> None:
    """Raise Crash when the scan reaches batch ``batches + 1`` (checkpoints before it are kept)."""
    real, seen = dirscope.engine._Folds.add, []

    def add(self, idx, y, acts):
        seen.append(idx)
        if len(seen) > batches:
            raise Crash
        return real(self, idx, y, acts)

    monkeypatch.setattr(dirscope.engine._Folds, "add", add)


def crash_then_resume(monkeypatch, out, first: dict, then: dict) -> DirscopeError:
    """Crash a checkpointed run made with ``first`` in its 3rd batch; the error resuming it with ``then``."""
    settings = dict(directions="basis", k=3, batch_size=8, out=str(out), progress=False)
    with monkeypatch.context() as patch:
        crash_after(patch, 2)
        with pytest.raises(Crash):
            dirscope.run(**first, **settings, checkpoint_every=1e-9)
    with pytest.raises(DirscopeError) as err:
        dirscope.run(**then, **settings, resume=True)
    assert "\n" not in str(err.value) and "--overwrite to start over" in str(err.value)
    return err.value


def test_a_checkpoint_made_with_another_preprocessing_is_refused(tmp_path, monkeypatch):
    def model(resize: int) -> LoadedModel:
        return LoadedModel(Pooled(), "pooled", info={"preprocess": {"resize": resize, "crop": None}})

    x = tiny_data(40)[0]
    first, then = dict(model=model(8), layers=["fc"], data=x), dict(model=model(6), layers=["fc"], data=x)
    err = crash_then_resume(monkeypatch, tmp_path, first, then)
    assert "was made with another preprocessing resize (8, now 6)" in str(err)


def test_a_checkpoint_made_with_other_layer_shapes_is_refused(tmp_path, monkeypatch):
    x = tiny_data(40)[0]
    first, then = dict(model=Pooled(1), layers=["up"], data=x), dict(model=Pooled(2), layers=["up"], data=x)
    err = crash_then_resume(monkeypatch, tmp_path, first, then)
    assert "was made with another layer shape of up ([3, 6, 6], now [3, 12, 12])" in str(err)


def test_a_checkpoint_of_a_data_file_rewritten_at_the_same_size_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "d.npz"
    np.savez(path, x=tiny_data(40, seed=0)[0])
    data = dict(model=TinyConv(), layers=["fc"], data=f"npz:{path}")
    settings = dict(directions="basis", k=3, batch_size=8, out=str(tmp_path / "run"), progress=False)
    with monkeypatch.context() as patch:
        crash_after(patch, 2)
        with pytest.raises(Crash):
            dirscope.run(**data, **settings, checkpoint_every=1e-9)
    dirscope.run(**data, **settings, resume=True)  # the same file: resumed
    with monkeypatch.context() as patch:
        crash_after(patch, 2)
        with pytest.raises(Crash):
            dirscope.run(**data, **settings, overwrite=True, checkpoint_every=1e-9)
    before = path.stat()
    np.savez(path, x=tiny_data(40, seed=1)[0])  # other pixels, the same number of bytes
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))  # a coarse clock could keep the mtime
    assert path.stat().st_size == before.st_size
    with pytest.raises(DirscopeError, match=r"another version of the data files \(by size and mtime\)") as err:
        dirscope.run(**data, **settings, resume=True)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("every", [float("inf"), float("nan"), -1.0])
def test_checkpoint_every_must_be_finite_and_not_negative(tmp_path, every):
    with pytest.raises(DirscopeError, match=r"--checkpoint-every must be >= 0 seconds and finite") as err:
        dirscope.run(TinyConv(), ["fc"], tiny_data()[0], "basis", k=2, out=str(tmp_path), checkpoint_every=every)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "manifest.json").exists()


def test_resume_needs_a_checkpoint_and_a_checkpoint_needs_resume_or_overwrite(tmp_path):
    x, _ = tiny_data(60)
    settings = dict(layers=["fc"], directions="basis", k=2, batch_size=8)
    with pytest.raises(DirscopeError, match=r"no checkpoint to resume in .*leaves none\); start it again with --over"):
        dirscope.run(CrashAfter(None), data=x, **settings, out=str(tmp_path / "new"), resume=True, progress=False)
    with pytest.raises(Crash):
        dirscope.run(CrashAfter(3), data=x, **settings, out=str(tmp_path / "r"), checkpoint_every=1e-9, progress=False)
    with pytest.raises(DirscopeError, match=r"checkpoint of an unfinished run; pass --resume .* or --overwrite"):
        dirscope.run(CrashAfter(None), data=x, **settings, out=str(tmp_path / "r"), progress=False)
    with pytest.raises(DirscopeError, match="not both"):
        dirscope.run(CrashAfter(None), data=x, **settings, out=str(tmp_path / "r"), resume=True, overwrite=True)
    dirscope.run(CrashAfter(None), data=x, **settings, out=str(tmp_path / "r"), overwrite=True, progress=False)
    assert not (tmp_path / "r" / CHECKPOINT_DIR).exists()
    with pytest.raises(DirscopeError, match="the run there is complete"):
        dirscope.run(CrashAfter(None), data=x, **settings, out=str(tmp_path / "r"), resume=True, progress=False)
    with pytest.raises(DirscopeError, match="--checkpoint-every must be >= 0"):
        dirscope.run(CrashAfter(None), data=x, **settings, out=str(tmp_path / "n"), checkpoint_every=-1)


def test_what_a_kill_leaves_is_cleared_and_a_finished_run_is_never_called_unfinished(tmp_path, monkeypatch):
    """Temporary files of interrupted writes stayed for good (a cache chunk's: tens of MiB); a kill between the
    manifest and the checkpoint's removal left a finished run that --resume rewrote, dropping its scores."""
    x, _ = tiny_data(60)
    settings = dict(layers=["fc"], directions="basis", k=2, batch_size=8, progress=False)
    out = tmp_path / "r"
    with pytest.raises(Crash):
        dirscope.run(CrashAfter(3), data=x, **settings, out=str(out), checkpoint_every=1e-9)
    leftovers = [out / ".topk.parquet.a1b2c3d4.tmp", out / CHECKPOINT_DIR / ".state-000009.npz.x_y9z8w7.tmp"]
    for path in leftovers:
        path.write_bytes(b"partial")
    mine = out / ".notes.tmp"  # not a name atomic_path makes: the user's
    mine.write_text("keep")
    resumed = dirscope.run(CrashAfter(None), data=x, **settings, out=str(out), resume=True)
    assert not any(p.exists() for p in leftovers) and mine.read_text() == "keep"
    finished = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    save_checkpoint(out, {"fingerprint": {}}, {"a": np.zeros(1)})  # as if killed before its removal...
    os.utime(out / "manifest.json")  # ...with the manifest written after the checkpoint
    with pytest.raises(DirscopeError, match="the run there is complete; load it, or pass --overwrite"):
        dirscope.run(CrashAfter(None), data=x, **settings, out=str(out), resume=True)
    assert not (out / CHECKPOINT_DIR).exists() and dirscope.load(out).topk.equals(resumed.topk)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == finished
    os.makedirs(out / CHECKPOINT_DIR)
    (out / CHECKPOINT_DIR / "state-000000.npz").write_bytes(b"")  # a removal killed after the index went
    with pytest.raises(DirscopeError, match="not empty; pass --overwrite"):
        dirscope.run(CrashAfter(None), data=x, **settings, out=str(out))


def test_score_of_an_unfinished_run_says_to_resume_it(tmp_path):
    with pytest.raises(Crash):
        dirscope.run(CrashAfter(3), ["fc"], tiny_data(60)[0], "basis", k=2, batch_size=8, out=str(tmp_path / "r"),
                     checkpoint_every=1e-9, progress=False)  # fmt: skip
    with pytest.raises(DirscopeError, match=r"holds an unfinished run \(a checkpoint, no manifest.json yet\); fin"):
        dirscope.score(tmp_path / "r")


def test_checkpoints_follow_the_interval_plus_one_at_the_scan_end_and_none_when_disabled(tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr("dirscope.engine.save_checkpoint", lambda _out, meta, _arrays: written.append(meta))
    x, _ = tiny_data(60)
    records = []
    for every, out in ((60.0, "a"), (0, "b")):
        result = dirscope.run(
            TinyConv(), ["fc"], x, "basis", k=2, batch_size=4, out=str(tmp_path / out), checkpoint_every=every
        )
        records.append(result.manifest["checkpoints"])
    assert [meta["next_index"] for meta in written] == [60]  # not one per batch: only the scan's end
    assert records[0]["every_s"] == 60.0 and records[0]["written"] == 1 and records[1] is None


def test_the_manifest_records_how_many_checkpoints_were_written_and_their_time(tmp_path, monkeypatch):
    def slow_save(_out, _meta, _arrays):
        time.sleep(0.01)

    monkeypatch.setattr("dirscope.engine.save_checkpoint", slow_save)
    x, _ = tiny_data(60)
    result = dirscope.run(TinyConv(), ["fc"], x, "basis", k=2, batch_size=4, out=str(tmp_path), checkpoint_every=1e-9)
    record = json.loads((tmp_path / "manifest.json").read_text())["checkpoints"]
    assert record == result.manifest["checkpoints"]
    assert record["written"] == 15 + 1  # after each of the 15 batches, then once more at the scan's end
    assert 0.01 * 16 <= record["seconds"] <= result.manifest["wall_time_s"]


def test_a_crash_while_the_results_are_written_rescans_nothing(tmp_path, monkeypatch):
    x, y = tiny_data(60)
    settings = dict(layers=["relu", "fc"], data=(x, y), directions="basis,random:4", k=4, batch_size=8)

    def crash(*_args, **_kwargs):
        raise Crash

    monkeypatch.setattr("dirscope.rundir.write_run", crash)
    with pytest.raises(Crash):
        dirscope.run(CrashAfter(None), **settings, out=str(tmp_path / "run"), progress=False)
    monkeypatch.undo()
    model = CrashAfter(None)
    resumed = dirscope.run(model, **settings, out=str(tmp_path / "run"), resume=True, progress=False)
    assert model.calls == 1  # the dry forward for the layer shapes, and no batch
    whole = dirscope.run(CrashAfter(None), **settings, progress=False)
    pd.testing.assert_frame_equal(resumed.topk, whole.topk)
    pd.testing.assert_frame_equal(resumed.stats, whole.stats)


def test_checkpoint_switches_atomically_and_a_broken_one_is_one_clear_error(tmp_path):
    save_checkpoint(tmp_path, {"next_index": 3}, {"a": np.arange(3)})
    save_checkpoint(tmp_path, {"next_index": 6}, {"a": np.arange(6)})
    folder = tmp_path / CHECKPOINT_DIR
    index = json.loads((folder / "checkpoint.json").read_text())
    assert [p.name for p in folder.iterdir() if p.suffix == ".npz"] == [index["state_file"]]
    assert index["next_index"] == 6 and not list(folder.glob(".*.tmp"))
    (folder / index["state_file"]).write_bytes(b"not a zip")
    x, _ = tiny_data(60)
    with pytest.raises(DirscopeError, match=r"checkpoint in .* is unreadable"):
        dirscope.run(TinyConv(), ["fc"], x, "basis", k=2, out=str(tmp_path), resume=True, progress=False)


def test_a_full_disk_is_a_clear_error_and_the_last_checkpoint_survives(tmp_path, monkeypatch):
    x, y = tiny_data(80)
    settings = dict(layers=["relu", "fc"], directions="basis,random:4", k=4, batch_size=8, progress=False)
    real, saves = np.savez, []

    def fill_up_after_two(fh, **arrays):
        saves.append(1)
        if len(saves) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fh, **arrays)

    monkeypatch.setattr(np, "savez", fill_up_after_two)
    with pytest.raises(DirscopeError, match="No space left on device; check free space"):
        dirscope.run(TinyConv(), data=(x, y), **settings, out=str(tmp_path / "r"), checkpoint_every=1e-9)
    monkeypatch.undo()
    assert json.loads((tmp_path / "r" / CHECKPOINT_DIR / "checkpoint.json").read_text())["next_index"] == 16
    resumed = dirscope.run(TinyConv(), data=(x, y), **settings, out=str(tmp_path / "r"), resume=True)
    whole = dirscope.run(TinyConv(), data=(x, y), **settings)
    pd.testing.assert_frame_equal(resumed.topk, whole.topk)
    pd.testing.assert_frame_equal(resumed.stats, whole.stats)


def test_every_write_fsyncs_the_file_and_then_its_directory(tmp_path, monkeypatch):
    """A rename is durable only once the directory is fsynced: otherwise power loss can undo the switch."""
    synced = []
    real = os.fsync

    def record(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    save_checkpoint(tmp_path, {"next_index": 3}, {"a": np.arange(3)})
    folder = tmp_path / CHECKPOINT_DIR
    state = json.loads((folder / "checkpoint.json").read_text())["state_file"]
    kinds = ["dir" if p == str(folder) else os.path.basename(p).split(".tmp")[0][:-9] for p in synced]
    assert kinds == [f".{state}", "dir", ".checkpoint.json", "dir"]  # mkstemp adds 8 characters and a dot


def test_a_checkpoint_whose_directions_file_changed_is_refused(tmp_path, monkeypatch):
    """The checkpoint keeps the file's old rows; resuming kept them silently while the file said otherwise."""
    path = tmp_path / "mine.npy"
    np.save(path, np.eye(2, 4, dtype=np.float32))
    settings = dict(model=Pooled(), layers=["fc"], data=tiny_data(40)[0], directions=f"basis,file:{path}", k=3)
    settings.update(batch_size=8, out=str(tmp_path / "run"), progress=False)
    with monkeypatch.context() as patch:
        crash_after(patch, 2)
        with pytest.raises(Crash):
            dirscope.run(**settings, checkpoint_every=1e-9)
    np.save(path, np.eye(2, 4, k=1, dtype=np.float32))
    with pytest.raises(DirscopeError, match=r"made with another version of the --directions file .*mine.npy") as err:
        dirscope.run(**settings, resume=True)
    assert "\n" not in str(err.value)
    np.save(path, np.eye(2, 4, dtype=np.float32))  # the file as it was: the run resumes
    assert dirscope.run(**settings, resume=True).vectors("fc").shape == (6, 4)
