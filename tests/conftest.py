"""Shared pytest configuration."""

from __future__ import annotations

import os

import torch

# Without a GPU, Triton kernels run in Triton's interpreter (numpy, on CPU tensors), so the DeviceTally's
# Triton pass is tested here too. Set before anything imports Triton: ``triton.jit`` reads it then.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "realdata: needs fetched or installed datasets; skipped when they are absent")
