"""Named hook points: every submodule's output is reachable by its dotted name, and hooks are the one door.

This stage knows nothing about directions or files: it maps a batch of inputs to the activations of
the requested layers, and stops the forward pass as soon as the last of them has run. TorchScript modules
take no hooks (torch refuses them), so their one layer is the model's output, named ``output``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .errors import DirscopeError
from .project import feature_axis
from .specs import suggest


@dataclass(frozen=True)
class LayerInfo:
    """One hookable submodule: its name, class, per-example output shape and calls per forward, and where
    ``--feature-axis auto`` finds its features."""

    name: str
    type: str
    shape: tuple[int, ...] | None  # None: did not run, or returned no tensor
    calls: int
    dtype: torch.dtype | None = None
    feature_axis: int | None = None  # None with no shape, or a scalar one

    @property
    def dim(self) -> int | None:
        """The number of features, the dimension a direction of this layer has."""
        return None if self.feature_axis is None else self.shape[self.feature_axis]

    @property
    def positions(self) -> int | None:
        """Positions per example (pooled by --pool): the other axes' sizes multiplied."""
        return None if self.dim is None else math.prod(self.shape) // self.dim


OUTPUT = "output"  # a TorchScript model's one layer


class _AllCaptured(Exception):
    """Raised from a hook to skip the rest of the forward pass once every requested layer has run."""


def first_tensor(output: object) -> torch.Tensor | None:
    """The activation a hook sees: the output tensor, or the first tensor of a tuple/list output, or of a dict's
    values (Hugging Face's ``ModelOutput`` is one: its first value is ``last_hidden_state``)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list, Mapping)):
        for item in output.values() if isinstance(output, Mapping) else output:
            if isinstance(item, torch.Tensor):
                return item
    return None


def scripted(module: nn.Module) -> bool:
    """Whether ``module`` is TorchScript, whose (sub)modules refuse forward hooks."""
    return isinstance(module, torch.jit.ScriptModule)


def hookable(module: nn.Module) -> dict[str, nn.Module]:
    """Every named submodule, nested names included (``features.3``, ``blocks.0.mlp.act``); for TorchScript,
    the model itself as ``output``."""
    if scripted(module):
        return {OUTPUT: module}
    return {name: sub for name, sub in module.named_modules() if name}


def resolve_layers(module: nn.Module, names: Sequence[str]) -> list[str]:
    """Check layer names; unknown names fail with the closest ones.

    ``all`` means every leaf module except those that only reshape or drop out (Flatten, Identity, Dropout).
    """
    available = hookable(module)
    if list(names) == ["all"]:
        if scripted(module):
            return [OUTPUT]
        return [n for n, m in available.items() if not any(True for _ in m.children()) and not _reshapes_only(m)]
    if not names:
        raise DirscopeError("no layer given; pass --layer NAME (list them with `dirscope layers MODEL`)")
    for name in names:
        if name not in available and scripted(module):
            raise DirscopeError(
                f"unknown layer {name!r}: a TorchScript model takes no hooks, so its one layer is {OUTPUT!r}; "
                "load it with python:MODULE:CALLABLE to reach inner layers"
            )
        if name not in available:
            raise DirscopeError(
                f"unknown layer {name!r}{suggest(name, available)}; list the names with `dirscope layers MODEL`"
            )
    check_unique_layers(names)
    return list(names)


def check_unique_layers(names: Sequence[str]) -> None:
    """A layer given twice would be scanned and listed twice but stored once."""
    if len(set(names)) != len(names):
        raise DirscopeError("the same layer is given twice; give each --layer once")


def _reshapes_only(module: nn.Module) -> bool:
    """Modules whose output repeats their input's values (in another shape), so they add no layer to study."""
    return isinstance(
        module,
        (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout),
    )


def forward(module: nn.Module, x: torch.Tensor, what: str = "the model", batch: str = "batch") -> object:
    """Run the model and return its output (None if a hook stopped it early), turning shape errors into one
    line that names the offending input shape."""
    try:
        return module(x)
    except _AllCaptured:
        return None
    except torch.OutOfMemoryError:
        raise DirscopeError(f"out of memory running {what} on a batch of {x.shape[0]}; lower --batch-size") from None
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as exc:
        # AssertionError: many models check their input shape with ``assert`` (timm's ``_assert`` included).
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        other = _other_weight_dtype(module, x)
        if other is not None:
            raise DirscopeError(
                f"{what} has {other} weights but its inputs are {x.dtype} ({first}); "
                "convert the model with .float() before giving it to dirscope"
            ) from None
        raise DirscopeError(
            f"{what} cannot take inputs of shape {list(x.shape[1:])} ({batch} of {x.shape[0]}): {first}"
        ) from None


