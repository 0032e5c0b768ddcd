"""The engine with the torch device tally (forced on the CPU here), bf16 autocast, and on CUDA where present."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import dirscope
from dirscope.cli import cli
from dirscope.errors import DirscopeError
from test_engine import TinyConv, tiny_data

EXACT_STATS = ["layer", "direction", "count", "min", "max", "zeros", "zero_fraction", "hist_start", "hist_width"]
MOMENTS = ["mean", "std", "var", "skew", "kurtosis"]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


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
