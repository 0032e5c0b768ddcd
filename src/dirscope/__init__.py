"""dirscope: are a network's units special, or is any direction in its activation space as meaningful?

    import dirscope
    result = dirscope.run("mnist-cnn", ["conv2", "fc1"], "mnist", "basis,random:64", k=9)
    result.figure("fc1", "random")          # Szegedy-style grid
    result.topk, result.stats                # pandas tables, as in the run directory

Attributes load lazily, so readers of run directories (figures, reports) never import torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "run": ("engine", "run"),
    "describe_layers": ("engine", "describe_layers"),
    "Result": ("result", "Result"),
    "score": ("assess", "assess"),
    "DirscopeError": ("errors", "DirscopeError"),
}
__all__ = ["DirscopeError", "Result", "__version__", "describe_layers", "load", "run", "score"]


def __getattr__(name: str) -> Any:
    import importlib

    if name == "load":
        return importlib.import_module(".result", __name__).Result.load
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'dirscope' has no attribute {name!r}")
