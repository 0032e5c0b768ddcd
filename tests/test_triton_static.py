"""The Triton kernels compile for a Hopper GPU without one, with no registers spilled (benchmarks/triton_static.py).

CPU tests run the kernels in Triton's interpreter, which accepts code that the GPU compiler may reject; this
compiles them for sm_90 as a GPU machine would.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton")
def test_kernels_compile_for_sm90_without_spills(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "benchmarks/triton_static.py", "--check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = done.stdout.splitlines()
    assert [row.split(",")[0] for row in rows] == [
        "kernel pass (contiguous rows)",
        "kernel pass (listed rows)",
        "kernel recount",
    ]
    assert all(", stack 0," in row for row in rows)


def test_check_refuses_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run(
        [sys.executable, "benchmarks/triton_static.py", "--check"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 1 and "unset TRITON_INTERPRET" in done.stderr