def _other_weight_dtype(module: nn.Module, x: torch.Tensor) -> torch.dtype | None:
    """The floating dtype of the model's weights when it differs from the inputs', the likely cause of a failure
    that the input shape would only obscure (a ``.double()`` model fed float32)."""
    if not x.is_floating_point() or torch.is_autocast_enabled():
        return None
    dtypes = {p.dtype for p in module.parameters() if p.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 and x.dtype not in dtypes else None


def list_layers(module: nn.Module, example: torch.Tensor) -> list[LayerInfo]:
    """Every hookable name with its output shape, from one dry forward on ``example``."""
    if scripted(module):
        with torch.inference_mode():
            tensor = first_tensor(forward(module, example, batch="probe batch"))
        shape = tuple(tensor.shape[1:]) if tensor is not None else None
        dtype = None if tensor is None else tensor.dtype
        return [LayerInfo(OUTPUT, "TorchScript", shape, 1, dtype, _auto_axis(shape, module))]
    shapes: dict[str, tuple[int, ...] | None] = {}
    dtypes: dict[str, torch.dtype] = {}
    calls: dict[str, int] = {}

    def hook_for(name: str):
        def hook(_mod: nn.Module, _inp: object, output: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            tensor = first_tensor(output)
            shapes.setdefault(name, tuple(tensor.shape[1:]) if tensor is not None else None)
            if tensor is not None:
                dtypes.setdefault(name, tensor.dtype)

        return hook

    layers = hookable(module)
    handles = [m.register_forward_hook(hook_for(n)) for n, m in layers.items()]
    try:
        with torch.inference_mode():
            forward(module, example, batch="probe batch")
    finally:
        for h in handles:
            h.remove()
    return [
        LayerInfo(n, type(m).__name__, shapes.get(n), calls.get(n, 0), dtypes.get(n), _auto_axis(shapes.get(n), m))
        for n, m in layers.items()
    ]


def _auto_axis(shape: tuple[int, ...] | None, module: nn.Module) -> int | None:
    return feature_axis(shape, "auto", module) if shape else None


class Capture:
    """Context manager: hooks on the named layers; ``run(x)`` returns their activations for batch ``x``."""

    def __init__(self, module: nn.Module, layers: Sequence[str]) -> None:
        self.module = module
        self.layers = list(layers)
        self._outputs: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> Capture:
        if scripted(self.module):
            return self  # no hooks: ``run`` takes the output
        modules = hookable(self.module)
        for name in self.layers:
            self._handles.append(modules[name].register_forward_hook(self._hook_for(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook_for(self, name: str):
        def hook(_mod: nn.Module, _inp: object, output: object) -> None:
            if name in self._outputs:
                return
            tensor = first_tensor(output)
            if tensor is None:
                raise DirscopeError(f"layer {name!r} returns no tensor ({type(output).__name__}); hook another layer")
            if len(self._outputs) == len(self.layers) - 1:  # the last: the forward stops here
                self._outputs[name] = tensor
                raise _AllCaptured
            # A copy: later layers may write into this tensor in place (ReLU(inplace=True), ``out += x``).
            self._outputs[name] = tensor.clone()

        return hook

    def _capture_output(self, output: object) -> None:
        tensor = first_tensor(output)
        if tensor is None:
            raise DirscopeError(f"the TorchScript model returns no tensor ({type(output).__name__})")
        self._outputs[OUTPUT] = tensor

    def run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forward ``x`` (stopping early when possible) and return {layer: activation}."""
        self._outputs = {}
        output = forward(self.module, x)
        if scripted(self.module):
            self._capture_output(output)
        missing = [n for n in self.layers if n not in self._outputs]
        if missing:
            raise DirscopeError(f"layer {missing[0]!r} did not run in the forward pass; choose a layer that runs")
        out, self._outputs = self._outputs, {}
        return out
