"""benchmarks/gpu.py runs end to end on the CPU (tiny sizes), so the script a GPU session runs is tested here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import gpu


def test_gpu_benchmark_smoke_on_cpu(tmp_path):
    out = tmp_path / "gpu.md"
    small = "--rows 600 --dim 32 --directions 48 --k 8 --batch 256 --rounds 1 --images 512 --batch-images 256"
    small += " --resnet-images 64"
    rest = "--engine-directions 64 --check-limit 300 --device cpu --out"
    gpu.main([*small.split(), *rest.split(), str(out)])
    text = out.read_text()
    assert "Device: **CPU" in text
    assert "| **True** |" in text  # (a) passed
    assert "Top-8 values of the device tally equal the baseline's: **True**" in text
    for row in (
        "| contender | ms | x GEMM | tally alone x GEMM |",
        "| gemm |",
        "| device_tally |",
        "| device_tally_settle_each |",
        "| concat_reselect |",
        "| mnist-cnn | fc1 | float32 | 512 | 256 |",
        "| ResNet-18 (random weights) | layer4 | bf16 | 64 | 256 |",
    ):
        assert row in text


def test_ratio_rows_give_each_contender_with_and_without_the_gemm():
    rows = gpu.ratio_rows({"gemm": 0.020, "device_tally": 0.065, "concat_reselect": 0.150})
    assert rows.splitlines() == [
        "| gemm | 20.0 | 1.00 | - |",
        "| device_tally | 65.0 | 3.25 | 2.25 |",
        "| concat_reselect | 150.0 | 7.50 | 6.50 |",
    ]


def test_gpu_tune_sweeps_every_configuration_on_cpu(tmp_path, monkeypatch, capsys):
    """The tuning script in Triton's interpreter (conftest.py): every configuration runs, the fastest is written."""
    pytest.importorskip("triton")
    from benchmarks import gpu_tune

    from dirscope.tally import device, triton_pass

    monkeypatch.setattr(triton_pass, "TILE", triton_pass.TILE)  # the sweep sets them; restored after
    monkeypatch.setattr(triton_pass, "NUM_WARPS", triton_pass.NUM_WARPS)
    monkeypatch.setattr(triton_pass, "STEP", triton_pass.STEP)
    best = tmp_path / "best.txt"
    tiny = "--device cpu --rows 400 --dim 8 --directions 3 --k 4 --batch 200 --rounds 1 --best-to"
    gpu_tune.main([*tiny.split(), str(best)])
    printed = capsys.readouterr().out
    assert printed.count(" x GEMM") == len(gpu_tune.CONFIGS)
    assert not device._Fused.failed
    best_config = tuple(int(word) for word in best.read_text().split()[1::2])
    assert best_config in gpu_tune.CONFIGS
    assert best_config == (triton_pass.TILE, triton_pass.NUM_WARPS, triton_pass.STEP)
