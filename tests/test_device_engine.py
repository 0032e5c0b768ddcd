"""The engine with the torch device tally (forced on the CPU here), bf16 autocast, and on CUDA where present."""

from __future__ import annotations

import importlib.util
import json
from collections import OrderedDict

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import dirscope
from dirscope.cli import cli
from dirscope.errors import DirscopeError
from dirscope.tally import device as device_module
from dirscope.tally.device import DeviceTally
from test_engine import TinyConv, tiny_data

EXACT_STATS = ["layer", "direction", "count", "min", "max", "zeros", "zero_fraction", "hist_start", "hist_width"]
MOMENTS = ["mean", "std", "var", "skew", "kurtosis"]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton")


def assert_same_run(a: dirscope.Result, b: dirscope.Result) -> None:
    """Same top-k rows and exact statistics; moments equal to float64 rounding."""
    pd.testing.assert_frame_equal(a.topk, b.topk)
    pd.testing.assert_frame_equal(a.stats[EXACT_STATS], b.stats[EXACT_STATS])
    assert [list(h) for h in a.stats.hist_counts] == [list(h) for h in b.stats.hist_counts]
    for name in MOMENTS:
        np.testing.assert_allclose(b.stats[name], a.stats[name], rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("pool", ["max", "mean"])
def test_device_tally_run_equals_numba_run(pool):
    model, (x, y) = TinyConv().eval(), tiny_data(150)
    args = (model, ["relu", "fc"], (x, y), "basis,random:6")
    numba = dirscope.run(*args, k=5, pool=pool, batch_size=16, progress=False)
    device = dirscope.run(*args, k=5, pool=pool, batch_size=16, tally="device", progress=False)
    assert_same_run(numba, device)
    assert device.manifest["config"]["tally"] == "device" and numba.manifest["config"]["tally"] == "auto"


def test_mnist_cnn_files_equal_with_the_device_tally(tmp_path):
    for tally in ("numba", "device"):
        dirscope.run(
            "mnist-cnn", ["conv2", "fc1"], "mnist", "basis,random:32", k=9, limit=600, batch_size=128,
            tally=tally, out=str(tmp_path / tally), figures=False, progress=False,
        )  # fmt: skip
    numba, device = dirscope.load(tmp_path / "numba"), dirscope.load(tmp_path / "device")
    assert (tmp_path / "numba/topk.parquet").read_bytes() == (tmp_path / "device/topk.parquet").read_bytes()
    assert_same_run(numba, device)


def test_cli_autocast_bf16_on_cpu_is_recorded_and_rounds_projections(tmp_path):
    model_out = tmp_path / "run"
    args = "run --model mnist-cnn --layer fc1 --data mnist --directions basis:16,random:8 --k 4 --limit 300"
    flags = "--autocast bf16 --tally device --no-figures -q --out"
    result = CliRunner().invoke(cli, [*args.split(), *flags.split(), str(model_out)])
    assert result.exit_code == 0, result.output
    config = json.loads((model_out / "manifest.json").read_text())["config"]
    assert config["autocast"] == "bf16" and config["tally"] == "device"
    values = dirscope.load(model_out).topk.value.to_numpy()
    as_bf16 = torch.from_numpy(values.copy()).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(values, as_bf16)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"tally": "gpu"}, "unknown --tally 'gpu'"), ({"autocast": "fp16"}, "unknown --autocast 'fp16'")],
)
def test_bad_tally_or_autocast_is_one_line(kwargs, message):
    model, (x, _) = TinyConv().eval(), tiny_data()
    with pytest.raises(DirscopeError, match=message):
        dirscope.run(model, ["fc"], x, "basis", k=3, progress=False, **kwargs)


@triton
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's numpy on inf
@pytest.mark.parametrize(("tally", "bad_row"), [("numba", 37), ("device", 37), ("device", 63)])
def test_overflowing_projections_are_one_line_naming_the_layer(tmp_path, monkeypatch, tally, bad_row):
    """The fused device tally (forced here; Triton's interpreter on a CPU) finds a block one block late: at
    the next block (row 37 of batches of 16) or at the end of the scan (row 63, in the last block)."""
    if tally == "device":
        fused = DeviceTally.from_state_dict.__func__
        monkeypatch.setattr(DeviceTally, "from_state_dict", classmethod(lambda cls, s, d: fused(cls, s, d, True)))
    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    x[bad_row] = 3e38  # finite activations whose projection onto (1, 1, 1, 1) is not
    np.save(tmp_path / "dirs.npy", np.array([[1, 1, 1, 1], [1, 0, 0, 0]], np.float32))
    model = torch.nn.Sequential(OrderedDict(lin=torch.nn.Linear(4, 4)))
    with torch.no_grad():
        model.lin.weight.copy_(torch.eye(4))
        model.lin.bias.zero_()
    directions = f"file:{tmp_path / 'dirs.npy'}"
    with pytest.raises(DirscopeError, match=r"^layer 'lin': projections overflow float32 for directions \[0\]"):
        dirscope.run(model, ["lin"], x, directions, k=3, batch_size=16, tally=tally, progress=False)
    assert not device_module._Fused.failed


def test_cli_refuses_unknown_tally_with_exit_2():
    result = CliRunner().invoke(cli, ["run", "--model", "mnist-cnn", "--tally", "gpu", "--out", "x"])
    assert result.exit_code == 2 and "--tally" in result.output


@cuda
def test_cuda_run_equals_cpu_run_on_exact_projections():
    """Integer weights and inputs make every projection exact, so CUDA and CPU must agree row for row."""
    model, (x, y) = TinyConv().eval(), tiny_data(300)
    cpu = dirscope.run(model, ["relu", "fc"], (x, y), "basis", k=7, batch_size=32, progress=False)
    gpu = dirscope.run(model, ["relu", "fc"], (x, y), "basis", k=7, batch_size=32, device="cuda", progress=False)
    assert gpu.manifest["config"]["device"] == "cuda"
    assert_same_run(cpu, gpu)
