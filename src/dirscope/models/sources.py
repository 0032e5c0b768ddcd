"""Models from the user's own code: ``python:MODULE:CALLABLE`` and ``torchscript:PATH``."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

from ..errors import DirscopeError
from ..specs import suggest
from .base import MODELS, LoadedModel, from_module


def one_line(exc: BaseException, limit: int = 200) -> str:
    """``Type: message`` squeezed onto one line, so user errors stay one line."""
    text = " ".join(str(exc).split())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextlib.contextmanager
def cwd_on_path() -> Iterator[None]:
    """Let ``python:`` specs import modules from the working directory, as ``python -m`` would."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def import_user_module(name: str, spec: str) -> ModuleType:
    """Import ``name``, telling a missing module apart from a module that fails while importing."""
    try:
        importlib.invalidate_caches()
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            hint = "give a dotted module name, not a file path, and " if ("/" in name or name.endswith(".py")) else ""
            raise DirscopeError(
                f"model {spec!r}: no module named {name!r}; {hint}run from its directory or add it to PYTHONPATH"
            ) from None
        raise DirscopeError(f"model {spec!r}: importing {name!r} failed with {one_line(exc)}") from exc
    except Exception as exc:
        raise DirscopeError(f"model {spec!r}: importing {name!r} failed with {one_line(exc)}") from exc


@MODELS.register("python", help="MODULE:CALLABLE, a function returning a torch.nn.Module", takes_arg=True)
def load_python(arg: str) -> LoadedModel:
    """Call a user's zero-argument builder; the working directory is importable."""
    spec = f"python:{arg}"
    module_name, sep, attr = (part.strip() for part in arg.partition(":"))
    if not sep or not module_name or not attr:
        raise DirscopeError(f"model {spec!r} needs the form python:MODULE:CALLABLE, e.g. python:mymodels:build")
    with cwd_on_path():
        module = import_user_module(module_name, spec)
        if not hasattr(module, attr):
            names = [n for n in dir(module) if not n.startswith("_")]
            raise DirscopeError(
                f"model {spec!r}: module {module_name!r} has no attribute {attr!r}{suggest(attr, names)}"
            )
        builder = getattr(module, attr)
        if not callable(builder):
            raise DirscopeError(
                f"model {spec!r}: {module_name}.{attr} is not callable (type {type(builder).__name__}); "
                "name a function that returns a torch.nn.Module"
            )
        try:
            result = builder()
        except Exception as exc:
            raise DirscopeError(f"model {spec!r}: {module_name}.{attr}() raised {one_line(exc)}") from exc
    if isinstance(result, LoadedModel):
        return result
    if isinstance(result, torch.nn.Module):
        return from_module(result, spec)
    raise DirscopeError(
        f"model {spec!r}: {module_name}.{attr}() returned a value of type {type(result).__name__}; "
        "it must return a torch.nn.Module"
    )


@MODELS.register("torchscript", help="PATH of a TorchScript file saved with torch.jit.save", takes_arg=True)
def load_torchscript(arg: str) -> LoadedModel:
    """Load a scripted or traced model on the CPU; TorchScript needs no Python class to rebuild."""
    path = Path(arg).expanduser()
    if not path.is_file():
        raise DirscopeError(f"TorchScript file {str(path)!r} not found; give a file saved with torch.jit.save")
    try:
        with warnings.catch_warnings():  # the user chose TorchScript; its deprecation notice is not theirs to fix
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError, OSError) as exc:
        raise DirscopeError(
            f"cannot load {str(path)!r} as TorchScript ({one_line(exc)}); "
            "save it with torch.jit.save(torch.jit.script(model), PATH)"
        ) from None
    return from_module(module, f"torchscript:{arg}")
