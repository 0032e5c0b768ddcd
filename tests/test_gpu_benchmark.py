"""benchmarks/gpu.py runs end to end on the CPU (tiny sizes), so the script a GPU session runs is tested here."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import gpu


def test_gpu_benchmark_smoke_on_cpu(tmp_path):
    out = tmp_path / "gpu.md"
    small = "--rows 600 --dim 32 --directions 48 --k 8 --batch 256 --rounds 1 --images 512 --batch-images 256"
    rest = "--engine-directions 64 --check-limit 300 --device cpu --out"
    gpu.main([*small.split(), *rest.split(), str(out)])
    text = out.read_text()
    assert "Device: **CPU" in text
    assert "| **True** |" in text  # (a) passed
    assert "Top-8 values of the device tally equal the baseline's: **True**" in text
    for row in ("| gemm |", "| device_tally |", "| concat_reselect |", "| dirscope run |"):
        assert row in text
